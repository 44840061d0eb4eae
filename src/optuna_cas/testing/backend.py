"""``BackendConformance``: the backend contract as a pytest class every backend's tests subclass.

The tests are generic over the backend. A subclass supplies a ``backend`` fixture and a view
of what is really stored (:mod:`optuna_cas.testing.raw`), read and written *around* the
backend, so that a write is checked against the storage itself and not against the same code
reading it back. Optional hooks (prefixes, a missing bucket, the server's address) switch on
the tests that need them; the others are skipped with a reason.

Requires pytest; the library itself never imports this module.
"""

from __future__ import annotations

from optuna_cas.testing._backend_faults import BackendFaultTests
from optuna_cas.testing._backend_hooks import MULTIPART, BackendHooks, read_all
from optuna_cas.testing._backend_io import BAD_KEYS, BackendIOTests
from optuna_cas.testing._backend_ranges import BackendRangeTests

__all__ = ["BAD_KEYS", "MULTIPART", "BackendConformance", "BackendHooks", "read_all"]


class BackendConformance(BackendIOTests, BackendRangeTests, BackendFaultTests):
    """Every test of the :class:`~optuna_cas.backends.base.Backend` contract.

    Subclass it in a module pytest collects (a class named ``Test...``), provide a ``backend``
    fixture that returns a fresh, empty backend and sets ``self.raw`` to a view of its
    storage, and set the hooks and settings that apply (see :class:`BackendHooks`):

    * ``raw_read`` / ``raw_write`` / ``raw_keys`` / ``raw_version`` / ``raw_unfinished`` /
      ``raw_backdate``: out-of-band access, by default through ``self.raw``.
    * ``requests_sent()``: a request counter, to check that bad keys are refused before I/O.
    * ``is_download(method, path)``: which requests the fault proxy sees fetch object bytes
      (bounded reads must fetch exactly their window in one of them).
    * ``backend_at(sub)``: the same storage below a sub-prefix (prefix isolation).
    * ``missing_container()``: a backend on a bucket that does not exist, and its name.
    * ``upstream()`` and ``backend_via(url)``: the server's address and a backend reaching it
      through another URL, SDK retries off (fault injection, an unreachable server).
    * ``readers_seek``, ``multipart_size``, ``memory_bound``, ``invalid_raw_names``.

    Example:
        .. code-block:: python

            import pytest

            from optuna_cas.backends.local import LocalBackend
            from optuna_cas.testing.backend import BackendConformance
            from optuna_cas.testing.raw import DirectoryView


            class TestLocalBackend(BackendConformance):
                memory_bound = 8 * 1024 * 1024

                @pytest.fixture
                def backend(self, tmp_path):
                    self.raw = DirectoryView(tmp_path / "store")
                    return LocalBackend(tmp_path / "store")

                def backend_at(self, sub):
                    return LocalBackend(self.raw.root / sub)
    """
