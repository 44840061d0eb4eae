"""A hash index over chunk digests kept in fixed-size records of one ``bytearray``.

Chunk maps hold one entry per chunk, and a multi-GiB upload has tens of thousands of chunks: a
``dict`` of 32-byte ``bytes`` keys costs about 150 bytes per entry (key object, value object,
slot), and growing it leaves the old tables to the allocator. Here the digests stay where they
already are (the records of a table being built, 48 bytes each, or 40-byte records of digest and
value), and the index adds one 4-byte slot per entry at most half full: 8 to 16 bytes.

Open addressing with linear probing; the slot of a digest comes from Python's ``hash`` of it,
which is randomised per process, so digests chosen to collide (index objects in a store are
untrusted input) cannot make lookups quadratic.

No lock (one held at a fork would hang the child). Threads racing to add may leave a row out
of the index, never find a wrong row: :meth:`DigestIndex.find` compares the digest stored in
the record. For a map of dedup hints, a row left out is a hint lost.
"""

from __future__ import annotations

from array import array

__all__ = ["DigestIndex"]

_DIGEST = 32
_FIRST_SLOTS = 16


class DigestIndex:
    """Finds the row of a 32-byte digest among the first rows of ``records``.

    Each record is ``stride`` bytes and starts with its digest. Rows are indexed in order
    (:meth:`add_next`), so after ``n`` calls the index covers rows ``0 .. n-1``; the caller
    appends records and never changes those already indexed. Adding a digest already
    indexed is the caller's mistake (:meth:`find` first): a digest repeated inside one upload
    is found, not added again.

    Args:
        records: The records (not copied; it may grow).
        stride: Bytes per record (at least 32).

    Example:
        >>> import os
        >>> digests = [os.urandom(32) for _ in range(100)]
        >>> records = bytearray()
        >>> index = DigestIndex(records, 40)
        >>> for d in digests:
        ...     records += d + bytes(8); index.add_next()
        >>> index.find(digests[42]), index.find(os.urandom(32)), len(index)
        (42, None, 100)
    """

    def __init__(self, records: bytearray, stride: int) -> None:
        if stride < _DIGEST:
            raise ValueError(f"stride {stride} is shorter than a digest")
        self._records = records
        self._stride = stride
        # Row + 1 per occupied slot, 0 for an empty one; at most half full.
        self._slots = array("I", bytes(4 * _FIRST_SLOTS))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def find(self, digest: bytes) -> int | None:
        """The row whose record starts with ``digest``, or None."""
        slots, records, stride = self._slots, self._records, self._stride
        mask = len(slots) - 1
        slot = hash(digest) & mask
        while row := slots[slot]:
            at = (row - 1) * stride
            if records[at : at + _DIGEST] == digest:
                return row - 1
            slot = (slot + 1) & mask
        return None

    def add_next(self) -> None:
        """Index the next row (``len(self)``), whose record the caller has appended."""
        if (self._count + 1) * 2 > len(self._slots):
            self._grow()
        self._place(self._slots, self._count)
        self._count += 1

    def _place(self, slots: array[int], row: int) -> None:
        at = row * self._stride
        mask = len(slots) - 1
        slot = hash(bytes(self._records[at : at + _DIGEST])) & mask
        while slots[slot]:
            slot = (slot + 1) & mask
        slots[slot] = row + 1

    def _grow(self) -> None:
        # Slices, not a memoryview: another thread may append to the records meanwhile (a
        # store's known chunks), and an exported buffer would make that append fail.
        slots = array("I", bytes(8 * len(self._slots)))  # twice as many 4-byte slots
        mask = len(slots) - 1
        records, stride = self._records, self._stride
        for row in range(self._count):
            at = row * stride
            slot = hash(bytes(records[at : at + _DIGEST])) & mask
            while slots[slot]:
                slot = (slot + 1) & mask
            slots[slot] = row + 1
        self._slots = slots
