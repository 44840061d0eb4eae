"""A bounded disk cache of blobs keyed by digest, shared by the processes of one machine.

:class:`DiskBlobCache` implements :class:`~optuna_cas.content.BlobCache` with diskcache's public
API only (``Cache.get/add/set/delete/clear/volume/reset`` and a ``Disk`` subclass, the
documented extension point: see :mod:`optuna_cas.middleware._cache_files`).

Never stale, never wrong: an entry is keyed by digest and size, and nothing is handed out
unverified (``open_entry`` hands a pack to a chunk reader, which checks every chunk it reads):

* ``open`` on a hit checks the size (``fstat``) and hashes the entry before returning (a
  corrupt entry is dropped and refetched instead of failing the caller halfway); the reader
  hashes again as the caller reads and raises ``IntegrityError`` at EOF (and drops the entry)
  if it was edited after the check.
* ``materialize`` copies the entry to a private temp file beside the target, hashes that copy
  as it lands, then links it into place; ``"hardlink"`` mode links exactly the inode it hashed.
* A fill streams the store's bytes once, verifying, into a private temp file (and a download's
  temp file); only then does ``Cache.add`` give it a name diskcache knows.
* ``manifests`` keeps chunked files' manifests (unverified bytes; see ``manifest_entries``).

Everything under the directory is untrusted: a row naming anything but a regular file at
diskcache's own ``xx/yy/<hex>.val`` name inside it is reported and dropped, untouched. A
tampered database can make the cache useless, never read or delete outside it or block.

Exact LRU eviction with the public API (see ``_cache_files.evict_lru``). Shared by processes:
a value file is complete before its row is committed and never modified; concurrent fills use
their own temp files and the first ``Cache.add`` wins. If the directory fails (disk full, a
lock held beyond ``timeout``), the store is used directly, with a warning.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import diskcache

from optuna_cas._fileio import materialize as _materialize_stream
from optuna_cas._fileio import publish_new_file, temp_beside
from optuna_cas._forksafe import ForkedMidOperation, ForkGate, ForkSafeLock
from optuna_cas._verified_copy import copy_and_publish, copy_holds
from optuna_cas.digest import CHUNK_SIZE, Digest, VerifyingReader
from optuna_cas.exceptions import IntegrityError, StoreConfigError
from optuna_cas.middleware import _cache_files as files
from optuna_cas.middleware._cache_files import CACHE_ERRORS, FillTemp, Unusable
from optuna_cas.middleware._cache_fill import fill_temp
from optuna_cas.middleware._cache_open import open_cache
from optuna_cas.middleware.cache_config import (
    DEFAULT_SIZE_LIMIT,
    CacheInfo,
    MaterializeMode,
    default_cache_dir,
)
from optuna_cas.middleware.manifest_entries import ManifestEntries

__all__ = ["DiskBlobCache"]

logger = logging.getLogger("optuna_cas.cache")

# A fill writes continuously, so a temp file untouched for this long belongs to a dead process.
_STALE_TEMP_SECONDS = 3600.0
_REST_SECONDS = 60.0


class DiskBlobCache:
    """A bounded, least-recently-used disk cache of blobs on ``diskcache``, keyed by digest.

    Implements :class:`~optuna_cas.content.BlobCache`; usually built by
    :class:`~optuna_cas.CachedArtifactStore`. Entries are verified when filled and on every
    use (a corrupt one is dropped and refetched); processes may share one directory.

    Args:
        directory: Where to keep the cache; default :func:`default_cache_dir`. Created if
            missing. The directory itself is trusted; everything inside it is checked.
        size_limit: Bound on the size on disk, in bytes (default 10 GiB). The least recently
            *used* entries are evicted to stay within it; a blob larger than the limit is
            streamed from the store and not cached. Each process enforces the value it was
            given.
        materialize: How a download is made from a cache entry: ``"copy"`` (default; an
            in-kernel copy, then verified) or ``"hardlink"`` (free and instant, for read-only
            use; Linux). **Caveat of "hardlink"**: the downloaded file *is* the cache entry
            (mode 0444); editing it in place is detected (the entry is dropped and fetched
            again), but other hard-linked downloads of the blob change with it. Falls back to
            a copy when linking is impossible.
        cache_uploads: Keep blobs offered by uploads (:meth:`add_file`). Turn off in a
            process that uploads but will not read back, so it does not fill the disk.
        timeout: Seconds to wait for the cache's database lock before giving up on the cache
            for that operation (the store is used directly then, and for the next minute).

    Raises:
        StoreConfigError: ``directory`` is a file, cannot be created or is not writable, or an
            option is invalid.

    Example:
        >>> import io, tempfile
        >>> from optuna_cas.digest import Digest
        >>> cache = DiskBlobCache(tempfile.mkdtemp(), size_limit=100 * 2**20)
        >>> d = Digest.of_bytes(b"weights")
        >>> cache.open(d, lambda: io.BytesIO(b"weights")).read()     # miss: filled
        b'weights'
        >>> cache.open(d, lambda: io.BytesIO(b"unused")).read()      # hit: verified
        b'weights'
        >>> info = cache.info(); info.entries, info.hits, info.misses
        (1, 1, 1)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        materialize: MaterializeMode = "copy",
        cache_uploads: bool = True,
        timeout: float = 60.0,
    ) -> None:
        if isinstance(size_limit, bool) or not isinstance(size_limit, int) or size_limit <= 0:
            raise StoreConfigError(f"size_limit must be a positive int, got {size_limit!r}")
        if materialize not in ("copy", "hardlink"):
            raise StoreConfigError(f"materialize must be 'copy' or 'hardlink', got {materialize!r}")
        path = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self._directory = path.absolute()
        self._root = str(self._directory)
        self._size_limit = size_limit
        self._materialize: MaterializeMode = materialize
        self._cache_uploads = cache_uploads
        self._timeout = timeout
        self._evict_lock = ForkSafeLock()
        self._gate = ForkGate()  # a fork waits for this cache's database work (see the class)
        self._warned_fork = False
        self._resting_until = 0.0  # after a lock timeout: the store only, until then
        files.prepare_directory(self._directory)
        self._cache = open_cache(self._gate, self._root, timeout=timeout, size_limit=size_limit)
        files.remove_temps_older_than(self._root, time.time() - _STALE_TEMP_SECONDS)
        self.manifests = ManifestEntries(
            self._cache, self._root, lambda: self._evict_to(size_limit), self._warn_bypass
        )

    @property
    def directory(self) -> Path:
        """The cache directory.

        Example:
            >>> import tempfile
            >>> DiskBlobCache(tempfile.mkdtemp()).directory.is_dir()
            True
        """
        return self._directory

    @property
    def size_limit(self) -> int:
        """The size bound in bytes.

        Example:
            >>> import tempfile
            >>> DiskBlobCache(tempfile.mkdtemp(), size_limit=2**30).size_limit
            1073741824
        """
        return self._size_limit

    @property
    def cache_uploads(self) -> bool:
        """Whether blobs offered by uploads are kept.

        Example:
            >>> import tempfile
            >>> DiskBlobCache(tempfile.mkdtemp(), cache_uploads=False).cache_uploads
            False
        """
        return self._cache_uploads

    @property
    def materialize_mode(self) -> MaterializeMode:
        """``"copy"`` or ``"hardlink"`` (see the class docs for the caveat).

        Example:
            >>> import tempfile
            >>> DiskBlobCache(tempfile.mkdtemp()).materialize_mode
            'copy'
        """
        return self._materialize

    # -- the BlobCache protocol ----------------------------------------------------------------

    def open(self, digest: Digest, fetch: Callable[[], BinaryIO]) -> BinaryIO:
        """A reader of the blob's bytes that verifies as it reads; fills the cache on a miss.

        A cached entry is hashed *before* the reader is returned (a corrupt one is refetched
        rather than failing the caller halfway), and the reader hashes again as it goes.

        Args:
            digest: The blob.
            fetch: Opens the blob's raw bytes in the store.

        Returns:
            A binary reader positioned at the start.

        Raises:
            IntegrityError: The store's bytes do not match ``digest`` (nothing is cached); or,
                at EOF of the reader, the entry changed after it was checked.
            ArtifactNotFound: The store has no such blob.

        Example:
            >>> import io, tempfile
            >>> cache = DiskBlobCache(tempfile.mkdtemp())
            >>> cache.open(Digest.of_bytes(b"x"), lambda: io.BytesIO(b"x")).read()
            b'x'
        """
        if not self._takes(digest):
            return self._passthrough(digest, fetch)
        handle = self._lookup(digest)
        if handle is not None:
            if files.holds(handle, digest):
                handle.seek(0)
                return self._verifying(handle, digest)
            handle.close()
            self._drop(digest, "content does not match the digest")
        # Asked again: a lookup that timed out set the cache resting.
        filled = self._takes(digest) and fill_temp(self._root, digest, fetch, self._warn_bypass)
        if not filled:
            return self._passthrough(digest, fetch)
        self._adopt(digest, filled)
        os.lseek(filled.fd, 0, os.SEEK_SET)
        return self._verifying(open(filled.fd, "rb"), digest)

    def materialize(self, digest: Digest, path: Path, fetch: Callable[[], BinaryIO]) -> None:
        """Write the blob to the new file ``path``, verified, from the cache (filled on a miss).

        ``path`` appears complete or not at all (temp file beside it, then an atomic link), and
        an existing file is never overwritten.

        Args:
            digest: The blob.
            path: The new file.
            fetch: Opens the blob's raw bytes in the store.

        Raises:
            FileExistsError: ``path`` exists.
            IntegrityError: The store's bytes do not match ``digest``; nothing is left at
                ``path`` and nothing is cached.

        Example:
            >>> import io, os, tempfile
            >>> from pathlib import Path
            >>> cache = DiskBlobCache(tempfile.mkdtemp())
            >>> target = Path(tempfile.mkdtemp()) / "model.pt"
            >>> cache.materialize(Digest.of_bytes(b"w"), target, lambda: io.BytesIO(b"w"))
            >>> target.read_bytes()
            b'w'
        """
        target = Path(path)
        if os.path.lexists(target):
            raise FileExistsError(f"File already exists: {target!s}")
        if self._takes(digest):
            handle = self._lookup(digest)
            if handle is not None:
                with handle:
                    if self._publish_hit(handle, digest, target):
                        return
                self._drop(digest, "content does not match the digest")
            if self._takes(digest) and self._fill_and_publish(digest, fetch, target):
                return
        with self._passthrough(digest, fetch) as reader:
            _materialize_stream(reader, target)

    def add_file(self, digest: Digest, source: BinaryIO) -> None:
        """Offer a just-uploaded blob (``source`` positioned at its start) to the cache.

        The bytes are copied (in-kernel for regular files) into a private temp file, which is
        hashed before it is cached; a blob already cached or larger than the limit is skipped.
        Never fails the caller: cache errors are logged.

        Example:
            >>> import io, tempfile
            >>> cache = DiskBlobCache(tempfile.mkdtemp())
            >>> d = Digest.of_bytes(b"abc"); cache.add_file(d, io.BytesIO(b"abc"))
            >>> d in cache
            True
        """
        if not self._cache_uploads or not self._takes(digest):
            return
        try:
            if digest in self:
                return
            fd, name = files.new_temp(self._root)
        except CACHE_ERRORS as e:
            self._warn_bypass(e)
            return
        try:
            copy = functools.partial(files.copy_source, source, fd, digest.size + 1)
            if copy_holds(copy, fd, digest)[1]:
                os.fchmod(fd, files.READ_ONLY)
                self._adopt(digest, FillTemp(fd, name, digest.size))
            else:
                logger.warning("Not caching %s: the uploaded source no longer matches it", digest)
        except CACHE_ERRORS as e:
            self._warn_bypass(e)
        finally:
            os.close(fd)
            files.unlink_temp(self._root, name)

    def open_entry(self, digest: Digest) -> BinaryIO | None:
        """The entry's file if cached at the right size (unverified: for chunk readers).

        Example:
            >>> import io, tempfile
            >>> cache, d = DiskBlobCache(tempfile.mkdtemp()), Digest.of_bytes(b"pack")
            >>> cache.fill(d, lambda: io.BytesIO(b"pack")); cache.open_entry(d).read()
            b'pack'
        """
        return self._lookup(digest) if self._takes(digest) else None

    def fill(
        self, digest: Digest, fetch: Callable[[], BinaryIO], *, name: str | None = None
    ) -> None:
        """Cache the store's bytes of ``digest`` (verified on the way) unless too large.

        ``IntegrityError`` if they are not ``digest``'s (nothing kept; ``name`` says what).

        Example:
            >>> import io, tempfile
            >>> cache, d = DiskBlobCache(tempfile.mkdtemp()), Digest.of_bytes(b"x")
            >>> cache.fill(d, lambda: io.BytesIO(b"x")); d in cache
            True
        """
        if self._takes(digest) and (
            filled := fill_temp(self._root, digest, fetch, self._warn_bypass, name=name)
        ):
            try:
                self._adopt(digest, filled)
            finally:
                os.close(filled.fd)

    def discard(self, digest: Digest) -> None:
        """Forget a blob (e.g. after gc removed it from the store). Missing is fine.

        Example:
            >>> import io, tempfile
            >>> cache = DiskBlobCache(tempfile.mkdtemp())
            >>> d = Digest.of_bytes(b"abc"); cache.add_file(d, io.BytesIO(b"abc"))
            >>> cache.discard(d); d in cache
            False
        """
        try:
            self._cache.delete(_key(digest), retry=True)
        except CACHE_ERRORS as e:
            self._warn_bypass(e)

    # -- management ----------------------------------------------------------------------------

    def __contains__(self, digest: object) -> bool:
        """Whether an entry for ``digest`` exists (not verified; does not count as a use)."""
        if not isinstance(digest, Digest):
            return False
        try:
            return _key(digest) in self._cache
        except CACHE_ERRORS as e:
            self._warn_bypass(e)
            return False

    def __len__(self) -> int:
        """Number of entries.

        Example:
            >>> import tempfile
            >>> len(DiskBlobCache(tempfile.mkdtemp()))
            0
        """
        return len(self._cache)

    def volume(self) -> int:
        """Size on disk in bytes: value files plus the index database.

        Example:
            >>> import tempfile
            >>> DiskBlobCache(tempfile.mkdtemp()).volume() > 0   # the empty database
            True
        """
        return int(self._cache.volume())

    def info(self) -> CacheInfo:
        """Directory, entry count, size, limit and the shared hit/miss counters.

        Example:
            >>> import tempfile
            >>> DiskBlobCache(tempfile.mkdtemp()).info().misses
            0
        """
        return CacheInfo(
            directory=self._directory,
            entries=len(self),
            size_bytes=self.volume(),
            size_limit=self._size_limit,
            hits=int(self._cache.reset("hits")),
            misses=int(self._cache.reset("misses")),
        )

    def clear(self) -> int:
        """Remove every entry (and abandoned temp files); returns the number of entries removed.

        The hit/miss counters are kept. Readers holding an entry open keep reading it.

        Example:
            >>> import io, tempfile
            >>> cache = DiskBlobCache(tempfile.mkdtemp())
            >>> cache.add_file(Digest.of_bytes(b"a"), io.BytesIO(b"a"))
            >>> cache.clear(), len(cache)
            (1, 0)
        """
        removed = int(self._cache.clear(retry=True))
        files.remove_temps_older_than(self._root, time.time() - _STALE_TEMP_SECONDS)
        return removed

    def prune(self, max_bytes: int) -> int:
        """Evict least recently used entries until the size on disk is at most ``max_bytes``.

        Args:
            max_bytes: The size to get under (the index database counts too, so 0 empties
                the cache).

        Returns:
            The number of entries evicted.

        Example:
            >>> import io, tempfile
            >>> cache = DiskBlobCache(tempfile.mkdtemp())
            >>> for i in range(3):
            ...     cache.add_file(Digest.of_bytes(bytes([i]) * 1000), io.BytesIO(bytes([i]) * 1000))
            >>> cache.prune(0), len(cache)
            (3, 0)
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
        evicted = self._evict_to(max_bytes)
        files.remove_temps_older_than(self._root, time.time() - _STALE_TEMP_SECONDS)
        return evicted

    def close(self) -> None:
        """Close this thread's connection to the index database (reopened on next use).

        Example:
            >>> import tempfile
            >>> DiskBlobCache(tempfile.mkdtemp()).close()
        """
        self._cache.close()

    def __enter__(self) -> DiskBlobCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskBlobCache({self._root!r}, size_limit={self._size_limit})"

    def __getstate__(self) -> dict[str, object]:
        # Pickled as its settings (a store passed to a spawn worker): the unpickled copy opens
        # the same directory, with connections and locks of its own.
        return {
            "directory": self._directory,
            "size_limit": self._size_limit,
            "materialize": self._materialize,
            "cache_uploads": self._cache_uploads,
            "timeout": self._timeout,
        }

    def __setstate__(self, settings: dict[str, Any]) -> None:
        self.__init__(**settings)  # type: ignore[misc]

    # -- internals -----------------------------------------------------------------------------

    def _lookup(self, digest: Digest) -> BinaryIO | None:
        """The open entry file if its size is right (a hit; LRU time updated), or None."""
        try:
            found = self._cache.get(_key(digest), read=True)
        except CACHE_ERRORS as e:
            self._warn_bypass(e)
            return None
        if isinstance(found, Unusable):
            self._drop(digest, found.reason)
            return None
        handle = cast(BinaryIO | None, found)
        if handle is not None and (size := os.fstat(handle.fileno()).st_size) != digest.size:
            handle.close()
            self._drop(digest, f"holds {size} bytes, expected {digest.size}")
            return None
        return handle

    def _fill_and_publish(
        self, digest: Digest, fetch: Callable[[], BinaryIO], target: Path
    ) -> bool:
        """A miss: fill the cache and make ``target`` from the same pass. False: cache failed.

        Copy mode writes the target's temp file in the same pass as the cache's (each buffer
        written twice) rather than copying afterwards, so a fill costs one download.
        """
        if self._materialize == "hardlink":
            filled = fill_temp(self._root, digest, fetch, self._warn_bypass)
            if filled is None:
                return False
            try:
                if not (
                    files.link_open_file(filled.fd, target)
                    or copy_and_publish(filled.fd, digest, target)
                ):
                    raise IntegrityError(f"Cache fill of {digest} changed before it was copied")
            finally:
                self._adopt(digest, filled)  # the verified bytes, even if publishing failed
                os.close(filled.fd)
            return True
        out_fd, out_temp = temp_beside(target)
        try:
            filled = fill_temp(self._root, digest, fetch, self._warn_bypass, out_fd=out_fd)
            try:
                publish_new_file(Path(out_temp), target)
            finally:
                if filled is not None:
                    self._adopt(digest, filled)
                    os.close(filled.fd)
        finally:
            try:  # first and bare: see _fileio.materialize_buffers
                os.unlink(out_temp)
            except FileNotFoundError:
                pass
            finally:
                os.close(out_fd)
        return True

    def _adopt(self, digest: Digest, filled: FillTemp) -> None:
        """Hand a verified temp file to diskcache (first writer wins), then enforce the limit."""
        try:
            added = self._cache.add(_key(digest), filled, read=True)
        except CACHE_ERRORS as e:
            self._warn_bypass(e)
            added = False
        finally:
            files.unlink_temp(self._root, filled.name)  # there only if the rename never ran
        if added:
            try:
                self._evict_to(self._size_limit)
            except CACHE_ERRORS as e:
                self._warn_bypass(e)

    def _evict_to(self, limit: int) -> int:
        with self._gate.section(), self._evict_lock:
            return files.evict_lru(self._cache, limit, restore=self._size_limit)

    def _publish_hit(self, handle: BinaryIO, digest: Digest, target: Path) -> bool:
        """Make ``target`` from a cache entry. False (and nothing at ``target``) if corrupt."""
        if self._materialize == "hardlink":
            if not files.holds(handle, digest):
                return False
            if files.link_open_file(handle.fileno(), target):
                return True
        return copy_and_publish(handle.fileno(), digest, target)

    def _verifying(self, handle: BinaryIO, digest: Digest) -> BinaryIO:
        def dropped() -> None:
            self._drop(digest, "it changed after it was checked")

        name = f"cache entry {_key(digest)} in {self._root}"
        reader = files.EntryReader(handle, digest, name=name, on_mismatch=dropped)
        return cast(BinaryIO, io.BufferedReader(reader, CHUNK_SIZE))

    def _passthrough(self, digest: Digest, fetch: Callable[[], BinaryIO]) -> BinaryIO:
        verifying = VerifyingReader(fetch(), digest, name=f"blob {digest} (not cached)")
        return cast(BinaryIO, io.BufferedReader(verifying, CHUNK_SIZE))

    def _drop(self, digest: Digest, reason: str) -> None:
        message = "Cache entry %s in %s is unusable (%s); dropping it and reading from the store"
        logger.warning(message, _key(digest), self._root, reason)
        self.discard(digest)

    def _warn_bypass(self, error: BaseException) -> None:
        if isinstance(error, ForkedMidOperation):
            if self._warned_fork:
                return  # said once: every cache call in this process fails the same way
            self._warned_fork = True
        # Some errors have no text (diskcache.Timeout): their type says what happened.
        reason = str(error) or type(error).__name__
        if isinstance(error, diskcache.Timeout):
            # Held by a stopped or hung process: each later read would wait a timeout for a
            # lookup and another for its fill, so the cache rests a while.
            self._resting_until = time.monotonic() + _REST_SECONDS
            reason += f"; not used for {_REST_SECONDS:g} s"
        logger.warning("Cache in %s failed (%s); using the store directly", self._root, reason)

    def _takes(self, digest: Digest) -> bool:
        """Whether to cache ``digest``: not too large, and the cache not resting."""
        return digest.size <= self._size_limit and time.monotonic() >= self._resting_until


def _key(digest: Digest) -> str:
    # The digest's string form plus its size: an entry names exactly one byte string.
    return f"{digest}:{digest.size}"
