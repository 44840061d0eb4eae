"""Shared fixtures. Remote-server fixtures live in tests/support and are registered here.

The backend contract runs per backend kind in tests/backends/test_<kind>.py (subclasses of
optuna_cas.testing.backend.BackendConformance).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.testing.streams import random_bytes

__all__ = ["random_bytes"]  # the tests' deterministic bytes (from optuna_cas.testing)

pytest_plugins = [
    "tests.support.s3",
    "tests.support.gcs",
    "tests.support.postgres",
    "tests.support.stores",
]


@pytest.fixture
def memory_backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def local_backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "store")


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., Path]:
    """Write bytes to a fresh file under tmp_path and return its path."""
    counter = iter(range(1_000_000))

    def make(data: bytes, name: str | None = None) -> Path:
        path = tmp_path / "inputs" / (name or f"file-{next(counter)}.bin")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return make


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    try:
        import optuna
    except ImportError:  # pragma: no cover
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
