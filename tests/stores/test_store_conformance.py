"""The artifact-store contract (StoreConformance), run over every store and middleware stack.

The stacks are tests/support/stores.py's STORE_BUILDERS; each is checked out of band through
the view of its innermost storage.
"""

from __future__ import annotations

import pytest

from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.store import StoreConformance
from tests.support.stores import STORE_BUILDERS, raw_view


class TestStores(StoreConformance):
    @pytest.fixture(params=list(STORE_BUILDERS))
    def store(self, request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
        store = STORE_BUILDERS[request.param](request)
        self.raw = raw_view(request.param, request, store)
        # A local store publishes its verified temp copy by rename even when the blob is there.
        self.rewrites_duplicates = request.param.endswith("filesystem")
        return store
