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
from typing import BinaryIO

from optuna_cas._fileio import copy_holds, copy_range, publish_new_file, real_fileno, temp_beside
from optuna_cas.chunks.reader import CachedPacks, PackCache
from optuna_cas.chunks.table import ENTRY, ChunkTable
from optuna_cas.digest import Digest

__all__ = ["assemble_from_cache", "contiguous_runs"]

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
) -> bool:
    """Write the file ``table`` describes to the new file ``target`` from cached packs.

    Packs not cached yet are fetched into the cache first (``fetch`` opens a pack in the
    store). Returns False, leaving nothing at ``target``, when a pack cannot be cached (too
    large for it, or the cache is failing) or when the copy does not hash to ``digest``; in
    that case every pack of the file is dropped from the cache, so a caller falling back to
    a chunk-by-chunk read fetches them again.

    Args:
        table: The file's manifest.
        digest: The whole file's digest and size.
        target: A path that does not exist yet.
        cache: Holds packs under their digests.
        fetch: Opens a pack's bytes in the store (raises ``ArtifactNotFound`` if missing).

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
    if os.path.lexists(target):
        raise FileExistsError(f"File already exists: {target!s}")
    runs = list(contiguous_runs(table))
    first_use = list(dict.fromkeys(number for number, _, _ in runs))
    packs = CachedPacks(cache, table.packs, fetch, order=first_use)
    out_fd, temp = temp_beside(target)
    try:
        try:
            complete, holds = copy_holds(
                functools.partial(_copy_runs, runs, packs, out_fd, digest.size), out_fd, digest
            )
            if complete is None:
                return False
            matches = complete and holds
        finally:
            os.close(out_fd)
            packs.close()
        if not matches:
            logger.warning(
                "Cached packs of %s do not reassemble it (changed or damaged in the cache); "
                "dropping them and reading from the store",
                digest,
            )
            for pack in table.packs:
                cache.discard(pack)
            return False
        publish_new_file(Path(temp), target)
        return True
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


def _copy_runs(
    runs: list[tuple[int, int, int]],
    packs: CachedPacks,
    out_fd: int,
    size: int,
    stop: threading.Event,
    progress: Callable[[int], None],
) -> bool | None:
    """Copy every run into ``out_fd``; None if a pack is not cacheable, False if one is short."""
    position = 0
    for number, offset, length in runs:
        handle = packs.get(number)
        source = None if handle is None else real_fileno(handle)
        if source is None:
            return None
        if position + length > size or stop.is_set():
            return False
        copied = copy_range(
            source, out_fd, offset, position, length, stop, _shifted(progress, position)
        )
        if copied < length:
            return False
        position += length
    return position == size


def _shifted(progress: Callable[[int], None], base: int) -> Callable[[int], None]:
    """``progress`` for a copy that starts ``base`` bytes into the file."""
    return lambda copied: progress(base + copied)
