"""A read-through disk cache in front of any optuna-cas store.

:class:`CachedArtifactStore` puts a :class:`DiskBlobCache` in front of an optuna-cas store (also
one behind :class:`~optuna_cas.Backoff`), so a worker that downloads the same checkpoint again
reads it from local disk instead of the bucket. How the cache stays correct (keyed by digest,
verified on every use, safe against a tampered directory, exact LRU, shared by processes) is
described in :mod:`optuna_cas.middleware.blob_cache`; this module re-exports its names.
"""

from __future__ import annotations

import os

from optuna_cas.middleware.blob_cache import DiskBlobCache
from optuna_cas.middleware.cache_config import (
    CACHE_DIR_ENV,
    DEFAULT_SIZE_LIMIT,
    CacheInfo,
    MaterializeMode,
    default_cache_dir,
)
from optuna_cas.stores.base import ContentAddressedArtifactStore, content_store_of

__all__ = [
    "CACHE_DIR_ENV",
    "DEFAULT_SIZE_LIMIT",
    "CacheInfo",
    "CachedArtifactStore",
    "DiskBlobCache",
    "default_cache_dir",
]


class CachedArtifactStore(ContentAddressedArtifactStore):
    """Any optuna-cas artifact store read through a local :class:`DiskBlobCache`.

    Reads look in the cache first (by digest: never stale) and fill it on a miss; downloads are
    made from the cache with an in-kernel copy (or a hard link, see ``materialize``). Writes go
    through to the wrapped store and also leave the blob in the cache, because the uploading
    worker often reads it back; that includes uploads deduplicated against bytes the store
    already held, when the source can be re-read (a path or seekable stream), at the cost of
    one local copy.

    Artifact ID to digest resolutions are remembered in memory (refs are immutable per ID in
    Optuna's model), saving one small request per repeated read. Writing or removing an
    artifact through this instance updates that memory at once; a removal made by *another*
    process can go unnoticed by this one until it restarts.

    Args:
        store: An optuna-cas store (``Boto3ArtifactStore``, ``GCSArtifactStore``, ...), also
            one wrapped in :class:`~optuna_cas.Backoff`.
        directory: Cache directory; default ``$OPTUNA_CAS_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/optuna-cas``, else ``~/.cache/optuna-cas``.
        size_limit: Bound on the cache's size on disk in bytes (default 10 GiB,
            least-recently-used eviction).
        materialize: ``"copy"`` (default) or ``"hardlink"`` (read-only downloads; see the
            caveat on :class:`DiskBlobCache`).
        cache_uploads: Also cache what this store uploads (default True; see above).
        timeout: Seconds to wait for the cache's database when another process holds it
            (default 60); past it, the cache is not used for a minute.

    Raises:
        TypeError: ``store`` is not an optuna-cas store (e.g. one of Optuna's own).
        StoreConfigError: The cache directory is a file or not writable, or its database
            is held by another process beyond ``timeout``.

    Example:
        >>> import io, tempfile
        >>> from optuna_cas import MemoryArtifactStore
        >>> store = CachedArtifactStore(MemoryArtifactStore(), directory=tempfile.mkdtemp())
        >>> weights = bytes(1 << 20)
        >>> store.write("a1", io.BytesIO(weights))     # uploaded and cached
        >>> store.open_reader("a1").read() == weights
        True
        >>> store.cache.info().hits
        1
    """

    def __init__(
        self,
        store: ContentAddressedArtifactStore,
        *,
        directory: str | os.PathLike[str] | None = None,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        materialize: MaterializeMode = "copy",
        cache_uploads: bool = True,
        timeout: float = 60.0,
    ) -> None:
        content = content_store_of(store)
        if content is None:
            raise TypeError(
                f"CachedArtifactStore wraps optuna-cas stores only (FileSystemArtifactStore, "
                f"Boto3ArtifactStore, GCSArtifactStore, ..., also behind Backoff); got {store!r}"
            )
        self._store = store
        self._cache = DiskBlobCache(
            directory,
            size_limit=size_limit,
            materialize=materialize,
            cache_uploads=cache_uploads,
            timeout=timeout,
        )
        super().__init__(content.with_parts(blob_cache=self._cache))

    @property
    def cache(self) -> DiskBlobCache:
        """The blob cache (size, counters, clear, prune).

        Example:
            >>> import tempfile
            >>> from optuna_cas import MemoryArtifactStore
            >>> CachedArtifactStore(MemoryArtifactStore(), directory=tempfile.mkdtemp()).cache.info().entries
            0
        """
        return self._cache

    @property
    def store(self) -> ContentAddressedArtifactStore:
        """The wrapped store.

        Example:
            >>> import tempfile
            >>> from optuna_cas import MemoryArtifactStore
            >>> inner = MemoryArtifactStore()
            >>> CachedArtifactStore(inner, directory=tempfile.mkdtemp()).store is inner
            True
        """
        return self._store

    def close(self) -> None:
        """Close the cache's database connection of this thread.

        Example:
            >>> import tempfile
            >>> from optuna_cas import MemoryArtifactStore
            >>> CachedArtifactStore(MemoryArtifactStore(), directory=tempfile.mkdtemp()).close()
        """
        self._cache.close()

    def __repr__(self) -> str:
        return f"CachedArtifactStore({self._store!r}, directory={str(self._cache.directory)!r})"
