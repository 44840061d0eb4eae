"""An upload's looks at the packs it reuses: ahead of the chunk loop on a remote store.

A k+1 checkpoint leans on many packs of version k; each must be looked at (and touched if
old, for gc) before the manifest names it. On a remote store those HEADs now go out on a
small pool while the chunk loop runs on, and a pack found gone restarts the upload.
"""

from __future__ import annotations

import functools
import io
import os
import threading
import time
from typing import Any

import pytest

import optuna_cas.chunks.store as chunk_store
from optuna_cas.backends.base import ObjectInfo
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.chunks.layout import PACK_PREFIX, pack_key
from optuna_cas.chunks.pack_checks import PackChecks
from optuna_cas.chunks.packer import PackWriter
from optuna_cas.chunks.store import ChunkStore
from optuna_cas.digest import Digest
from optuna_cas.exceptions import IntegrityError

SIZE = 3_000_000
PACK = 200_000  # small packs: a 3 MB file spans about 15


class _SlowLooks(MemoryBackend):
    """A store without staging (so: remote-like) whose pack HEADs take a while."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.looks: list[str] = []
        self._in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        # Only looks at these packs count, if set (not the uploader's check of a pack it sent).
        self.watched: set[str] | None = None

    def stat(self, key: str) -> ObjectInfo:
        if not key.startswith(PACK_PREFIX) or (
            self.watched is not None and key not in self.watched
        ):
            return super().stat(key)
        with self._lock:
            self.looks.append(key)
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
        try:
            time.sleep(self.delay)
            return super().stat(key)
        finally:
            with self._lock:
                self._in_flight -= 1


class _CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        self.bytes_read += n
        return n


@pytest.fixture(autouse=True)
def _small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunk_store, "PackWriter", functools.partial(PackWriter, pack_target=PACK))


def _versions() -> tuple[bytes, bytes]:
    v1 = os.urandom(SIZE)
    return v1, b"a new header of another length" + v1[1000:]


def test_reused_packs_are_looked_at_together_on_a_remote_store() -> None:
    backend = _SlowLooks(delay=0.05)
    store = ChunkStore(backend)
    v1, v2 = _versions()
    store.put(io.BytesIO(v1))
    packs_of_v1 = len(list(backend.list(PACK_PREFIX)))
    backend.looks.clear()
    d2 = store.put(io.BytesIO(v2))
    assert store.open(d2).read() == v2
    assert packs_of_v1 >= 10
    # Each reused pack looked at once per upload; several at a time, not one after the other.
    assert len(backend.looks) == len(set(backend.looks)) >= packs_of_v1 - 1
    assert backend.most_in_flight >= 2


def test_a_reused_pack_found_gone_restarts_the_upload_without_it() -> None:
    backend = _SlowLooks(delay=0.05)
    store = ChunkStore(backend)
    v1, v2 = _versions()
    store.put(io.BytesIO(v1))
    gone = sorted(info.key for info in backend.list(PACK_PREFIX))[3]
    backend.remove(gone)  # gc's race: the index still names it
    source = _CountingReader(v2)
    d2 = store.put(source)
    assert source.bytes_read > len(v2)  # read again after the answer came
    assert store.open(d2).read() == v2  # every pack its manifest names is there
    table = store.manifest(d2)
    assert all(backend.exists(pack_key(p)) for p in table.packs)


def test_a_stream_that_cannot_be_read_again_waits_for_each_answer() -> None:
    class _OneWay(io.BytesIO):
        def seekable(self) -> bool:
            return False

    backend = _SlowLooks(delay=0.01)
    store = ChunkStore(backend)
    v1, v2 = _versions()
    store.put(io.BytesIO(v1))
    backend.remove(sorted(info.key for info in backend.list(PACK_PREFIX))[3])
    backend.watched = {info.key for info in backend.list(PACK_PREFIX)}  # the packs to reuse
    backend.most_in_flight = 0
    d2 = store.put(_OneWay(v2))
    assert backend.most_in_flight == 1
    assert store.open(d2).read() == v2


def test_without_background_each_pack_is_asked_on_the_spot() -> None:
    asked: list[int] = []

    def present(pack: Digest) -> bool:
        asked.append(pack.size)
        return pack.size < 3

    checks = PackChecks(present, background=False)
    a, b = Digest.of_bytes(b"aa"), Digest.of_bytes(b"bbb")
    assert checks.assume(a) and asked == [2]
    assert not checks.assume(b) and asked == [2, 3]
    assert checks.assume(a) and asked == [2, 3]  # once per pack
    assert checks.settle() == ([b], False)  # missing, but nothing leaned on it
    checks.close()


def test_a_source_changed_before_the_restart_is_refused_and_names_nothing() -> None:
    # The restart reads the source again: if it changed meanwhile, the caller's check (run
    # after the last pass, before anything names the file) refuses the upload.
    backend = _SlowLooks(delay=0.05)
    store = ChunkStore(backend)
    v1, v2 = _versions()
    store.put(io.BytesIO(v1))
    backend.remove(sorted(info.key for info in backend.list(PACK_PREFIX))[3])
    source = _CountingReader(v2)

    def changed_meanwhile() -> None:
        if source.getvalue() != v2:
            raise IntegrityError("the source changed while it was being uploaded")

    original_seek = source.seek

    def seek_and_change(pos: int, whence: int = 0) -> int:
        if source.bytes_read:  # the restart: someone rewrote the file in between
            source.getbuffer()[-1] ^= 1
        return original_seek(pos, whence)

    source.seek = seek_and_change  # type: ignore[method-assign]
    manifests = {info.key for info in backend.list("manifests/")}
    with pytest.raises(IntegrityError, match="changed while it was being uploaded"):
        store.put(source, check_unchanged=changed_meanwhile)
    assert source.bytes_read > len(v2)  # it did restart
    assert {info.key for info in backend.list("manifests/")} == manifests
