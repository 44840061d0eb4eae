"""``sync``: copy refs and the blobs they need between stores, moving only missing blobs."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.operations._bad_records import BadRecords
from optuna_cas.progress import Progress, ProgressCallback
from optuna_cas.refs import ArtifactRef
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["SyncReport", "sync"]


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

    @property
    def ok(self) -> bool:
        """Every artifact asked for is now at the destination as in the source.

        Example:
            >>> SyncReport(failed=[("a", "corrupt")]).ok
            False
        """
        return not (self.failed or self.conflicts)


class _Counting:
    """A reader that reports bytes as they pass (for progress and the byte count)."""

    def __init__(self, reader: BinaryIO, bar: Progress, lock: threading.Lock) -> None:
        self._reader = reader
        self._bar = bar
        self._lock = lock

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        with self._lock:
            self._bar.advance(len(data))
        return data

    def readinto(self, buffer: memoryview) -> int:
        n = self._reader.readinto(buffer)  # type: ignore[attr-defined]
        with self._lock:
            self._bar.advance(n or 0)
        return int(n or 0)

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return True


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
    src_content, dst_content = src.content, dst.content
    report = SyncReport()
    bad = BadRecords()
    refs = _source_refs(src_content, artifact_ids, workers, bad)
    for artifact_id, reason in bad.reasons.items():
        report.failed.append((artifact_id, f"source ref: {reason}"))

    # The destination's own refs for these IDs decide: same content (skip), other content
    # (conflict, left alone), malformed (repair), or none (write).
    present_refs = set(dst_content.iter_ref_ids())
    malformed_at_dst: dict[str, str] = {}
    at_dst = {
        ref.artifact_id: ref
        for ref in dst_content.iter_refs(
            [ref.artifact_id for ref in refs if ref.artifact_id in present_refs],
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

    present_blobs = {(info.hexdigest, info.stored_size) for info in dst_content.iter_blobs()}
    present_files = set(dst_content.chunks.manifest_hexdigests())
    needed: dict[str, Digest] = {}
    for ref in wanted:
        if ref.inline is not None or (ref.digest.hexdigest, ref.size) in present_blobs:
            continue  # content inside the ref moves with it
        if ref.digest.hexdigest in present_files and dst_content.chunks.has_manifest(
            ref.digest, with_packs=True
        ):
            continue
        needed[ref.digest.hexdigest] = ref.digest
    report.blobs_skipped = len(
        {ref.digest.hexdigest for ref in wanted if ref.inline is None}
    ) - len(needed)

    bar = Progress("sync: copying blobs", sum(d.size for d in needed.values()), progress)
    lock = threading.Lock()

    def transfer(digest: Digest) -> str | None:
        """Copy one blob; the reason it cannot be copied, or None when it was."""
        try:
            if src_content.chunks.has_manifest(digest):
                # Chunked: only the chunks the destination lacks move, each one verified.
                sent = dst_content.chunks.copy_from(src_content.chunks, digest)
                with lock:
                    bar.advance(sent)
                return None
            with src_content.open_blob(digest) as reader:  # verifying: raises on corruption
                dst_content.write_verified_blob(digest, _Counting(reader, bar, lock))  # type: ignore[arg-type]
        except ArtifactNotFound:
            return f"source blob {digest} is missing"
        except IntegrityError as e:
            return f"source blob {digest} is bad: {e}"
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {hexdigest: pool.submit(transfer, d) for hexdigest, d in needed.items()}
        blob_failures = {
            hexdigest: problem
            for hexdigest, future in futures.items()
            if (problem := future.result()) is not None
        }
    copied = [digest for hexdigest, digest in needed.items() if hexdigest not in blob_failures]
    report.blobs_copied = len(copied)
    report.bytes_copied = sum(digest.size for digest in copied)  # not what a failure read

    for ref in wanted:
        blob_failure = blob_failures.get(ref.digest.hexdigest)
        if blob_failure is not None:
            report.failed.append((ref.artifact_id, blob_failure))
        elif ref.artifact_id in at_dst:
            report.refs_skipped += 1
        else:
            dst_content.put_ref(ref)  # refs are immutable values
            report.refs_copied.append(ref.artifact_id)
            if ref.artifact_id in malformed_at_dst:
                report.refs_repaired.append(ref.artifact_id)
    failures = BadRecords()
    for artifact_id, why in report.failed:
        failures(artifact_id, why)
    failures.warn("sync", f"{src_content.describe()} -> {dst_content.describe()}", "artifacts")
    return report


def _source_refs(
    content: ContentStore, artifact_ids: Iterable[str] | None, workers: int, bad: BadRecords
) -> list[ArtifactRef]:
    """Every readable source ref, or exactly the named ones (a missing one is an error)."""
    if artifact_ids is None:
        return list(content.iter_refs(workers=max(1, workers) * 2, on_bad=bad))
    refs = []
    for artifact_id in artifact_ids:
        try:
            refs.append(content.get_ref(artifact_id))
        except IntegrityError as e:
            bad(artifact_id, str(e))
    return refs
