"""``sync``: copy refs and the blobs they need between stores, moving only missing blobs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from optuna_cas._seekable import CountingReader
from optuna_cas._threads import map_in_threads
from optuna_cas.backends.base import innermost
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.operations._bad_records import BadRecords
from optuna_cas.progress import Progress, ProgressCallback
from optuna_cas.refs import ArtifactRef
from optuna_cas.stores.base import ContentAddressedArtifactStore, require_content_store

__all__ = ["SyncReport", "same_location", "sync"]

# Why a blob was not copied, when the source lacks it.
_SOURCE_MISSING = "source blob {} is missing"


@dataclass
class SyncReport:
    """What :func:`sync` did.

    Attributes:
        refs_copied: IDs of refs written to the destination (including repaired ones).
        refs_skipped: Refs the destination already had (naming the same content).
        refs_repaired: IDs of destination refs that were malformed and were rewritten.
        blobs_copied: Blobs transferred.
        blobs_skipped: Blobs the destination already had (dedup across stores).
        bytes_copied: Blob bytes transferred.
        failed: ``(artifact_id, reason)`` of artifacts not copied: a bad source ref, or a
            source blob that is corrupt, missing or not a stored object.
        conflicts: ``(artifact_id, reason)`` of destination refs naming other content than
            the source's: left as they are.
        legacy_copied: IDs of objects Optuna's own store wrote at the source (no ref, no
            digest), stored at the destination as artifacts: hashed as they were copied.

    Example:
        >>> SyncReport().bytes_copied, SyncReport().ok
        (0, True)
    """

    refs_copied: list[str] = field(default_factory=list)
    refs_skipped: int = 0
    refs_repaired: list[str] = field(default_factory=list)
    blobs_copied: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    legacy_copied: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every artifact asked for is now at the destination as in the source.

        Example:
            >>> SyncReport(failed=[("a", "corrupt")]).ok
            False
        """
        return not (self.failed or self.conflicts)


def same_location(a: ContentStore, b: ContentStore) -> bool:
    """Whether two content stores keep their objects in the same place.

    The same directory (local stores describe themselves by their resolved path), or the same
    bucket and prefix on the same service. Two memory stores are the same only if they share
    their backend.

    Example:
        >>> import tempfile
        >>> from optuna_cas import open_store
        >>> where = tempfile.mkdtemp()
        >>> same_location(open_store(where).content, open_store(where + "/.").content)
        True
        >>> same_location(open_store("memory://").content, open_store("memory://").content)
        False
    """
    inner_a, inner_b = innermost(a.backend), innermost(b.backend)
    if a is b or inner_a is inner_b:
        return True
    where = a.describe()
    if where != b.describe() or where.startswith("memory:"):
        return False
    return _endpoint(inner_a) == _endpoint(inner_b)


def _endpoint(backend: object) -> object:
    """The service a remote backend's client talks to (None for local and unknown ones)."""
    try:
        client = getattr(backend, "client", None)  # S3 and GCS backends: their SDK client
    except Exception:  # cannot be built here (no credentials): sync itself will say so
        return None
    # boto3 (client.meta.endpoint_url), google-cloud-storage (client.api_endpoint).
    meta = getattr(client, "meta", None)
    return getattr(meta, "endpoint_url", None) or getattr(client, "api_endpoint", None)


def sync(
    src: ContentAddressedArtifactStore,
    dst: ContentAddressedArtifactStore,
    *,
    artifact_ids: Iterable[str] | None = None,
    workers: int = 4,
    progress: ProgressCallback | None = None,
) -> SyncReport:
    """Copy artifacts (refs and their blobs) from ``src`` to ``dst``; idempotent.

    The destination's blobs are listed once (one batched existence check for all); only
    missing blobs are transferred, in parallel, verified against their digest while they
    stream. Refs are written after their blobs, so the destination never has a ref without its
    blob. A second run transfers nothing.

    One bad item never stops the others. A source ref that cannot be read, or whose blob is
    corrupt, missing or not a stored object (a FIFO, say), is reported in ``report.failed``
    (and with a :class:`~optuna_cas.exceptions.MalformedRecordWarning`); nothing is written
    for it at the destination (every backend publishes a blob only after reading it to the
    end through the verifying reader). A destination ref naming other content is reported in
    ``report.conflicts`` and left alone; a malformed one is rewritten from the source. Errors
    of the stores themselves (network, permissions) still propagate.

    Objects Optuna's own store wrote at the source before the switch (one per ID at its root,
    no ref) are copied too, into artifacts of the destination (``report.legacy_copied``),
    hashed as they are stored; a later run skips those the destination holds with that size.

    Args:
        src: Source store (any backend).
        dst: Destination store (any backend).
        artifact_ids: Only these artifacts (default: every ref in ``src``).
        workers: Parallel blob transfers.
        progress: Called as ``progress(task, bytes_done, bytes_total)``.

    Returns:
        A :class:`SyncReport`; ``report.ok`` is False if anything was not copied.

    Raises:
        ArtifactNotFound: A named artifact is not in ``src``.
        ValueError: ``src`` and ``dst`` are the same store (the same directory, or the same
            bucket and prefix on the same service): a sync onto itself would store the files
            Optuna's own store wrote there a second time, as artifacts.

    Example:
        >>> import io
        >>> from optuna_cas import MemoryArtifactStore
        >>> a, b = MemoryArtifactStore(), MemoryArtifactStore()
        >>> a.write("x", io.BytesIO(b"d" * 5000)); a.write("y", io.BytesIO(b"d" * 5000))
        >>> sync(a, b).bytes_copied, sync(a, b).bytes_copied
        (5000, 0)
        >>> b.write("z", io.BytesIO(b"mine")); a.write("z", io.BytesIO(b"theirs"))
        >>> report = sync(a, b)
        >>> report.ok, [artifact_id for artifact_id, _ in report.conflicts]
        (False, ['z'])
    """
    src_content = require_content_store(src, "sync (source)")
    dst_content = require_content_store(dst, "sync (destination)")
    if same_location(src_content, dst_content):
        raise ValueError(
            f"sync: the source and the destination are the same store ({src_content.describe()}):"
            " give another destination"
        )
    report = SyncReport()
    bad = BadRecords()
    legacy: dict[str, int] = {}  # ID -> size of the objects Optuna's store wrote
    refs = _source_refs(src_content, artifact_ids, workers, bad, legacy)
    for artifact_id, reason in bad.reasons.items():
        report.failed.append((artifact_id, f"source ref: {reason}"))

    # The destination's own refs for these IDs decide: same content (skip), other content
    # (conflict, left alone), malformed (repair), or none (write).
    present_refs = set(dst_content.iter_ref_ids())
    malformed_at_dst: dict[str, str] = {}
    at_dst = {
        ref.artifact_id: ref
        for ref in dst_content.iter_refs(
            [i for i in [*(ref.artifact_id for ref in refs), *legacy] if i in present_refs],
            workers=max(1, workers) * 2,
            on_bad=malformed_at_dst.__setitem__,
        )
    }
    wanted: list[ArtifactRef] = []  # refs whose blob the destination must hold
    for ref in refs:
        theirs = at_dst.get(ref.artifact_id)
        if theirs is not None and theirs.digest != ref.digest:
            report.conflicts.append(
                (
                    ref.artifact_id,
                    f"destination ref names {theirs.digest} (size {theirs.size}), the source "
                    f"{ref.digest} (size {ref.size}); left as it is",
                )
            )
            continue
        wanted.append(ref)

    # Content the destination lists already is not sent again; whether it is still there is
    # asked (has_blob, which refreshes its time) just before its refs are written, as an
    # upload does.
    present_blobs = {(info.hexdigest, info.stored_size) for info in dst_content.iter_blobs()}
    present_files = set(dst_content.chunks.manifest_hexdigests())
    groups: dict[str, list[ArtifactRef]] = {}  # refs by the content they name (not inline)
    for ref in wanted:
        if ref.inline is None:  # content inside the ref moves with it
            groups.setdefault(ref.digest.hexdigest, []).append(ref)
    listed = {
        hexdigest
        for hexdigest, group in groups.items()
        if (hexdigest, group[0].size) in present_blobs or hexdigest in present_files
    }
    legacy_todo = _legacy_to_copy(legacy, at_dst, report)
    bar = Progress(
        "sync: copying blobs",
        sum(group[0].size for h, group in groups.items() if h not in listed)
        + sum(legacy[artifact_id] for artifact_id in legacy_todo),
        progress,
    )
    lock = threading.Lock()
    # Chunked files are copied one at a time (each on several threads of its own): copies
    # running side by side would each store the chunks their files share (versions of one
    # checkpoint share most), as they would not have learnt of the others' yet.
    one_chunked_copy = threading.Lock()

    def transfer(digest: Digest) -> str | None:
        """Copy one blob; the reason it cannot be copied, or None when it was."""
        try:
            # Looked at, not touched: the source is only read (its role may refuse writes).
            if src_content.chunks.has_manifest(digest, touch=False):
                # Chunked: only the chunks the destination lacks move, each one verified.
                with one_chunked_copy:
                    sent = dst_content.chunks.copy_from(src_content.chunks, digest)
                with lock:
                    bar.advance(sent)
                return None
            with src_content.open_blob(digest) as reader:  # verifying: raises on corruption
                # Counted as it passes; it seeks where the source can, so a remote destination
                # sizes its parts from the blob's length and a retried write can rewind.
                dst_content.write_verified_blob(digest, _counted(reader, bar))
        except ArtifactNotFound:
            return _SOURCE_MISSING.format(digest)
        except IntegrityError as e:  # a bad source, or something in the way at the destination
            return f"blob {digest} not copied: {e}"
        return None

    def settle(hexdigest: str, group: list[ArtifactRef]) -> tuple[int, str | None]:
        """Content, then its refs, then a last look: an upload's steps (see gc's argument).

        Each step follows the one before at once, whatever the length of the whole sync, so a
        gc on the destination cannot collect content between its check and its refs.
        Returns the blobs sent and why the group failed (None if it did not).
        """
        digest = group[0].digest
        new = [ref for ref in group if ref.artifact_id not in at_dst]
        sent = 0
        if hexdigest not in listed or (new and not dst_content.has_blob(digest)):  # touches
            if (problem := transfer(digest)) is not None:
                return sent, problem
            sent += 1
        for ref in new:
            dst_content.put_ref(ref)  # refs are immutable values
        if new and not dst_content.has_blob(digest):  # collected meanwhile: send it again
            problem = transfer(digest)
            if problem is None and not dst_content.has_blob(digest):  # nothing it sent helped
                problem = f"content {digest} does not read back at the destination after a copy"
            if problem is not None:
                for ref in new:
                    with contextlib.suppress(ArtifactNotFound):
                        dst_content.remove_ref(ref.artifact_id)
                return sent, problem
            sent += 1
        return sent, None

    with dst_content.naming_full_disk():
        settled = map_in_threads(lambda item: settle(*item), groups.items(), workers)
    outcomes = dict(zip(groups, settled, strict=True))
    for hexdigest, (sent, _problem) in outcomes.items():
        report.blobs_copied += min(sent, 1)
        report.bytes_copied += sent * groups[hexdigest][0].size  # not what a failure read
    report.blobs_skipped = sum(1 for sent, problem in outcomes.values() if not (sent or problem))

    for ref in wanted:
        problem = None if ref.inline is not None else outcomes[ref.digest.hexdigest][1]
        if problem == _SOURCE_MISSING.format(ref.digest):
            try:
                now = src_content.ref_now(ref.artifact_id)
            except IntegrityError:
                now = ref  # unreadable now: its failure stands
            if now is None:
                continue  # removed at the source while sync ran: as if it had not been listed
            if now.digest != ref.digest:
                problem = f"replaced at the source while sync ran (now {now.digest}): sync again"
        if problem is not None:
            report.failed.append((ref.artifact_id, problem))
        elif ref.artifact_id in at_dst:
            report.refs_skipped += 1
        else:
            if ref.inline is not None:
                dst_content.put_ref(ref)
            report.refs_copied.append(ref.artifact_id)
            if ref.artifact_id in malformed_at_dst:
                report.refs_repaired.append(ref.artifact_id)
    with dst_content.naming_full_disk():
        _copy_legacy(src_content, dst_content, legacy_todo, report, bar, lock, workers)
    failures = BadRecords()
    for artifact_id, why in report.failed:
        failures(artifact_id, why)
    failures.warn("sync", f"{src_content.describe()} -> {dst_content.describe()}", "artifacts")
    return report


def _source_refs(
    content: ContentStore,
    artifact_ids: Iterable[str] | None,
    workers: int,
    bad: BadRecords,
    legacy: dict[str, int],
) -> list[ArtifactRef]:
    """Every readable source ref, or exactly the named ones (a missing one is an error).

    Objects Optuna's own store wrote (all of them, or those named) go into ``legacy``.
    """
    if artifact_ids is None:
        refs = list(content.iter_refs(workers=max(1, workers) * 2, on_bad=bad))
        with_ref = {ref.artifact_id for ref in refs} | set(bad.reasons)  # bad refs are refs
        legacy.update(
            (info.key, info.size) for info in content.iter_optuna_store_objects(without=with_ref)
        )
        return refs
    refs = []
    for artifact_id in artifact_ids:
        try:
            refs.append(content.get_ref(artifact_id))
        except ArtifactNotFound:
            # Not listed: a named artifact costs a look at its own key, not a listing.
            size = content.optuna_store_object_size(artifact_id)
            if size is None:
                raise
            legacy[artifact_id] = size
        except IntegrityError as e:
            bad(artifact_id, str(e))
    return refs


def _legacy_to_copy(
    legacy: dict[str, int], at_dst: dict[str, ArtifactRef], report: SyncReport
) -> list[str]:
    """Which objects Optuna's own store wrote must be copied; the others are counted.

    They carry no digest: a destination ref of the same size counts as the copy an earlier
    run made; one of another size is a conflict, left alone.
    """
    todo = []
    for artifact_id, size in sorted(legacy.items()):
        theirs = at_dst.get(artifact_id)
        if theirs is None:
            todo.append(artifact_id)
        elif theirs.size == size:
            report.refs_skipped += 1
        else:
            report.conflicts.append(
                (
                    artifact_id,
                    f"destination ref names {theirs.digest} (size {theirs.size}), the source "
                    f"holds an object Optuna's store wrote (size {size}); left as it is",
                )
            )
    return todo


def _copy_legacy(
    src: ContentStore,
    dst: ContentStore,
    todo: list[str],
    report: SyncReport,
    bar: Progress,
    lock: threading.Lock,
    workers: int,
) -> None:
    """Store the objects Optuna's own store wrote at ``src`` as artifacts of ``dst``."""

    def copy(artifact_id: str) -> str | None:
        try:
            with src.backend.open_reader(artifact_id) as reader:
                # Not seekable: stored from one read (spooled), not hashed and read again.
                ref = dst.put_artifact(artifact_id, _counted(reader, bar, seeks=False))
        except ArtifactNotFound:
            return "the object Optuna's store wrote is gone from the source"
        except IntegrityError as e:
            return f"the object Optuna's store wrote cannot be copied: {e}"
        with lock:
            report.bytes_copied += ref.size
        return None

    for artifact_id, problem in zip(todo, map_in_threads(copy, todo, workers), strict=True):
        if problem is None:
            report.legacy_copied.append(artifact_id)
        else:
            report.failed.append((artifact_id, problem))


def _counted(reader: BinaryIO, bar: Progress, *, seeks: bool = True) -> BinaryIO:
    """``reader``, advancing ``bar`` by the bytes read (Progress is thread-safe)."""
    return cast(BinaryIO, CountingReader(reader, bar.advance, closes_inner=False, seeks=seeks))
