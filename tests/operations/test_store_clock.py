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
from pathlib import Path
from typing import ClassVar

import pytest

from optuna_cas.backends.base import Backend
from optuna_cas.backends.clock import CLOCK_PREFIX, StoreClock
from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.content import ContentStore
from optuna_cas.exceptions import StoreClockError, TransientBackendError
from optuna_cas.operations.gc import gc
from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.streams import random_bytes
from tests.support.roles import RefusingBackend

HOURS = 3600.0
_real_time = time.time
_real_monotonic = time.monotonic


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
    first = clock.now_to_delete()
    assert abs(first - _real_time()) < 5  # this store's clock is right
    assert calls  # the store was asked
    asked = len(calls)
    time.sleep(0.05)
    second = clock.now_to_delete()
    assert 0.04 < second - first < 5 and clock.now_to_freshen() >= second
    assert len(calls) == asked  # once
    assert list(backend.list("")) == []  # no probe object left (nor a local temp file)


def test_a_reading_carried_across_a_sleep_errs_on_the_safe_side(
    local_backend: LocalBackend,
) -> None:
    clock = StoreClock(local_backend, stage_in="blobs")
    clock.now_to_delete()
    # The monotonic clock stops while the machine sleeps: as if it slept 3 hours since.
    stamped, at = clock._reading.anchor  # type: ignore[misc]
    clock._reading.anchor = (stamped - 3 * HOURS, at)
    assert abs(clock.now_to_freshen() - _real_time()) < 5  # touches as this clock says
    assert clock.now_to_delete() < _real_time() - 2 * HOURS  # deletes by the lagging one


def test_a_step_of_this_machines_clock_after_the_reading_cannot_make_gc_delete_early(
    monkeypatch: pytest.MonkeyPatch, local_backend: LocalBackend
) -> None:
    clock = StoreClock(local_backend, stage_in="blobs")
    clock.now_to_delete()
    _skew(monkeypatch, 5 * HOURS)  # a wrong step of this machine's clock
    assert abs(clock.now_to_delete() - _real_time()) < 5


def test_an_upload_falls_back_to_this_clock_once_warned_and_asks_again_later(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = RefusingBackend(refuse={"write"}, reason="read-only")  # or a lost connection
    clock = StoreClock(backend, stage_in="blobs")
    with caplog.at_level(logging.WARNING, logger="optuna_cas.backends.clock"):
        assert abs(clock.now_to_freshen() - _real_time()) < 5
        clock.now_to_freshen()
    assert caplog.text.count("could not read the time of memory") == 1
    assert "read-only" in caplog.text
    backend.refuse = set()
    clock.now_to_freshen()
    assert clock._reading.anchor is None  # not asked again within a minute of the failure
    monkeypatch.setattr(time, "monotonic", lambda: _real_monotonic() + 61)
    clock.now_to_freshen()
    assert clock._reading.anchor is not None  # a failed reading was not kept: asked again


def test_gc_deletes_nothing_when_it_cannot_read_the_store_time() -> None:
    backend = RefusingBackend(reason="read-only")
    store = ContentAddressedArtifactStore(ContentStore(backend))
    store.write("dropped", io.BytesIO(CONTENTS["blob"]))
    store.remove("dropped")
    backend.refuse = {"write"}
    store = ContentAddressedArtifactStore(ContentStore(backend))  # a new process's, say
    with pytest.raises(StoreClockError, match="could not read the time of memory"):
        gc(store, grace_period=0, allow_short_grace=True)
    assert len(list(store.content.iter_blobs())) == 1
    # A dry run writes nothing, so it needs no reading (it judges by this machine's clock).
    report = gc(store, grace_period=0, allow_short_grace=True, dry_run=True)
    assert len(report.deleted) == 1


def test_a_reading_survives_a_store_that_refuses_the_delete() -> None:
    clock = StoreClock(RefusingBackend(refuse={"remove"}), stage_in="blobs")
    clock.now_to_delete()  # no error: the empty object stays
    assert clock._reading.anchor is not None


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


def test_behind_backoff_the_reading_is_retried_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    from optuna_cas import Backoff

    class OnceTransient(MemoryBackend):
        failed: ClassVar[list[str]] = []

        def write(self, key: str, data: object, *, if_absent: bool = False) -> None:
            if key.startswith(CLOCK_PREFIX) and not self.failed:
                self.failed.append(key)
                raise TransientBackendError(f"{key}: connection reset")
            super().write(key, data, if_absent=if_absent)  # type: ignore[arg-type]

    backend = OnceTransient()
    store = Backoff(ContentAddressedArtifactStore(ContentStore(backend)), max_retries=3)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    gc(store, grace_period=0, allow_short_grace=True)  # the lost connection was retried
    assert backend.failed and store.content.clock._reading.anchor is not None


def test_gc_collects_probe_objects_left_behind() -> None:
    backend = MemoryBackend()
    store = ContentAddressedArtifactStore(ContentStore(backend))
    backend.write(f"{CLOCK_PREFIX}left-by-a-killed-process", io.BytesIO(b""))
    assert gc(store).temp_files_removed == 0  # young: perhaps being read right now
    report = gc(store, grace_period=0, allow_short_grace=True)
    assert report.temp_files_removed == 0  # still within the hour stale temps get
    _skew_store(backend, f"{CLOCK_PREFIX}left-by-a-killed-process", -2 * HOURS)
    assert gc(store).temp_files_removed == 1
    assert list(backend.list(CLOCK_PREFIX)) == []


def _skew_store(backend: MemoryBackend, key: str, seconds: float) -> None:
    data, modified = backend._objects[key]
    backend._objects[key] = (data, modified + seconds)


def test_gc_of_a_local_store_whose_clock_directory_is_a_symlink_keeps_its_report(
    tmp_path: Path,
) -> None:
    """gc lists clock/ after its deletions: a listing refused there (a symlink, which a local
    store never writes under) failed gc after it had deleted, and its report was lost
    (found in review)."""
    root = tmp_path / "s"
    store = ContentAddressedArtifactStore(ContentStore(LocalBackend(root)))
    store.write("a1", io.BytesIO(random_bytes(10_000, seed=5)))
    store.remove("a1")
    (tmp_path / "elsewhere").mkdir()
    (root / "clock").symlink_to(tmp_path / "elsewhere")

    report = gc(store, grace_period=0, allow_short_grace=True)

    assert len(report.deleted) == 1
