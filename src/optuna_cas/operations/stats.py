"""``stats``: how much a store holds and how much dedup saves, whole-file and chunk-level."""

from __future__ import annotations

from dataclasses import dataclass

from optuna_cas.operations._bad_records import BadRecords
from optuna_cas.operations._chunk_listing import ChunkListing
from optuna_cas.stores.base import ContentAddressedArtifactStore, require_content_store

__all__ = ["StoreStats", "stats"]


@dataclass(frozen=True)
class StoreStats:
    """Counts and sizes of one store.

    Three sizes tell where the savings come from: ``logical_bytes`` (every artifact a copy of
    its own, as Optuna's stores keep them), ``whole_file_bytes`` (each distinct content
    once: whole-file dedup) and ``stored_bytes`` (what the store holds: blobs, plus packs,
    manifests and index objects for chunked files, whose shared chunks are stored once).

    Attributes:
        artifacts: Number of refs (artifact IDs).
        unique_blobs: Distinct contents stored as one blob each.
        logical_bytes: Sum of artifact sizes, as if each were a separate copy (Optuna's cost).
        stored_bytes: Bytes actually stored: ``blob_bytes`` + ``chunked_bytes`` +
            ``inline_bytes`` (the rest of the refs, tiny, not counted).
        referenced_blobs: Blobs some ref points at (the rest await gc).
        bad_refs: Refs that could not be read (not counted in the other figures; ``optuna-cas
            verify`` names them).
        whole_file_bytes: What whole-file dedup alone would store: the sizes of the distinct
            contents refs name, counting content inside refs once per ref (it is).
        blob_bytes: Bytes stored in blobs.
        chunked_bytes: Bytes stored for chunked files: packs, manifests and index objects.
        chunked_files: Distinct contents stored as chunks (one manifest each).
        referenced_chunked_files: Chunked files some ref points at (the rest await gc).
        packs: Pack objects holding the chunks.
        inline_bytes: Content kept inside refs (small files: one copy per artifact).
        optuna_store_files: Files Optuna's own store wrote (at the root, under an ID with no
            ref): readable and listed as artifacts, one full copy each, with no digest.
            Counted in none of the figures above.
        optuna_store_bytes: Their sizes, summed.

    Example:
        >>> StoreStats(4, 1, 400, 100, 1).dedup_ratio
        4.0
    """

    artifacts: int
    unique_blobs: int
    logical_bytes: int
    stored_bytes: int
    referenced_blobs: int
    bad_refs: int = 0
    whole_file_bytes: int = 0
    blob_bytes: int = 0
    chunked_bytes: int = 0
    chunked_files: int = 0
    referenced_chunked_files: int = 0
    packs: int = 0
    inline_bytes: int = 0
    optuna_store_files: int = 0
    optuna_store_bytes: int = 0

    @property
    def dedup_ratio(self) -> float:
        """Logical over stored bytes (1.0 when nothing is stored).

        Example:
            >>> StoreStats(0, 0, 0, 0, 0).dedup_ratio
            1.0
        """
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def chunk_dedup_ratio(self) -> float:
        """Whole-file-dedup bytes over stored bytes: what chunking saves beyond whole files.

        1.0 when nothing is stored; lower while unreferenced content awaits gc.

        Example:
            >>> StoreStats(2, 0, 300, 120, 0, whole_file_bytes=240).chunk_dedup_ratio
            2.0
        """
        return self.whole_file_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def unreferenced_blobs(self) -> int:
        """Blobs no ref points at: what :func:`optuna_cas.gc` would reclaim.

        Example:
            >>> StoreStats(1, 3, 10, 30, 1).unreferenced_blobs
            2
        """
        return self.unique_blobs - self.referenced_blobs

    @property
    def unreferenced_chunked_files(self) -> int:
        """Chunked files no ref points at: what :func:`optuna_cas.gc` would reclaim.

        Example:
            >>> StoreStats(1, 0, 10, 30, 0, chunked_files=2).unreferenced_chunked_files
            2
        """
        return self.chunked_files - self.referenced_chunked_files


def stats(store: ContentAddressedArtifactStore) -> StoreStats:
    """Count artifacts, blobs and chunked files and sum their sizes.

    One listing of each prefix and one read per ref; manifests are not read. A ref that
    cannot be read is counted in ``bad_refs`` (with a
    :class:`~optuna_cas.exceptions.MalformedRecordWarning`) instead of failing the whole count.

    Args:
        store: Any optuna-cas store (also behind ``Backoff`` or a cache).

    Returns:
        The figures.

    Example:
        >>> import io
        >>> from optuna_cas import MemoryArtifactStore
        >>> store = MemoryArtifactStore()
        >>> for i in range(3):
        ...     store.write(f"a{i}", io.BytesIO(b"x" * 10_000))
        >>> store.write("small", io.BytesIO(b"x" * 100))  # kept inside its ref
        >>> s = stats(store)
        >>> (s.artifacts, s.unique_blobs, s.logical_bytes, s.stored_bytes, s.dedup_ratio)
        (4, 1, 30100, 10100, 2.98019801980198)
        >>> s.whole_file_bytes, s.chunked_bytes, s.inline_bytes
        (10100, 0, 100)
        >>> store.content.backend.write("old", io.BytesIO(b"y" * 7))  # as Optuna's store writes
        >>> stats(store).optuna_store_files, stats(store).optuna_store_bytes
        (1, 7)
    """
    content = require_content_store(store, "stats")
    bad = BadRecords()
    refs = list(content.iter_refs(on_bad=bad))
    bad.warn("stats", content.describe(), "refs")
    blobs = {info.hexdigest: info.stored_size for info in content.iter_blobs()}
    chunked = ChunkListing.of(content.chunks)
    manifests = {m.hexdigest for m in chunked.manifests}
    # As gc counts them: a small file's ref holds its content and needs no blob or manifest.
    distinct = {ref.digest.hexdigest: ref.size for ref in refs if ref.inline is None}
    blob_bytes = sum(blobs.values())
    inline_bytes = sum(ref.size for ref in refs if ref.inline is not None)
    chunked_bytes = sum(
        obj.size for obj in [*chunked.manifests, *chunked.packs.values(), *chunked.indexes]
    )
    with_ref = {ref.artifact_id for ref in refs} | set(bad.reasons)
    optuna_files = list(content.iter_optuna_store_objects(without=with_ref))
    return StoreStats(
        artifacts=len(refs),
        unique_blobs=len(blobs),
        logical_bytes=sum(ref.size for ref in refs),
        stored_bytes=blob_bytes + chunked_bytes + inline_bytes,
        referenced_blobs=len(distinct.keys() & blobs.keys()),
        bad_refs=len(bad.reasons),
        whole_file_bytes=sum(distinct.values()) + inline_bytes,
        blob_bytes=blob_bytes,
        chunked_bytes=chunked_bytes,
        chunked_files=len(manifests),
        referenced_chunked_files=len(distinct.keys() & manifests),
        packs=len(chunked.packs),
        inline_bytes=inline_bytes,
        optuna_store_files=len(optuna_files),
        optuna_store_bytes=sum(o.size for o in optuna_files),
    )
