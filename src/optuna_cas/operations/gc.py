"""``gc``: delete blobs no ref points at, safely while other processes upload.

Why a concurrent upload never loses its blob
--------------------------------------------
An upload U of content B does, in order:

1. stat B; if present, touch it when its time is older than ``FRESHEN_AFTER_SECONDS``
   (30 min), else write it. Either way B's time is now at most 30 min old;
2. write its ref R;
3. stat B again, and write it again if it is gone.

gc G does, in order: (a) list blobs and keep as candidates those older than
``grace_period`` (> 30 min); (b) list refs and drop every candidate a ref points at; (c) for
each remaining candidate, stat it again and delete it only if its time is still older than
gc's start minus ``grace_period``.

Suppose G deletes B while U's ref R points at B. Let t0 be G's start (before (a)). G's last
look found B's time older than t0 - ``grace_period``. U's step 1, at t1, left B's time at
least t1 - ``freshen_after``; hence t1 < t0 - (``grace_period`` - ``freshen_after``). R was
not in G's ref listing (b), which began after t0, so U wrote R after t0: U spent more than
``grace_period`` - ``freshen_after`` between its steps 1 and 2. (And if U's step 3 came after
G's delete, U found B gone and wrote it again.) Measuring ages from t0 rather than from the
moment of the last look matters: a sweep that takes long must not shorten the margin.

The argument needs G's delete to act on what its last look saw: if U re-used B *between* G's
last look and G's delete (touched it, or published a new copy, then wrote R and re-checked B),
an unconditional delete would remove what U just relied on. So where the backend can, the
delete is conditional (``remove_if_unchanged``: the local backend renames the file away,
checks it is still the file gc judged, and otherwise puts it back; GCS looks once more and
deletes only the generation and metageneration it saw, which a touch or a new copy changes);
on S3 that last window (one HEAD to one DELETE, milliseconds) remains.

Every time above is the store's: B's time is stamped by the store (the S3 or GCS server, the
file system), and U's "older than ``freshen_after``" and G's t0 are read from the store's clock
(:class:`~optuna_cas.backends.clock.StoreClock`), not from the worker's alone: an uploader
reading its own clock 2 hours behind would never freshen B, and a gc reading its own 2 hours
ahead would take a minute-old B as old. The store's time, read once, is carried forward on the
monotonic clock, which stops while a machine sleeps; so U freshens by the later of the two
readings and G deletes by the earlier, and G deletes nothing if it cannot read the store's
time. The argument then holds unless one machine's clock and its carried reading both lag.

So the one assumption is that an upload takes less than ``grace_period`` - ``freshen_after``
(90 minutes with the defaults) from checking its blob to writing its ref, which normally
takes milliseconds. A process frozen for longer than that in exactly that gap (a
suspended laptop, say) is the residual risk; without locks or conditional deletes, which
S3 does not offer for this, it cannot be removed. Pick a longer ``grace_period`` if
your workers can stall for hours. The concurrency test (two uploaders, gc in a loop, every
re-used blob racing gc) checks the rest.

``sync`` writes each ref it copies the same way, one content at a time: steps 1 to 3 for
that content (step 1 being the transfer, or a check that touches what the destination held
already), however long the rest of the sync takes.

A file of at most ``INLINE_LIMIT`` bytes (4 KiB) is kept inside its ref and has no blob: its
upload writes R alone, so there is no B to lose, and such a ref protects no blob (a blob
holding the same bytes, written by an older release, is collected like any other).

Chunked content: manifests, packs and index objects
---------------------------------------------------
A file of at least ``chunk_threshold`` bytes is stored as content-defined chunks in *packs*
(named by the pack's digest), a *manifest* that lists its chunks (named by the whole file's
digest, as its blob would be) and *index objects* (hints telling uploaders which chunks
which packs hold). A ref names the file's digest either way. gc extends the steps above:

(a) lists blobs, manifests, packs and index objects, all before (b) it lists refs;
(d) deletes each manifest that no ref names and that is older than ``grace_period``, after a
    last look and conditionally, as for blobs. Every other manifest listed is *kept*, one
    whose delete was refused (an upload re-used it meanwhile) included;
(e) reads every kept manifest afresh: the chunk ranges they name are *live*;
(f) deletes each pack no kept manifest uses that is older than ``grace_period`` (last look,
    conditional delete);
(g) *repacks* each pack older than ``grace_period`` whose live bytes are less than half its
    size: its live chunks are copied into new packs (each verified on the way; one that also
    sits in a pack that stays is pointed there instead), an index object of them is
    published, and every kept manifest using the old pack is replaced by one naming the new
    places (same key, same chunks, one atomic write). The old pack is not deleted now: it is
    touched (before the rewrite too, so that a refused touch leaves every manifest as it
    was) and left for a later run, which deletes it once no kept manifest uses it and it is
    a grace period old. So a reader that loaded the old manifest just before the rewrite
    keeps working until the next gc run at least, and for at least a grace period after the
    rewrite; readers and uploads re-read a manifest whenever they open or check a file;
(h) publishes one consolidated index object of every live chunk where it now is, then
    deletes the index objects listed in (a) that are older than ``grace_period``. Index
    objects are only hints: an uploader checks (and touches) every pack it reuses, so a
    stale or missing entry costs at most a duplicate chunk, which a later run reclaims.

If a kept manifest cannot be read (malformed, naming another file), it might name any pack:
(f) to (h) are skipped for the run and the manifest is reported in
:attr:`GcReport.bad_manifests`.

What gc cannot tell: a manifest that parses, describes its file and names sound chunks, but
not that file's chunks (edited by hand to name another file's pack, found by a probe). Only
reading every chunk shows the file's digest does not match; gc reads none, so it counts the
chunks named as live and the file's own packs as dead. The same holds for a ref edited to
name other content. ``verify(deep=True)`` reads every chunk and reports such a manifest
(and the packs it hides as orphans): run it before gc on a store whose files may have been
edited behind the library's back.

An upload U of a chunked file F does, in order:

1. for each chunk: reuse a pack an index object names, after a stat of that pack (once per
   upload) that touches it when older than ``freshen_after``, or append the chunk to a new
   pack of its own; then write its index object; then look at the manifest M(F) and every
   pack it names (touching each that is old), and write M(F) if it is absent, or over it if
   it names a pack that is gone;
2. write its ref R;
3. look at M(F) and every pack it names again, touching each older than ``freshen_after``;
   if any is gone, do 1 again (which writes what is gone, M(F) included).

Suppose G deletes a pack P that M(F) named when U looked at it in step 3, at time t3. (For
M(F) itself read "M(F) is referenced" for "P is live".)

* If R was in G's ref listing (b) and M(F) in its listing (a), G kept M(F), read it in (e)
  and found P live, and G deletes no live pack. (Only gc's repack and a repairing upload
  rewrite a manifest, and each names only packs it has just written or looked at.)
* Otherwise R or M(F) was written after G's listings began, so t3 > t0, and after U's look
  P's time is at least t3 - ``freshen_after`` > t0 - ``grace_period`` (gc requires
  ``grace_period`` > ``freshen_after``). If G's last look at P came after t3, G found P
  young and kept it. If it came before: either U touched P, and G's conditional delete,
  coming after U's look, refused; or U did not need to, and P's time was already young at
  G's last look, which then kept it. (Had G deleted P before t3, U would have found it gone
  and done step 1 again, which looks at and touches, after t0, every pack the manifest it
  leaves names: the same reasoning covers those.)

Unlike the blob argument, this one assumes nothing about how long an upload takes: step 3
touches what it looks at (a blob's re-check only stats it). What remains is the same as for
blobs: on S3 the window between G's last look and its delete (one HEAD to one
DELETE), and a clock on the uploader far off the store's.

Two gc runs at once are not expected, and lose no file either: each deletes only what its
own listings saw unused and old, and a repack only adds packs and leaves the old one in
place. A reader's window after a repack may then be shorter.

Bad refs
--------
A ref that cannot be read (malformed JSON, a record naming another ID, a FIFO at its key) is
reported in :attr:`GcReport.bad_refs` and with a
:class:`~optuna_cas.exceptions.MalformedRecordWarning`, and gc goes on: one bad record must
not stop the collection of the whole store. It names no blob gc can trust, but its bytes are
searched for digests (``blake3:<64 hex>``) and the blobs they name are kept: a damaged ref
can then still be repaired (from Optuna's metadata, which records the digest) while its blob
exists. Errors of the backend itself (network, permissions) still stop gc before it deletes
anything, since a ref it could not read might name any blob.

Temp files of interrupted local writes are removed too once untouched for the grace period,
and never sooner than an hour (``STALE_TEMP_SECONDS``): an upload in progress keeps writing its
temp file, so only a dead one's goes.
"""

from __future__ import annotations

import contextlib
import math
import re
import time

from optuna_cas.backends.base import temp_files_of
from optuna_cas.backends.clock import CLOCK_PREFIX
from optuna_cas.content import ContentStore
from optuna_cas.exceptions import ArtifactNotFound, InvalidKeyError
from optuna_cas.operations._bad_records import BadRecords
from optuna_cas.operations._chunk_listing import ChunkListing
from optuna_cas.operations._gc_chunks import collect_chunks
from optuna_cas.operations._gc_report import GcReport
from optuna_cas.progress import Progress, ProgressCallback
from optuna_cas.stores.base import ContentAddressedArtifactStore, require_content_store

__all__ = ["DEFAULT_GRACE_PERIOD", "GcReport", "gc"]  # GcReport: from _gc_report

DEFAULT_GRACE_PERIOD = 2 * 60 * 60.0  # seconds
# A temp file is written continuously while its upload runs, so one untouched for an hour
# belongs to a dead process. Never less than this, whatever grace_period says: a short grace
# is about blobs, and deleting a live upload's temp file would fail that upload.
STALE_TEMP_SECONDS = 60 * 60.0
# A digest as refs spell it: what a damaged ref may still tell about its blob.
_DIGEST_IN_REF = re.compile(rb"blake3:([0-9a-f]{64})")


def gc(
    store: ContentAddressedArtifactStore,
    *,
    dry_run: bool = False,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    allow_short_grace: bool = False,
    progress: ProgressCallback | None = None,
) -> GcReport:
    """Delete blobs and chunked files no ref names, once older than ``grace_period``.

    Packs no kept manifest uses go too; mostly dead and small ones are repacked. Safe while other
    processes upload to the store (see the module docstring for why). A bad ref is reported
    (``report.bad_refs`` and a warning) and skipped; gc goes on.

    Args:
        store: Any optuna-cas store (also behind ``Backoff`` or a cache).
        dry_run: Only report what would be deleted.
        grace_period: Seconds; blobs written or re-used more recently are kept.
        allow_short_grace: Accept a ``grace_period`` not above the store's ``freshen_after``
            (30 minutes by default), which is safe only when nothing uploads meanwhile.
        progress: Called as ``progress(task, done, total)`` while sweeping.

    Returns:
        A :class:`GcReport`.

    Raises:
        ValueError: ``grace_period`` is not a finite number >= 0, or is too short (see
            ``allow_short_grace``).
        StoreClockError: The store's time could not be read (nothing was deleted).

    Example:
        >>> import io
        >>> from optuna_cas import MemoryArtifactStore
        >>> store = MemoryArtifactStore()
        >>> store.write("keep", io.BytesIO(b"k" * 5000)); store.write("drop", io.BytesIO(b"d" * 7000))
        >>> store.remove("drop")
        >>> report = gc(store, grace_period=0, allow_short_grace=True)
        >>> report.deleted_count, report.bytes_freed
        (1, 7000)
    """
    content = require_content_store(store, "gc")
    if (
        isinstance(grace_period, bool)
        or not isinstance(grace_period, int | float)
        or not 0 <= grace_period < math.inf
    ):
        # NaN compares false with everything: it would pass the check below and keep all.
        raise ValueError(
            f"grace_period must be a finite number of seconds >= 0, got {grace_period!r}"
        )
    # (S3 reports times in whole seconds: keep grace_period - freshen_after well above 1 s
    # there; the defaults are 90 minutes apart.)
    if grace_period <= content.freshen_after and not allow_short_grace:
        raise ValueError(
            f"grace_period={grace_period!r}s is unsafe while other processes upload: it must "
            f"exceed the store's freshen_after ({content.freshen_after:g}s; "
            f"pass allow_short_grace=True if nothing uploads meanwhile)"
        )
    report = GcReport(dry_run=dry_run)
    # On the store's clock, as the uploads that freshen what they re-use measure ages: a gc
    # whose own clock runs ahead would otherwise see young blobs as old. A dry run deletes
    # nothing and writes nothing (reading the store's time writes): this machine's clock.
    now = time.time() if dry_run else content.clock.now_to_delete()
    # (a) blobs, manifests, packs and index objects, then (b) refs: the order the safety
    # argument relies on.
    old, young = {}, set()
    for info in content.iter_blobs():
        report.blobs_scanned += 1
        if now - info.modified > grace_period:
            old[info.hexdigest] = info
        else:
            young.add(info.hexdigest)
    chunked = ChunkListing.of(content.chunks)
    referenced: set[str] = set()
    bad = BadRecords()
    for ref in content.iter_refs(on_bad=bad):
        report.refs_scanned += 1
        if ref.inline is None:  # a small file's ref holds its content: it needs no blob
            referenced.add(ref.digest.hexdigest)
    report.bad_refs = sorted(bad.reasons)
    bad.warn("gc", content.describe(), "refs")
    for artifact_id in report.bad_refs:
        referenced |= _digests_named_in_bad_ref(content, artifact_id)
    report.kept_young = len(young - referenced)
    doomed = [info for digest, info in old.items() if digest not in referenced]
    sweep = Progress("gc: deleting unreferenced blobs", len(doomed), progress)
    for info in doomed:
        # (c) the last look: a dedup hit since (a) refreshed the blob's time.
        fresh = content.restat_blob(info)
        # Measured against gc's start, before refs were listed, not against now: a slow sweep
        # must not widen the window (the argument above counts from the ref listing).
        if fresh is not None and now - fresh.modified <= grace_period:
            report.kept_young += 1
        # Deleted only if still as last seen: an upload re-using it since then wins.
        elif fresh is not None and (dry_run or content.remove_blob_if_unchanged(fresh)):
            report.deleted.append(info.key)
            report.bytes_freed += fresh.stored_size
        sweep.advance(1)
    with content.naming_full_disk():  # a repack writes new packs
        collect_chunks(
            content.chunks,
            chunked,
            referenced,
            report,
            now=now,
            grace_period=grace_period,
            dry_run=dry_run,
            progress=progress,
        )
    report.temp_files_removed = _remove_stale_temp_files(
        store, now - max(grace_period, STALE_TEMP_SECONDS), dry_run
    )
    return report


def _digests_named_in_bad_ref(content: ContentStore, artifact_id: str) -> set[str]:
    """Hex digests spelled out in a ref that does not parse (none for a FIFO, say)."""
    data = content.read_raw_ref(artifact_id)
    return set() if data is None else {m.decode("ascii") for m in _DIGEST_IN_REF.findall(data)}


def _remove_stale_temp_files(
    store: ContentAddressedArtifactStore, older_than: float, dry_run: bool
) -> int:
    backend = store.content.backend
    removed = 0
    # The empty objects a store clock's reading writes and deletes at once: one stays when
    # its process died between the two, or may not delete (see backends.clock). Listed after
    # the deletions, so a clock/ that cannot be listed (a symlink in a local store, which
    # writes none there) must not fail gc and lose its report: there is nothing of ours.
    try:
        stale_probes = list(backend.list(CLOCK_PREFIX))
    except InvalidKeyError:
        stale_probes = []
    for info in stale_probes:
        if info.modified < older_than:
            if not dry_run:
                with contextlib.suppress(ArtifactNotFound):
                    backend.remove(info.key)
            removed += 1
    temps = temp_files_of(backend)
    if temps is None:
        return removed
    for info in list(temps.list_temporary()):
        if info.modified < older_than:
            if not dry_run:
                temps.remove_temporary(info.key)
            removed += 1
    return removed
