"""Ages are measured on the store's clock, so a worker whose own clock is skewed loses nothing.

gc's safety argument (optuna_cas.operations.gc) compares object times, which the store stamps,
with "now". These tests skew this process's clock (``time.time``) by hours, as a VM restored
from a snapshot would have it, against a store whose clock is right: the local file system's
(the kernel stamps mtimes), moto's or fake-gcs-server's (other processes). Before the store's clock was used, the
skewed uploader never freshened a blob it re-used, and the skewed gc deleted a young one.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable

import pytest

from optuna_cas.backends.base import Backend
from optuna_cas.backends.clock import StoreClock
from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.content import ContentStore
from optuna_cas.operations.gc import gc
from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.streams import random_bytes

HOURS = 3600.0
_real_time = time.time


def _skew(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """From now on this process's clock reads ``seconds`` off the truth."""
    monkeypatch.setattr(time, "time", lambda: _real_time() + seconds)


@pytest.fixture(params=["local", "s3", "gcs"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "local":
        return LocalBackend(request.getfixturevalue("tmp_path") / "store")
    backend: Backend = request.getfixturevalue(f"{request.param}_backend")
    return backend


# A blob above the inline limit, and a file chunked at a 64 KiB threshold (a manifest, a pack).
CONTENTS = {"blob": b"weights" * 2_000, "chunked": random_bytes(300_000, seed=5)}
THRESHOLD = 64 * 1024


def _stored_keys(backend: Backend) -> list[str]:
    return sorted(info.key for info in backend.list("") if not info.key.startswith("refs/"))


@pytest.mark.parametrize("kind", CONTENTS)
def test_an_uploader_whose_clock_runs_behind_still_freshens_what_it_reuses(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    if backend.describe().startswith("gs://"):
        pytest.skip("fake-gcs-server keeps an object's `updated` time on a metadata patch")
    data = CONTENTS[kind]
    ContentStore(backend, chunk_threshold=THRESHOLD).put_blob(io.BytesIO(data))
    keys = _stored_keys(backend)
    assert len(keys) == (1 if kind == "blob" else 3)  # blob; manifest, pack and index object
    time.sleep(2.1)  # older than freshen_after below (S3 stamps whole seconds)
    before = {key: backend.stat(key).modified for key in keys}
    _skew(monkeypatch, -2 * HOURS)
    ContentStore(backend, freshen_after=1.0, chunk_threshold=THRESHOLD).put_blob(io.BytesIO(data))
    # Judged on its own clock, each was 2 hours younger than nothing: never touched, so a gc
    # (right clock) could delete it under the upload's new ref.
    touched = [key for key in keys if backend.stat(key).modified > before[key]]
    expected = [key for key in keys if not key.startswith("chunk-index/")]  # only a hint
    assert touched == expected


@pytest.mark.parametrize("kind", CONTENTS)
def test_a_gc_whose_clock_runs_ahead_keeps_young_content(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    store = ContentAddressedArtifactStore(ContentStore(backend, chunk_threshold=THRESHOLD))
    store.content.put_blob(io.BytesIO(CONTENTS[kind]))
    keys = _stored_keys(backend)
    # No ref names it yet: the moment an upload's content is protected only by its age.
    _skew(monkeypatch, 3 * HOURS)
    report = gc(store)  # the default grace period, 2 hours
    assert report.deleted == []
    assert set(keys) <= set(_stored_keys(backend))  # (gc may add a consolidated index object)


def test_the_clock_reads_the_store_once_and_leaves_nothing_there(backend: Backend) -> None:
    calls: list[str] = []
    clock = StoreClock(_Counting(backend, calls), stage_in="blobs")
    first = clock.now()
    assert abs(first - _real_time()) < 5  # this store's clock is right
    time.sleep(0.05)
    second = clock.now()
    assert 0.04 < second - first < 5  # monotonic time since the one look
    assert len([c for c in calls if c == "write"]) <= 1
    assert list(backend.list("")) == []  # no probe object left (nor a local temp file)


def test_a_step_of_this_machines_clock_after_the_look_moves_nothing(
    monkeypatch: pytest.MonkeyPatch, local_backend: LocalBackend
) -> None:
    clock = StoreClock(local_backend, stage_in="blobs")
    clock.now()
    _skew(monkeypatch, 5 * HOURS)  # NTP steps the clock, say
    assert abs(clock.now() - _real_time()) < 5


def test_a_store_that_refuses_the_probe_falls_back_to_this_clock_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class ReadOnly(MemoryBackend):
        def write(self, key: str, data: object, *, if_absent: bool = False) -> None:
            raise PermissionError(f"{key}: read-only")

    with caplog.at_level(logging.WARNING, logger="optuna_cas.backends.clock"):
        now = StoreClock(ReadOnly(), stage_in="blobs").now()
    assert abs(now - _real_time()) < 5
    assert "could not read the time of memory" in caplog.text and "read-only" in caplog.text


class _Counting:
    """A backend that records which operations were called (everything else delegated)."""

    def __init__(self, backend: Backend, calls: list[str]) -> None:
        self._backend, self._calls = backend, calls

    def __getattr__(self, name: str) -> Callable[..., object]:
        attribute = getattr(self._backend, name)
        if callable(attribute) and name in {"write", "stat", "remove", "stage"}:

            def counted(*args: object, **kwargs: object) -> object:
                self._calls.append(name)
                return attribute(*args, **kwargs)

            return counted
        return attribute  # type: ignore[no-any-return]
