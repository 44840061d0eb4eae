"""The backend contract on MemoryBackend, checked against its dict."""

from __future__ import annotations

import pytest

from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.testing.backend import BackendConformance
from optuna_cas.testing.raw import MemoryView


class TestMemoryBackend(BackendConformance):
    # memory_bound stays None: this backend holds every object in memory by design.

    @pytest.fixture
    def backend(self) -> MemoryBackend:
        backend = MemoryBackend()
        self.raw = MemoryView(backend)
        return backend
