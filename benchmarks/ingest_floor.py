"""The least CPU any chunked ingest of a file needs here: each piece it cannot skip, alone.

A chunked upload must read the file, find its chunk boundaries (FastCDC), hash each chunk and
the whole file (BLAKE3: the chunks' names and the artifact's identity) and write the bytes
into packs. Each piece is timed on one thread with the data in memory (the minimum of 3
runs), so their sum is a floor no schedule of the real upload can beat: on ``n`` cores it
takes at least ``sum / n`` seconds. Section 15 of ``docs/benchmarks.md`` reports it beside the
upload's own CPU time.

That sum assumes two cores give twice one core's work. :class:`TwoWorkers` measures what they
give: the same pieces split over two processes that share nothing (one reads the file, hashes
it whole and writes it; the other cuts and hashes chunks of a copy already in its memory), so
no hand-off, lock or interpreter between pieces costs anything. Its wall time, measured in the
same rounds as ``cp``, estimates what this machine's cores give for these pieces (an estimate,
not a bound: worker 2 reads its copy from memory, where a pipeline cuts blocks still in cache).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType

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


class TwoWorkers:
    """The unavoidable pieces of a chunked ingest of ``path`` on two processes at once.

    Worker 1 reads the file (``preadv`` into one block), hashes it whole and writes each block
    to a file under ``scratch``; worker 2 cuts a copy of the file it loaded before timing and
    hashes each chunk. :meth:`run` starts both and returns when both are done. Use as a
    context manager: the workers live until it exits.
    """

    def __init__(self, path: Path, scratch: Path) -> None:
        self._path, self._target = path, scratch / "two-workers.bin"
        context = multiprocessing.get_context("fork")
        self._pipes: list[Connection] = []
        self._workers = []
        for job in (self._read_hash_write, self._cut_hash_chunks):
            ours, theirs = context.Pipe()
            worker = context.Process(target=_serve, args=(job, theirs), daemon=True)
            worker.start()
            self._pipes.append(ours)
            self._workers.append(worker)
        for pipe in self._pipes:
            pipe.recv()  # ready: worker 2 holds its copy of the file

    def run(self) -> None:
        """One ingest's pieces, split over the two workers; returns when both finished."""
        for pipe in self._pipes:
            pipe.send("go")
        for pipe in self._pipes:
            if (answer := pipe.recv()) != "done":
                raise RuntimeError(f"ingest floor worker failed: {answer}")

    def clean(self) -> None:
        """Delete the file :meth:`run` wrote (untimed: a store is deleted untimed too)."""
        self._target.unlink(missing_ok=True)

    def __enter__(self) -> TwoWorkers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for pipe, worker in zip(self._pipes, self._workers, strict=True):
            pipe.send("stop")
            worker.join()

    def _read_hash_write(self) -> Callable[[], None]:
        path, target = self._path, self._target

        def work() -> None:
            buffer = memoryview(bytearray(_BLOCK))
            source = os.open(path, os.O_RDONLY)
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                hasher, offset = blake3.blake3(), 0
                while got := os.preadv(source, [buffer], offset):
                    hasher.update(buffer[:got])
                    os.pwrite(out, buffer[:got], offset)
                    offset += got
                hasher.digest()
            finally:
                os.close(source)
                os.close(out)

        return work

    def _cut_hash_chunks(self) -> Callable[[], None]:
        data = bytearray(self._path.stat().st_size)
        with open(self._path, "rb") as f:
            f.readinto(data)
        view = memoryview(data)

        def work() -> None:
            cdc = FastCDC(CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX)
            for chunk in cdc.cut_buf(view):
                blake3.blake3(view[chunk.offset : chunk.offset + chunk.length]).digest()

        return work


def _serve(job: Callable[[], Callable[[], None]], pipe: Connection) -> None:
    """A worker's loop: prepare, say ready, then run the work on each "go" until "stop"."""
    work = job()
    pipe.send("ready")
    while pipe.recv() == "go":
        try:
            work()
        except BaseException as e:  # reported to the parent, which raises
            pipe.send(repr(e))
        else:
            pipe.send("done")
