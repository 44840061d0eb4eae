"""gc of chunked content: manifests, packs and index objects.

The order of the steps, and why it is safe while others upload and read, is argued in
:mod:`optuna_cas.operations.gc`; this module carries the steps out:

1. :func:`sweep_manifests`: delete unreferenced manifests older than the grace period (last
   look, conditional delete); the rest are *kept*.
2. :func:`live_chunks`: read every kept manifest afresh: the chunk ranges they name are live.
3. :func:`sweep_packs`: delete packs no kept manifest uses that are older than the grace
   period (last look, conditional delete).
4. :func:`repack`: copy the live chunks of old, mostly dead packs (and of old small ones, once
   there are many) into new packs, then point every kept manifest at them; the old pack is
   touched and left for a later run.
5. :func:`consolidate_index`: one index object of every live chunk; old index objects go.

Memory: about 200 bytes per distinct live chunk (some 3 MB per GiB of unique 64 KiB chunks),
plus the pack list of each kept manifest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import blake3

from optuna_cas.chunks.layout import PACK_TARGET
from optuna_cas.chunks.packer import PackWriter
from optuna_cas.chunks.runs import Location, RunCopier, extent, overlapping_runs, runs_table
from optuna_cas.chunks.store import ChunkStore, StoredObject
from optuna_cas.chunks.table import (
    INDEX_MAGIC,
    MANIFEST_MAGIC,
    ChunkTable,
    Entry,
    TableBuilder,
)
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.operations._bad_records import BadRecords
from optuna_cas.operations._chunk_listing import ChunkListing
from optuna_cas.operations._gc_report import GcReport
from optuna_cas.progress import Progress, ProgressCallback

__all__ = [
    "MERGE_SMALL_AT",
    "REPACK_BELOW",
    "SMALL_PACK",
    "LiveChunks",
    "collect_chunks",
    "consolidate_index",
    "live_chunks",
    "move_out",
    "repack",
    "sweep_manifests",
    "sweep_packs",
]

# A pack older than the grace period whose live bytes are less than this share of its size is
# repacked: its live chunks are copied (at most half a pack) to reclaim the rest.
REPACK_BELOW = 0.5
# Old packs smaller than this are merged into full ones once there are MERGE_SMALL_AT of them.
# Each upload of a version that changed little writes a small pack of its own, and a delta
# names the one its changed bytes went to, so a file saved hundreds of times comes to name
# a pack per version: an upload looks at each (a stat, twice), a read opens each.
SMALL_PACK = PACK_TARGET // 8
MERGE_SMALL_AT = 16
# Entries per consolidated index object: 24 MB, well below what a reader accepts (64 MiB).
_INDEX_PART = 500_000


@dataclass
class LiveChunks:
    """The chunks kept manifests name, by pack, and which packs each kept manifest uses.

    Attributes:
        by_pack: Pack hex digest to ``{(offset, length): chunk digest}``: the ranges named
            (a changed chunk stored as a delta names ranges inside another chunk, so ranges
            may overlap).
        packs: Pack hex digest to the pack's digest (with the size manifests give it).
        users: Each kept manifest with the hex digests of the packs it names.

    Example:
        >>> LiveChunks().live_bytes("ab" * 32)
        0
    """

    by_pack: dict[str, dict[tuple[int, int], bytes]] = field(default_factory=dict)
    packs: dict[str, Digest] = field(default_factory=dict)
    users: list[tuple[StoredObject, frozenset[str]]] = field(default_factory=list)

    def add(self, obj: StoredObject, table: ChunkTable) -> None:
        """Count ``table`` (the manifest ``obj``) as kept."""
        for pack in table.packs:
            self.packs.setdefault(pack.hexdigest, pack)
        for chunk, number, length, offset in table:
            ranges = self.by_pack.setdefault(table.packs[number].hexdigest, {})
            ranges.setdefault((offset, length), chunk)
        self.users.append((obj, frozenset(p.hexdigest for p in table.packs)))

    def live_bytes(self, pack: str) -> int:
        """Bytes of ``pack`` some kept manifest names (each byte once: ranges may overlap)."""
        total = end = 0
        for offset, length in sorted(self.by_pack.get(pack, {})):
            total += max(0, offset + length - max(offset, end))
            end = max(end, offset + length)
        return total


def collect_chunks(
    chunks: ChunkStore,
    listing: ChunkListing,
    referenced: set[str],
    report: GcReport,
    *,
    now: float,
    grace_period: float,
    dry_run: bool,
    progress: ProgressCallback | None = None,
) -> None:
    """Steps 1 to 5 above, after blobs were collected; fills ``report`` in.

    Args:
        chunks: The store's chunked content.
        listing: What step (a) listed, before refs were listed.
        referenced: Hex digests the refs (and bad refs' bytes) name.
        report: Receives the counts.
        now: gc's start: every age is measured from it.
        grace_period: Seconds.
        dry_run: Only report.
        progress: As for :func:`optuna_cas.gc`.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> chunks, report = ChunkStore(MemoryBackend()), GcReport(dry_run=False)
        >>> listing = ChunkListing.of(chunks)
        >>> collect_chunks(chunks, listing, set(), report, now=0.0, grace_period=0.0,
        ...                dry_run=False)
        >>> report.packs_deleted
        []
    """
    report.manifests_scanned = len(listing.manifests)
    report.packs_scanned = len(listing.packs)
    report.index_objects_scanned = len(listing.indexes)
    timing = (now, grace_period)
    kept = sweep_manifests(chunks, listing, referenced, report, timing, dry_run, progress)
    live = live_chunks(chunks, kept, report)
    if live is None:
        return  # a kept manifest could not be read: any pack may be its
    sweep_packs(chunks, listing, live, report, timing, dry_run, progress)
    moved, gone = repack(chunks, listing, live, report, timing, dry_run, progress)
    consolidate_index(chunks, listing, live, (moved, gone), report, timing, dry_run)


def _old(obj: StoredObject, timing: tuple[float, float]) -> bool:
    # Measured against gc's start, not now: a slow sweep must not widen the window.
    now, grace_period = timing
    return now - obj.modified > grace_period


def _sweep(
    chunks: ChunkStore,
    doomed: list[StoredObject],
    deleted: list[str],
    report: GcReport,
    timing: tuple[float, float],
    dry_run: bool,
    sweep: Progress,
) -> list[StoredObject]:
    """The last look and the conditional delete of each of ``doomed``; those spared.

    The keys of those deleted go to ``deleted``, their bytes to ``report.bytes_freed``.
    """
    spared = []
    for obj in doomed:
        fresh = chunks.restat(obj)
        # Spared if gone already, or re-used (touched or re-published) since the listing.
        if fresh is None or not _old(fresh, timing):
            spared.append(obj)
        elif dry_run or chunks.remove_if_unchanged(fresh):
            deleted.append(obj.key)
            report.bytes_freed += fresh.size
        else:
            spared.append(obj)
        sweep.advance(1)
    return spared


def sweep_manifests(
    chunks: ChunkStore,
    listing: ChunkListing,
    referenced: set[str],
    report: GcReport,
    timing: tuple[float, float],
    dry_run: bool,
    progress: ProgressCallback | None = None,
) -> list[StoredObject]:
    """Delete unreferenced manifests older than the grace period; return the kept ones.

    A manifest whose delete is refused (re-used since the listing) is kept, so the packs it
    names stay live.
    """
    doomed = [m for m in listing.manifests if m.hexdigest not in referenced and _old(m, timing)]
    doomed_keys = {m.key for m in doomed}
    kept = [m for m in listing.manifests if m.key not in doomed_keys]
    sweep = Progress("gc: deleting unreferenced manifests", len(doomed), progress)
    return kept + _sweep(chunks, doomed, report.manifests_deleted, report, timing, dry_run, sweep)


def live_chunks(
    chunks: ChunkStore, kept: Iterable[StoredObject], report: GcReport
) -> LiveChunks | None:
    """Read every kept manifest afresh; None (and ``report.bad_manifests``) if one is bad.

    A kept manifest that cannot be read might name any pack, so then no pack is deleted or
    repacked in this run. A backend error (network, permissions) stops gc.
    """
    live = LiveChunks()
    bad = BadRecords()
    for obj in kept:
        try:
            table = chunks.read_manifest(obj)
        except ArtifactNotFound:
            continue  # removed meanwhile (verify --quarantine, say): it names nothing now
        except IntegrityError as e:
            bad(obj.key, str(e))
            continue
        live.add(obj, table)
    if bad:
        report.bad_manifests = sorted(bad.reasons)
        bad.warn("gc (packs left alone)", chunks.backend.describe(), "manifests")
        return None
    return live


def sweep_packs(
    chunks: ChunkStore,
    listing: ChunkListing,
    live: LiveChunks,
    report: GcReport,
    timing: tuple[float, float],
    dry_run: bool,
    progress: ProgressCallback | None = None,
) -> None:
    """Delete packs no kept manifest uses and older than the grace period."""
    doomed = [p for h, p in listing.packs.items() if h not in live.packs and _old(p, timing)]
    sweep = Progress("gc: deleting unused packs", len(doomed), progress)
    _sweep(chunks, doomed, report.packs_deleted, report, timing, dry_run, sweep)


def repack(
    chunks: ChunkStore,
    listing: ChunkListing,
    live: LiveChunks,
    report: GcReport,
    timing: tuple[float, float],
    dry_run: bool,
    progress: ProgressCallback | None = None,
) -> tuple[dict[bytes, Location], set[str]]:
    """Copy the live chunks of old, mostly dead or small packs into new ones; rewrite manifests.

    Chunks also stored in a pack that stays are pointed there instead of copied (duplicates
    from racing uploads are reclaimed this way). Each chunk copied is verified on the way. A
    pack whose chunks cannot all be read (corrupt, gone) is left as it is and its manifests
    unchanged; ``optuna-cas verify`` reports it. Returns where each moved chunk is now, and
    the packs no kept manifest uses any more.
    """
    old = [
        obj
        for hexdigest, obj in listing.packs.items()
        if hexdigest in live.packs and _old(obj, timing) and obj.size == live.packs[hexdigest].size
    ]
    small = sorted((obj for obj in old if obj.size < SMALL_PACK), key=lambda obj: -obj.size)
    # In tiers: the largest (what the last merge wrote, most often) goes in again only once
    # the others add up to its size. Else every run copied it, and rewrote every manifest
    # naming it (a file's every version), again.
    total, first = sum(obj.size for obj in small), 0
    while first < len(small) and 2 * small[first].size > total:
        total -= small[first].size
        first += 1
    small = small[first:]
    merged = {obj.key for obj in small} if len(small) >= MERGE_SMALL_AT else set()
    candidates = [
        obj
        for obj in old
        if obj.key in merged or live.live_bytes(obj.hexdigest) < REPACK_BELOW * obj.size
    ]
    if not candidates:
        return {}, set()
    leaving = {obj.hexdigest for obj in candidates}
    # Chunks also in a pack that stays are pointed there instead of copied: only if that copy
    # reads back right (a damaged duplicate would become the file's only copy).
    in_candidates = {chunk for obj in candidates for chunk in live.by_pack[obj.hexdigest].values()}
    elsewhere = _live_locations(listing, live, {}, leaving)
    moved = _sound_copies(chunks, {c: elsewhere[c] for c in in_candidates if c in elsewhere})
    plans = []  # per old pack: its live ranges still to copy, as a table and as runs
    picked: set[bytes] = set()
    for obj in candidates:
        wanted = [
            Entry(chunk, 0, length, offset)
            for (offset, length), chunk in live.by_pack[obj.hexdigest].items()
            if chunk not in moved
        ]
        # Ranges that overlap (a delta's, inside the chunk it replaced) go as one run.
        runs = [r for r in overlapping_runs(wanted) if len(r) > 1 or r[0].chunk not in picked]
        if not runs:
            continue  # every live chunk is also in a pack that stays: nothing to copy
        picked.update(e.chunk for run in runs for e in run)
        plans.append((obj, runs_table(runs, (live.packs[obj.hexdigest],)), runs))
    report.bytes_repacked = sum(extent(run) for _, _, runs in plans for run in runs)
    if dry_run:
        report.packs_repacked = sorted(obj.key for obj in candidates)
        return {}, set()
    moved |= _copy_chunks(chunks, plans, report.bytes_repacked, progress)
    done = [obj for obj in candidates if _all_moved(live, obj.hexdigest, moved)]
    report.packs_repacked = sorted(obj.key for obj in done)
    gone = {obj.hexdigest for obj in done}
    # Readers that loaded a manifest before its rewrite still read these packs: each stays
    # until a run at least one grace period after the rewrite finds it unused, so it is
    # touched after the rewrite. And before: a role that may not touch stops gc there, with
    # every manifest as it was (touched only after, a refused touch left the manifests moved
    # and the old pack at its old time, which the next run deleted under such readers).
    for obj in done:
        chunks.touch(obj)
    report.manifests_rewritten = _point_manifests_at(chunks, live, gone, moved)
    for obj in done:
        chunks.touch(obj)
    return moved, gone


def move_out(
    chunks: ChunkStore, pack: StoredObject, users: list[tuple[StoredObject, ChunkTable]]
) -> bool:
    """Copy the ranges of ``pack`` that ``users`` name into a new pack; point them there.

    ``verify --quarantine``'s way out for a damaged pack that files reading back still use:
    their ranges are sound, and once copied (each verified on the way, as repack copies) and
    the manifests rewritten, those files no longer need the pack; the caller leaves it for
    gc, as repack leaves a repacked pack. The manifests are rewritten only if every range
    moved; returns whether they were.
    """
    live = LiveChunks()
    for obj, table in users:
        live.add(obj, table)
    ranges = live.by_pack.get(pack.hexdigest, {})
    runs = overlapping_runs(Entry(c, 0, n, at) for (at, n), c in ranges.items())
    table = runs_table(runs, (live.packs[pack.hexdigest],))
    moved = _copy_chunks(chunks, [(pack, table, runs)], sum(map(extent, runs)), None)
    if not _all_moved(live, pack.hexdigest, moved):
        return False
    _point_manifests_at(chunks, live, {pack.hexdigest}, moved)
    return True


def _sound_copies(chunks: ChunkStore, where: dict[bytes, Location]) -> dict[bytes, Location]:
    """The entries of ``where`` whose range holds bytes matching their chunk's digest."""
    sound = {}
    for chunk, (pack, offset, length) in where.items():
        try:
            data = chunks.read_range(pack, offset, length)
        except (ArtifactNotFound, IntegrityError, OSError):
            continue
        if len(data) == length and blake3.blake3(data).digest() == chunk:
            sound[chunk] = (pack, offset, length)
    return sound


def _copy_chunks(
    chunks: ChunkStore,
    plans: list[tuple[StoredObject, ChunkTable, list[list[Entry]]]],
    total: int,
    progress: ProgressCallback | None,
) -> dict[bytes, Location]:
    """Write the planned runs into new packs (each range verified); where each range went."""
    copier = RunCopier(PackWriter(chunks.backend, TableBuilder(INDEX_MAGIC)))
    bar = Progress("gc: repacking", total, progress)
    try:
        for obj, table, runs in plans:
            with chunks.read_chunks(table, f"gc's repack of {obj.key}") as reader:
                try:
                    copier.copy(runs, reader.chunks())
                except (ArtifactNotFound, IntegrityError):
                    # This pack stays, its manifests unchanged (verify reports it); the runs
                    # copied before are verified copies, named only by the index.
                    pass
            bar.advance(sum(extent(run) for run in runs))
        moved = copier.finish()
    except BaseException:
        copier.writer.abort()
        raise
    chunks.publish_index(copier.writer.index)
    return moved


def _all_moved(live: LiveChunks, pack: str, moved: dict[bytes, Location]) -> bool:
    return all(
        chunk in moved and moved[chunk][2] == length
        for (_offset, length), chunk in live.by_pack[pack].items()
    )


def _point_manifests_at(
    chunks: ChunkStore, live: LiveChunks, gone: set[str], moved: dict[bytes, Location]
) -> int:
    """Rewrite each kept manifest that uses a repacked pack; return how many were."""
    rewritten = 0
    for obj, packs in live.users:
        if not packs & gone:
            continue
        try:
            table = chunks.read_manifest(obj)  # afresh, right before replacing it
        except (ArtifactNotFound, IntegrityError):
            continue
        new = TableBuilder(MANIFEST_MAGIC)
        for chunk, number, length, offset in table:
            pack = table.packs[number]
            where = moved.get(chunk) if pack.hexdigest in gone else None
            if where is not None and where[2] == length:
                pack, offset = where[0], where[1]
            new.add_raw(chunk, length, new.pack_number(pack), offset)
        assert table.file is not None
        chunks.replace_manifest(new, table.file)
        rewritten += 1
    return rewritten


def consolidate_index(
    chunks: ChunkStore,
    listing: ChunkListing,
    live: LiveChunks,
    relocation: tuple[dict[bytes, Location], set[str]],
    report: GcReport,
    timing: tuple[float, float],
    dry_run: bool,
) -> None:
    """Publish one index of every live chunk where it now is; delete old index objects.

    Index objects are hints (an uploader checks every pack it reuses), so an entry lost here
    costs at most a duplicate chunk, never data; young ones stay for uploads still running.
    """
    old = [i for i in listing.indexes if _old(i, timing)]
    if dry_run:
        report.index_objects_deleted = len(old)
        return
    keep: set[str] = set()
    part = TableBuilder(INDEX_MAGIC)
    # In digest order: a run that changes nothing writes an index of the same name again.
    where = _live_locations(listing, live, *relocation)
    for chunk, (pack, offset, length) in sorted(where.items()):
        part.add_raw(chunk, length, part.pack_number(pack), offset)
        if len(part) >= _INDEX_PART:
            keep.add(chunks.publish_index(part) or "")
            part = TableBuilder(INDEX_MAGIC)
    keep.add(chunks.publish_index(part) or "")
    for obj in old:
        # One with the consolidated index's name (nothing changed since) is it: it stays.
        if obj.hexdigest not in keep and chunks.remove(obj):
            report.index_objects_deleted += 1
            report.bytes_freed += obj.size


def _live_locations(
    listing: ChunkListing, live: LiveChunks, moved: dict[bytes, Location], gone: set[str]
) -> dict[bytes, Location]:
    """Every live chunk, once: where ``moved`` puts it, else where a kept manifest names it.

    Never in a pack of ``gone`` (repacked, or leaving) or one not listed whole.
    """
    where: dict[bytes, Location] = dict(moved)
    for hexdigest, ranges in live.by_pack.items():
        pack = live.packs[hexdigest]
        if hexdigest in gone or not listing.has_pack(pack):
            continue  # repacked, or missing or damaged (verify reports it): no hint to it
        for (offset, length), chunk in ranges.items():
            where.setdefault(chunk, (pack, offset, length))
    return where
