"""``sync``: copy refs and the blobs they need between stores, moving only missing blobs."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from optuna_cas.digest import Digest
from optuna_cas.operations._progress import Progress, ProgressCallback
from optuna_cas.refs import ArtifactRef
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["SyncReport", "sync"]


@dataclass
class SyncReport:
    """What :func:`sync` did.

    Attributes:
        refs_copied: IDs of refs written to the destination.
        refs_skipped: Refs the destination already had.
        blobs_copied: Blobs transferred.
        blobs_skipped: Blobs the destination already had (dedup across stores).
        bytes_copied: Blob bytes transferred.

    Example:
        >>> SyncReport().bytes_copied
        0
    """

    refs_copied: list[str] = field(default_factory=list)
    refs_skipped: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0


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
    stream (a corrupt source blob fails the sync and writes nothing under its name). Refs are
    written after their blobs, so the destination never has a ref without its blob. A second
    run transfers nothing.

    Args:
        src: Source store (any backend).
        dst: Destination store (any backend).
        artifact_ids: Only these artifacts (default: every ref in ``src``).
        workers: Parallel blob transfers.
        progress: Called as ``progress(task, bytes_done, bytes_total)``.

    Returns:
        A :class:`SyncReport`.

    Raises:
        ArtifactNotFound: A named artifact is not in ``src``.
        IntegrityError: A source blob is corrupt.

    Example:
        >>> import io
        >>> from optuna_cas import MemoryArtifactStore
        >>> a, b = MemoryArtifactStore(), MemoryArtifactStore()
        >>> a.write("x", io.BytesIO(b"data")); a.write("y", io.BytesIO(b"data"))
        >>> sync(a, b).bytes_copied, sync(a, b).bytes_copied
        (4, 0)
    """
    src_content, dst_content = src.content, dst.content
    # All refs (those removed while listing are skipped), or exactly the named ones.
    refs = (
        list(src_content.iter_refs())
        if artifact_ids is None
        else [src_content.get_ref(artifact_id) for artifact_id in artifact_ids]
    )
    present_refs = set(dst_content.iter_ref_ids())
    present_blobs = {(info.hexdigest, info.stored_size) for info in dst_content.iter_blobs()}
    report = SyncReport()
    needed: dict[str, Digest] = {}
    for ref in refs:
        key = (ref.digest.hexdigest, ref.size)
        if key in present_blobs:
            continue
        needed[ref.digest.hexdigest] = ref.digest
    report.blobs_skipped = len({ref.digest.hexdigest for ref in refs}) - len(needed)

    bar = Progress("sync: copying blobs", sum(d.size for d in needed.values()), progress)
    lock = threading.Lock()

    def transfer(digest: Digest) -> None:
        with src_content.open_blob(digest) as reader:  # verifying: raises on corruption
            dst_content.write_verified_blob(digest, _Counting(reader, bar, lock))  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in [pool.submit(transfer, d) for d in needed.values()]:
            future.result()
    report.blobs_copied = len(needed)
    report.bytes_copied = bar.done

    for ref in refs:
        if ref.artifact_id in present_refs:
            report.refs_skipped += 1
            continue
        dst_content.put_ref(_same_ref(ref))
        report.refs_copied.append(ref.artifact_id)
    return report


def _same_ref(ref: ArtifactRef) -> ArtifactRef:
    return ArtifactRef(
        artifact_id=ref.artifact_id,
        digest=ref.digest,
        filename=ref.filename,
        mimetype=ref.mimetype,
        encoding=ref.encoding,
        created=ref.created,
    )
