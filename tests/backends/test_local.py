"""The backend contract on LocalBackend (bare and behind retries), checked against its files."""

from __future__ import annotations

from pathlib import Path

import pytest

from optuna_cas.backends.base import Backend
from optuna_cas.backends.local import LocalBackend
from optuna_cas.middleware.backoff import RetryingBackend
from optuna_cas.middleware.retry import Retrier, RetryPolicy
from optuna_cas.testing.backend import BackendConformance
from optuna_cas.testing.raw import DirectoryView

MiB = 1024 * 1024


class TestLocalBackend(BackendConformance):
    # A few copy buffers: measured 2 MiB writing, 1 MiB reading; a whole object would be 64.
    memory_bound = 8 * MiB

    def local(self, tmp_path: Path) -> LocalBackend:
        self.raw = DirectoryView(tmp_path / "store")
        return LocalBackend(tmp_path / "store")

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return self.local(tmp_path)

    def backend_at(self, sub: str) -> Backend:
        assert isinstance(self.raw, DirectoryView)
        return LocalBackend(self.raw.root / sub)


class TestRetryingLocalBackend(TestLocalBackend):
    """The same contract through RetryingBackend, as Backoff wraps a local store."""

    readers_seek = False  # ResumingReader streams forward only

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        retrier = Retrier(RetryPolicy(min_delay=0.01, max_delay=0.05))
        return RetryingBackend(self.local(tmp_path), retrier)

    def backend_at(self, sub: str) -> Backend:
        retrier = Retrier(RetryPolicy(min_delay=0.01, max_delay=0.05))
        return RetryingBackend(super().backend_at(sub), retrier)
