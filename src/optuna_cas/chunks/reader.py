"""Reading a chunked file back: its chunks, in file order, verified.

Without a cache, consecutive chunks that sit close together in one pack are fetched with one
ranged read (gaps up to :data:`COALESCE_GAP` are read and dropped), so a file written in one
upload costs one request per pack. With a cache (:mod:`optuna_cas.chunks.cached_packs`),
every pack the manifest names is made local once (a worker holding version *k* fetches only
the packs of *k+1*'s new chunks) and chunks are read from there. Chunks from the cache are
checked against their digests; chunks from the store too, unless the caller checks the whole
file's digest anyway (``check_chunks=False``, a download).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, TypeVar, cast

import blake3

from optuna_cas._fileio import pread_full, real_fileno, unbuffered
from optuna_cas.backends.base import Backend, staging_of
from optuna_cas.chunks.cached_packs import CachedPacks, OpenFiles, PackCache
from optuna_cas.chunks.layout import PACK_LEAD_MAX, pack_key
from optuna_cas.chunks.table import ChunkTable, Entry
from optuna_cas.digest import Digest, RawReader, VerifyingReader
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, MissingPackError

__all__ = [
    "COALESCE_GAP",
    "ChunkCheckedReader",
    "ChunkedReader",
    "missing_pack",
    "pack_in",
    "whole_file_reader",
]

# Bytes between two wanted chunks of one pack that are read and dropped rather than starting a
# second request: about what one more request costs in time on S3.
COALESCE_GAP = 1024 * 1024
# One ranged read never spans more than this, so a reader can be retried cheaply.
MAX_REQUEST = 64 * 1024 * 1024
# Bytes fetched per read call from a pack (whole entries, so chunks are views into it). Each
# block is a new bytes object that lives until the caller wrote it: at 4 MiB, glibc handed
# the memory back and faulted it in again (~10,000 page faults per 256 MiB download from
# moto, slow on a VM); at 2 MiB none after the first download.
_BLOCK = 2 * 1024 * 1024
_Bytes = TypeVar("_Bytes", bytes, memoryview)
# Batches of about _BLOCK bytes fetched ahead of the caller.
READ_AHEAD = 3
# A ranged read of one pack: (pack, start, end, the entry numbers it holds).
_Run = tuple[Digest, int, int, range]


class ChunkedReader(RawReader):
    """A file reassembled from its manifest, chunk by chunk, every chunk verified.

    Args:
        backend: The store's backend.
        table: The file's manifest.
        name: For messages, e.g. ``"artifact 'a1'"``.
        cache: Optional local pack cache.
        check_chunks: Hash every chunk fetched from the backend. Off only where the caller
            checks the whole file's digest anyway (a download): a wrong chunk then fails the
            whole-file check at the end, and the work is not done twice. Chunks read from the
            cache are always checked (a bad cached pack is dropped and fetched again).

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> from optuna_cas.chunks.table import MANIFEST_MAGIC, TableBuilder, parse_table
        >>> backend = MemoryBackend(); pack = Digest.of_bytes(b"helloworld")
        >>> backend.write(pack_key(pack), io.BytesIO(b"helloworld"))
        >>> b = TableBuilder(MANIFEST_MAGIC); n = b.pack_number(pack)
        >>> b.add(Digest.of_bytes(b"world"), n, 5); b.add(Digest.of_bytes(b"hello"), n, 0)
        >>> table = parse_table(b.to_bytes(Digest.of_bytes(b"worldhello")), "m", MANIFEST_MAGIC)
        >>> ChunkedReader(backend, table, "x").read()
        b'worldhello'
    """

    def __init__(
        self,
        backend: Backend,
        table: ChunkTable,
        name: str,
        cache: PackCache | None = None,
        *,
        check_chunks: bool = True,
    ) -> None:
        super().__init__()
        self._check_chunks = check_chunks
        self._backend = backend
        self._table = table
        self._name = name
        self._cache = cache
        # A thread fetches and checks chunks ahead of the caller, so network waits and chunk
        # hashing overlap the caller's own work (whole-file hash, disk writes).
        self._chunks: Generator[bytes | memoryview, None, None] = _read_ahead(
            self._from_cache() if cache is not None else self._from_backend()
        )
        self._current = memoryview(b"")
        self.requests = 0

    def chunks(self) -> Iterator[bytes | memoryview]:
        """Each entry's bytes, verified against its digest, in table order.

        Instead of :meth:`read`, for copying chunks, where entry boundaries matter. With
        ``check_chunks=False``, entries fetched from the backend that lie back to back come
        as one buffer instead (boundaries then do not matter: the caller hashes the file).
        """
        return self._chunks

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Copy the next bytes of the file into ``buffer``; 0 at the end."""
        done, size = 0, len(buffer)
        while done < size:  # fill the whole buffer: fewer, larger calls for the hashing above
            if not self._current:
                data = next(self._chunks, None)
                if data is None:
                    break
                self._current = memoryview(data)
            n = min(size - done, len(self._current))
            buffer[done : done + n] = self._current[:n]
            self._current = self._current[n:]
            done += n
        return done

    def close(self) -> None:
        """Stop reading; release any open pack."""
        if not self.closed:
            self._chunks.close()
        super().close()

    # -- plans ---------------------------------------------------------------------------------

    def _check(self, entry: Entry, data: _Bytes, where: str) -> _Bytes:
        if len(data) != entry.length or blake3.blake3(data).digest() != entry.chunk:
            raise IntegrityError(
                f"{self._name}: chunk {entry.chunk.hex()} at {entry.offset} in {where} does not "
                "match its digest"
            )
        return data

    def _runs(self) -> Iterator[_Run]:
        """(pack, start, end, entry numbers): one ranged read each, in file order."""
        i = 0
        while i < len(self._table):
            run = self._run_at(i)
            yield run
            i = run[3].stop

    def _run_at(self, i: int) -> _Run:
        """The run of entries from ``i`` that one ranged read of their pack fetches."""
        table, count = self._table, len(self._table)
        first = table.entry(i)
        # A new pack's first chunk sits less than a page in (PACK_LEAD_MAX); reading from
        # the pack's start costs those few bytes. moto, the S3 server of our tests and
        # benchmarks, serves a range from byte 0 a third faster than one from within
        # (32 MiB: 0.048 s against 0.069 s); real S3 and GCS do not care either way.
        start = 0 if first.offset < PACK_LEAD_MAX else first.offset
        end, j = first.offset + first.length, i + 1
        while j < count:
            nxt = table.entry(j)
            if (
                nxt.pack != first.pack
                or nxt.offset < end
                or nxt.offset - end > COALESCE_GAP
                or nxt.offset + nxt.length - start > MAX_REQUEST
            ):
                break
            end, j = nxt.offset + nxt.length, j + 1
        return table.packs[first.pack], start, end, range(i, j)

    def _from_backend(self) -> Generator[bytes | memoryview, None, None]:
        runs = self._runs()
        if staging_of(self._backend) is not None:
            yield from self._from_local_files(runs)
        else:
            yield from self._prefetching(runs)

    def _prefetching(self, runs: Iterator[_Run]) -> Generator[bytes | memoryview, None, None]:
        # The next run's request is sent while this one is read, so the server's time to first
        # byte overlaps our reading (one request at a time otherwise waits for each).
        opener = ThreadPoolExecutor(1, thread_name_prefix="optuna-cas-open-run")
        upcoming: tuple[_Run, Future[BinaryIO]] | None = None
        try:
            run = next(runs, None)
            if run is not None:
                upcoming = run, opener.submit(self._open_run, *run[:3])
            while upcoming is not None:
                (pack, start, _end, numbers), opening = upcoming
                upcoming = None
                reader = opening.result()
                run = next(runs, None)
                if run is not None:
                    upcoming = run, opener.submit(self._open_run, *run[:3])
                with reader:
                    yield from self._read_opened(reader, pack, start, numbers)
        finally:
            if upcoming is not None:
                with contextlib.suppress(Exception):
                    upcoming[1].result().close()
            opener.shutdown(wait=True)

    def _from_local_files(self, runs: Iterator[_Run]) -> Generator[bytes | memoryview, None, None]:
        """Runs read with ``pread`` from the pack files, each opened once while in use.

        A delta'd file (see chunks.delta) switches between packs thousands of times; a safe
        open per run, handed to a thread, made its reads 11x slower than a plain file's. At
        most :data:`~optuna_cas.chunks.cached_packs.OPEN_FILES` stay open (a file may name
        hundreds of packs). Packs that are not plain files (a backend wrapped to count its
        reads) go the remote way.
        """
        files = OpenFiles()
        try:
            for run in runs:
                pack, start, _end, numbers = run
                handle = files.get(pack.hexdigest)
                if handle is None:
                    handle = self._fetch_pack(pack)
                    if real_fileno(handle) is None:
                        handle.close()
                        yield from self._prefetching(itertools.chain([run], runs))
                        return
                    files.add(pack.hexdigest, handle)
                read = functools.partial(_pread_block, handle.fileno(), pack_key(pack))
                yield from self._read_blocks(read, pack, start, numbers)
        finally:
            files.close()

    def _open_run(self, pack: Digest, start: int, end: int) -> BinaryIO:
        self.requests += 1
        try:
            return self._backend.open_reader(pack_key(pack), offset=start, length=end - start)
        except ArtifactNotFound as e:
            raise self._missing(pack) from e

    def _missing(self, pack: Digest) -> ArtifactNotFound:
        return missing_pack(self._name, pack, self._backend)

    def _read_opened(
        self, reader: BinaryIO, pack: Digest, start: int, numbers: range
    ) -> Iterator[bytes | memoryview]:
        key = pack_key(pack)
        read = lambda _position, count: _read_exactly(reader, count, key)  # noqa: E731
        return self._read_blocks(read, pack, start, numbers)

    def _read_blocks(
        self,
        read: Callable[[int, int], bytes | bytearray],
        pack: Digest,
        start: int,
        numbers: range,
    ) -> Iterator[bytes | memoryview]:
        """The entries ``numbers`` of ``pack``; ``read(position, count)`` reads from ``start`` on."""
        position, count = start, len(numbers)
        i = 0
        while i < count:
            # One read per block of whole entries (up to _BLOCK bytes, gaps included); the
            # chunks are views into it: no copy per chunk.
            first = self._table.entry(numbers[i])
            j, block_end = i + 1, first.offset + first.length
            while j < count:
                nxt = self._table.entry(numbers[j])
                if nxt.offset + nxt.length - position > _BLOCK:
                    break
                block_end, j = nxt.offset + nxt.length, j + 1
            block = memoryview(read(position, block_end - position))
            if self._check_chunks:
                for number in numbers[i:j]:
                    entry = self._table.entry(number)
                    at = entry.offset - position
                    yield self._check(entry, block[at : at + entry.length], f"pack {pack}")
            else:
                yield from _back_to_back(self._table, numbers[i:j], block, position)
            position, i = block_end, j

    def _from_cache(self) -> Generator[bytes | memoryview, None, None]:
        assert self._cache is not None
        cache = self._cache
        describe = functools.partial(pack_in, backend=self._backend)
        packs = CachedPacks(cache, self._table.packs, self._fetch_pack, describe=describe)
        try:
            number = 0
            while number < len(self._table):
                entry = self._table.entry(number)
                handle = packs.get(entry.pack)
                if handle is None:
                    # Not cacheable (too large, the cache failing, or found damaged there):
                    # this entry and the ones after it in the same pack come from the store
                    # in one ranged read, not one each.
                    pack, start, end, numbers = self._run_at(number)
                    with self._open_run(pack, start, end) as reader:
                        yield from self._read_opened(reader, pack, start, numbers)
                    number = numbers.stop
                    continue
                handle.seek(entry.offset)
                try:
                    data = self._check(entry, handle.read(entry.length), "the cache")
                except IntegrityError:
                    packs.drop(entry.pack)  # from now on uncached: read from the store above
                    continue
                yield data
                number += 1
        finally:
            packs.close()
            # This runs in the read-ahead thread, which ends now: a connection it opened to the
            # cache's index would outlive it (one leaked descriptor or more per read).
            cache.close()

    def _fetch_pack(self, pack: Digest) -> BinaryIO:
        """A whole pack from the backend: for a cache fill, or a local pack file to pread."""
        self.requests += 1
        try:
            return self._backend.open_reader(pack_key(pack))
        except ArtifactNotFound as e:
            raise self._missing(pack) from e


def _pread_block(fd: int, key: str, position: int, count: int) -> bytearray:
    # Straight into a new buffer: a delta'd file is thousands of short runs, and a reader
    # object per run cost more than reading them.
    block = bytearray(count)
    got = pread_full(fd, memoryview(block), position)
    if got != count:
        raise IntegrityError(f"{key!r} ended {count - got} bytes early")
    return block


def _back_to_back(
    table: ChunkTable, numbers: range, block: memoryview, position: int
) -> Iterator[memoryview]:
    """Views of ``block`` (at ``position`` in its pack): one per run of entries back to back.

    A first upload writes a file's chunks back to back, so a block is usually one view.
    """
    start = end = -1
    for number in numbers:
        entry = table.entry(number)
        if entry.offset != end:
            if end >= 0:
                yield block[start - position : end - position]
            start = entry.offset
        end = entry.offset + entry.length
    if end >= 0:
        yield block[start - position : end - position]


_END = object()


def _put(slots: queue.Queue[object], item: object, stop: threading.Event) -> bool:
    """Hand ``item`` over unless the consumer stopped; False if it did."""
    while not stop.is_set():
        try:
            slots.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _read_ahead(
    source: Generator[bytes | memoryview, None, None],
) -> Generator[bytes | memoryview, None, None]:
    """``source``'s items, produced by a thread up to :data:`READ_AHEAD` items ahead."""
    slots: queue.Queue[object] = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()

    def produce() -> None:
        # Items go over in batches of about _BLOCK bytes: one hand-over per batch, not per chunk.
        batch: list[bytes | memoryview] = []
        size = 0
        try:
            for item in source:
                batch.append(item)
                size += len(item)
                if size >= _BLOCK:
                    if not _put(slots, batch, stop):
                        return
                    batch, size = [], 0
            if batch and not _put(slots, batch, stop):
                return
            _put(slots, _END, stop)
        except BaseException as e:  # raised in the consumer
            _put(slots, e, stop)
        finally:
            source.close()

    thread = threading.Thread(target=produce, name="optuna-cas-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield from cast(list[bytes | memoryview], item)
    finally:
        stop.set()
        thread.join()


def _read_exactly(reader: BinaryIO, count: int, key: str) -> bytes:
    # From the raw stream under a fresh buffered one: the buffer would copy every block once
    # more, and a remote backend's raw stream hands over the bytes its response filled.
    raw = unbuffered(reader)
    parts: list[bytes] = []
    got = 0
    while got < count and (data := raw.read(count - got)):
        parts.append(data)
        got += len(data)
    if got != count:
        raise IntegrityError(f"{key!r} ended {count - got} bytes early")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def missing_pack(name: str, pack: Digest, backend: Backend) -> MissingPackError:
    """The error for a pack a manifest names but ``backend`` does not hold.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> str(missing_pack("artifact 'a'", Digest.of_bytes(b""), MemoryBackend()))[:29]
        "artifact 'a': its pack blake3"
    """
    return MissingPackError(
        f"{name}: its pack {pack} is missing from {backend.describe()} (run 'optuna-cas verify')",
        str(pack),
    )


def pack_in(pack: Digest, backend: Backend) -> str:
    """``pack`` named with its key and the store holding it, for messages.

    Example:
        >>> from optuna_cas.backends.local import LocalBackend
        >>> named = pack_in(Digest.of_bytes(b""), LocalBackend("/tmp"))
        >>> named.startswith("pack blake3:af13"), named.endswith("' in file:///tmp)")
        (True, True)
    """
    return f"pack {pack} ({pack_key(pack)!r} in {backend.describe()})"


class ChunkCheckedReader(io.BufferedReader):
    """A chunked file's reader: each chunk checked before it enters the buffer.

    The chunks are read with ``check_chunks``; the whole file's digest is checked at the end.
    A seek within the buffer may be served from it: the bytes there were checked.

    Example:
        >>> import io
        >>> ChunkCheckedReader(io.BytesIO(b"abc")).read()
        b'abc'
    """


def whole_file_reader(reader: ChunkedReader, digest: Digest, name: str) -> BinaryIO:
    """``reader`` checked against the whole file's digest too, buffered for callers."""
    verifying = VerifyingReader(cast(BinaryIO, reader), digest, name=name)
    return cast(BinaryIO, ChunkCheckedReader(verifying, 1024 * 1024))
