"""A read-through disk cache of blobs, keyed by digest, shared by the processes of one machine.

:class:`CachedArtifactStore` puts a :class:`DiskBlobCache` in front of any optuna-cas store
(also one behind :class:`~optuna_cas.Backoff`), so a worker that downloads the same checkpoint
again reads it from local disk instead of the bucket.

Why it can never serve stale bytes: entries are keyed by the blob's digest (and size), never by
artifact ID or backend key, so an entry either holds exactly the bytes its key names or it is
corrupt, and corruption is checked for on every use.

How a fill is made fast and safe: the remote bytes are streamed *once* into a private temp
file inside the cache directory while being hashed (a helper thread writes one buffer while the
next is read and hashed; a download's own temp file gets the same buffers in that pass). Only if
size and digest match is the temp file handed to diskcache, which adopts it with a ``rename``
into its own value-file layout (see :class:`_AdoptingDisk`) instead of copying it again:
``Cache.set(fileobj, read=True)`` copies in 4 MiB pieces, measured here at 0.35-2.5 GB/s.
Nothing unverified ever gets a name diskcache knows about. Measured on this machine (128 MiB,
moto on loopback, medians): uncached download 197-212 ms, cache fill and download 210-224 ms
(1.05-1.09x; download-then-``set`` was 1.15-1.32x), cached download 41 ms with ``cp`` at 44 ms.

Why several processes can share a directory:

* A value file is complete before diskcache commits the row that names it (the rename happens
  in ``Disk.store``, which ``Cache.add`` calls before its transaction, exactly the order
  diskcache itself uses), and readers only find files through committed rows: no reader can
  see a partial entry.
* Value files are never modified after adoption, only unlinked (eviction, replacement). A
  reader holds an open descriptor, which stays valid on POSIX after an unlink.
* Concurrent fills of one blob each download into their own temp file and each reader keeps its
  own verified descriptor; ``Cache.add`` lets the first commit win and removes the loser's file
  after its transaction, so the cache ends with one entry and every reader has correct bytes.
* Value files are not fsynced, so a crash can leave a truncated or garbage entry. A hit is
  therefore verified (size, then BLAKE3) before any byte is returned; a bad entry is dropped
  and refetched. Hashing costs about as much as copying the file again, so a process remembers
  the entries it has verified by file identity (inode, size, mtime, ctime: any later write
  changes ctime) and skips re-hashing those; see ``DiskBlobCache._known_good`` for why that is
  sound. A new process (e.g. after a crash) verifies again.

The cache is never required for correctness: if the cache directory fails (disk full, database
locked for longer than ``timeout``), reads and writes go straight to the store and a warning is
logged.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import logging
import os
import queue
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import diskcache
import diskcache.core

from optuna_cas._fileio import publish_new_file
from optuna_cas._validation import shorten_name
from optuna_cas.content import materialize as _materialize_stream
from optuna_cas.digest import CHUNK_SIZE, Digest, Hasher, VerifyingReader, hash_fd, readinto
from optuna_cas.exceptions import ArtifactNotFound, StoreConfigError
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

logger = logging.getLogger("optuna_cas.cache")

#: Environment variable that overrides the default cache directory.
CACHE_DIR_ENV = "OPTUNA_CAS_CACHE_DIR"
#: Default bound on the cache's size on disk: 10 GiB.
DEFAULT_SIZE_LIMIT = 10 * 1024**3

MaterializeMode = Literal["copy", "hardlink"]

# Temp files of fills in progress live here: inside the cache directory, so adopting one is a
# rename on the same filesystem, and named so it never collides with diskcache's two-hex-digit
# value subdirectories (whose empty parents diskcache removes with os.removedirs).
_TEMP_DIR = "tmp"
# A fill writes continuously, so a temp file untouched for this long belongs to a dead process.
_STALE_TEMP_SECONDS = 3600.0
# Cache files are never modified after adoption: make accidental in-place edits (e.g. of a
# hard-linked download) fail for ordinary users. Root ignores it; verify-on-read still catches.
_READ_ONLY = 0o444
_COPY_STEP = 64 * CHUNK_SIZE
# Errors meaning "this kernel/filesystem pair cannot copy (or link) this way", not a failure.
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
_MAX_REMEMBERED_REFS = 4096
# Entries this process has verified: (directory, key) -> file identity. See _known_good.
_VERIFIED: dict[tuple[str, str], tuple[int, int, int, int, int]] = {}
_MAX_VERIFIED = 65536
_CTIME_MARGIN_NS = 2_000_000_000
# What a failing cache directory raises (diskcache.Timeout: database locked > timeout).
_CACHE_ERRORS: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, diskcache.Timeout)


def default_cache_dir() -> Path:
    """The cache directory used when none is given.

    ``$OPTUNA_CAS_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/optuna-cas`` (if ``XDG_CACHE_HOME``
    is an absolute path, as the XDG spec requires), else ``~/.cache/optuna-cas``.

    Example:
        >>> import os
        >>> os.environ["OPTUNA_CAS_CACHE_DIR"] = "/tmp/my-cache"
        >>> str(default_cache_dir())
        '/tmp/my-cache'
        >>> del os.environ["OPTUNA_CAS_CACHE_DIR"]
    """
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "optuna-cas"
    return Path.home() / ".cache" / "optuna-cas"


@dataclass(frozen=True)
class CacheInfo:
    """A snapshot of a cache's state.

    Attributes:
        directory: Where the cache lives.
        entries: Number of cached blobs.
        size_bytes: Size on disk (value files plus the index database); kept within
            ``size_limit``.
        size_limit: The bound enforced by this process.
        hits: Lookups that found an entry, by every process sharing the directory (a corrupt
            entry found and dropped counts here too).
        misses: Lookups that found none (each followed by a fill).

    Example:
        >>> import tempfile
        >>> info = DiskBlobCache(tempfile.mkdtemp(), size_limit=2**20).info()
        >>> info.entries, info.size_limit, info.hits
        (0, 1048576, 0)
    """

    directory: Path
    entries: int
    size_bytes: int
    size_limit: int
    hits: int
    misses: int


@dataclass(frozen=True)
class _VerifiedFile:
    """A complete, verified temp file inside the cache directory, ready to be adopted."""

    path: str
    size: int


class _AdoptingDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's ``Disk`` that can take ownership of a finished file instead of copying it.

    For a :class:`_VerifiedFile` value, ``store`` renames the file to a fresh value-file name
    (same random layout as diskcache's own, so a stock ``diskcache.Cache`` opening the same
    directory reads these entries normally). The rename happens before ``Cache.add`` opens its
    transaction and the row naming the file is committed after, which is the order diskcache
    uses for the files it writes itself; if the transaction fails, diskcache removes the file.
    Every other value takes diskcache's ordinary path.
    """

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, _VerifiedFile):
            return super().store(value, read, key=key)
        filename, full_path = self.filename(key, value)
        for attempt in range(10):
            # Another process evicting the last file of a subdirectory removes it
            # (os.removedirs), possibly between our makedirs and rename: try again, as
            # diskcache's own Disk._write does.
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            try:
                os.rename(value.path, full_path)
                break
            except FileNotFoundError:
                if attempt == 9 or not os.path.exists(value.path):
                    raise
        return value.size, diskcache.core.MODE_BINARY, filename, None


class DiskBlobCache:
    """A bounded, least-recently-used disk cache of blobs on ``diskcache``, keyed by digest.

    Implements the :class:`~optuna_cas.content.BlobCache` protocol. Usually built for you by
    :class:`CachedArtifactStore`. Entries are verified (size and BLAKE3) when filled and again
    before use (once per process and unchanged file); a corrupt entry is dropped and refetched,
    never returned. Several processes may share one directory (see the module notes for why
    that is safe).

    Args:
        directory: Where to keep the cache; default :func:`default_cache_dir`. Created if
            missing.
        size_limit: Bound on the size on disk, in bytes (default 10 GiB). The least recently
            *used* entries are evicted to stay within it; a blob larger than the limit is
            streamed from the store and not cached. The limit is saved in the directory, but
            each process enforces the value it was given.
        materialize: How a download is made from a cache entry: ``"copy"`` (default;
            ``copy_file_range``, an in-kernel copy) or ``"hardlink"`` (``os.link``, free and
            instant, for read-only use). **Caveat of "hardlink"**: the downloaded file *is* the
            cache entry; editing it in place (rather than replacing it) changes the cache. Cache
            files are read-only (mode 0444) so ordinary users get a permission error, and the
            cache verifies every entry before use, so an edited entry is detected, dropped and
            refetched: the cache never serves wrong bytes. But the edited file is what it is,
            and other hard-linked downloads of the same blob change with it. Falls back to a
            copy when the target is on another filesystem.
        cache_uploads: Keep blobs offered by uploads (:meth:`add_file`). Turn off in a
            process that uploads but will not read back, so it does not fill the disk.
        timeout: Seconds to wait for the cache's database lock before giving up on the cache
            for that operation (the store is then used directly).

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
        self._temp_dir = self._directory / _TEMP_DIR
        self._size_limit = size_limit
        self._materialize: MaterializeMode = materialize
        self._cache_uploads = cache_uploads
        self._prune_lock = threading.Lock()
        _prepare_directory(self._directory, self._temp_dir)
        try:
            self._cache = diskcache.Cache(
                str(self._directory),
                timeout=timeout,
                disk=_AdoptingDisk,
                # diskcache's default is least-recently-*stored* with a 1 GiB limit.
                eviction_policy="least-recently-used",
                size_limit=size_limit,
                # diskcache culls up to cull_limit LRU entries per insert once over the limit,
                # evicting far more than needed; we evict exactly, one entry at a time.
                cull_limit=0,
                # Hit/miss counters live in the shared database: counted for every process.
                statistics=1,
            )
        except _CACHE_ERRORS as e:
            raise StoreConfigError(f"Cannot open the cache in {str(self._directory)!r}: {e}") from e
        self._remove_stale_temps()

    # -- properties ----------------------------------------------------------------------------

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
        """A reader of the blob's verified bytes, filling the cache from ``fetch`` on a miss.

        A cached entry is verified in full *before* the reader is returned (~12-25 ms per
        64 MiB; skipped if this process already verified the unchanged file), so a corrupt
        entry is refetched instead of failing the caller halfway through.

        Args:
            digest: The blob.
            fetch: Opens the blob's raw bytes in the store.

        Returns:
            A binary reader positioned at the start.

        Raises:
            IntegrityError: The store's bytes do not match ``digest`` (nothing is cached).
            ArtifactNotFound: The store has no such blob.

        Example:
            >>> import io, tempfile
            >>> cache = DiskBlobCache(tempfile.mkdtemp())
            >>> cache.open(Digest.of_bytes(b"x"), lambda: io.BytesIO(b"x")).read()
            b'x'
        """
        if digest.size > self._size_limit:
            return self._passthrough(digest, fetch)
        handle = self._lookup(digest)
        if handle is not None:
            if self._check(handle, digest):
                return handle
            handle.close()
            self._drop_corrupt(digest)
        try:
            reader, temp = self._fill(digest, fetch)
        except _CacheWriteError as e:
            self._warn_bypass(e)
            return self._passthrough(digest, fetch)
        self._adopt(digest, temp)
        return reader

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
        if digest.size > self._size_limit:
            with self._passthrough(digest, fetch) as reader:
                _materialize_stream(reader, target)
            return
        handle = self._lookup(digest)
        if handle is not None:
            with handle:
                done = self._publish_cached(handle, digest, target)
            if done:
                return
            self._drop_corrupt(digest)
        # Copy mode writes the target's temp file in the same pass as the cache's (a second
        # write of each buffer, on the writer thread) rather than copying afterwards: measured,
        # the copy afterwards made a fill cost ~1.3x an uncached download from moto.
        out_fd, out_temp = _temp_beside(target) if self._materialize == "copy" else (None, None)
        try:
            try:
                reader, temp = self._fill(digest, fetch, also=out_fd)
            except _CacheWriteError as e:
                self._warn_bypass(e)
                with self._passthrough(digest, fetch) as stream:
                    _materialize_stream(stream, target)
                return
            with reader:
                try:
                    if out_temp is not None:
                        publish_new_file(Path(out_temp), target)
                    else:
                        self._publish_private(reader, temp, target)
                finally:
                    # Cache the verified bytes even if publishing failed (target appeared).
                    self._adopt(digest, temp)
        finally:
            if out_fd is not None:
                os.close(out_fd)
            if out_temp is not None:
                _unlink_quietly(out_temp)

    def add_file(self, digest: Digest, source: BinaryIO) -> None:
        """Offer a just-uploaded blob (``source`` positioned at its start) to the cache.

        The bytes are copied (in-kernel for regular files) and verified against ``digest``
        before they are cached; a blob already cached or larger than the limit is skipped.
        Never fails the caller: cache errors are logged.

        Example:
            >>> import io, tempfile
            >>> cache = DiskBlobCache(tempfile.mkdtemp())
            >>> d = Digest.of_bytes(b"abc"); cache.add_file(d, io.BytesIO(b"abc"))
            >>> d in cache
            True
        """
        if not self._cache_uploads or digest.size > self._size_limit:
            return
        temp: str | None = None
        try:
            if digest in self:
                return
            fd, temp = self._new_temp()
            os.close(fd)
            if _copy_verified(source, temp, digest):
                self._adopt(digest, temp)
            else:
                logger.warning(
                    "Not caching %s: the uploaded source no longer matches its digest", digest
                )
        except _CACHE_ERRORS as e:
            self._warn_bypass(e)
        finally:
            if temp is not None:
                _unlink_quietly(temp)

    def discard(self, digest: Digest) -> None:
        """Forget a blob (e.g. after gc removed it from the store). Missing is fine.

        Example:
            >>> import io, tempfile
            >>> cache = DiskBlobCache(tempfile.mkdtemp())
            >>> d = Digest.of_bytes(b"abc"); cache.add_file(d, io.BytesIO(b"abc"))
            >>> cache.discard(d); d in cache
            False
        """
        _VERIFIED.pop((str(self._directory), _key(digest)), None)
        try:
            self._cache.delete(_key(digest), retry=True)
        except _CACHE_ERRORS as e:
            self._warn_bypass(e)

    # -- management ----------------------------------------------------------------------------

    def __contains__(self, digest: object) -> bool:
        """Whether an entry for ``digest`` exists (not verified; does not count as a use)."""
        return isinstance(digest, Digest) and _key(digest) in self._cache

    def __len__(self) -> int:
        """Number of entries.

        Example:
            >>> import tempfile
            >>> len(DiskBlobCache(tempfile.mkdtemp()))
            0
        """
        return int(self._cache.reset("count"))

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
        self._remove_stale_temps()
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
        self._remove_stale_temps()
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
        return (
            f"DiskBlobCache({str(self._directory)!r}, size_limit={self._size_limit}, "
            f"materialize={self._materialize!r})"
        )

    # -- internals -----------------------------------------------------------------------------

    def _lookup(self, digest: Digest) -> BinaryIO | None:
        """An open handle on the cached entry (counted as a hit, LRU time updated), or None."""
        try:
            handle = self._cache.get(_key(digest), read=True)
        except _CACHE_ERRORS as e:
            self._warn_bypass(e)
            return None
        return cast(BinaryIO | None, handle)

    def _fill(
        self, digest: Digest, fetch: Callable[[], BinaryIO], *, also: int | None = None
    ) -> tuple[BinaryIO, str]:
        """Stream the blob once into a private temp file, verifying; return (reader, temp path).

        ``also``: a descriptor that receives the same bytes (the download's own temp file).
        The reader is opened before the file is adopted, so it keeps the verified bytes even if
        the entry is evicted or replaced meanwhile. Raises ``_CacheWriteError`` for failures on
        the cache's side (the fetch was then wasted, and the caller bypasses the cache).
        """
        try:
            fd, temp = self._new_temp()
        except OSError as e:
            raise _CacheWriteError(e) from e
        try:
            try:
                raw = fetch()
                # VerifyingReader closes raw; it raises IntegrityError on any excess byte and at
                # EOF on a wrong size or digest, before the temp file can be adopted.
                name = f"blob {digest} (cache fill)"
                with VerifyingReader(raw, digest, name=name) as source:
                    _tee(cast(BinaryIO, source), cache_fd=fd, also=also)
            finally:
                os.close(fd)
            try:
                os.chmod(temp, _READ_ONLY)
                reader = open(temp, "rb")  # noqa: SIM115 - returned to the caller
            except OSError as e:
                raise _CacheWriteError(e) from e
        except BaseException:
            _unlink_quietly(temp)
            raise
        return reader, temp

    def _adopt(self, digest: Digest, temp: str) -> None:
        """Hand the verified temp file to diskcache (first writer wins), then enforce the limit."""
        try:
            added = self._cache.add(_key(digest), _VerifiedFile(temp, digest.size), read=True)
        except _CACHE_ERRORS as e:
            self._warn_bypass(e)
            added = False
        finally:
            _unlink_quietly(temp)  # still there only if adoption failed before the rename
        if added:
            try:
                self._evict_to(self._size_limit)
            except _CACHE_ERRORS as e:
                self._warn_bypass(e)

    def _evict_to(self, limit: int) -> int:
        """Evict LRU entries, one at a time, until ``volume() <= limit``.

        diskcache's ``cull()`` deletes in batches of ten, which would throw away up to nine
        entries more than needed; so this one uses diskcache's transaction and schema directly
        (the same statements its cull runs, LIMIT 1). Pinned by the LRU tests.
        """
        evicted = 0
        with self._prune_lock:
            while self._cache.volume() > limit:
                with self._cache._transact(retry=True) as (sql, cleanup):
                    rows = sql(
                        "SELECT rowid, filename FROM Cache ORDER BY access_time LIMIT 1"
                    ).fetchall()
                    if not rows:
                        break
                    ((rowid, filename),) = rows
                    sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                    cleanup(filename)  # unlinked after COMMIT; open readers keep their bytes
                evicted += 1
        return evicted

    def _publish_cached(self, handle: BinaryIO, digest: Digest, target: Path) -> bool:
        """Make ``target`` from a cache entry. False (and nothing at ``target``) if corrupt."""
        before = os.fstat(handle.fileno())
        known_good = self._known_good(digest, before)
        if self._materialize == "hardlink":
            if not known_good and not self._check(handle, digest):
                return False
            # Value files are never rewritten, only unlinked, so this name is either the
            # inode just verified or gone (ENOENT, then we copy from the open descriptor).
            if _try_link(handle.name, target):
                return True
            known_good = True
        started = time.time_ns()
        fd, temp = _temp_beside(target)
        try:
            with open(fd, "wb") as out:
                _kernel_copy(handle.fileno(), out.fileno())
            if not known_good:
                # Verify the *copy*: it is private (nobody can change it under us, so the fast
                # memory-mapped, multi-threaded hash is safe) and it is what the caller gets.
                with open(temp, "rb") as written:
                    if os.fstat(written.fileno()).st_size != digest.size:
                        return False
                    if hash_fd(written.fileno()) != digest:
                        return False
                self._remember_good(digest, before, started)
            publish_new_file(Path(temp), target)
            return True
        finally:
            _unlink_quietly(temp)

    def _check(self, handle: BinaryIO, digest: Digest) -> bool:
        """Whether a cache entry holds ``digest``'s bytes: remembered, or hashed now."""
        before = os.fstat(handle.fileno())
        if self._known_good(digest, before):
            handle.seek(0)
            return True
        started = time.time_ns()
        if not _matches(handle, digest):
            return False
        self._remember_good(digest, before, started)
        return True

    # Verifying every hit costs about as much as copying the file again, so each process
    # remembers the entries it has verified, by file identity: device, inode, size, mtime and
    # ctime. Any write, truncation, chmod or link changes ctime, which user space cannot set
    # back, so an unchanged identity means unchanged bytes. Two limits keep that sound:
    # * ctime has coarse granularity (a jiffy, up to 10 ms): an identity is remembered only if
    #   its ctime was at least _CTIME_MARGIN_NS old when hashing started, so a later change
    #   necessarily gets a later ctime. Fresh fills are therefore re-verified until then.
    # * The memory lives and dies with the process: after a crash (the case the unsynced
    #   value files need checking for) every entry is verified again.
    def _known_good(self, digest: Digest, st: os.stat_result) -> bool:
        return _VERIFIED.get((str(self._directory), _key(digest))) == _identity(st)

    def _remember_good(self, digest: Digest, st: os.stat_result, started_ns: int) -> None:
        if started_ns - st.st_ctime_ns < _CTIME_MARGIN_NS:
            return
        if len(_VERIFIED) >= _MAX_VERIFIED:
            _VERIFIED.clear()
        _VERIFIED[(str(self._directory), _key(digest))] = _identity(st)

    def _publish_private(self, reader: BinaryIO, temp: str, target: Path) -> None:
        """Make ``target`` from a fill's verified temp file (not yet visible to anyone else)."""
        if self._materialize == "hardlink" and _try_link(temp, target):
            return
        fd, out_temp = _temp_beside(target)
        try:
            with open(fd, "wb") as out:
                # The source was verified as it was written and nobody else can name it yet:
                # an in-kernel copy needs no second check.
                _kernel_copy(reader.fileno(), out.fileno())
            publish_new_file(Path(out_temp), target)
        finally:
            _unlink_quietly(out_temp)

    def _passthrough(self, digest: Digest, fetch: Callable[[], BinaryIO]) -> BinaryIO:
        verifying = VerifyingReader(fetch(), digest, name=f"blob {digest} (not cached)")
        return cast(BinaryIO, io.BufferedReader(verifying, CHUNK_SIZE))

    def _drop_corrupt(self, digest: Digest) -> None:
        logger.warning(
            "Cache entry for %s in %s is corrupt or truncated; dropping it and refetching",
            digest,
            self._directory,
        )
        self.discard(digest)

    def _warn_bypass(self, error: BaseException) -> None:
        logger.warning("Cache in %s failed (%s); using the store directly", self._directory, error)

    def _new_temp(self) -> tuple[int, str]:
        try:
            return tempfile.mkstemp(prefix="fill-", suffix=".partial", dir=self._temp_dir)
        except FileNotFoundError:  # someone removed the temp directory: recreate it once
            self._temp_dir.mkdir(parents=True, exist_ok=True)
            return tempfile.mkstemp(prefix="fill-", suffix=".partial", dir=self._temp_dir)

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - _STALE_TEMP_SECONDS
        with contextlib.suppress(OSError), os.scandir(self._temp_dir) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)


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
        except _CACHE_ERRORS:
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


class _CacheWriteError(Exception):
    """The cache's side of a fill failed (disk full, directory gone): bypass the cache."""


def _key(digest: Digest) -> str:
    # The digest's string form plus its size: an entry names exactly one byte string.
    return f"{digest}:{digest.size}"


def _prepare_directory(directory: Path, temp_dir: Path) -> None:
    if os.path.lexists(directory) and not directory.is_dir():
        raise StoreConfigError(f"Cache directory {str(directory)!r} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreConfigError(
            f"Cannot create cache directory {str(directory)!r}: {e.strerror or e}"
        ) from e
    # Probe by creating a file: os.access says yes to root and knows nothing of read-only
    # mounts, while a real write fails in both cases.
    try:
        temp_dir.mkdir(exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix="probe-", dir=temp_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StoreConfigError(
            f"Cache directory {str(directory)!r} is not writable: {e.strerror or e}"
        ) from e


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _matches(handle: BinaryIO, digest: Digest) -> bool:
    """Whether an open cache file holds exactly ``digest``'s bytes (position left at 0).

    Hashes with plain reads rather than a memory map: cache files are shared, and a mapped file
    truncated by someone else would kill this process with SIGBUS instead of failing a check.
    Measured as fast as the map here (~3 GB/s from page cache).
    """
    if os.fstat(handle.fileno()).st_size != digest.size:
        return False
    handle.seek(0)
    hasher = Hasher()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    while n := readinto(handle, view):
        hasher.update(view[:n])
    handle.seek(0)
    return hasher.digest() == digest


def _tee(source: BinaryIO, *, cache_fd: int, also: int | None) -> None:
    """Copy ``source`` to EOF into ``cache_fd`` (and ``also``), writing on a helper thread.

    The caller's thread reads (network) and hashes (in the verifying reader) the next buffer
    while the helper writes the previous one: hashing, socket reads and file writes all release
    the GIL. Three rotating 1 MiB buffers bound memory. A failed write to ``cache_fd`` raises
    ``_CacheWriteError`` (the caller bypasses the cache); one to ``also`` raises as is.
    """
    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    for _ in range(3):
        free.put(bytearray(CHUNK_SIZE))
    full: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
    failed: list[BaseException] = []

    def write_loop() -> None:
        while (item := full.get()) is not None:
            buffer, n = item
            try:
                if not failed:
                    view = memoryview(buffer)[:n]
                    try:
                        _write_all(cache_fd, view)
                    except OSError as e:
                        raise _CacheWriteError(e) from e
                    if also is not None:
                        _write_all(also, view)
            except BaseException as e:
                failed.append(e)
            finally:
                free.put(buffer)

    writer = threading.Thread(target=write_loop, name="optuna-cas-cache-fill", daemon=True)
    writer.start()
    try:
        while not failed:
            buffer = free.get()
            n = readinto(source, memoryview(buffer))
            if not n:
                break
            full.put((buffer, n))
    finally:
        full.put(None)
        writer.join()
    if failed:
        raise failed[0]


def _write_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


def _copy_verified(source: BinaryIO, temp: str, digest: Digest) -> bool:
    """Copy ``source`` (from its position) into ``temp``; True if it matched ``digest``."""
    fileno = _real_fileno(source)
    with open(temp, "wb") as out:
        if fileno is not None:
            _kernel_copy(fileno, out.fileno(), source.tell())
        else:
            hasher = Hasher()
            buffer = bytearray(CHUNK_SIZE)
            view = memoryview(buffer)
            while n := readinto(source, view):
                hasher.update(view[:n])
                out.write(view[:n])
            ok = hasher.digest() == digest
    if fileno is not None:
        # The copy is private: check it (fast, memory-mapped), which also catches a source
        # that changed since it was hashed for upload.
        with open(temp, "rb") as written:
            ok = (
                os.fstat(written.fileno()).st_size == digest.size
                and hash_fd(written.fileno()) == digest
            )
    if ok:
        os.chmod(temp, _READ_ONLY)
    return ok


def _kernel_copy(src_fd: int, dst_fd: int, src_offset: int = 0) -> None:
    """Copy from ``src_offset`` to EOF into ``dst_fd`` (from its start), in-kernel if possible.

    Explicit offsets leave both descriptors' positions alone.
    """
    copied = 0
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is not None:
        try:
            while n := copy_range(src_fd, dst_fd, _COPY_STEP, src_offset + copied, copied):
                copied += n
            return
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    while n := os.preadv(src_fd, [view], src_offset + copied):
        done = 0
        while done < n:
            done += os.pwrite(dst_fd, view[done:n], copied + done)
        copied += n


def _real_fileno(stream: BinaryIO) -> int | None:
    """The descriptor of a seekable regular file behind ``stream``, else None."""
    try:
        fileno = stream.fileno()
        if not stat.S_ISREG(os.fstat(fileno).st_mode) or not stream.seekable():
            return None
        stream.tell()  # buffered readers: the stream's position, not the descriptor's
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fileno


def _try_link(source: str, target: Path) -> bool:
    """Hard-link ``source`` to the new name ``target``; False if links are impossible here."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise FileExistsError(f"File already exists: {target!s}") from None
    except OSError:
        return False  # other filesystem, no hard links, entry just evicted, ...: copy instead
    return True


def _temp_beside(target: Path) -> tuple[int, str]:
    directory = target.parent if str(target.parent) else Path(".")
    return tempfile.mkstemp(
        prefix=f".{shorten_name(target.name, 64)}.", suffix=".partial", dir=directory
    )


def _position(stream: BinaryIO) -> int | None:
    try:
        return stream.tell() if stream.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
