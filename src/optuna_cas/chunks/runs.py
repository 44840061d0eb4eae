"""Copying ranges of packs into new packs, bytes that several ranges share stored once.

Manifest entries are ranges of packs, and a changed chunk stored as a delta
(:mod:`optuna_cas.chunks.delta`) names ranges inside the chunk it replaced, so the ranges in
use in one pack may overlap. gc's repack and a copy to another store move such ranges. Copied
one by one, shared bytes would be stored as often as ranges name them: a probe measured a
repack growing a store by 40% instead of shrinking it. Here the ranges are grouped into runs
that overlap within one pack; each run is stored once, as one chunk, and every range is then
found inside it (and listed in the writer's index, to be found by digest later).

Example:
    >>> from optuna_cas.backends.memory import MemoryBackend
    >>> from optuna_cas.chunks.packer import PackWriter
    >>> from optuna_cas.chunks.table import INDEX_MAGIC, Entry, TableBuilder
    >>> data = b"0123456789"
    >>> whole, head = Digest.of_bytes(data), Digest.of_bytes(data[:4])
    >>> ranges = [Entry(bytes.fromhex(d.hexdigest), 0, d.size, 0) for d in (whole, head)]
    >>> runs = overlapping_runs(ranges); len(runs)
    1
    >>> copier = RunCopier(PackWriter(MemoryBackend(), TableBuilder(INDEX_MAGIC)))
    >>> copier.copy(runs, iter([data, data[:4]]))
    >>> sorted(length for _pack, _offset, length in copier.finish().values())
    [4, 10]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import blake3

from optuna_cas.chunks.packer import PackWriter
from optuna_cas.chunks.table import ENTRY, INDEX_MAGIC, ChunkTable, Entry
from optuna_cas.digest import Digest

__all__ = ["Location", "RunCopier", "extent", "overlapping_runs", "runs_table"]

Location = tuple[Digest, int, int]  # (pack, offset, length)


def overlapping_runs(entries: Iterable[Entry]) -> list[list[Entry]]:
    """``entries`` grouped into runs of ranges that overlap in one pack, in pack order.

    Example:
        >>> e = lambda offset, length: Entry(b"c" * 32, 0, length, offset)
        >>> [len(run) for run in overlapping_runs([e(0, 10), e(5, 10), e(15, 5), e(2, 3)])]
        [3, 1]
    """
    runs: list[list[Entry]] = []
    end = -1
    for entry in sorted(entries, key=lambda e: (e.pack, e.offset, -e.length)):
        if runs and runs[-1][0].pack == entry.pack and entry.offset < end:
            runs[-1].append(entry)
            end = max(end, entry.offset + entry.length)
        else:
            runs.append([entry])
            end = entry.offset + entry.length
    return runs


class RunCopier:
    """Stores runs of ranges through ``writer``, and says where each range went.

    Args:
        writer: Receives one new chunk per run (a run of one range: that range's chunk).
    """

    def __init__(self, writer: PackWriter) -> None:
        self.writer = writer
        # Per run stored: its chunk's raw digest, and (range's chunk, offset in run, length).
        self._placed: list[tuple[bytes, list[tuple[bytes, int, int]]]] = []

    def copy(self, runs: list[list[Entry]], data: Iterator[bytes | memoryview]) -> None:
        """Store each run, its bytes put together from its ranges' bytes.

        ``data`` yields each range's bytes (verified against its digest by the caller's
        reader) in the order of ``runs``, range after range.
        """
        for run in runs:
            start = run[0].offset
            if len(run) == 1:  # its digest is the range's, verified by the reader
                digest = Digest(run[0].chunk.hex(), run[0].length)
                self.writer.add_new(digest, memoryview(next(data)))
            else:
                end, joined = start, bytearray()
                for entry in run:
                    piece = next(data)
                    if entry.offset + entry.length > end:  # ranges overlap: only what is new
                        joined += piece[end - entry.offset :]
                        end = entry.offset + entry.length
                digest = Digest(blake3.blake3(joined).hexdigest(), end - start)
                self.writer.add_new(digest, memoryview(joined))
            members = [(e.chunk, e.offset - start, e.length) for e in run]
            self._placed.append((bytes.fromhex(digest.hexdigest), members))

    def finish(self) -> dict[bytes, Location]:
        """Finish the writer; where each range copied now is, by its chunk's raw digest.

        The ranges inside runs are added to the writer's index too, so that the index object
        published from it lets later copies and uploads find each range by digest (as gc's
        consolidated index lists every live range).
        """
        self.writer.finish()
        index = self.writer.index
        table = index.as_table()
        runs = {e.chunk: (table.packs[e.pack], e.offset) for e in table}
        where: dict[bytes, Location] = {}
        for run, members in self._placed:
            pack, offset = runs[run]
            for chunk, at, length in members:
                if chunk not in where:
                    where[chunk] = (pack, offset + at, length)
                    index.find_or_add(chunk, length, index.pack_number(pack), offset + at)
        return where


def extent(run: list[Entry]) -> int:
    """Bytes a run spans in its pack.

    Example:
        >>> extent([Entry(b"c" * 32, 0, 10, 5), Entry(b"d" * 32, 0, 3, 6)])
        10
    """
    return max(e.offset + e.length for e in run) - run[0].offset


def runs_table(runs: list[list[Entry]], packs: tuple[Digest, ...]) -> ChunkTable:
    """The runs' entries, run after run, as a table to read them with (pack numbers of ``packs``).

    Example:
        >>> pack = Digest.of_bytes(b"p" * 10)
        >>> len(runs_table([[Entry(b"c" * 32, 0, 10, 0)]], (pack,)))
        1
    """
    entries = b"".join(ENTRY.pack(*entry) for run in runs for entry in run)
    return ChunkTable(INDEX_MAGIC, None, packs, entries)
