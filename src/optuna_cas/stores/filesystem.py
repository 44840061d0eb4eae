"""``FileSystemArtifactStore``: Optuna's local store, content-addressed."""

from __future__ import annotations

import os

from optuna_cas.backends.local import LocalBackend
from optuna_cas.content import CHUNK_THRESHOLD, INLINE_LIMIT, ContentStore
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["FileSystemArtifactStore"]


class FileSystemArtifactStore(ContentAddressedArtifactStore):
    """A drop-in for ``optuna.artifacts.FileSystemArtifactStore``.

    The store writes only under ``base_path/blobs`` (one file per distinct content),
    ``base_path/refs`` (one small JSON per artifact ID), ``packs``, ``manifests`` and
    ``chunk-index`` (files stored as chunks) and ``quarantine`` (what ``verify(quarantine=True)``
    moves aside). Artifacts that Optuna's own store wrote directly in ``base_path`` (one flat
    file per ID) stay readable, unverified, so switching the import loses nothing; ``remove``
    of such an ID deletes its file, as Optuna's would. Nothing else is touched.

    Args:
        base_path: The directory; created if missing.
        fsync: Also make each write durable against power loss (see
            :class:`~optuna_cas.backends.local.LocalBackend`).
        chunk_threshold: Files of at least this many bytes (8 MiB by default) are stored as
            content-defined chunks, deduplicated between versions (docs/concepts.md);
            ``None`` stores every file as one blob.
        inline_limit: Files of at most this many bytes (4 KiB by default) are kept inside
            their ref instead of a blob: one object to write and read; ``None``: never.

    Raises:
        StoreConfigError: ``base_path`` is a file or cannot be created.

    Example:
        >>> import io, tempfile
        >>> store = FileSystemArtifactStore(tempfile.mkdtemp())
        >>> checkpoint = bytes(1 << 20)
        >>> store.write("a1", io.BytesIO(checkpoint))
        >>> store.write("a2", io.BytesIO(checkpoint))   # same bytes: one blob, two refs
        >>> len(list(store.content.iter_blobs()))
        1
        >>> import pathlib
        >>> _ = (pathlib.Path(store.content.backend.root) / "legacy-id").write_bytes(b"old")
        >>> store.open_reader("legacy-id").read()   # written by Optuna's own store
        b'old'
    """

    def __init__(
        self,
        base_path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        chunk_threshold: int | None = CHUNK_THRESHOLD,
        inline_limit: int | None = INLINE_LIMIT,
    ) -> None:
        backend = LocalBackend(base_path, fsync=fsync)
        super().__init__(
            ContentStore(backend, chunk_threshold=chunk_threshold, inline_limit=inline_limit)
        )
