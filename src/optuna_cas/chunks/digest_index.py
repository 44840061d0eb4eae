"""Fixed-size records in blocks, and a hash index over the chunk digests they start with.

Chunk maps hold one entry per chunk, and a multi-GiB upload has tens of thousands of chunks: a
``dict`` of 32-byte ``bytes`` keys costs about 150 bytes per entry (key object, value object,
slot), and growing it leaves the old tables to the allocator. Here the digests stay where they
already are (the records of a table being built, 48 bytes each, or 40-byte records of digest and
value), and the index adds one 4-byte slot per entry at most half full: 8 to 16 bytes.

:class:`Records` keeps records in blocks of a fixed size that never move. One growing
``bytearray`` would be reallocated a few hundred times on the way to megabytes, and glibc's
malloc (once its mmap threshold has risen above the size) leaves each old copy as a hole in the
heap that later, larger copies cannot use: measured, some 5 MiB of resident memory over a 4 GiB
upload.

Open addressing with linear probing; the slot of a digest comes from Python's ``hash`` of it,
which is randomised per process, so digests chosen to collide (index objects in a store are
untrusted input) cannot make lookups quadratic.

No lock (one held at a fork would hang the child). Threads racing to add may leave a row out
of the index, never find a wrong row: :meth:`DigestIndex.find` compares the digest stored in
the record. For a map of dedup hints, a row left out is a hint lost.
"""

from __future__ import annotations

import struct
from array import array
from typing import Any

__all__ = ["DigestIndex", "Records"]

_DIGEST = 32
_FIRST_SLOTS = 16
_BLOCK_SHIFT = 14  # 16384 records a block: 768 KiB of 48-byte records
_IN_BLOCK = (1 << _BLOCK_SHIFT) - 1


class Records:
    """Records of ``size`` bytes, appended in order, kept in blocks that never move.

    Args:
        size: Bytes per record.

    Example:
        >>> r, layout = Records(3), struct.Struct("3s")
        >>> r.pack(layout, b"abc"); r.pack(layout, b"def")
        >>> len(r), b"".join(r.pieces())
        (2, b'abcdef')
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._blocks: list[bytearray] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def pack(self, layout: struct.Struct, *fields: Any) -> None:
        """Add a record packed from ``fields`` by ``layout`` (a struct of ``size`` bytes).

        Packed in place: no intermediate ``bytes`` (this runs for every chunk of an upload).
        """
        count = self._count
        if not count & _IN_BLOCK:
            if layout.size != self.size:
                raise ValueError(f"records of {layout.size} bytes, not {self.size}")
            self._blocks.append(bytearray(self.size << _BLOCK_SHIFT))
        layout.pack_into(self._blocks[-1], (count & _IN_BLOCK) * self.size, *fields)
        self._count = count + 1

    def locate(self, row: int) -> tuple[bytearray, int]:
        """The block holding record ``row`` and the record's offset in it (for struct)."""
        if not 0 <= row < self._count:
            raise IndexError(f"record {row} of {self._count}")
        return self._blocks[row >> _BLOCK_SHIFT], (row & _IN_BLOCK) * self.size

    def pieces(self) -> list[bytearray | memoryview]:
        """The records in order, as buffers to join (``b"".join``) without another copy."""
        if not self._blocks:
            return []
        used = self._count & _IN_BLOCK or 1 << _BLOCK_SHIFT
        return [*self._blocks[:-1], memoryview(self._blocks[-1])[: used * self.size]]


class DigestIndex:
    """Finds the row of a 32-byte digest among the first rows of ``records``.

    Each record starts with its digest. Rows are indexed in order (:meth:`add_next`), so
    after ``n`` calls the index covers rows ``0 .. n-1``; the caller appends records and never
    changes the digests of those already indexed. Adding a digest already indexed is the
    caller's mistake (:meth:`find` first): a digest repeated inside one upload is found, not
    added again.

    Args:
        records: The records (not copied; they may grow), at least 32 bytes each.

    Example:
        >>> import os
        >>> digests = [os.urandom(32) for _ in range(100)]
        >>> records, layout = Records(40), struct.Struct("32s8x")
        >>> index = DigestIndex(records)
        >>> for d in digests:
        ...     records.pack(layout, d); index.add_next(d)
        >>> index.find(digests[42]), index.find(os.urandom(32))
        (42, None)
    """

    def __init__(self, records: Records) -> None:
        if records.size < _DIGEST:
            raise ValueError(f"records of {records.size} bytes are shorter than a digest")
        self._records = records
        # Row + 1 per occupied slot, 0 for an empty one; at most half full.
        self._slots = array("I", bytes(4 * _FIRST_SLOTS))
        self._count = 0

    def find(self, digest: bytes) -> int | None:
        """The row whose record starts with ``digest``, or None."""
        return self._probe(digest)[0]

    def _probe(self, digest: bytes) -> tuple[int | None, int]:
        """(the row of ``digest`` or None, the slot where the probe stopped)."""
        # Records.locate inlined: this runs once or twice per chunk of every upload.
        slots, blocks, size = self._slots, self._records._blocks, self._records.size
        mask = len(slots) - 1
        slot = hash(digest) & mask
        while row := slots[slot]:
            row -= 1
            at = (row & _IN_BLOCK) * size
            if blocks[row >> _BLOCK_SHIFT][at : at + _DIGEST] == digest:
                return row, slot
            slot = (slot + 1) & mask
        return None, slot

    def find_or_add(self, digest: bytes, layout: struct.Struct, *fields: Any) -> int | None:
        """The row of ``digest``; if it has none, append its record and index it (None).

        The record is ``layout`` packed from ``fields`` (which start with ``digest``). One
        probe for both, for the loops that run once per chunk.
        """
        if (self._count + 1) * 2 > len(self._slots):
            self._grow()
        row, slot = self._probe(digest)
        if row is not None:
            return row
        records = self._records
        records.pack(layout, *fields)
        if self._count < records._count:  # else threads raced to append: a hint lost
            self._count += 1
            self._slots[slot] = records._count  # its row + 1
        return None

    def add_next(self, digest: bytes) -> None:
        """Index the next row (``len(self)``): the record just appended, starting with ``digest``."""
        if self._count >= self._records._count:
            return  # threads raced to append: the record was not kept (a hint lost)
        if (self._count + 1) * 2 > len(self._slots):
            self._grow()
        slots = self._slots
        mask = len(slots) - 1
        slot = hash(digest) & mask
        while slots[slot]:
            slot = (slot + 1) & mask
        self._count += 1
        slots[slot] = self._count  # row + 1

    def reserve(self, count: int) -> None:
        """Make room for ``count`` rows in all, so adding up to there never re-indexes."""
        slots = len(self._slots)
        while count * 2 > slots:
            slots *= 2
        if slots > len(self._slots):
            self._grow(slots)

    def _grow(self, slots_wanted: int = 0) -> None:
        # Twice as many 4-byte slots (or as many as wanted).
        slots = array("I", bytes(4 * max(2 * len(self._slots), slots_wanted)))
        mask = len(slots) - 1
        records = self._records
        digests = struct.Struct(f"{_DIGEST}s{records.size - _DIGEST}x")
        row = 0
        # Blocks never resize (records only add blocks), so views of them are harmless.
        for piece in records.pieces():
            for (digest,) in digests.iter_unpack(piece):
                if row == self._count:
                    break
                row += 1
                slot = hash(digest) & mask
                while slots[slot]:
                    slot = (slot + 1) & mask
                slots[slot] = row
        self._slots = slots
