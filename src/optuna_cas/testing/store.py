"""``StoreConformance``: the artifact-store contract as a pytest class to subclass.

The same pattern as :mod:`optuna_cas.testing.backend`, one layer up: a subclass supplies a
``store`` fixture (an optuna-cas artifact store, possibly behind middleware) and sets
``self.raw`` to a view of the storage below the store's root, so that dedup, refs and
corruption are checked against what is really stored, and corruption is planted around the
store rather than through it.

Requires pytest (and optuna for the Optuna round trip); the library never imports this module.
"""

from __future__ import annotations

from optuna_cas.testing._store_tests import StoreTests

__all__ = ["StoreConformance"]


class StoreConformance(StoreTests):
    """Every test of the artifact-store contract (Optuna's three methods, dedup, refs, verify).

    Subclass it in a module pytest collects, with a ``store`` fixture returning a fresh, empty
    store and setting ``self.raw`` (a :class:`~optuna_cas.testing.raw.RawView` of the store's
    backend root). Set ``rewrites_duplicates`` for a store that re-publishes a blob it already
    holds (a local one does, by rename).

    Example:
        .. code-block:: python

            import pytest

            from optuna_cas import FileSystemArtifactStore
            from optuna_cas.testing.raw import DirectoryView
            from optuna_cas.testing.store import StoreConformance


            class TestFileSystemStore(StoreConformance):
                @pytest.fixture
                def store(self, tmp_path):
                    self.raw = DirectoryView(tmp_path / "store")
                    return FileSystemArtifactStore(tmp_path / "store")
    """
