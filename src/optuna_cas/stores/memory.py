"""An artifact store in process memory, for tests and notebooks."""

from __future__ import annotations

from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.content import CHUNK_THRESHOLD, INLINE_LIMIT, ContentStore
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["MemoryArtifactStore"]


class MemoryArtifactStore(ContentAddressedArtifactStore):
    """A content-addressed artifact store whose bytes live in this process only.

    Args:
        chunk_threshold: Files of at least this many bytes (8 MiB by default) are stored as
            content-defined chunks, deduplicated between versions (docs/concepts.md);
            ``None`` stores every file as one blob.
        inline_limit: Files of at most this many bytes (4 KiB by default) are kept inside
            their ref instead of a blob: one object to write and read; ``None``: never.

    Example:
        >>> import io
        >>> store = MemoryArtifactStore()
        >>> store.write("a", io.BytesIO(b"x")); store.open_reader("a").read()
        b'x'
    """

    def __init__(
        self,
        *,
        chunk_threshold: int | None = CHUNK_THRESHOLD,
        inline_limit: int | None = INLINE_LIMIT,
    ) -> None:
        super().__init__(
            ContentStore(
                MemoryBackend(), chunk_threshold=chunk_threshold, inline_limit=inline_limit
            )
        )
