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
checks it is still the file gc judged, and otherwise puts it back); on S3 and GCS that last
window (one HEAD to one DELETE, milliseconds) remains.

So the one assumption is that an upload takes less than ``grace_period`` - ``freshen_after``
(90 minutes with the defaults) from checking its blob to writing its ref, which normally
takes milliseconds. A process frozen for longer than that in exactly that gap (a
suspended laptop, say) is the residual risk; without locks or conditional deletes, which
S3 does not offer for this, it cannot be removed. Pick a longer ``grace_period`` if
your workers can stall for hours. The concurrency test (two uploaders, gc in a loop, every
re-used blob racing gc) checks the rest.

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

import re
import time
from dataclasses import dataclass, field

from optuna_cas.backends.base import temp_files_of
from optuna_cas.content import ContentStore
from optuna_cas.operations._bad_records import BadRecords
from optuna_cas.progress import Progress, ProgressCallback
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["DEFAULT_GRACE_PERIOD", "GcReport", "gc"]

DEFAULT_GRACE_PERIOD = 2 * 60 * 60.0  # seconds
# A temp file is written continuously while its upload runs, so one untouched for an hour
# belongs to a dead process. Never less than this, whatever grace_period says: a short grace
# is about blobs, and deleting a live upload's temp file would fail that upload.
STALE_TEMP_SECONDS = 60 * 60.0
# A digest as refs spell it: what a damaged ref may still tell about its blob.
_DIGEST_IN_REF = re.compile(rb"blake3:([0-9a-f]{64})")


@dataclass
class GcReport:
    """What a gc run found and did.

    Attributes:
        dry_run: Nothing was deleted.
        blobs_scanned: Blobs listed.
        refs_scanned: Refs listed.
        deleted: Keys of blobs deleted (in a dry run: that a real run would delete).
        bytes_freed: Their total size.
        kept_young: Unreferenced blobs spared because they are younger than the grace period.
        temp_files_removed: Leftovers of interrupted local writes removed.
        bad_refs: IDs of refs that could not be read (skipped; ``optuna-cas verify`` says
            why). Blobs whose digest appears in their bytes are kept.

    Example:
        >>> GcReport(dry_run=True).deleted_count
        0
    """

    dry_run: bool
    blobs_scanned: int = 0
    refs_scanned: int = 0
    deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_young: int = 0
    temp_files_removed: int = 0
    bad_refs: list[str] = field(default_factory=list)

    @property
    def deleted_count(self) -> int:
        """Number of blobs deleted (or to delete, in a dry run).

        Example:
            >>> GcReport(dry_run=False, deleted=["blobs/x"]).deleted_count
            1
        """
        return len(self.deleted)


def gc(
    store: ContentAddressedArtifactStore,
    *,
    dry_run: bool = False,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    allow_short_grace: bool = False,
    progress: ProgressCallback | None = None,
) -> GcReport:
    """Delete blobs that no ref points at and that are older than ``grace_period``.

    Safe while other processes upload to the store (see the module docstring for why). A bad
    ref is reported (``report.bad_refs`` and a warning) and skipped; gc goes on.

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
        ValueError: ``grace_period`` is too short (see ``allow_short_grace``).

    Example:
        >>> import io
        >>> from optuna_cas import MemoryArtifactStore
        >>> store = MemoryArtifactStore()
        >>> store.write("keep", io.BytesIO(b"kept")); store.write("drop", io.BytesIO(b"dropped"))
        >>> store.remove("drop")
        >>> report = gc(store, grace_period=0, allow_short_grace=True)
        >>> report.deleted_count, report.bytes_freed
        (1, 7)
    """
    content = store.content
    # (S3 reports times in whole seconds: keep grace_period - freshen_after well above 1 s
    # there; the defaults are 90 minutes apart.)
    if grace_period <= content.freshen_after and not allow_short_grace:
        raise ValueError(
            f"grace_period={grace_period!r}s is unsafe while other processes upload: it must "
            f"exceed the store's freshen_after ({content.freshen_after:g}s; "
            f"pass allow_short_grace=True if nothing uploads meanwhile)"
        )
    report = GcReport(dry_run=dry_run)
    now = time.time()
    # (a) blobs, then (b) refs: the order the safety argument relies on.
    old, young = {}, set()
    for info in content.iter_blobs():
        report.blobs_scanned += 1
        if now - info.modified > grace_period:
            old[info.hexdigest] = info
        else:
            young.add(info.hexdigest)
    referenced: set[str] = set()
    bad = BadRecords()
    for ref in content.iter_refs(on_bad=bad):
        report.refs_scanned += 1
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
    temps = temp_files_of(store.content.backend)
    if temps is None:
        return 0
    removed = 0
    for info in list(temps.list_temporary()):
        if info.modified < older_than:
            if not dry_run:
                temps.remove_temporary(info.key)
            removed += 1
    return removed
