"""A read-through disk cache in front of any optuna-cas store.

:class:`CachedArtifactStore` puts a :class:`DiskBlobCache` in front of an optuna-cas store (also
one behind :class:`~optuna_cas.Backoff`), so a worker that downloads the same checkpoint again
reads it from local disk instead of the bucket. How the cache stays correct (keyed by digest,
verified on every use, safe against a tampered directory, exact LRU, shared by processes) is
described in :mod:`optuna_cas.middleware.blob_cache`; this module re-exports its names.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from typing import BinaryIO

from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound
from optuna_cas.middleware._cache_files import CACHE_ERRORS
from optuna_cas.middleware.blob_cache import DiskBlobCache
from optuna_cas.middleware.cache_config import (
    CACHE_DIR_ENV,
    DEFAULT_SIZE_LIMIT,
    CacheInfo,
    MaterializeMode,
    default_cache_dir,
)
from optuna_cas.refs import ArtifactRef
from optuna_cas.stores.base import ContentAddressedArtifactStore, content_store_of

__all__ = [
    "CACHE_DIR_ENV",
    "DEFAULT_SIZE_LIMIT",
    "CacheInfo",
    "CachedArtifactStore",
    "DiskBlobCache",
    "default_cache_dir",
]

_MAX_REMEMBERED_REFS = 4096


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

    Raises:
        TypeError: ``store`` is not an optuna-cas store (e.g. one of Optuna's own).
        StoreConfigError: The cache directory is a file or not writable.

    Example:
        >>> import io, tempfile
        >>> from optuna_cas import MemoryArtifactStore
        >>> store = CachedArtifactStore(MemoryArtifactStore(), directory=tempfile.mkdtemp())
        >>> store.write("a1", io.BytesIO(b"weights"))     # uploaded and cached
        >>> store.open_reader("a1").read()
        b'weights'
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
        )
        super().__init__(content.with_blob_cache(self._cache))
        self._refs: collections.OrderedDict[str, ArtifactRef] = collections.OrderedDict()
        self._refs_lock = threading.Lock()

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

    def get_ref(self, artifact_id: str) -> ArtifactRef:
        """The ref of an artifact, remembered after the first lookup.

        Raises:
            ArtifactNotFound: No such artifact.

        Example:
            >>> import io, tempfile
            >>> from optuna_cas import MemoryArtifactStore
            >>> store = CachedArtifactStore(MemoryArtifactStore(), directory=tempfile.mkdtemp())
            >>> store.write("a", io.BytesIO(b"abc")); store.get_ref("a").size
            3
        """
        with self._refs_lock:
            ref = self._refs.get(artifact_id)
            if ref is not None:
                self._refs.move_to_end(artifact_id)
                return ref
        ref = self.content.get_ref(artifact_id)
        self._remember(ref)
        return ref

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """Open an artifact: from the cache if it holds the blob, else filling it.

        Raises:
            ArtifactNotFound: No such artifact, or its blob is missing from the store.
            IntegrityError: The store's bytes do not match the digest.

        Example:
            >>> import io, tempfile
            >>> from optuna_cas import MemoryArtifactStore
            >>> store = CachedArtifactStore(MemoryArtifactStore(), directory=tempfile.mkdtemp())
            >>> store.write("a", io.BytesIO(b"abc")); store.open_reader("a").read()
            b'abc'
        """
        try:
            ref = self.get_ref(artifact_id)
        except ArtifactNotFound:
            # Perhaps an object Optuna's own store wrote (no ref): the content store knows.
            return self.content.open_artifact(artifact_id)
        try:
            return self.content.open_blob(ref.digest)
        except ArtifactNotFound as e:
            self._forget(artifact_id)
            raise ArtifactNotFound(
                f"Artifact {artifact_id!r}: its blob {ref.digest} is missing from "
                f"{self.content.describe()} (run 'optuna-cas verify')"
            ) from e

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Store ``content_body`` (from its position) in the wrapped store and in the cache.

        Example:
            >>> import io, tempfile
            >>> from optuna_cas import MemoryArtifactStore
            >>> store = CachedArtifactStore(MemoryArtifactStore(), directory=tempfile.mkdtemp())
            >>> store.write("a", io.BytesIO(b"abc")); len(store.cache)
            1
        """
        self.put(artifact_id, content_body)

    def put(
        self,
        artifact_id: str,
        source: BinaryIO | str | os.PathLike[str],
        *,
        filename: str | None = None,
        mimetype: str | None = None,
        encoding: str | None = None,
    ) -> ArtifactRef:
        """Like :meth:`write`, also recording file metadata; returns the ref.

        Example:
            >>> import io, tempfile
            >>> from optuna_cas import MemoryArtifactStore
            >>> store = CachedArtifactStore(MemoryArtifactStore(), directory=tempfile.mkdtemp())
            >>> store.put("a", io.BytesIO(b"abc"), filename="a.txt").filename
            'a.txt'
        """
        self._forget(artifact_id)
        start = None if isinstance(source, str | os.PathLike) else _position(source)
        ref = self.content.put_artifact(
            artifact_id, source, filename=filename, mimetype=mimetype, encoding=encoding
        )
        self._remember(ref)
        self._cache_after_dedup(ref.digest, source, start)
        return ref

    def remove(self, artifact_id: str) -> None:
        """Remove an artifact's ref from the wrapped store (its blob stays until gc).

        Raises:
            ArtifactNotFound: No such artifact.

        Example:
            >>> import io, tempfile
            >>> from optuna_cas import MemoryArtifactStore
            >>> store = CachedArtifactStore(MemoryArtifactStore(), directory=tempfile.mkdtemp())
            >>> store.write("a", io.BytesIO(b"abc")); store.remove("a")
            >>> store.open_reader("a")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.ArtifactNotFound: Artifact 'a' not found in memory://
        """
        self._forget(artifact_id)
        self.content.remove_ref(artifact_id)

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

    def _remember(self, ref: ArtifactRef) -> None:
        with self._refs_lock:
            self._refs[ref.artifact_id] = ref
            self._refs.move_to_end(ref.artifact_id)
            while len(self._refs) > _MAX_REMEMBERED_REFS:
                self._refs.popitem(last=False)

    def _forget(self, artifact_id: str) -> None:
        with self._refs_lock:
            self._refs.pop(artifact_id, None)

    def _cache_after_dedup(
        self,
        digest: Digest,
        source: BinaryIO | str | os.PathLike[str],
        start: int | None,
    ) -> None:
        """Cache an upload the store deduplicated (ContentStore caches only real uploads)."""
        if not self._cache.cache_uploads or digest.size > self._cache.size_limit:
            return
        try:
            if digest in self._cache:
                return
        except CACHE_ERRORS:
            return
        if isinstance(source, str | os.PathLike):
            with contextlib.suppress(OSError), open(source, "rb") as f:
                self._cache.add_file(digest, f)
            return
        if start is None:
            return  # a non-seekable stream was consumed: nothing to re-read
        try:
            end = source.tell()
            source.seek(start)
            try:
                self._cache.add_file(digest, source)
            finally:
                source.seek(end)
        except (OSError, ValueError):
            return


def _position(stream: BinaryIO) -> int | None:
    try:
        return stream.tell() if stream.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None
