"""Chunk tables: the binary records behind manifests and index objects.

Both list chunks and where they sit in packs. A *manifest* is the table of one file, in file
order, headed by the file's digest; an *index object* is the table of the chunks one upload
added, so that later uploads learn what the store holds without a request per chunk.

Format (little-endian; docs/concepts.md)::

    magic        8 bytes   b"OCASMFT1" (manifest) or b"OCASIDX1" (index)
    file digest  32 bytes  } manifests only
    file size    u64       }
    pack count   u32
    entry count  u32
    packs        pack count  x (digest 32 bytes, size u64)
    entries      entry count x (chunk digest 32 bytes, pack number u32, length u32, offset u64)

Records are read from stores, so they are untrusted: :func:`parse_table` checks the length
against the counts before allocating anything, and every entry against its pack and the file
size, and raises :class:`~optuna_cas.exceptions.IntegrityError` naming the record otherwise.
Entries stay packed in one ``bytes`` (48 bytes each): a 4 GiB file of 64 KiB chunks needs 3 MB.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from optuna_cas._terminal import human_bytes
from optuna_cas.chunks.digest_index import DigestIndex, Records
from optuna_cas.chunks.layout import CHUNK_MAX
from optuna_cas.digest import Digest
from optuna_cas.exceptions import IntegrityError, NewerFormatError, TooManyChunks

__all__ = [
    "INDEX_MAGIC",
    "MANIFEST_MAGIC",
    "MAX_TABLE_BYTES",
    "ChunkTable",
    "Entry",
    "TableBuilder",
    "largest_manifest_bytes",
    "parse_manifest",
    "parse_table",
]

MANIFEST_MAGIC = b"OCASMFT1"
INDEX_MAGIC = b"OCASIDX1"
# Enough for about 1.4 million chunks (roughly 90 GiB of 64 KiB chunks) in one record.
MAX_TABLE_BYTES = 64 * 1024 * 1024
# A chunk is never longer than the chunker's maximum; tables from other parameters may use up
# to this much, and nothing longer is accepted.
_LONGEST_CHUNK = max(CHUNK_MAX, 16 * 1024 * 1024)

_COUNTS = struct.Struct("<II")
_FILE = struct.Struct("<32sQ")
_PACK = struct.Struct("<32sQ")
_log = logging.getLogger(__name__)
ENTRY = struct.Struct("<32sIIQ")


def largest_manifest_bytes(entries: int) -> int:
    """The most bytes a manifest of ``entries`` entries can take, whatever its packs.

    Each entry could sit in a pack of its own (a sync's destination, a repack may scatter
    them): an upload keeps within :data:`MAX_TABLE_BYTES` by this, not by its own packs.

    Example:
        >>> largest_manifest_bytes(0), largest_manifest_bytes(1)
        (56, 144)
    """
    return len(MANIFEST_MAGIC) + _FILE.size + _COUNTS.size + entries * (_PACK.size + ENTRY.size)


def check_manifest_fits(entries: int, digest: Digest, where: str) -> None:
    """Raise ``TooManyChunks`` if a manifest of ``entries`` entries might be refused.

    The caller stores the file whole instead; the warning says so, since that file then gets
    no chunk-level dedup (about 58 GiB of random bytes reach the cap).

    Example:
        >>> check_manifest_fits(1000, Digest.of_bytes(b""), "memory://")
    """
    if (worst := largest_manifest_bytes(entries)) <= MAX_TABLE_BYTES:
        return
    _log.warning(
        "A file of %s (%s) has %s chunks, more than one manifest may name (the cap is %s of "
        "manifest): storing it whole in %s, without chunk-level dedup",
        human_bytes(digest.size),
        digest,
        f"{entries:,}",
        human_bytes(MAX_TABLE_BYTES),
        where,
    )
    raise TooManyChunks(f"{worst:,} bytes of manifest in {where}")


# A row of a table that borrows its entries (see TableBuilder): (reference, pack number).
_REF = struct.Struct("<II")
_OWN = 1 << 31  # the reference is to the table's own entries, not its source's


class Entry(NamedTuple):
    """One chunk: its digest (raw 32 bytes), the pack number, its length and pack offset."""

    chunk: bytes
    pack: int
    length: int
    offset: int


@dataclass(frozen=True)
class ChunkTable:
    """A parsed manifest or index object.

    Attributes:
        magic: Which kind of record.
        file: The file's digest (manifests), else None.
        packs: The packs that entries refer to by number.
        entries: The packed entries (see :data:`ENTRY`).

    Example:
        >>> b = TableBuilder(INDEX_MAGIC)
        >>> n = b.pack_number(Digest.of_bytes(b"abc"))
        >>> b.add(Digest.of_bytes(b"ab"), n, 0)
        >>> table = parse_table(b.to_bytes(), "index x", INDEX_MAGIC)
        >>> [(e.length, e.offset) for e in table], len(table)
        ([(2, 0)], 1)
    """

    magic: bytes
    file: Digest | None
    packs: tuple[Digest, ...]
    entries: bytes

    def __len__(self) -> int:
        return len(self.entries) // ENTRY.size

    def __iter__(self) -> Iterator[Entry]:
        for fields in ENTRY.iter_unpack(self.entries):
            yield Entry(*fields)

    def entry(self, number: int) -> Entry:
        """The ``number``-th entry.

        Example:
            >>> b = TableBuilder(INDEX_MAGIC); b.add(Digest.of_bytes(b"a"), 0, 5)
            >>> b.packs.append(Digest.of_bytes(b"xxxxxa"))
            >>> parse_table(b.to_bytes(), "x", INDEX_MAGIC).entry(0).offset
            5
        """
        return Entry(*ENTRY.unpack_from(self.entries, number * ENTRY.size))


class TableBuilder:
    """Collects entries, then serialises them as a manifest or index object.

    Pack numbers may be handed out before a pack's digest is known (a pack still being
    written): fill ``packs[number]`` in before :meth:`to_bytes`.

    With ``findable``, :meth:`row_of` finds an entry by its chunk (each chunk added once):
    an upload's index finds a chunk repeated in the file, in a few bytes per entry.

    With a ``source``, :meth:`add_from_source` adds one of its entries by reference: an
    upload's manifest names each new chunk as the upload's index does, in 8 bytes instead of
    48 (the entries are written out in full by :meth:`to_bytes`).

    Example:
        >>> b = TableBuilder(MANIFEST_MAGIC)
        >>> n = b.pack_number(Digest.of_bytes(b"xy"))
        >>> b.add(Digest.of_bytes(b"xy"), n, 0)
        >>> t = parse_table(b.to_bytes(Digest.of_bytes(b"xy")), "m", MANIFEST_MAGIC)
        >>> t.file == Digest.of_bytes(b"xy")
        True
    """

    def __init__(
        self, magic: bytes, *, findable: bool = False, source: TableBuilder | None = None
    ) -> None:
        self.magic = magic
        self.packs: list[Digest | None] = []
        self._numbers: dict[str, int] = {}
        self._entries = Records(ENTRY.size)
        self._rows = DigestIndex(self._entries) if findable else None
        self._source = source
        # With a source, the rows in order: references to its entries or to our own.
        self._order = Records(_REF.size) if source is not None else None

    def __len__(self) -> int:
        return len(self._entries) if self._order is None else len(self._order)

    def pack_number(self, pack: Digest | None) -> int:
        """The number of ``pack`` in this table (added if new); None reserves a new number."""
        if pack is None:
            self.packs.append(None)
            return len(self.packs) - 1
        number = self._numbers.get(pack.hexdigest)
        if number is None:
            number = self._numbers[pack.hexdigest] = len(self.packs)
            self.packs.append(pack)
        return number

    def resolve(self, number: int, pack: Digest) -> None:
        """Name a pack whose number was reserved while it was being written."""
        self.packs[number] = pack
        self._numbers[pack.hexdigest] = number

    def add(self, chunk: Digest, pack: int, offset: int) -> None:
        """Append an entry: ``chunk`` at ``offset`` in pack number ``pack``."""
        self.add_raw(bytes.fromhex(chunk.hexdigest), chunk.size, pack, offset)

    def entry(self, row: int) -> Entry:
        """The ``row``-th entry added."""
        if self._order is None:
            return Entry(*ENTRY.unpack_from(*self._entries.locate(row)))
        return self._resolve(*_REF.unpack_from(*self._order.locate(row)))

    def _resolve(self, ref: int, pack: int) -> Entry:
        if ref & _OWN:
            return Entry(*ENTRY.unpack_from(*self._entries.locate(ref & ~_OWN)))
        assert self._source is not None
        chunk, _pack, length, offset = self._source.entry(ref)
        return Entry(chunk, pack, length, offset)

    def add_raw(self, chunk: bytes, length: int, pack: int, offset: int) -> None:
        """Append an entry from a raw 32-byte chunk digest."""
        self._entries.pack(ENTRY, chunk, pack, length, offset)
        if self._rows is not None:
            self._rows.add_next(chunk)
        if self._order is not None:
            self._order.pack(_REF, _OWN | (len(self._entries) - 1), pack)

    def add_from_source(self, row: int, pack: int) -> None:
        """Append the source's entry ``row``, in this table's pack number ``pack``.

        Example:
            >>> index = TableBuilder(INDEX_MAGIC); index.add(Digest.of_bytes(b"a"), 0, 5)
            >>> manifest = TableBuilder(MANIFEST_MAGIC, source=index)
            >>> manifest.add_from_source(0, 3); manifest.entry(0)[1:]
            (3, 1, 5)
        """
        if self._order is None:
            raise ValueError("add_from_source() on a table built without a source")
        self._order.pack(_REF, row, pack)

    def _entry_pieces(self) -> list[bytearray | memoryview]:
        """The entries in order, ready to join."""
        if self._order is None:
            return self._entries.pieces()
        out = bytearray(len(self) * ENTRY.size)
        at = 0
        for piece in self._order.pieces():
            for ref, pack in _REF.iter_unpack(piece):
                ENTRY.pack_into(out, at, *self._resolve(ref, pack))
                at += ENTRY.size
        return [out]

    def row_of(self, chunk: bytes) -> int | None:
        """The row of the entry of ``chunk`` (a raw digest), if added (``findable`` only).

        Example:
            >>> b = TableBuilder(INDEX_MAGIC, findable=True); b.add(Digest.of_bytes(b"a"), 0, 5)
            >>> b.row_of(bytes.fromhex(Digest.of_bytes(b"a").hexdigest)), b.row_of(bytes(32))
            (0, None)
        """
        if self._rows is None:
            raise ValueError("row_of() on a table built without findable=True")
        return self._rows.find(chunk)

    def find_or_add(self, chunk: bytes, length: int, pack: int, offset: int) -> int | None:
        """:meth:`row_of` ``chunk``; if it has none, :meth:`add_raw` it and return None.

        Example:
            >>> b = TableBuilder(INDEX_MAGIC, findable=True)
            >>> b.find_or_add(bytes(32), 1, 0, 0), b.find_or_add(bytes(32), 1, 0, 9), len(b)
            (None, 0, 1)
        """
        if self._rows is None or self._order is not None:
            raise ValueError("find_or_add() on a table built without findable=True")
        return self._rows.find_or_add(chunk, ENTRY, chunk, pack, length, offset)

    def expect(self, count: int) -> None:
        """Make :meth:`row_of` room for ``count`` entries at once (a hint; more still fit).

        Example:
            >>> b = TableBuilder(INDEX_MAGIC, findable=True); b.expect(1000); len(b)
            0
        """
        if self._rows is not None:
            self._rows.reserve(count)

    def stop_finding(self) -> None:
        """Drop what :meth:`row_of` needs (once no more lookups come)."""
        self._rows = None

    def to_bytes(self, file: Digest | None = None) -> bytes:
        """The record: a manifest (with ``file``) or an index object (without)."""
        packs = self._resolved_packs()
        parts: list[bytes | bytearray | memoryview] = [self.magic]
        if file is not None:
            parts.append(_FILE.pack(bytes.fromhex(file.hexdigest), file.size))
        parts.append(_COUNTS.pack(len(packs), len(self)))
        parts += [_PACK.pack(bytes.fromhex(p.hexdigest), p.size) for p in packs]
        parts += self._entry_pieces()  # joined without an intermediate copy
        return b"".join(parts)

    def as_table(self) -> ChunkTable:
        """The entries as a :class:`ChunkTable` (all pack numbers resolved), without a parse.

        Example:
            >>> b = TableBuilder(INDEX_MAGIC); b.add(Digest.of_bytes(b"a"), b.pack_number(
            ...     Digest.of_bytes(b"a")), 0)
            >>> len(b.as_table())
            1
        """
        return ChunkTable(self.magic, None, self._resolved_packs(), b"".join(self._entry_pieces()))

    def _resolved_packs(self) -> tuple[Digest, ...]:
        packs = tuple(p for p in self.packs if p is not None)
        if len(packs) != len(self.packs):
            raise ValueError("a pack number was reserved but never resolved")
        return packs


def parse_table(data: bytes, name: str, magic: bytes) -> ChunkTable:
    """Parse and check a manifest or index object read from a store.

    Args:
        data: The record's bytes.
        name: For messages, e.g. ``"manifest blake3:ab… in s3://bucket"``.
        magic: :data:`MANIFEST_MAGIC` or :data:`INDEX_MAGIC`.

    Raises:
        NewerFormatError: A record of that kind in a later format version (a newer release's,
            or a damaged header that reads as one).
        IntegrityError: Not a well-formed record of that kind; the message names ``name``.

    Example:
        >>> parse_table(b"nonsense", "index x", INDEX_MAGIC)
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.IntegrityError: index x is malformed: not a chunk table
    """

    def bad(reason: str) -> IntegrityError:
        return IntegrityError(f"{name} is malformed: {reason}")

    version = data[7:8]
    if data[:7] == magic[:7] and version.isdigit() and version > magic[7:8]:
        # Only a later version: "0" was never written, so it is damage (a flipped bit), which
        # verify --quarantine moves aside; a newer release's record it must leave alone.
        raise NewerFormatError(
            f"{name} is in format version {version.decode()}, which this release does not "
            f"read ({magic[7:8].decode()}): a newer optuna-cas wrote it (upgrade optuna-cas), "
            "or its header is damaged (uploading the file again rewrites it)"
        )
    if len(data) > MAX_TABLE_BYTES:
        raise bad(f"{len(data)} bytes, more than {MAX_TABLE_BYTES}")
    if data[:8] != magic:
        raise bad("not a chunk table")
    at = 8
    file = None
    try:
        if magic == MANIFEST_MAGIC:
            raw, size = _FILE.unpack_from(data, at)
            file = Digest(raw.hex(), size)
            at += _FILE.size
        pack_count, entry_count = _COUNTS.unpack_from(data, at)
    except struct.error:
        raise bad("truncated header") from None
    at += _COUNTS.size
    if pack_count > entry_count:
        # Every pack listed holds an entry's chunk; more packs than entries would only cost
        # memory (a Digest each) to whoever reads the record.
        raise bad(f"{pack_count} packs for {entry_count} entries")
    expected = at + pack_count * _PACK.size + entry_count * ENTRY.size
    if len(data) != expected:
        raise bad(f"{len(data)} bytes where its counts say {expected}")
    packs = tuple(
        Digest(raw.hex(), size)
        for raw, size in _PACK.iter_unpack(data[at : at + pack_count * _PACK.size])
    )
    entries = data[at + pack_count * _PACK.size :]
    total = 0
    for _chunk, pack, length, offset in ENTRY.iter_unpack(entries):
        if pack >= pack_count:
            raise bad(f"an entry names pack {pack} of {pack_count}")
        if not 0 < length <= _LONGEST_CHUNK or offset + length > packs[pack].size:
            raise bad(f"an entry of {length} bytes at {offset} does not fit its pack")
        total += length
    if file is not None and total != file.size:
        raise bad(f"its chunks add up to {total} bytes, the file has {file.size}")
    return ChunkTable(magic, file, packs, entries)


def parse_manifest(raw: bytes, name: str, digest: Digest) -> ChunkTable:
    """Parse a manifest (bounds checked) and check that it describes ``digest``.

    Raises:
        IntegrityError: Malformed, or the manifest of another file.

    Example:
        >>> file = Digest.of_bytes(b"abc"); b = TableBuilder(MANIFEST_MAGIC)
        >>> b.add(file, b.pack_number(Digest.of_bytes(b"abcd")), 0)
        >>> parse_manifest(b.to_bytes(file), "m", file).file == file
        True
        >>> parse_manifest(b.to_bytes(file), "m", Digest.of_bytes(b"x"))
        Traceback (most recent call last):
        optuna_cas.exceptions.IntegrityError: m describes blake3:... of 3 bytes, not blake3:... of 1 bytes
    """
    table = parse_table(raw, name, MANIFEST_MAGIC)
    if table.file != digest:
        # With the sizes: a digest prints without its size, and an edited size alone read
        # "describes blake3:d92f..., not blake3:d92f..." (found by a probe).
        described = "nothing" if table.file is None else f"{table.file} of {table.file.size} bytes"
        raise IntegrityError(f"{name} describes {described}, not {digest} of {digest.size} bytes")
    return table
