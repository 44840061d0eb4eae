"""Writing a chunked file out of locally cached packs, copied in the kernel.

Reading through the cache chunk by chunk moves every byte through this process three times
(read, per-chunk hash, whole-file hash, write): about twice ``cp``'s time for a file that is
entirely on local disk. Here each run of chunks lying back to back in one cached pack is copied
with ``copy_file_range`` into a private temp file beside the target; a second thread hashes
that copy as it lands (``copy_holds``), and it is linked into place. The digest is checked on
the bytes the user gets (a cached pack changed by someone else fails the check, whatever it
was when copied), which is what a cache hit of a whole blob does too.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from optuna_cas._fileio import copy_range, pread_full, pwrite_all, real_fileno
from optuna_cas._verified_copy import publish_copy
from optuna_cas.backends.base import Backend
from optuna_cas.chunks.cached_packs import CachedPacks, OpenFiles, PackCache
from optuna_cas.chunks.layout import pack_key
from optuna_cas.chunks.reader import missing_pack
from optuna_cas.chunks.table import ENTRY, ChunkTable
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound

__all__ = ["assemble_from_cache", "assemble_from_store", "contiguous_runs"]

logger = logging.getLogger(__name__)


def contiguous_runs(table: ChunkTable) -> Iterator[tuple[int, int, int]]:
    """(pack number, offset, length) of each run of entries back to back in one pack.

    Example:
        >>> from optuna_cas.chunks.table import MANIFEST_MAGIC, TableBuilder, parse_table
        >>> b = TableBuilder(MANIFEST_MAGIC); p = b.pack_number(Digest.of_bytes(b"p" * 9))
        >>> for offset in (0, 3, 6, 0):
        ...     b.add(Digest.of_bytes(b"ppp"), p, offset)
        >>> table = parse_table(b.to_bytes(Digest.of_bytes(b"p" * 12)), "m", MANIFEST_MAGIC)
        >>> list(contiguous_runs(table))
        [(0, 0, 9), (0, 0, 3)]
    """
    # One pass over the packed entries (iter_unpack): a table holds ~13,000 entries per GiB,
    # and building an Entry for each costs more than the copy setup it feeds.
    pack = offset = length = -1
    for _chunk, entry_pack, entry_length, entry_offset in ENTRY.iter_unpack(table.entries):
        if entry_pack == pack and offset + length == entry_offset:
            length += entry_length
            continue
        if pack >= 0:
            yield pack, offset, length
        pack, offset, length = entry_pack, entry_offset, entry_length
    if pack >= 0:
        yield pack, offset, length


def assemble_from_cache(
    table: ChunkTable,
    digest: Digest,
    target: Path,
    cache: PackCache,
    fetch: Callable[[Digest], BinaryIO],
    describe: Callable[[Digest], str] | None = None,
) -> bool:
    """Write the file ``table`` describes to the new file ``target`` from cached packs.

    Packs not cached yet are fetched into the cache first (``fetch`` opens a pack in the
    store). Returns False, leaving nothing at ``target``, when a pack cannot be cached (too
    large for it, the cache is failing, or the store's pack fails the fill's check: a warning
    names it) or when the copy does not hash to ``digest``; in
    that case every pack of the file is dropped from the cache, so a caller falling back to
    a read from the store fetches them again.

    Args:
        table: The file's manifest.
        digest: The whole file's digest and size.
        target: A path that does not exist yet.
        cache: Holds packs under their digests.
        fetch: Opens a pack's bytes in the store (raises ``ArtifactNotFound`` if missing).
        describe: Names a pack in messages, with its key and store (see
            :func:`~optuna_cas.chunks.reader.pack_in`); default: the pack and its key.

    Raises:
        FileExistsError: ``target`` exists.
        ArtifactNotFound: A pack is missing from the store.

    Example:
        >>> import io, os, tempfile
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> from optuna_cas.chunks.layout import pack_key
        >>> from optuna_cas.chunks.store import ChunkStore
        >>> from optuna_cas.middleware.blob_cache import DiskBlobCache
        >>> backend, data = MemoryBackend(), os.urandom(300_000)
        >>> d = ChunkStore(backend).put(io.BytesIO(data))
        >>> cache = DiskBlobCache(tempfile.mkdtemp())
        >>> target = Path(tempfile.mkdtemp()) / "model.pt"
        >>> fetch = lambda pack: backend.open_reader(pack_key(pack))
        >>> assemble_from_cache(ChunkStore(backend).manifest(d), d, target, cache, fetch)
        True
        >>> target.read_bytes() == data
        True
    """
    runs = list(contiguous_runs(table))
    first_use = list(dict.fromkeys(number for number, _, _ in runs))
    packs = CachedPacks(cache, table.packs, fetch, first_use, describe)
    copied = _copy_out(runs, digest, target, packs)
    if copied is False:
        logger.warning(
            "Cached packs of %s do not reassemble it (changed or damaged in the cache); "
            "dropping them and reading from the store",
            digest,
        )
        for pack in table.packs:
            cache.discard(pack)
    return bool(copied)


def assemble_from_store(table: ChunkTable, digest: Digest, target: Path, backend: Backend) -> bool:
    """Write the file ``table`` describes to the new file ``target`` from a local store's packs.

    As :func:`assemble_from_cache`, with the store's own pack files as the source: runs are
    copied in the kernel and the copy is hashed as it lands. Returns False, leaving nothing at
    ``target``, when a pack is not a local file or the copy does not hash to ``digest`` (the
    caller then reads the packs through :class:`~optuna_cas.chunks.reader.ChunkedReader`,
    whose error says what is wrong). Nothing in the store is changed.

    Raises:
        FileExistsError: ``target`` exists.
        ArtifactNotFound: A pack is missing from the store.

    Example:
        >>> import io, os, tempfile
        >>> from optuna_cas.backends.local import LocalBackend
        >>> from optuna_cas.chunks.store import ChunkStore
        >>> backend, data = LocalBackend(tempfile.mkdtemp()), os.urandom(300_000)
        >>> d = ChunkStore(backend).put(io.BytesIO(data))
        >>> target = Path(tempfile.mkdtemp()) / "model.pt"
        >>> assemble_from_store(ChunkStore(backend).manifest(d), d, target, backend)
        True
        >>> target.read_bytes() == data
        True
    """
    packs = _StorePacks(backend, table.packs, f"chunked file {digest}")
    return bool(_copy_out(list(contiguous_runs(table)), digest, target, packs))


class _PackFiles(Protocol):
    def get(self, number: int) -> BinaryIO | None: ...

    def close(self) -> None: ...


class _StorePacks:
    """A store's pack files, opened as they are needed; a few stay open (:class:`OpenFiles`)."""

    def __init__(self, backend: Backend, packs: tuple[Digest, ...], name: str) -> None:
        self._backend, self._packs, self._name = backend, packs, name
        self._handles = OpenFiles()

    def get(self, number: int) -> BinaryIO | None:
        handle = self._handles.get(number)
        if handle is not None:
            return handle
        pack = self._packs[number]
        try:
            handle = self._backend.open_reader(pack_key(pack))
        except ArtifactNotFound as e:
            raise missing_pack(self._name, pack, self._backend) from e
        return self._handles.add(number, handle)

    def close(self) -> None:
        self._handles.close()


def _copy_out(
    runs: list[tuple[int, int, int]], digest: Digest, target: Path, packs: _PackFiles
) -> bool | None:
    """Copy ``runs`` to a temp beside ``target``, hashed as it lands; publish it if it matches.

    True: published. None: a pack is not a local file. False: the copy is not ``digest``.
    """
    try:
        if os.path.lexists(target):
            raise FileExistsError(f"File already exists: {target!s}")
        complete, published = publish_copy(
            lambda out_fd: functools.partial(_copy_runs, runs, packs, out_fd, digest.size),
            digest,
            target,
        )
    finally:
        packs.close()
    return True if published else None if complete is None else False


def _copy_runs(
    runs: list[tuple[int, int, int]],
    packs: _PackFiles,
    out_fd: int,
    size: int,
    stop: threading.Event,
    progress: Callable[[int], None],
) -> bool | None:
    """Copy every run into ``out_fd``; None if a pack is not cacheable, False if one is short."""
    position = 0
    small = _SmallRuns(out_fd, progress)
    # A delta'd file switches packs thousands of times: each handle's descriptor is looked up
    # once, and used only while that same handle is the pack's (cached packs are closed and
    # reopened as others are needed).
    known: dict[int, tuple[BinaryIO, int | None]] = {}
    for number, offset, length in runs:
        handle = packs.get(number)
        if handle is None:
            return None
        seen = known.get(number)
        if seen is None or seen[0] is not handle:
            seen = known[number] = (handle, real_fileno(handle))
        source = seen[1]
        if source is None:
            return None
        if position + length > size or stop.is_set():
            return False
        if length < _SMALL_RUN:
            if not small.add(source, offset, length, position):
                return False
        else:
            small.flush()
            copied = copy_range(
                source, out_fd, offset, position, length, stop, _shifted(progress, position)
            )
            if copied < length:
                return False
        position += length
    small.flush()
    return position == size


# Runs shorter than this (a delta's pieces: a few KiB each, thousands per file) are gathered
# with pread into one buffer and written together. One copy_file_range per piece cost ~30 us
# (the trailing hasher maps each landed range: a map and unmap per piece); a 128 MiB file
# delta'd five times over took 3x as long to download as its first version.
_SMALL_RUN = 256 * 1024
_GATHER = 4 * 1024 * 1024


class _SmallRuns:
    """Short runs read into one buffer, written (and reported) when it fills."""

    def __init__(self, out_fd: int, progress: Callable[[int], None]) -> None:
        self._out, self._progress = out_fd, progress
        self._buffer: memoryview | None = None
        self._filled = 0
        self._at = 0  # the file offset of the buffer's first byte

    def add(self, source: int, offset: int, length: int, position: int) -> bool:
        """Read ``length`` bytes at ``offset``, bound for ``position``; False if short."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(_GATHER))
        if self._filled + length > len(self._buffer):
            self.flush()
        if self._filled == 0:
            self._at = position
        got = pread_full(source, self._buffer[self._filled : self._filled + length], offset)
        self._filled += got
        return got == length

    def flush(self) -> None:
        if self._filled and self._buffer is not None:
            pwrite_all(self._out, self._buffer[: self._filled], self._at)
            self._progress(self._at + self._filled)
            self._filled = 0


def _shifted(progress: Callable[[int], None], base: int) -> Callable[[int], None]:
    """``progress`` for a copy that starts ``base`` bytes into the file."""
    return lambda copied: progress(base + copied)
