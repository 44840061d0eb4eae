"""``verify``: every ref has its content, and everything stored has the bytes its name says.

That is blobs, and chunked files: manifests, packs and index objects (see
:mod:`optuna_cas.operations._verify_chunks`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from optuna_cas._threads import map_in_threads
from optuna_cas.chunks.table import ChunkTable
from optuna_cas.content import QUARANTINE_PREFIX, BlobInfo, ContentStore
from optuna_cas.digest import Digest
from optuna_cas.exceptions import IntegrityError
from optuna_cas.operations import _verify_chunks as chunked
from optuna_cas.operations._bad_records import BadRecords
from optuna_cas.operations._chunk_listing import ChunkListing
from optuna_cas.operations._rehash import rehash_problem
from optuna_cas.operations._verify_report import MissingBlob, MissingPack, VerifyReport
from optuna_cas.progress import Progress, ProgressCallback
from optuna_cas.stores.base import ContentAddressedArtifactStore, require_content_store

__all__ = ["MissingBlob", "MissingPack", "VerifyReport", "verify"]


def verify(
    store: ContentAddressedArtifactStore,
    *,
    deep: bool = True,
    quarantine: bool = False,
    workers: int = 4,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Check a store: bad refs, refs to missing content, corrupt objects (deep), orphans.

    Chunked files are checked too: shallow, every manifest parses and every pack it names is
    stored with the right size; deep, every pack is re-hashed and every chunked file read
    back through its manifest (each chunk and the whole file verified). Every problem is
    reported with its reason (``report.reasons``) and the check goes on; a FIFO, socket or
    device planted at a key is reported (as a malformed ref or a corrupt object), never read
    from, so verify cannot hang on one.

    Args:
        store: Any optuna-cas store (also behind ``Backoff``; a cache is bypassed: the
            backend's own bytes are checked).
        deep: Re-hash every blob and pack and read every chunked file (reads everything);
            else check presence and size only.
        quarantine: Move corrupt blobs, packs and manifests, and bad index objects, to
            ``quarantine/...``, so that the next upload of the same bytes writes a good copy
            (and reads fail as missing, not as corrupt). One that cannot be moved is listed
            in ``report.quarantine_failed`` with the reason; the rest are still moved.
        workers: Objects hashed in parallel (BLAKE3 and I/O release the GIL).
        progress: Called as ``progress(task, done, total)``; ``total`` is in bytes when deep.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is False if anything is wrong.

    Example:
        >>> import io
        >>> from optuna_cas import MemoryArtifactStore
        >>> store = MemoryArtifactStore(); store.write("a", io.BytesIO(b"abc"))
        >>> verify(store).ok
        True
    """
    content = require_content_store(store, "verify")
    report = VerifyReport(deep=deep)
    bad = BadRecords()
    # Refs first: an upload stores its content before its ref, so whatever a listed ref
    # names was stored before the listings below began (an upload racing verify is not
    # "missing"). ~5 ms requests remotely: more threads than blobs are hashed with.
    named: list[tuple[str, Digest]] = []  # (not the refs: small files' bytes are inside)
    with_ref: set[str] = set()
    for ref in content.iter_refs(workers=max(1, workers) * 2, on_bad=bad):
        report.refs_checked += 1
        with_ref.add(ref.artifact_id)
        if ref.inline is None:  # else its content was checked against its digest on reading
            named.append((ref.artifact_id, ref.digest))
    blobs = {info.hexdigest: info for info in content.iter_blobs()}  # one key per digest
    report.blobs_checked = len(blobs)
    listing = ChunkListing.of(content.chunks)
    manifests = chunked.check_manifests(content.chunks, listing, report)
    chunked.check_indexes(content.chunks, listing, report)
    listed = {m.hexdigest for m in listing.manifests}
    referenced: set[str] = set()
    for artifact_id, digest in named:
        hexdigest = digest.hexdigest
        referenced.add(hexdigest)
        problem = _content_problem(blobs.get(hexdigest), manifests.get(hexdigest), digest.size)
        # A manifest listed but not parsed is reported as corrupt already, not as missing;
        # an artifact removed (and its content collected) since the refs were read, not at all.
        if problem is None or (problem == "missing" and hexdigest in listed):
            continue
        if _still_named(content, artifact_id, digest):
            report.missing.append(MissingBlob(artifact_id, str(digest), problem))
    report.malformed_refs = sorted(bad.reasons)
    with_ref.update(bad.reasons)
    report.optuna_store_files = sorted(
        info.key for info in content.iter_optuna_store_objects(without=with_ref)
    )
    report.reasons.update(bad.reasons)
    report.orphans = sorted(
        [info.key for h, info in blobs.items() if h not in referenced]
        + chunked.chunk_orphans(listing, manifests, referenced, newer=report.newer_manifests())
    )

    if deep:
        checks: list[chunked.Check] = [
            (info.key, "corrupt", _blob_check(store, info)) for info in blobs.values()
        ]
        checks += chunked.deep_checks(content.chunks, listing, manifests)
        total = sum(i.stored_size for i in blobs.values())
        bar = Progress("verify: hashing", total + chunked.deep_bytes(listing, manifests), progress)
        problems = map_in_threads(lambda check: check[2](bar), checks, workers)
        report.bytes_hashed = bar.done
        for (key, kind, _), problem in zip(checks, problems, strict=True):
            if problem is not None:
                (report.corrupt if kind == "corrupt" else report.bad_files).append(key)
                report.reasons[key] = problem
        report.bad_files.sort()
        chunked.find_lying_indexes(content.chunks, listing, manifests, report)
    report.corrupt.sort()
    if quarantine:
        blob_keys = {info.key: info for info in blobs.values()}
        for key in report.corrupt:
            if key in blob_keys:
                move = functools.partial(content.quarantine_blob, blob_keys[key])
                chunked.quarantine_one(key, move, report, QUARANTINE_PREFIX)
        chunked.quarantine_chunked(content.chunks, listing, manifests, report, QUARANTINE_PREFIX)
        report.quarantined.sort()
        report.quarantine_failed.sort()
    return report


def _still_named(content: ContentStore, artifact_id: str, digest: Digest) -> bool:
    """Whether ``artifact_id``'s ref still names ``digest`` (read afresh)."""
    try:
        now = content.ref_now(artifact_id)
    except IntegrityError:
        return False
    return now is not None and now.digest == digest


def _content_problem(
    blob: BlobInfo | None, manifest: tuple[object, ChunkTable] | None, size: int
) -> str | None:
    """Why a ref's content is not there (``"missing"``, ``"size <n>"``), or None."""
    if blob is not None and blob.stored_size == size:
        return None
    if manifest is not None:
        stored = manifest[1].file
        return None if stored is None or stored.size == size else f"size {stored.size}"
    return "missing" if blob is None else f"size {blob.stored_size}"


def _blob_check(
    store: ContentAddressedArtifactStore, info: BlobInfo
) -> Callable[[Progress], str | None]:
    """Re-hash one blob straight from the backend (never from a cache); None if it is good."""
    return lambda bar: rehash_problem(
        lambda: store.content.open_stored_blob(info), info.hexdigest, info.algorithm, bar
    )
