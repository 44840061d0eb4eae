"""``reconcile``: cross-check a study's Optuna metadata against the store, and repair it.

Optuna's metadata (``artifacts:<id>`` system attributes) and the store's refs are written by
different hands: optuna-dashboard removes a ref and then writes its tombstone (which a finished
trial refuses), ``optuna-cas rm`` without ``--trial`` removes only the ref, Optuna's own
``upload_artifact`` writes metadata first. Each can leave metadata naming an artifact that no
longer downloads. The metadata records what a ref needs (digest, size, file name, ...), so
while the blob is still stored, the ref can be written again; otherwise the deletion is
recorded where the dashboard and :func:`optuna_cas.get_all_artifact_meta` look for it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from optuna_cas._delete import DELETED_ATTR_PREFIX, is_live, record_deletion
from optuna_cas._meta import ArtifactMeta
from optuna_cas._optuna import import_optuna
from optuna_cas._threads import map_in_threads
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, OptunaCasError
from optuna_cas.operations._reconcile_report import CATEGORIES, Finding, ReconcileReport
from optuna_cas.operations._study_metadata import MetadataEntry, read_study_metadata
from optuna_cas.refs import INLINE_LIMIT, ArtifactRef
from optuna_cas.refstore import RefStore
from optuna_cas.stores.base import ContentAddressedArtifactStore, require_content_store

__all__ = ["CATEGORIES", "Finding", "ReconcileReport", "reconcile"]

OTHER_STUDIES_NOTE = "named by no metadata of this study: it may belong to another study"
WRONG_STORE_NOTE = (
    "none of the study's artifacts is in this store (the right one? if so, delete each with "
    "'optuna-cas rm ID --storage URL --study NAME [--trial N]')"
)
FINISHED_TRIAL_NOTE = (
    "the trial has finished, so the deletion is recorded on the study as "
    f"'{DELETED_ATTR_PREFIX}<id>': optuna-cas honours it, Optuna's own listing and "
    "optuna-dashboard still show the artifact"
)


def reconcile(
    store: ContentAddressedArtifactStore, study: Any, *, repair: bool = False, workers: int = 8
) -> ReconcileReport:
    """Cross-check the artifact metadata of a study (every trial and the study) with the store.

    Each live ``artifacts:<id>`` entry is looked up in the store. One whose ref is gone is
    *dangling*: with ``repair``, its ref is written again from the metadata (same ID, digest,
    size, file name, mimetype, encoding, time) when the blob is still stored, so downloads
    work again; when the bytes are gone, the deletion is recorded as optuna-dashboard
    records it (JSON ``null``; for a finished trial, which Optuna does not let anyone change,
    ``artifacts-deleted:<id>`` on the study), unless the store holds nothing of the study at
    all (the wrong store, most likely). Conflicting refs, malformed entries and refs no
    metadata names are reported and left alone. A second run after a repair finds nothing.

    Args:
        store: The optuna-cas store the study's artifacts were uploaded to.
        study: An ``optuna.Study``.
        repair: Rebuild refs and record deletions (else only report).
        workers: Refs and blobs looked up in parallel (each is one request remotely).

    Returns:
        A :class:`ReconcileReport`; ``report.ok`` is False while anything dangles.

    Example:
        >>> import optuna, os, tempfile
        >>> from optuna_cas import MemoryArtifactStore, upload_artifact
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> path = os.path.join(tempfile.mkdtemp(), "x.txt"); _ = open(path, "w").write("x" * 5000)
        >>> store, study = MemoryArtifactStore(), optuna.create_study()
        >>> artifact_id = upload_artifact(artifact_store=store, file_path=path, study_or_trial=study)
        >>> store.remove(artifact_id)  # the ref goes, the metadata stays
        >>> [f.artifact_id for f in reconcile(store, study).repairable] == [artifact_id]
        True
        >>> reconcile(store, study, repair=True).ok, reconcile(store, study).ok
        (True, True)
    """
    optuna = import_optuna()
    if not isinstance(study, optuna.study.Study):
        raise TypeError(f"study must be an optuna Study, got {type(study).__name__}")
    content = require_content_store(store, "reconcile")
    report = ReconcileReport(repair=repair)
    entries, malformed, gone = read_study_metadata(study._storage, study._study_id)
    report.malformed = [Finding(*found) for found in malformed]
    report.entries_checked = len(entries) + len(malformed)

    # A fresh RefStore: refs a cached store remembers may have been removed by someone else.
    refs: dict[str, ArtifactRef] = {}
    damaged: dict[str, str] = {}
    wanted = [entry.meta.artifact_id for entry in entries]
    for ref in RefStore(content.backend).iter_refs(
        wanted, workers=workers, on_bad=damaged.__setitem__
    ):
        refs[ref.artifact_id] = ref
    digests = {ref.digest for ref in refs.values() if ref.inline is None}
    digests |= {
        e.digest for e in entries if e.digest is not None and e.meta.artifact_id not in refs
    }
    stored = dict(zip(digests, map_in_threads(content.has_blob, digests, workers), strict=True))

    lost = [
        found
        for entry in entries
        if (
            found := _check(store, entry, refs.get(entry.meta.artifact_id), damaged, stored, report)
        )
    ]
    # Pointed at the wrong store, every artifact looks lost: record nothing deleted then.
    known = bool(refs or damaged or report.consistent) or any(stored.values())
    _settle_lost(lost, report, known=known)

    named = {e.meta.artifact_id for e in entries} | {f.artifact_id for f in report.malformed}
    for artifact_id in content.iter_ref_ids():
        report.refs_listed += 1
        if artifact_id in named:
            continue
        if artifact_id in gone:
            why = "its metadata records it deleted; 'optuna-cas rm ID' removes the ref"
            report.unreferenced.append(Finding(artifact_id, gone[artifact_id], why))
        else:
            report.unreferenced.append(Finding(artifact_id, None, OTHER_STUDIES_NOTE))
    return report


def _check(
    store: ContentAddressedArtifactStore,
    entry: MetadataEntry,
    ref: ArtifactRef | None,
    damaged: dict[str, str],
    stored: dict[Digest, bool],
    report: ReconcileReport,
) -> tuple[MetadataEntry, str] | None:
    """Classify one entry into the report, rebuilding its ref if asked to.

    Returns the entry and the reason if its bytes are lost (see :func:`_settle_lost`).
    """
    artifact_id, recorded = entry.meta.artifact_id, entry.digest

    def note(findings: list[Finding], reason: str) -> None:
        findings.append(Finding(artifact_id, entry.trial_number, reason))

    if ref is not None:
        if recorded is not None and ref.digest != recorded:
            note(
                report.conflicts,
                f"the store's ref names {ref.digest} ({ref.size} bytes) but the metadata "
                f"recorded {recorded} ({recorded.size} bytes)",
            )
        elif ref.inline is None and not stored.get(ref.digest, False):
            note(report.missing_blobs, f"its blob {ref.digest} is missing from the store")
        else:
            note(report.consistent, "ref present" + ("" if recorded else " (no digest recorded)"))
        return None
    damage = damaged.get(artifact_id)
    if damage is None and _has_legacy_object(store, artifact_id):
        note(report.consistent, "no ref: an object Optuna's own store wrote is served")
        return None
    no_ref = f"the ref is damaged ({damage})" if damage else "no ref in the store"
    if recorded is not None and stored.get(recorded, False):
        if not report.repair:
            note(report.repairable, f"{no_ref}; its blob {recorded} is stored: repair rebuilds it")
            return None
        if not is_live(entry.target, artifact_id):
            return None  # deleted while we looked: nothing to mend
        try:
            if _rebuild_ref(store, entry.meta, recorded):
                note(report.rebuilt, f"ref rebuilt from the metadata ({recorded})")
                return None
        except (OptunaCasError, OSError) as e:
            note(report.repairable, f"{no_ref}; rebuilding it failed: {e}")
            return None
        no_ref += "; its blob was collected during the repair"
    elif recorded is not None:
        no_ref += f" and its blob {recorded} is not stored"
        if recorded.size <= INLINE_LIMIT:
            no_ref += " (content this small is kept inside its ref, and went with it)"
    else:
        no_ref += " and the metadata records no digest (written by Optuna or optuna-dashboard)"
    if damage is not None:  # the ref may still be mended by hand; never hide the artifact
        note(report.conflicts, f"{no_ref}: nothing to rebuild the ref from")
        return None
    return entry, no_ref


def _settle_lost(
    lost: list[tuple[MetadataEntry, str]], report: ReconcileReport, *, known: bool
) -> None:
    """Report lost artifacts; with ``repair``, record them deleted as the dashboard does.

    A tombstone overwrites the entry, so it is written only if the store is ``known`` to
    hold some trace of the study (a ref, a blob or an object of one of its artifacts).
    """
    for entry, reason in lost:
        artifact_id, number = entry.meta.artifact_id, entry.trial_number
        if not report.repair:
            # Say what --repair will do: nothing, when the store holds no trace of the study.
            what = "repair records it deleted" if known else f"repair leaves it: {WRONG_STORE_NOTE}"
            report.lost.append(Finding(artifact_id, number, f"{reason}: {what}"))
        elif not known:
            why = f"{reason}; not recorded deleted: {WRONG_STORE_NOTE}"
            report.lost.append(Finding(artifact_id, number, why))
        elif is_live(entry.target, artifact_id):  # else deleted while we looked
            on_study = record_deletion(entry.target, artifact_id)
            how = FINISHED_TRIAL_NOTE if on_study else "JSON null, the dashboard's tombstone"
            report.deleted.append(Finding(artifact_id, number, f"{reason}: deleted ({how})"))


def _has_legacy_object(store: ContentAddressedArtifactStore, artifact_id: str) -> bool:
    """Whether the store serves ``artifact_id`` without a ref (a file Optuna's store wrote)."""
    store.content.forget_ref(artifact_id)  # absent from the backend: a cache's memory is stale
    try:
        with store.content.open_artifact(artifact_id):
            return True
    except (ArtifactNotFound, IntegrityError):
        return False  # nothing there, or a FIFO, socket or damaged ref in its place


def _rebuild_ref(store: ContentAddressedArtifactStore, meta: ArtifactMeta, digest: Digest) -> bool:
    """Write the ref the metadata describes; False if gc took the blob meanwhile (ref undone)."""
    content = store.content  # reconcile checked it is one of ours
    created = meta.created if meta.created is not None else time.time()
    content.put_ref(
        ArtifactRef(meta.artifact_id, digest, meta.filename, meta.mimetype, meta.encoding, created)
    )
    # The blob had no ref, so gc could delete it between our check and our ref: check again,
    # as an upload does after writing its ref (see optuna_cas.operations.gc).
    if content.has_blob(digest):
        return True
    with contextlib.suppress(ArtifactNotFound):
        content.remove_ref(meta.artifact_id)
    return False
