"""A first read of a chunked file through the cache fills the next packs while it copies."""

from __future__ import annotations

import errno
import io
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import optuna_cas.chunks.assemble as assemble
from optuna_cas.backends.local import LocalBackend
from optuna_cas.chunks.layout import PACK_PREFIX, pack_key
from optuna_cas.chunks.reader import PREFETCH_AHEAD
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound
from optuna_cas.middleware.blob_cache import DiskBlobCache
from tests.support.fds import new_fds, open_fds

THRESHOLD = 256 * 1024
PART = 3 * 1024 * 1024 + 5
PARTS = 5


class _RecordingBackend(LocalBackend):
    """Notes which thread opened each pack."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.pack_reads: list[tuple[str, str]] = []

    def open_reader(self, key: str, **kwargs: Any) -> BinaryIO:
        if key.startswith(PACK_PREFIX):
            self.pack_reads.append((key, threading.current_thread().name))
        return super().open_reader(key, **kwargs)


@pytest.fixture
def spread(tmp_path: Path) -> tuple[bytes, Digest, list[Digest]]:
    """A file whose chunks lie in several packs (its parts were uploaded first, one each)."""
    writer = ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
    parts = [random.Random(seed).randbytes(PART) for seed in range(PARTS)]
    for i, part in enumerate(parts):
        writer.put_artifact(f"part{i}", io.BytesIO(part))
    data = b"".join(parts)
    digest = writer.put_artifact("whole", io.BytesIO(data)).digest
    runs = list(assemble.contiguous_runs(writer.chunks.manifest(digest)))
    packs = writer.chunks.manifest(digest).packs
    first_use = [packs[n] for n in dict.fromkeys(number for number, _, _ in runs)]
    assert len(first_use) >= PARTS
    return data, digest, first_use


def _worker(tmp_path: Path) -> tuple[ContentStore, _RecordingBackend, DiskBlobCache]:
    backend = _RecordingBackend(tmp_path / "store")
    cache = DiskBlobCache(tmp_path / "cache", size_limit=2**30)
    return ContentStore(backend, blob_cache=cache, chunk_threshold=THRESHOLD), backend, cache


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "optuna-cas-prefetch"]


def test_packs_after_the_first_missing_one_are_fetched_on_the_prefetch_thread(
    tmp_path: Path, spread: tuple[bytes, Digest, list[Digest]]
) -> None:
    data, digest, first_use = spread
    worker, backend, _ = _worker(tmp_path)
    worker.materialize_blob(digest, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    # Each pack read once (the first and the second race to the store: any order).
    threads = dict(backend.pack_reads)
    assert len(backend.pack_reads) == len(threads) == len(first_use)
    assert threads.pop(pack_key(first_use[0])) == threading.current_thread().name
    assert set(threads) == {pack_key(p) for p in first_use[1:]}
    assert set(threads.values()) == {"optuna-cas-prefetch"}
    assert _prefetch_threads() == []


def test_a_pack_missing_from_the_store_midway_is_named_and_nothing_is_left(
    tmp_path: Path, spread: tuple[bytes, Digest, list[Digest]]
) -> None:
    _, digest, first_use = spread
    gone = first_use[2]
    (tmp_path / "store" / pack_key(gone)).unlink()
    worker, _, _ = _worker(tmp_path)
    with pytest.raises(ArtifactNotFound, match=gone.hexdigest[:16]):
        worker.materialize_blob(digest, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["cache", "store"]
    assert _prefetch_threads() == []


def test_a_copy_that_fails_stops_the_prefetch_close_behind_it(
    tmp_path: Path,
    spread: tuple[bytes, Digest, list[Digest]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, digest, first_use = spread
    real_copy = assemble.copy_range
    copies: list[int] = []

    def fail_on_the_second_pack(source: int, *args: Any) -> int:
        copies.append(os.fstat(source).st_ino)
        if len(set(copies)) == 2:
            time.sleep(0.5)  # time enough for a prefetch without a bound to run to the end
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(source, *args)

    monkeypatch.setattr(assemble, "copy_range", fail_on_the_second_pack)
    worker, backend, _ = _worker(tmp_path)
    with pytest.raises(OSError, match="No space left"):
        worker.materialize_blob(digest, tmp_path / "out")
    # The two packs copied from, and at most PREFETCH_AHEAD more fetched for nothing.
    assert 2 <= len(backend.pack_reads) <= 2 + PREFETCH_AHEAD < len(first_use)
    assert sorted(os.listdir(tmp_path)) == ["cache", "store"]
    assert _prefetch_threads() == []


def test_prefetching_downloads_leak_no_descriptor(
    tmp_path: Path, spread: tuple[bytes, Digest, list[Digest]]
) -> None:
    data, digest, first_use = spread
    worker, _, cache = _worker(tmp_path)
    worker.materialize_blob(digest, tmp_path / "warm-up")  # this thread's own connection
    before = open_fds()
    for i in range(4):  # each starts a prefetch thread, which opens its own connection
        for pack in first_use:
            cache.discard(pack)
        worker.materialize_blob(digest, tmp_path / f"out{i}")
        assert (tmp_path / f"out{i}").read_bytes() == data
    assert new_fds(before) == set()
