"""``stats``: how much a store holds and how much dedup saves."""

from __future__ import annotations

from dataclasses import dataclass

from optuna_cas.operations._bad_records import BadRecords
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["StoreStats", "stats"]


@dataclass(frozen=True)
class StoreStats:
    """Counts and sizes of one store.

    Attributes:
        artifacts: Number of refs (artifact IDs).
        unique_blobs: Distinct contents stored.
        logical_bytes: Sum of artifact sizes, as if each were a separate copy (Optuna's cost).
        stored_bytes: Bytes actually stored in blobs (refs, tiny, not counted).
        referenced_blobs: Blobs some ref points at (the rest await gc).
        bad_refs: Refs that could not be read (not counted in the other figures; ``optuna-cas
            verify`` names them).

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

    @property
    def dedup_ratio(self) -> float:
        """Logical over stored bytes (1.0 when nothing is stored).

        Example:
            >>> StoreStats(0, 0, 0, 0, 0).dedup_ratio
            1.0
        """
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def unreferenced_blobs(self) -> int:
        """Blobs no ref points at: what :func:`optuna_cas.gc` would reclaim.

        Example:
            >>> StoreStats(1, 3, 10, 30, 1).unreferenced_blobs
            2
        """
        return self.unique_blobs - self.referenced_blobs


def stats(store: ContentAddressedArtifactStore) -> StoreStats:
    """Count artifacts and blobs and sum their sizes (one listing of each, one read per ref).

    A ref that cannot be read is counted in ``bad_refs`` (with a
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
        ...     store.write(f"a{i}", io.BytesIO(b"x" * 100))
        >>> s = stats(store)
        >>> (s.artifacts, s.unique_blobs, s.logical_bytes, s.stored_bytes, s.dedup_ratio)
        (3, 1, 300, 100, 3.0)
    """
    content = store.content
    bad = BadRecords()
    refs = list(content.iter_refs(on_bad=bad))
    bad.warn("stats", content.describe(), "refs")
    blobs = {info.hexdigest: info.stored_size for info in content.iter_blobs()}
    referenced = {ref.digest.hexdigest for ref in refs} & blobs.keys()
    return StoreStats(
        artifacts=len(refs),
        unique_blobs=len(blobs),
        logical_bytes=sum(ref.size for ref in refs),
        stored_bytes=sum(blobs.values()),
        referenced_blobs=len(referenced),
        bad_refs=len(bad.reasons),
    )
