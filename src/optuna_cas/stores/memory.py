"""An artifact store in process memory, for tests and notebooks."""

from __future__ import annotations

from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.content import ContentStore
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["MemoryArtifactStore"]


class MemoryArtifactStore(ContentAddressedArtifactStore):
    """A content-addressed artifact store whose bytes live in this process only.

    Example:
        >>> import io
        >>> store = MemoryArtifactStore()
        >>> store.write("a", io.BytesIO(b"x")); store.open_reader("a").read()
        b'x'
    """

    def __init__(self) -> None:
        super().__init__(ContentStore(MemoryBackend()))
