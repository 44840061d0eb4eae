"""What chunks a store holds, learned from its index objects without a request per chunk.

Every chunked upload that adds chunks writes one small index object listing them (and their
packs) under ``chunk-index/<its own digest>``. An uploader lists that prefix and reads only the
index objects it has not seen, so a long-lived worker pays one LIST per upload plus one GET per
*new* upload anywhere. The index is a hint for dedup, never a source of truth for reads:

* an object whose bytes do not hash to its name, or that does not parse, is skipped with a
  warning naming it (a store's files are untrusted input);
* an entry can outlive its pack (gc removed it): an uploader checks each pack it reuses once
  per upload (:meth:`KnownChunks.forget_pack` if it is gone) and uploads the chunk again;
* a missing entry only costs a duplicate chunk, which gc reclaims.

Memory: about 50 bytes per distinct chunk in the store (a 40-byte record and a slot of the
:class:`~optuna_cas.chunks.digest_index.DigestIndex`; under 1 MB per GiB of unique 64 KiB
chunks), held while the store object lives.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence

import blake3

from optuna_cas._threads import map_in_threads
from optuna_cas.backends.base import Backend, read_at_most
from optuna_cas.chunks.digest_index import DigestIndex, Records
from optuna_cas.chunks.layout import INDEX_PREFIX, parse_content_key
from optuna_cas.chunks.table import ENTRY, INDEX_MAGIC, MAX_TABLE_BYTES, ChunkTable, parse_table
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, OptunaCasError

__all__ = ["KnownChunks", "Location", "read_bounded"]

logger = logging.getLogger("optuna_cas.chunks")

Location = tuple[Digest, int]  # (pack, offset)
_SHIFT = 40  # offsets within a pack stay far below 2**40 (1 TiB)
_OFFSET = (1 << _SHIFT) - 1
_RECORD = struct.Struct("<32sQ")  # chunk digest, pack number << 40 | offset
_FORGOTTEN = (1 << 64) - 1  # the place of a chunk whose pack was found missing
_THREADS = 8  # index objects read at once
_BATCH = 64  # index objects read before their entries are added
# Entries the memo of deltas holds at most: 48 bytes each, some 145 with Python's own (18 MiB).
_DELTA_ENTRIES = 1 << 17
_STARTS = 4  # files whose beginnings a new file's changed first chunk is compared with


def read_bounded(backend: Backend, key: str, limit: int = MAX_TABLE_BYTES) -> bytes:
    """The whole object at ``key``, refusing one larger than ``limit`` bytes.

    Raises:
        ArtifactNotFound: No such object.
        IntegrityError: It is larger than ``limit``.

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> b = MemoryBackend(); b.write("k", io.BytesIO(b"abc"))
        >>> read_bounded(b, "k")
        b'abc'
    """
    data = read_at_most(backend, key, limit)
    if len(data) > limit:
        raise IntegrityError(f"{backend.describe()} key {key!r} is larger than {limit} bytes")
    return data


class KnownChunks:
    """The chunks a store's index objects list: chunk digest to (pack, offset).

    Args:
        backend: The store's backend.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> known = KnownChunks(MemoryBackend()).refreshed()
        >>> known.find(Digest.of_bytes(b"x")) is None
        True
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        # One 40-byte record per chunk (a store can name millions): its digest and its place,
        # pack number << 40 | offset, packs by number in self._packs; found by digest through
        # self._rows.
        self._records = Records(_RECORD.size)
        self._rows = DigestIndex(self._records)
        self._packs: list[Digest] = []
        self._pack_numbers: dict[str, int] = {}
        # No lock: a lock held by another thread at a fork would hang a forked worker. Updates
        # are single dict, set or bytearray operations, atomic under the GIL; threads racing
        # to learn the same chunk at worst lose a hint (see DigestIndex).
        self._seen: set[str] = set()
        # Changed chunks stored as deltas, by whole digest, oldest first: their manifest
        # entries (ENTRY records, packs by number) and where the old bytes after them lie.
        self._deltas: dict[bytes, tuple[bytes, int]] = {}
        self._delta_entries = 0
        # The files stored last, newest first: each one's first chunk, and where the old bytes
        # it was a delta of lay (None if it was stored whole).
        self._starts: list[tuple[Digest, Location | None]] = []

    def refreshed(self) -> KnownChunks:
        """This, having read the index objects written since; or a new one if gc merged them.

        gc moves chunks when it repacks, then merges the index objects into one naming where
        they are now and deletes the old ones. A process that kept what it had learnt named
        the packs gc left behind: its uploads touched them, so gc never deleted them and
        merged them again at every run. When an index object this one read is gone, it
        starts again as a new process would (a new object, so that a thread still using
        this one never mixes the two).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> known = KnownChunks(MemoryBackend()); known.refreshed() is known
            True
        """
        if self.refresh():
            return self
        fresh = KnownChunks(self._backend)
        fresh.refresh()
        # Only starts the new reading knows: one in a pack gc left behind would keep it named
        # (and touched) by every later version, and gc would repack it at every run.
        fresh._starts = [
            (chunk, at)
            for chunk, at in self._starts
            if fresh.find(chunk) is not None or (at and at[0].hexdigest in fresh._pack_numbers)
        ]
        return fresh

    def refresh(self) -> bool:
        """Read the index objects written since the last refresh; False if one read is gone."""
        # Those read before the listing: a thread may add names while it runs.
        names, listed, seen = [], set(), frozenset(self._seen)
        for info in self._backend.list(INDEX_PREFIX):
            parsed = parse_content_key(info.key)
            if parsed is not None:
                listed.add(parsed[1])
                if parsed[1] not in self._seen:
                    names.append(parsed[1])
        if not seen <= listed:
            return False
        # A worker's first upload reads every index object written since gc last merged
        # them, one GET each: on a few threads, since on S3 each waits tens of ms for its
        # answer (51 objects on moto: 0.57 s one after another). In batches, so the tables
        # held at once stay a few.
        for start in range(0, len(names), _BATCH):
            batch = names[start : start + _BATCH]
            for name, table in zip(batch, map_in_threads(self._load, batch, _THREADS), strict=True):
                self._seen.add(name)
                if table is not None:
                    self.add_table(table)
        return True

    def _load(self, name: str) -> ChunkTable | None:
        key = INDEX_PREFIX + name
        try:
            data = read_bounded(self._backend, key)
            if blake3.blake3(data).hexdigest() != name:
                raise IntegrityError(f"index object {key!r} does not hash to its name")
            return parse_table(data, f"index object {key!r}", INDEX_MAGIC)
        except ArtifactNotFound:
            return None  # removed by gc meanwhile
        except OptunaCasError as e:
            logger.warning("Skipping %s in %s: %s", key, self._backend.describe(), e)
            return None

    def add_table(self, table: ChunkTable) -> None:
        """Learn the entries of an index object (e.g. the one this process just wrote).

        The first word wins (a place found missing is learnt again): a later index object
        cannot move a chunk this process knows where to find. What gc moved is learnt anew
        by :meth:`refreshed`.
        """
        numbers = [self._pack_number(p) << _SHIFT for p in table.packs]
        records, find_or_add = self._records, self._rows.find_or_add
        self._rows.reserve(len(records) + len(table))  # one re-index, not one per doubling
        for chunk, pack, _length, offset in ENTRY.iter_unpack(table.entries):
            if offset > _OFFSET:  # not ours (packs are tens of MiB): a hint lost
                continue
            where = numbers[pack] | offset
            row = find_or_add(chunk, _RECORD, chunk, where)
            if row is not None and _RECORD.unpack_from(*records.locate(row))[1] == _FORGOTTEN:
                _RECORD.pack_into(*records.locate(row), chunk, where)

    def _pack_number(self, pack: Digest) -> int:
        number = self._pack_numbers.get(pack.hexdigest)
        if number is None:
            number = self._pack_numbers[pack.hexdigest] = len(self._packs)
            self._packs.append(pack)
        return number

    def note_own(self, name: str) -> None:
        """Mark an index object this process wrote (and added) as seen."""
        self._seen.add(name)

    def find(self, chunk: Digest) -> Location | None:
        """Where the store holds ``chunk``, if an index object said so."""
        row = self._rows.find(bytes.fromhex(chunk.hexdigest))
        if row is None:
            return None
        where = _RECORD.unpack_from(*self._records.locate(row))[1]
        return None if where == _FORGOTTEN else (self._packs[where >> _SHIFT], where & _OFFSET)

    def find_usable(self, chunk: Digest, usable: Callable[[Digest], bool]) -> Location | None:
        """Where :meth:`find` says ``chunk`` is, if ``usable`` accepts its pack (an upload's look).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> KnownChunks(MemoryBackend()).find_usable(Digest.of_bytes(b"x"), bool) is None
            True
        """
        where = self.find(chunk)
        return where if where is not None and usable(where[0]) else None

    def remember_delta(
        self, chunk: Digest, entries: Sequence[tuple[Digest, Digest, int]], after: Location
    ) -> None:
        """Remember that ``chunk`` is stored as ``entries``: (piece, pack, offset) each.

        A chunk changed in one version and not since is not stored whole, so without this
        every later upload read and compared its old bytes again (see chunks.delta). Index
        objects cannot say it: they name one range per chunk. ``after`` is where the old
        bytes following the chunk lie.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> known, pack = KnownChunks(MemoryBackend()), Digest.of_bytes(b"pack")
            >>> a, b = Digest.of_bytes(b"a"), Digest.of_bytes(b"b")
            >>> known.remember_delta(Digest.of_bytes(b"ab"), [(a, pack, 0), (b, pack, 3)], (pack, 4))
            >>> entries, after = known.find_delta(Digest.of_bytes(b"ab"))
            >>> [(piece.size, offset) for piece, _, offset in entries], after[1]
            ([(1, 0), (1, 3)], 4)
        """
        number = self._pack_number
        packed = b"".join(
            ENTRY.pack(bytes.fromhex(piece.hexdigest), number(pack), piece.size, offset)
            for piece, pack, offset in entries
        )
        self._deltas[bytes.fromhex(chunk.hexdigest)] = (
            packed,
            number(after[0]) << _SHIFT | after[1],
        )
        self._delta_entries += len(entries)
        while self._delta_entries > _DELTA_ENTRIES:
            try:
                oldest = self._deltas.pop(next(iter(self._deltas)))
            except (RuntimeError, StopIteration, KeyError):  # another thread changed it
                break
            self._delta_entries -= len(oldest[0]) // ENTRY.size

    def find_delta(self, chunk: Digest) -> tuple[list[tuple[Digest, Digest, int]], Location] | None:
        """What :meth:`remember_delta` remembered of ``chunk``, if it still does."""
        found = self._deltas.get(bytes.fromhex(chunk.hexdigest))
        if found is None:
            return None
        packed, after = found
        packs = self._packs
        entries = [
            (Digest(piece.hex(), length), packs[pack], offset)
            for piece, pack, length, offset in ENTRY.iter_unpack(packed)
        ]
        return entries, (packs[after >> _SHIFT], after & _OFFSET)

    def note_start(self, chunk: Digest, delta_at: Location | None) -> None:
        """A file was stored whose first chunk is ``chunk`` (a delta of ``delta_at``'s bytes).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> known, pack = KnownChunks(MemoryBackend()), Digest.of_bytes(b"pack")
            >>> known.note_start(Digest.of_bytes(b"p"), (pack, 0)); known.starts() == [(pack, 0)]
            True
        """
        starts = [(chunk, delta_at), *(s for s in self._starts if s[0] != chunk)]
        self._starts = starts[:_STARTS]

    def starts(self) -> list[Location]:
        """Where the files stored last began (the bytes of their first chunks), newest first."""
        found: list[Location] = []
        for chunk, delta_at in self._starts:
            where = self.find(chunk) or delta_at
            if where is not None and where not in found:
                found.append(where)
        return found

    def forget_pack(self, pack: Digest) -> None:
        """Drop every entry in ``pack`` (found missing or damaged)."""
        number = self._pack_numbers.get(pack.hexdigest)
        if number is None:
            return
        records = self._records
        for row in range(len(records)):
            chunk, where = _RECORD.unpack_from(*records.locate(row))
            if where != _FORGOTTEN and where >> _SHIFT == number:
                _RECORD.pack_into(*records.locate(row), chunk, _FORGOTTEN)
