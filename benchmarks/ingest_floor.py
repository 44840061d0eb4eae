"""The least CPU any chunked ingest of a file needs here: each piece it cannot skip, alone.

A chunked upload must read the file, find its chunk boundaries (FastCDC), hash each chunk and
the whole file (BLAKE3: the chunks' names and the artifact's identity) and write the bytes
into packs. Each piece is timed on one thread with the data in memory (the minimum of 3
runs), so their sum is a floor no schedule of the real upload can beat: on ``n`` cores it
takes at least ``sum / n`` seconds. Section 15 of ``docs/benchmarks.md`` reports it beside the
upload's own CPU time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import blake3
from pyfastcdc import FastCDC

from optuna_cas.chunks.layout import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN

_BLOCK = 2 * 1024 * 1024  # the chunker's and the pack writer's block size


def least_cpu(path: Path, scratch: Path) -> dict[str, float]:
    """CPU seconds of each piece of a chunked ingest of ``path``; writes under ``scratch``."""
    data = bytearray(path.stat().st_size)
    with open(path, "rb") as f:
        f.readinto(data)  # untimed: the pieces below work on it in memory
    view = memoryview(data)
    bounds: list[tuple[int, int]] = []

    def read() -> None:
        buffer = memoryview(bytearray(_BLOCK))
        fd = os.open(path, os.O_RDONLY)
        try:
            offset = 0
            while got := os.preadv(fd, [buffer], offset):
                offset += got
        finally:
            os.close(fd)

    def cut() -> None:
        cdc = FastCDC(CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX)
        bounds[:] = [(c.offset, c.offset + c.length) for c in cdc.cut_buf(view)]

    def hash_chunks() -> None:
        for start, end in bounds:
            blake3.blake3(view[start:end]).digest()

    def hash_whole() -> None:
        blake3.blake3(view).digest()

    def write() -> None:
        target = scratch / "ingest-floor.bin"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for start in range(0, len(view), _BLOCK):
                os.write(fd, view[start : start + _BLOCK])
        finally:
            os.close(fd)
            target.unlink()

    pieces: dict[str, Callable[[], None]] = {
        "read": read,
        "cut": cut,
        "hash chunks": hash_chunks,
        "hash file": hash_whole,
        "write": write,
    }
    return {name: min(_cpu(fn) for _ in range(3)) for name, fn in pieces.items()}


def _cpu(fn: Callable[[], None]) -> float:
    before = os.times()
    fn()
    after = os.times()
    return (after.user - before.user) + (after.system - before.system)
