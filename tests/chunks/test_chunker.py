"""The chunker's pipeline cuts exactly where FastCDC cuts the whole stream at once.

Chunk boundaries are part of the storage format: cut elsewhere, a new version shares fewer
chunks with what the store holds. The chunker reads in blocks and cuts on another thread; its
chunks must be the ones a single ``cut_buf`` over all the bytes gives, whatever the block
edges and however short the stream's reads.
"""

from __future__ import annotations

import io
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from optuna_cas.chunks import chunker as chunker_module
from optuna_cas.chunks.chunker import Chunker
from optuna_cas.chunks.layout import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN
from optuna_cas.digest import Digest

_BLOCK = chunker_module._BLOCK


def _reference(data: bytes) -> list[tuple[int, int]]:
    cdc = FastCDC(CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX)
    return [(c.offset, c.length) for c in cdc.cut_buf(data)]


def _low_entropy(size: int, seed: int) -> bytes:
    # Long runs of one byte reach CHUNK_MAX (no cut point in them); the rest cuts freely.
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += bytes([rng.randrange(4)]) * rng.randrange(1, 400_000) + rng.randbytes(50_000)
    return bytes(out[:size])


class _ShortReads(io.RawIOBase):
    """A stream whose reads return at most ``most`` bytes (a pipe, a socket)."""

    def __init__(self, data: bytes, most: int) -> None:
        self._data, self._at, self._most = data, 0, most

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._most, len(self._data) - self._at)
        buffer[:n] = self._data[self._at : self._at + n]
        self._at += n
        return n


def _cut(stream: io.RawIOBase | io.BytesIO) -> tuple[list[tuple[int, int]], list[Digest], Digest]:
    chunker = Chunker(stream)  # type: ignore[arg-type]
    bounds, digests, at = [], [], 0
    for digest, view in chunker:
        bounds.append((at, len(view)))
        digests.append(digest)
        assert digest == Digest.of_bytes(bytes(view))
        at += len(view)
    return bounds, digests, chunker.digest()


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK_MIN, CHUNK_MAX, _BLOCK - 1, _BLOCK, _BLOCK + CHUNK_MAX, 3 * _BLOCK + 12345],
)
@pytest.mark.parametrize("kind", ["random", "low-entropy"])
def test_boundaries_match_one_cut_over_the_whole(size: int, kind: str) -> None:
    data = random.Random(size).randbytes(size) if kind == "random" else _low_entropy(size, size)
    bounds, _, whole = _cut(io.BytesIO(data))
    assert bounds == _reference(data)
    assert whole == Digest.of_bytes(data)


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(0, 5 * 1024 * 1024),
    most=st.sampled_from([1000, 65_537, 1 << 20, 1 << 30]),
    seed=st.integers(0, 2**32 - 1),
)
def test_short_reads_cut_the_same(size: int, most: int, seed: int) -> None:
    data = _low_entropy(size, seed)
    bounds, _, whole = _cut(_ShortReads(data, most))
    assert bounds == _reference(data)
    assert whole == Digest.of_bytes(data)


class _FailsAt(io.RawIOBase):
    def __init__(self, data: bytes, at: int) -> None:
        self._inner, self._at = io.BytesIO(data), at

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._inner.tell() >= self._at:
            raise OSError(5, "Input/output error")
        return self._inner.readinto(buffer[: self._at - self._inner.tell()])


def test_a_read_error_is_raised_from_the_iteration() -> None:
    data = random.Random(1).randbytes(4 * _BLOCK)
    with pytest.raises(OSError, match="Input/output"):
        for _ in Chunker(_FailsAt(data, 3 * _BLOCK)):  # type: ignore[arg-type]
            pass


def test_stopping_early_leaves_no_thread_behind() -> None:
    before = set(threading.enumerate())
    data = random.Random(2).randbytes(6 * _BLOCK)
    chunks = iter(Chunker(io.BytesIO(data)))
    next(chunks)
    chunks.close()  # type: ignore[attr-defined]
    assert set(threading.enumerate()) <= before


def test_digest_before_the_end_is_refused() -> None:
    chunker = Chunker(io.BytesIO(b"x" * 100))
    with pytest.raises(RuntimeError, match="before the stream was read"):
        chunker.digest()


def test_a_waiting_thread_stops_without_being_woken() -> None:
    # The caller's cleanup wakes its threads with puts; a KeyboardInterrupt there could skip
    # them, and the threads waited forever (found in review). They look at the flag too.
    import queue

    stopped: list[bool] = []
    waiting: queue.SimpleQueue[object] = queue.SimpleQueue()
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(chunker_module._next(waiting, stopped)))
    thread.start()
    time.sleep(0.2)  # so the flag is set while the thread waits, not before it looks
    stopped.append(True)  # and no put
    thread.join(5)
    assert not thread.is_alive() and got == [chunker_module._STOP]
