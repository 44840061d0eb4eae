"""Step one of gc, verify and stats over chunked content: list it, before the refs."""

from __future__ import annotations

from dataclasses import dataclass

from optuna_cas.chunks.store import ChunkStore, StoredObject
from optuna_cas.digest import Digest

__all__ = ["ChunkListing"]


@dataclass
class ChunkListing:
    """Step (a) of gc for chunked content: manifests, packs and index objects as listed.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> ChunkListing.of(ChunkStore(MemoryBackend())).packs
        {}
    """

    manifests: list[StoredObject]
    packs: dict[str, StoredObject]
    indexes: list[StoredObject]

    @classmethod
    def of(cls, chunks: ChunkStore) -> ChunkListing:
        """List everything chunked in ``chunks``' backend (one listing of each prefix)."""
        return cls(
            list(chunks.iter_manifests()),
            {p.hexdigest: p for p in chunks.iter_packs()},
            list(chunks.iter_indexes()),
        )

    def has_pack(self, pack: Digest) -> bool:
        """Whether ``pack`` was listed, with the size its digest says."""
        listed = self.packs.get(pack.hexdigest)
        return listed is not None and listed.size == pack.size
