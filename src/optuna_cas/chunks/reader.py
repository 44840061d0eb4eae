"""Reading a chunked file back: its chunks, in file order, each verified.

Without a cache, consecutive chunks that sit close together in one pack are fetched with one
ranged read (gaps up to :data:`COALESCE_GAP` are read and dropped), so a file written in one
upload costs one request per pack. With a cache (:class:`PackCache`), every pack the manifest
names is made local once (a worker holding version *k* fetches only the packs of *k+1*'s new
chunks) and chunks are read from there. Either way each chunk is checked against its digest
before it is handed on, and the caller also checks the whole file's digest.
"""

from __future__ import annotations

import collections
import io
from collections.abc import Callable, Generator, Iterator
from typing import BinaryIO, Protocol, cast

import blake3

from optuna_cas.backends.base import Backend
from optuna_cas.chunks.layout import pack_key
from optuna_cas.chunks.table import ChunkTable, Entry
from optuna_cas.digest import Digest, VerifyingReader
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError

__all__ = ["COALESCE_GAP", "ChunkedReader", "PackCache"]

# Bytes between two wanted chunks of one pack that are read and dropped rather than starting a
# second request: about what one more request costs in time on S3.
COALESCE_GAP = 1024 * 1024
# One ranged read never spans more than this, so a reader can be retried cheaply.
MAX_REQUEST = 64 * 1024 * 1024
_OPEN_PACKS = 16


class PackCache(Protocol):
    """What the reader needs from a local cache: whole packs, keyed by their digest."""

    def open_entry(self, digest: Digest) -> BinaryIO | None:
        """The cached bytes (unverified: the reader checks each chunk), or None."""
        ...

    def fill(self, digest: Digest, fetch: Callable[[], BinaryIO]) -> None:
        """Cache the bytes ``fetch`` opens, verified against ``digest`` (best effort)."""
        ...

    def discard(self, digest: Digest) -> None:
        """Forget an entry found damaged."""
        ...


class ChunkedReader(io.RawIOBase):
    """A file reassembled from its manifest, chunk by chunk, every chunk verified.

    Args:
        backend: The store's backend.
        table: The file's manifest.
        name: For messages, e.g. ``"artifact 'a1'"``.
        cache: Optional local pack cache.

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
        self, backend: Backend, table: ChunkTable, name: str, cache: PackCache | None = None
    ) -> None:
        super().__init__()
        self._backend = backend
        self._table = table
        self._name = name
        self._cache = cache
        self._chunks: Generator[bytes, None, None] = (
            self._from_cache() if cache is not None else self._from_backend()
        )
        self._current = memoryview(b"")
        self.requests = 0

    def readable(self) -> bool:
        """Always True."""
        return True

    def chunks(self) -> Iterator[bytes]:
        """Each entry's bytes, verified against its digest, in table order.

        Instead of :meth:`read`, for copying chunks, where entry boundaries matter.
        """
        return self._chunks

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Copy the next bytes of the file into ``buffer``; 0 at the end."""
        while not self._current:
            data = next(self._chunks, None)
            if data is None:
                return 0
            self._current = memoryview(data)
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def close(self) -> None:
        """Stop reading; release any open pack."""
        if not self.closed:
            self._chunks.close()
        super().close()

    # -- plans ---------------------------------------------------------------------------------

    def _check(self, entry: Entry, data: bytes, where: str) -> bytes:
        if len(data) != entry.length or blake3.blake3(data).digest() != entry.chunk:
            raise IntegrityError(
                f"{self._name}: chunk {entry.chunk.hex()} at {entry.offset} in {where} does not "
                "match its digest"
            )
        return data

    def _from_backend(self) -> Generator[bytes, None, None]:
        table, count, i = self._table, len(self._table), 0
        while i < count:
            first = table.entry(i)
            start, end, j = first.offset, first.offset + first.length, i + 1
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
            yield from self._read_run(table.packs[first.pack], start, end, range(i, j))
            i = j

    def _read_run(self, pack: Digest, start: int, end: int, numbers: range) -> Iterator[bytes]:
        key = pack_key(pack)
        self.requests += 1
        try:
            reader = self._backend.open_reader(key, offset=start, length=end - start)
        except ArtifactNotFound as e:
            raise ArtifactNotFound(
                f"{self._name}: its pack {pack} is missing from {self._backend.describe()} "
                "(run 'optuna-cas verify')"
            ) from e
        with reader:
            position = start
            for number in numbers:
                entry = self._table.entry(number)
                _read_exactly(reader, entry.offset - position, key)  # a coalesced gap
                data = _read_exactly(reader, entry.length, key)
                position = entry.offset + entry.length
                yield self._check(entry, data, f"pack {pack}")

    def _from_cache(self) -> Generator[bytes, None, None]:
        assert self._cache is not None
        cache = self._cache
        handles: collections.OrderedDict[int, BinaryIO] = collections.OrderedDict()
        uncached: set[int] = set()
        try:
            for number in range(len(self._table)):
                entry = self._table.entry(number)
                handle = self._cached_pack(entry.pack, handles, uncached)
                if handle is None:
                    pack = self._table.packs[entry.pack]
                    end = entry.offset + entry.length
                    yield from self._read_run(pack, entry.offset, end, range(number, number + 1))
                    continue
                handle.seek(entry.offset)
                data = handle.read(entry.length)
                try:
                    yield self._check(entry, data, "the cache")
                except IntegrityError:
                    cache.discard(self._table.packs[entry.pack])
                    handles.pop(entry.pack).close()
                    uncached.add(entry.pack)
                    pack = self._table.packs[entry.pack]
                    end = entry.offset + entry.length
                    yield from self._read_run(pack, entry.offset, end, range(number, number + 1))
        finally:
            for handle in handles.values():
                handle.close()

    def _cached_pack(
        self, number: int, handles: collections.OrderedDict[int, BinaryIO], uncached: set[int]
    ) -> BinaryIO | None:
        assert self._cache is not None
        if number in uncached:
            return None
        handle = handles.get(number)
        if handle is not None:
            handles.move_to_end(number)
            return handle
        pack = self._table.packs[number]
        handle = self._cache.open_entry(pack)
        if handle is None:
            self._fill(pack)
            handle = self._cache.open_entry(pack)
        if handle is None:
            uncached.add(number)  # too large for the cache, or the cache failed
            return None
        handles[number] = handle
        if len(handles) > _OPEN_PACKS:
            handles.popitem(last=False)[1].close()
        return handle

    def _fill(self, pack: Digest) -> None:
        assert self._cache is not None
        self.requests += 1
        try:
            self._cache.fill(pack, lambda: self._backend.open_reader(pack_key(pack)))
        except ArtifactNotFound as e:
            raise ArtifactNotFound(
                f"{self._name}: its pack {pack} is missing from {self._backend.describe()} "
                "(run 'optuna-cas verify')"
            ) from e


def _read_exactly(reader: BinaryIO, count: int, key: str) -> bytes:
    data = reader.read(count) if count else b""
    if len(data) != count:
        raise IntegrityError(f"{key!r} ended {count - len(data)} bytes early")
    return data


def whole_file_reader(reader: ChunkedReader, digest: Digest, name: str) -> BinaryIO:
    """``reader`` checked against the whole file's digest too, buffered for callers."""
    verifying = VerifyingReader(cast(BinaryIO, reader), digest, name=name)
    return cast(BinaryIO, io.BufferedReader(verifying, 1024 * 1024))
