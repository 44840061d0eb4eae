"""A changed chunk stored as its new bytes plus ranges of the bytes it replaced.

Content-defined chunks only dedup what is unchanged chunk for chunk. When a new version rewrites
a few scattered rows of a large tensor (1% of an embedding's rows, say), most chunks (64 KiB,
dozens of rows each) hold one changed row and are stored again in full: measured, 22.6 MiB
stored per version for 0.6 MiB of new rows.

Checkpoints are rewritten in place: a tensor keeps its offset, so a chunk that follows a chunk
the store already holds usually replaces the bytes that followed that chunk in the pack holding
it. :class:`DeltaFinder` keeps that place (a cursor, moved on by every chunk), reads the bytes
there and compares them with the new chunk at the same offsets. Where they are equal, the
manifest names the range of the old pack; only the differing runs are stored, as chunks of
their own. A manifest entry names a range of a pack with the digest of its bytes, as every
entry does; a range may lie inside another chunk.

Trust: the old bytes are read from the store and compared byte for byte with the new chunk, and
each range's digest is computed from the bytes read, so an entry describes what the pack held
then, whatever the index said. A delta found stored whole is remembered and named again
unread (``KnownChunks.remember_delta``), after the look at its packs that any dedup hit gets:
the same trust as naming a chunk the index lists. Readers check every file against its whole
digest as always.

Only where such reads are local file reads (a store with staging): on S3 or GCS one request per
changed chunk would cost more than the bytes it saves, so remote stores keep whole chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from optuna_cas.chunks.index import KnownChunks, Location
from optuna_cas.chunks.packer import PackWriter
from optuna_cas.digest import Digest
from optuna_cas.exceptions import OptunaCasError

__all__ = ["DeltaFinder", "Piece", "diff", "store_delta"]

# Compared in blocks of _COARSE bytes; a run of differing blocks is then narrowed at its two
# ends in steps of _FINE bytes.
_COARSE = 1024
_FINE = 64
# An equal run shorter than this between two differing ones is stored with them: a manifest
# entry (48 bytes) and a break in a read's run cost more than a few hundred bytes.
_MERGE = 256
# A delta is kept only if at most this share of the chunk is new bytes, and it has at most
# _MAX_PIECES pieces; otherwise the chunk is stored whole.
_MAX_NEW_SHARE = 0.5
_MAX_PIECES = 33
# Consecutive chunks that matched nothing at the cursor before it is dropped: content that is
# all new (fully retrained weights) then costs two reads, not a read per chunk.
_MISSES = 2
# Entries deltas may add to one manifest beyond one per chunk (3 MiB of entries): past it,
# changed chunks are stored whole. A manifest must stay within what readers accept
# (MAX_TABLE_BYTES, 64 MiB: about 1.4 million entries, some 85 GiB of 64 KiB chunks).
_EXTRA_ENTRIES = 1 << 16


class Piece(NamedTuple):
    """A range ``[start, end)`` of a chunk: ``same`` as the old bytes there, or new."""

    start: int
    end: int
    same: bool


def diff(old: bytes, new: bytes) -> list[Piece] | None:
    """The pieces of ``new`` against ``old`` (same length); None if not worth a delta.

    Example:
        >>> old = bytes(8192); new = bytearray(old); new[5000:5010] = b"x" * 10
        >>> diff(old, bytes(new))
        [Piece(start=0, end=4992, same=True), Piece(start=4992, end=5056, same=False), \
Piece(start=5056, end=8192, same=True)]
        >>> diff(b"a" * 8192, b"b" * 8192) is None
        True
    """
    n = len(new)
    if len(old) != n or not n:
        return None
    step = _COARSE
    differ = [s for s in range(0, n, step) if old[s : s + step] != new[s : s + step]]
    if len(differ) > 8 and len(differ) * 4 > 3 * -(-n // step):
        return None  # a quick no: most blocks differ, not a rewrite of a few places
    blocks: list[list[int]] = []  # runs of adjacent differing blocks
    for s in differ:
        if blocks and s == blocks[-1][1]:
            blocks[-1][1] = min(s + step, n)
        else:
            blocks.append([s, min(s + step, n)])
    runs: list[list[int]] = []
    for s, e in blocks:
        # Narrowed within the first and last block (each holds a difference): only a run's
        # edges are compared finely, not every block.
        while s + _FINE < e and old[s : s + _FINE] == new[s : s + _FINE]:
            s += _FINE
        while e - _FINE > s and old[e - _FINE : e] == new[e - _FINE : e]:
            e -= _FINE
        if runs and s - runs[-1][1] < _MERGE:
            runs[-1][1] = e
        else:
            runs.append([s, e])
    if runs and runs[0][0] < _MERGE:
        runs[0][0] = 0
    if runs and n - runs[-1][1] < _MERGE:
        runs[-1][1] = n
    if sum(e - s for s, e in runs) > _MAX_NEW_SHARE * n or 2 * len(runs) + 1 > _MAX_PIECES:
        return None
    pieces, at = [], 0
    for s, e in runs:
        if s > at:
            pieces.append(Piece(at, s, True))
        pieces.append(Piece(s, e, False))
        at = e
    if at < n:
        pieces.append(Piece(at, n, True))
    # Checked once more, whole: pieces out of order or called equal when they are not would
    # name wrong bytes in a manifest that parses (a probe found narrowing once run below 0).
    if not _tile(pieces, n) or any(same and old[s:e] != new[s:e] for s, e, same in pieces):
        return None
    return pieces


def _tile(pieces: list[Piece], length: int) -> bool:
    """Whether ``pieces`` cover ``[0, length)`` in order, each non-empty."""
    at = 0
    for piece in pieces:
        if piece.start != at or piece.end <= at:
            return False
        at = piece.end
    return at == length


class DeltaFinder:
    """Follows where the old bytes of the next chunk should be, and compares them.

    Args:
        read_range: Reads ``(pack, offset, length)`` stored bytes, unverified
            (``ChunkStore.read_range`` of a store whose packs are local files).
        known: The store's known chunks: where a new piece may be stored already, and the
            deltas stored before (a chunk that has not changed since is not compared again).
        usable: Whether this upload may lean on a pack (looked at and touched once per upload).

    Example:
        >>> import io, tempfile
        >>> from optuna_cas.backends.local import LocalBackend
        >>> from optuna_cas.chunks.layout import pack_key
        >>> from optuna_cas.chunks.store import ChunkStore
        >>> store = ChunkStore(LocalBackend(tempfile.mkdtemp()))
        >>> old = bytes(range(256)) * 64; pack = Digest.of_bytes(old)
        >>> store.backend.write(pack_key(pack), io.BytesIO(old))
        >>> finder = DeltaFinder(store.read_range, store.known, lambda pack: True)
        >>> finder.follow(pack, 0)
        >>> new = bytearray(old); new[9000:9004] = b"new!"
        >>> found = finder.find(bytes(new))
        >>> [p.same for p in found[2]]
        [True, False, True]
    """

    def __init__(
        self,
        read_range: Callable[[Digest, int, int], bytes],
        known: KnownChunks,
        usable: Callable[[Digest], bool],
    ) -> None:
        self._read_range = read_range
        self._known = known
        self._usable = usable
        self._at: tuple[Digest, int] | None = None
        self._misses = 0
        self._extra = 0  # entries the deltas so far added beyond one per chunk
        # A file whose first chunk changed has no chunk before it to follow: where the files
        # this process stored last began is tried (a new version of one of them, likely).
        self._starts = known.starts()
        self._first: Digest | None = None  # this file's first chunk
        self._first_at: Location | None = None  # where its old bytes lay, if it was a delta

    def after(self, chunk: Digest, where: Location) -> None:
        """``chunk`` is stored whole at ``where``: the next chunk's old bytes follow it."""
        self._first = self._first or chunk
        self._starts = []
        self.follow(where[0], where[1] + chunk.size)

    def finish(self) -> None:
        """Remember where this file began, for the next upload's first chunk."""
        if self._first is not None:
            self._known.note_start(self._first, self._first_at)

    def add(self, writer: PackWriter, chunk: Digest, data: memoryview) -> bool:
        """Record ``chunk``, which the store lacks whole, as a delta if it is one; whether it was.

        A delta stored before and still usable is named again as it was; else the old bytes at
        the cursor are compared (:meth:`find`) and :func:`store_delta` records the pieces.
        """
        first, self._first = self._first is None, self._first or chunk
        starts, self._starts = self._starts, []
        if self._extra >= _EXTRA_ENTRIES:
            return False
        recalled = self._known.find_delta(chunk)
        if (
            recalled is not None
            # A manifest whose entries do not add up to the file names other bytes.
            and sum(piece.size for piece, _, _ in recalled[0]) == chunk.size
            and all(self._usable(pack) for _, pack, _ in recalled[0])
        ):
            entries, after = recalled
            for piece, pack, offset in entries:
                writer.add_known(piece, pack, offset)
            self._extra += len(entries) - 1
            self.follow(*after)
            if first:
                self._first_at = (after[0], after[1] - chunk.size)
            return True
        new = bytes(data)
        for start in [self._at] if self._at is not None else starts:
            self._at = start
            if (found := self.find(new)) is not None:
                break
        else:
            return False
        if first:
            self._first_at = (found[0], found[1])
        named = store_delta(
            writer, found, new, lambda piece: self._known.find_usable(piece, self._usable)
        )
        if named is not None:  # all stored before: the next upload names them as they are
            self._known.remember_delta(chunk, named, (found[0], found[1] + len(new)))
        return True

    def follow(self, pack: Digest, offset: int) -> None:
        """The next chunk's old bytes start at ``offset`` in ``pack`` (after a known chunk)."""
        self._at = (pack, offset)
        self._misses = 0

    def find(self, new: bytes) -> tuple[Digest, int, list[Piece], bytes] | None:
        """``(pack, offset, pieces, old bytes)`` of ``new`` at the cursor, or None.

        The cursor moves past ``new`` either way (a chunk rewritten in place).
        """
        if self._at is None:
            return None
        pack, offset = self._at
        self._at = (pack, offset + len(new))
        # Only a pack this upload may lean on (looked at once, at its full size): a start of
        # an earlier file may lie in one cut short since, which a manifest must never name.
        old = self._read(pack, offset, len(new)) if self._usable(pack) else None
        pieces = diff(old, new) if old is not None else None
        if old is None or pieces is None:
            self._misses += 1
            if self._misses >= _MISSES:
                self._at = None
            return None
        self._misses = 0
        self._extra += len(pieces) - 1
        return pack, offset, pieces, old

    def _read(self, pack: Digest, offset: int, length: int) -> bytes | None:
        if offset + length > pack.size:
            return None
        try:
            data = self._read_range(pack, offset, length)
        except (OSError, OptunaCasError):
            return None  # gone or unreadable: the chunk is stored whole, as without deltas
        return data if len(data) == length else None


def store_delta(
    writer: PackWriter,
    found: tuple[Digest, int, list[Piece], bytes],
    new: bytes,
    stored: Callable[[Digest], Location | None],
) -> list[tuple[Digest, Digest, int]] | None:
    """Record ``new`` as the pieces :meth:`DeltaFinder.find` ``found``.

    Equal pieces are ranges of the old pack; a new piece the store holds already (``stored``
    says where: the same rewritten row as in the last version) is named there, others stored.

    Returns:
        The entries recorded, ``(piece, pack, offset)`` each, if every piece was stored
        before (a chunk unchanged since the last version); None if a piece was new.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> from optuna_cas.chunks.table import MANIFEST_MAGIC, TableBuilder
        >>> manifest = TableBuilder(MANIFEST_MAGIC); writer = PackWriter(MemoryBackend(), manifest)
        >>> old, new = bytes(6400), bytes(3200) + b"x" * 64 + bytes(3136)
        >>> found = (Digest.of_bytes(old), 0, diff(old, new), old)
        >>> store_delta(writer, found, new, lambda digest: None)
        >>> writer.finish(); len(manifest), writer.bytes_written
        (3, 64)
    """
    pack, offset, pieces, old = found
    if not _tile(pieces, len(new)):  # a manifest naming other bytes must never be written
        raise ValueError(f"pieces {pieces} do not cover a chunk of {len(new)} bytes in order")
    entries: list[tuple[Digest, Digest, int]] | None = []
    for start, end, same in pieces:
        if same:
            # The digest of the bytes read from the pack (equal to the new ones): what the
            # entry names is what the range holds.
            where: Location = (pack, offset + start)
            digest = Digest.of_bytes(old[start:end])
        else:
            part = new[start:end]
            digest = Digest.of_bytes(part)
            # The old bytes are the version the chunk was last stored whole in, so the runs
            # an earlier delta stored come again: found, they are not stored twice.
            found_at = stored(digest)
            if found_at is None:
                writer.add_new(digest, memoryview(part))
                entries = None
                continue
            where = found_at
        writer.add_known(digest, *where)
        if entries is not None:
            entries.append((digest, *where))
    return entries
