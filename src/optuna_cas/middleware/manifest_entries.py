"""Chunk manifests kept in the read-through cache, beside the packs they name.

A cached read of a chunked file needs the file's manifest (its chunks, and where they lie in
which packs). Kept here, that read asks the store for the ref only, as a cached whole blob
does. The entries are as untrusted as everything else in the directory: read with a bound,
parsed with bounds by the chunk store, and the file they describe is checked against its
digest before it is published. A manifest made stale by gc's repacking still names the right
chunks in packs that may still be cached; when one of them is gone from both the cache and
the store, the chunk store drops the entry and reads the store's manifest.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import diskcache

from optuna_cas.digest import Digest
from optuna_cas.middleware import _cache_files as files
from optuna_cas.middleware._cache_files import CACHE_ERRORS, FillTemp, Unusable

__all__ = ["ManifestEntries"]


class ManifestEntries:
    """Manifest bytes in a :class:`~optuna_cas.middleware.blob_cache.DiskBlobCache`'s index.

    They are entries like the cached blobs (counted in its volume, evicted least recently
    used first), under keys no blob can have.

    Args:
        cache: The blob cache's diskcache index.
        root: Its directory.
        after_add: Called after an entry was added (enforces the size limit).
        warn: Called with a failure of the cache's side; the caller goes on without it.

    Example:
        >>> import tempfile
        >>> from optuna_cas.middleware.blob_cache import DiskBlobCache
        >>> cache, d = DiskBlobCache(tempfile.mkdtemp()), Digest.of_bytes(b"file")
        >>> cache.manifests.add(d, b"manifest bytes"); cache.manifests.get(d, 100)
        b'manifest bytes'
        >>> cache.manifests.discard(d); cache.manifests.get(d, 100) is None
        True
    """

    def __init__(
        self,
        cache: diskcache.Cache,
        root: str,
        after_add: Callable[[], object],
        warn: Callable[[BaseException], None],
    ) -> None:
        self._cache = cache
        self._root = root
        self._after_add = after_add
        self._warn = warn

    def get(self, digest: Digest, limit: int) -> bytes | None:
        """The manifest cached for the file ``digest`` (unverified), or None.

        An entry that is not a regular value file, or is larger than ``limit`` bytes, is
        dropped and None returned.
        """
        try:
            found = self._cache.get(_key(digest), read=True)
        except CACHE_ERRORS as e:
            self._warn(e)
            return None
        if found is None:
            return None
        if isinstance(found, Unusable):
            self.discard(digest)
            return None
        with found:
            data = bytes(found.read(limit + 1))
        if len(data) > limit:
            self.discard(digest)
            return None
        return data

    def add(self, digest: Digest, data: bytes) -> None:
        """Keep ``data`` as the manifest of the file ``digest`` (first writer wins)."""
        try:
            fd, name = files.new_temp(self._root)
        except CACHE_ERRORS as e:
            self._warn(e)
            return
        try:
            files.write_all(fd, memoryview(data))
            os.fchmod(fd, files.READ_ONLY)
            if self._cache.add(_key(digest), FillTemp(fd, name, len(data)), read=True):
                self._after_add()
        except CACHE_ERRORS as e:
            self._warn(e)
        finally:
            os.close(fd)
            files.unlink_temp(self._root, name)  # there only if the rename never ran

    def discard(self, digest: Digest) -> None:
        """Forget the manifest of ``digest`` (missing is fine)."""
        try:
            self._cache.delete(_key(digest), retry=True)
        except CACHE_ERRORS as e:
            self._warn(e)


def _key(digest: Digest) -> str:
    # Blob entries are keyed "<digest>:<size>": this prefix keeps the two apart.
    return f"manifest:{digest}:{digest.size}"
