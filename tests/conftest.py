"""Shared fixtures. Remote-server fixtures live in tests/support and are registered here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from optuna_cas.backends.base import Backend
from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend

pytest_plugins = [
    "tests.support.s3",
    "tests.support.gcs",
    "tests.support.postgres",
    "tests.support.stores",
]

# Every backend kind the conformance suites run against. Each name has a fixture
# "<name>_backend" returning a fresh, empty backend.
BACKEND_KINDS = ["memory", "local", "s3", "gcs"]


@pytest.fixture
def memory_backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def local_backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "store")


@pytest.fixture(params=BACKEND_KINDS)
def any_backend(request: pytest.FixtureRequest) -> Backend:
    backend: Backend = request.getfixturevalue(f"{request.param}_backend")
    return backend


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


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes."""
    import random

    return random.Random(seed).randbytes(size)


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    try:
        import optuna
    except ImportError:  # pragma: no cover
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
