"""A first read of a chunked file through the cache fills the next packs while it copies."""

from __future__ import annotations

import errno
import io
import itertools
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import optuna_cas.chunks.assemble as assemble
from optuna_cas.backends.local import LocalBackend
from optuna_cas.chunks.cached_packs import PREFETCH_AHEAD
from optuna_cas.chunks.layout import PACK_PREFIX, pack_key
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound
from optuna_cas.middleware.blob_cache import DiskBlobCache
from tests.support.fds import new_fds, open_fds

THRESHOLD = 256 * 1024
PART = 3 * 1024 * 1024 + 5
PARTS = 5


class _RecordingBackend(LocalBackend):
    """Notes which thread opened each pack, and when each pack was opened and closed."""

    def __init__(self, root: Path, *, first_read_delay: float = 0.0) -> None:
        super().__init__(root)
        self.pack_reads: list[tuple[str, str]] = []
        self.events: list[tuple[str, str]] = []
        self._delay = first_read_delay

    def open_reader(self, key: str, **kwargs: Any) -> BinaryIO:
        if not key.startswith(PACK_PREFIX):
            return super().open_reader(key, **kwargs)
        self.pack_reads.append((key, threading.current_thread().name))
        self.events.append(("open", key))
        return _Noted(super().open_reader(key, **kwargs), key, self.events, self._delay)


class _SlowStart(io.RawIOBase):
    """``source``, whose first read (``read`` or ``readinto``) takes ``delay`` seconds more.

    On the raw stream, where a fill reads (it takes a buffered reader's raw stream), as a
    server's time to first byte would delay it.
    """

    def __init__(self, source: BinaryIO, delay: float) -> None:
        super().__init__()
        self._source, self._delay = source, delay

    def readable(self) -> bool:
        return True

    def _wait(self) -> None:
        if self._delay:
            time.sleep(self._delay)
            self._delay = 0.0

    def readinto(self, buffer: Any) -> int:
        self._wait()
        return self._source.readinto(buffer)  # type: ignore[attr-defined,no-any-return]

    def read(self, size: int | None = -1) -> bytes:
        self._wait()
        return self._source.read(size)

    def close(self) -> None:
        self._source.close()
        super().close()


class _Noted(io.BufferedReader):
    """A pack reader that notes its close, and takes ``delay`` seconds for its first read."""

    def __init__(
        self, raw: BinaryIO, key: str, events: list[tuple[str, str]], delay: float
    ) -> None:
        super().__init__(_SlowStart(raw, delay))
        self._key, self._events = key, events

    def close(self) -> None:
        if not self.closed:
            self._events.append(("close", self._key))
        super().close()


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


def _worker(
    tmp_path: Path, first_read_delay: float = 0.0
) -> tuple[ContentStore, _RecordingBackend, DiskBlobCache]:
    backend = _RecordingBackend(tmp_path / "store", first_read_delay=first_read_delay)
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
    # The prefetch thread opens the first of them; its opener sends the next ones' requests.
    assert {name.rsplit("_", 1)[0] for name in threads.values()} == {
        "optuna-cas-prefetch",
        "optuna-cas-open-pack",
    }
    assert _prefetch_threads() == []


def test_the_next_packs_request_is_sent_while_a_pack_is_filled(
    tmp_path: Path, spread: tuple[bytes, Digest, list[Digest]]
) -> None:
    # A server's time to first byte overlaps the fill before, not added to every pack.
    data, digest, first_use = spread
    worker, backend, _ = _worker(tmp_path, first_read_delay=0.05)
    worker.materialize_blob(digest, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    order = [event for event in backend.events if event[1] != pack_key(first_use[0])]
    overlapped = [
        later
        for earlier, later in itertools.pairwise(first_use[1:])
        if order.index(("open", pack_key(later))) < order.index(("close", pack_key(earlier)))
    ]
    # Not every one: a prefetch already PREFETCH_AHEAD packs ahead of the copy waits (here at
    # first, while this thread fills the first pack). One pack after another: none.
    assert len(overlapped) >= 2
    assert backend.events.count(("close", pack_key(first_use[-1]))) == 1


def test_a_request_sent_ahead_for_a_pack_filled_elsewhere_is_closed_when_its_turn_passes(
    tmp_path: Path, spread: tuple[bytes, Digest, list[Digest]]
) -> None:
    # Workers on one machine share a cache: another one may fill a pack between our request
    # sent ahead and our turn to fill it. That request is then never read; it must not stay
    # open (a connection, and a response the server keeps pushing) until the copy ends.
    data, digest, first_use = spread
    worker, backend, _ = _worker(tmp_path, first_read_delay=0.05)
    other = DiskBlobCache(tmp_path / "cache", size_limit=2**30)  # another process's view
    elsewhere = first_use[2]
    real_open = backend.open_reader

    def open_and_race(key: str, **kwargs: Any) -> BinaryIO:
        reader = real_open(key, **kwargs)
        if key == pack_key(elsewhere) and elsewhere not in other:
            plain = LocalBackend(tmp_path / "store")
            other.fill(elsewhere, lambda: plain.open_reader(key))
        return reader

    backend.open_reader = open_and_race  # type: ignore[method-assign]
    worker.materialize_blob(digest, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    events = backend.events
    assert events.count(("open", pack_key(elsewhere))) == 1  # sent ahead, never read
    closed = events.index(("close", pack_key(elsewhere)))
    assert closed < events.index(("open", pack_key(first_use[-1])))
    other.close()


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
    copies: list[int] = []

    def failing_on_the_second_pack(real: Any) -> Any:
        def copy(source: int, *args: Any) -> int:
            copies.append(os.fstat(source).st_ino)
            if len(set(copies)) == 2:
                time.sleep(0.5)  # time enough for a prefetch without a bound to run to the end
                raise OSError(errno.ENOSPC, "No space left on device")
            return int(real(source, *args))

        return copy

    # Long runs are copied in the kernel, short ones read into a buffer: either may fail.
    for name in ("copy_range", "pread_full"):
        monkeypatch.setattr(assemble, name, failing_on_the_second_pack(getattr(assemble, name)))
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
