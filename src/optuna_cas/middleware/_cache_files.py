"""The cache's file layer: a ``diskcache.Disk`` that treats its own directory as untrusted.

Every row of diskcache's index names a value file, and diskcache itself would open, hard-link
or delete whatever path a row names (``../x``, ``/etc/x``, a symlinked subdirectory), block on
a FIFO and follow symlinks. :class:`ConfinedDisk` overrides the documented ``Disk`` extension
points (``store``, ``fetch``, ``remove``, ``get``) so that:

* a row's filename must match diskcache's own layout, ``<2 hex>/<2 hex>/<28 hex>.val``; any
  other row is unusable and its "file" is never touched;
* the path is walked one component at a time with ``O_NOFOLLOW`` from the cache directory, so
  a symlink anywhere below it stops the walk; the value file is opened ``O_NOFOLLOW |
  O_NONBLOCK`` (a FIFO or device cannot block us) and must ``fstat`` as a regular file;
* an unusable row is returned as :class:`Unusable` (with a reason that names no descriptor
  number), never raised through diskcache's transaction, so the caller can report and drop it;
* values are only ever files handed in as :class:`FillTemp`, renamed from the cache's ``tmp``
  directory; nothing is ever unpickled from a row (neither values nor keys).

The cache directory itself (the path the user configured) is trusted; everything inside it is
not. POSIX only (``dir_fd``, ``O_NOFOLLOW``), like the rest of the cache.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
import sqlite3
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import diskcache
import diskcache.core

from optuna_cas._fileio import copy_range, real_fileno
from optuna_cas._forksafe import ForkedMidOperation, ForkGate
from optuna_cas.digest import (
    CHUNK_SIZE,
    Digest,
    Hasher,
    VerifyingReader,
    readinto,
)
from optuna_cas.exceptions import (
    IntegrityError,
    MalformedRecordWarning,
    OptunaCasError,
    StoreConfigError,
)
from optuna_cas.middleware.cache_config import CACHE_DATABASE

#: Temp files of fills in progress live in this subdirectory of the cache: adoption is then a
#: rename on one filesystem, and the name never collides with diskcache's two-hex subdirectories.
TEMP_DIR = "tmp"
# diskcache's Disk.filename(): 32 random hex digits split 2/2/28, plus ".val".
_VALUE_NAME = re.compile(r"([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{28}\.val)")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_ENTRY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
#: What a failing cache directory raises (diskcache.Timeout: database locked beyond the timeout).
# Cache files are never modified after adoption: make accidental in-place edits (e.g. of a
# hard-linked download) fail for ordinary users. Root ignores it; verification still catches.
READ_ONLY = 0o444
# TypeError and ValueError: diskcache's own, from Settings rows of the wrong type or shape
# (a NULL size fails its arithmetic; a duplicated row its unpacking): the database is input.
CACHE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    sqlite3.Error,
    diskcache.Timeout,
    ForkedMidOperation,
    TypeError,
    ValueError,
)
# Inserted and deleted to make diskcache evict one more LRU entry (see evict_lru).
_EVICTION_MARKER = "optuna-cas:evict-one"
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


@dataclass(frozen=True)
class Unusable:
    """What :meth:`ConfinedDisk.fetch` returns for a row it refuses to open."""

    reason: str


@dataclass(frozen=True)
class FillTemp:
    """A complete, verified temp file in ``<cache>/tmp`` (open as ``fd``), ready for adoption."""

    fd: int
    name: str
    size: int


# The database's own Settings rows are untrusted: diskcache applies every sqlite_* row as a
# pragma, and explicit settings win over rows. A planted locking_mode = EXCLUSIVE made every
# other process wait out the timeout and fail; a mapped database file kills the process with
# SIGBUS if someone truncates it. The rest are diskcache's defaults.
_SQLITE_SETTINGS = {
    "sqlite_auto_vacuum": 1,
    "sqlite_cache_size": 2**13,
    "sqlite_journal_mode": "wal",
    "sqlite_locking_mode": "normal",
    "sqlite_mmap_size": 0,
    "sqlite_synchronous": 1,
}


class GatedCache(diskcache.Cache):  # type: ignore[misc]
    """``diskcache.Cache`` whose database work a fork waits for (see ``optuna_cas._forksafe``).

    The methods this package calls are gated (by :func:`_gated`, below the class;
    ``iterkeys``, a generator, is called only inside :func:`evict_lru`, which its caller
    gates whole; ``tests/reliability/test_fork_and_pickle.py`` checks the list against the
    calls); a child forked while one ran raises
    :class:`~optuna_cas._forksafe.ForkedMidOperation` (one of :data:`CACHE_ERRORS`) from each,
    so it uses the store directly.

    Args:
        gate: The gate the calls pass through.
        directory: The cache directory.
        **settings: As for ``diskcache.Cache`` (sqlite_* ones are fixed here).
    """

    def __init__(self, gate: ForkGate, directory: str, **settings: Any) -> None:
        self._gate = gate
        self._calls = threading.local()  # this thread's gated calls in progress (see _gated)
        with gate.section():
            super().__init__(directory, **{**settings, **_SQLITE_SETTINGS})
        # Counters of another type (a NULL, say) failed every later fill, info() and clear.
        for key in ("hits", "misses"):
            if type(self.reset(key)) is not int:
                self.reset(key, 0)
        if any(type(self.reset(key)) is not int for key in ("count", "size")):
            repair_accounting(self)

    def __len__(self) -> int:
        with self._gate.section():
            return int(super().__len__())  # the count row is the database's: maybe not an int

    def reset(self, key: str, value: Any = diskcache.core.ENOVAL, update: bool = True) -> Any:
        """As diskcache's, except that pragmas are ours whatever the Settings rows say.

        diskcache applies every ``sqlite_*`` row as a pragma when it opens the database and
        again on every new connection (one per thread): a row planted meanwhile would apply.
        """
        if key.startswith("sqlite_"):
            if key not in _SQLITE_SETTINGS:
                return value  # a planted pragma: ignored
            value = _SQLITE_SETTINGS[key]
        with self._gate.section():
            return super().reset(key, value, update)


def _gated(name: str) -> Callable[..., Any]:
    """``diskcache.Cache``'s method ``name`` (looked up at each call), inside the fork gate.

    A call that raises closes this thread's connection, which rolls back a transaction it may
    have left open: a ``KeyboardInterrupt`` that lands just after diskcache's
    ``BEGIN IMMEDIATE``, before its ``try``, kept the database's write lock for the life of
    the process, and every other process's cache waited out the timeout and failed (found by
    a probe). The next call opens a new connection. Only the outermost call closes: diskcache
    calls some of these methods inside its own transactions (``add`` calls ``volume``), whose
    rollback needs the connection open.
    """

    @functools.wraps(getattr(diskcache.Cache, name))
    def method(self: GatedCache, *args: Any, **kwargs: Any) -> Any:
        calls = self._calls
        depth = getattr(calls, "depth", 0)
        with self._gate.section():
            calls.depth = depth + 1
            try:
                return getattr(super(GatedCache, self), name)(*args, **kwargs)
            except BaseException:
                if depth == 0:
                    self.close()
                raise
            finally:
                calls.depth = depth

    return method


for _name in ("get", "add", "set", "delete", "clear", "volume", "__contains__"):
    setattr(GatedCache, _name, _gated(_name))


class ConfinedDisk(diskcache.Disk):  # type: ignore[misc]
    """``diskcache.Disk`` that stays inside its directory and adopts :class:`FillTemp` files."""

    def __init__(
        self, directory: str, min_file_size: int = 0, pickle_protocol: int = 0, **_: Any
    ) -> None:
        # Settings come from the (untrusted) database too: unknown disk_* keys are ignored.
        super().__init__(directory, min_file_size=min_file_size, pickle_protocol=pickle_protocol)
        self._root = directory

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        """Rename a :class:`FillTemp` to a fresh value-file name; other values as diskcache.

        ``Cache.add`` calls this before its transaction and commits the row naming the file
        after, the order diskcache uses for its own files; if the transaction fails or another
        process's row won, diskcache hands the name to :meth:`remove`.
        """
        if not isinstance(value, FillTemp):
            return super().store(value, read, key=key)  # only the size-0 eviction marker
        for attempt in range(10):
            filename, _ = self.filename(key, value)
            first, second, name = filename.split(os.sep)
            # Another process evicting the last file of a subdirectory removes the
            # subdirectory, possibly between our mkdir and rename: retry, as diskcache does.
            # A symlink or file planted where a subdirectory goes is never followed: the
            # walk refuses it (ELOOP, ENOTDIR), and another random name is drawn.
            try:
                with (
                    walk(self._root, (TEMP_DIR,)) as temps,
                    walk(self._root, (first, second), create=True) as target,
                ):
                    os.rename(value.name, name, src_dir_fd=temps, dst_dir_fd=target)
                break
            except OSError as e:
                gone_or_planted = isinstance(e, FileNotFoundError) or e.errno in (
                    errno.ELOOP,
                    errno.ENOTDIR,
                )
                if attempt == 9 or not gone_or_planted:
                    raise
        return value.size, diskcache.core.MODE_BINARY, filename, None

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        """An open regular value file, or :class:`Unusable` (never unpickles, never blocks)."""
        if mode != diskcache.core.MODE_BINARY or not read or not isinstance(filename, str):
            return Unusable(f"index row is not a value file (mode {mode!r})")
        try:
            return open_entry(self._root, filename)
        except EntryRefusedError as e:
            return Unusable(str(e))

    def remove(self, file_path: Any) -> None:
        """Delete a value file and its emptied subdirectories; a made-up name is left alone."""
        match = _VALUE_NAME.fullmatch(file_path) if isinstance(file_path, str) else None
        if match is None:
            return
        first, second, name = match.groups()
        # Suppressed: two processes may remove the same file or directory at once.
        with contextlib.suppress(OSError), opendir(self._root) as root:
            with opendir(first, root) as top:
                with opendir(second, top) as sub:
                    try:
                        os.unlink(name, dir_fd=sub)
                    except IsADirectoryError:
                        os.rmdir(name, dir_fd=sub)  # a directory planted there, if empty
                with contextlib.suppress(OSError):
                    os.rmdir(second, dir_fd=top)
            os.rmdir(first, dir_fd=root)

    def get(self, key: Any, raw: bool) -> Any:
        """Keys are strings; a pickled key from a tampered row stays bytes, never unpickled."""
        return super().get(key, True)


class EntryRefusedError(OptunaCasError):
    """A value file that must not be used; the message names the file, never a descriptor."""


@contextlib.contextmanager
def opendir(name: str, dir_fd: int | None = None, *, create: bool = False) -> Iterator[int]:
    """A descriptor of directory ``name``; below ``dir_fd``, never through a symlink there."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
    fd = os.open(name, _DIR_FLAGS if dir_fd is None else _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def walk(root: str, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
    """A descriptor of ``root/parts...``, refusing a symlink at any component below ``root``."""
    with contextlib.ExitStack() as stack:
        fd = stack.enter_context(opendir(root))
        for part in parts:
            fd = stack.enter_context(opendir(part, fd, create=create))
        yield fd


def open_entry(root: str, filename: str) -> BinaryIO:
    """Open the value file ``filename`` under ``root`` if it is a plain regular file there.

    Raises:
        EntryRefusedError: Not diskcache's name pattern, missing, reached through a symlink, or
            not a regular file.
    """
    match = _VALUE_NAME.fullmatch(filename)
    if match is None:
        raise EntryRefusedError(f"index names {filename[:120]!r}, not a value file of the cache")
    first, second, name = match.groups()
    try:
        with walk(root, (first, second)) as sub:
            # lstat first so a device node is never even opened; fstat below is the real check.
            _require_regular(os.stat(name, dir_fd=sub, follow_symlinks=False), filename)
            fd = os.open(name, _ENTRY_FLAGS, dir_fd=sub)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise EntryRefusedError(f"{filename!r} leads through a symlink or a file") from None
        raise EntryRefusedError(f"{filename!r}: {e.strerror or e}") from None
    handed = False
    try:
        _require_regular(os.fstat(fd), filename)
        handed = True  # from here the file object closes fd, even if dropped unreturned
        return open(fd, "rb", closefd=True)
    except BaseException:
        if not handed:
            os.close(fd)
        raise


def _require_regular(st: os.stat_result, filename: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise EntryRefusedError(f"{filename!r} is {kind}, not a regular file")


def new_temp(root: str) -> tuple[int, str]:
    """Create an empty private file in ``root/tmp`` (made if missing); returns (fd, name)."""
    name = f"fill-{secrets.token_hex(8)}.partial"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with walk(root, (TEMP_DIR,), create=True) as temps:
        return os.open(name, flags, 0o600, dir_fd=temps), name


def unlink_temp(root: str, name: str) -> None:
    """Remove ``root/tmp/name`` if it is still there."""
    with contextlib.suppress(OSError), walk(root, (TEMP_DIR,)) as temps:
        os.unlink(name, dir_fd=temps)


def remove_temps_older_than(root: str, cutoff: float) -> None:
    """Remove files in ``root/tmp`` last modified before ``cutoff`` (left by dead processes)."""
    with (
        contextlib.suppress(OSError),
        walk(root, (TEMP_DIR,)) as temps,
        os.scandir(temps) as entries,
    ):
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.name, dir_fd=temps)


def evict_lru(cache: diskcache.Cache, limit: int, *, restore: int) -> int:
    """Evict least-recently-used entries, one at a time, until ``cache.volume() <= limit``.

    Public calls only: with ``cull_limit=1``, inserting a new key makes diskcache evict the one
    least-recently-used entry if the volume is at or over its ``size_limit`` (set to ``limit``
    for this process only, then back to ``restore``); the marker key (newest, size 0) is
    deleted again. It stops when a round evicts nothing (nothing left that counts), so a count
    that lies cannot keep it going. Returns how many went.

    diskcache keeps the total size and count in its Settings table, updated as entries come
    and go; a tampered row can leave them negative (the limit is then never reached) or over
    what is stored (every fill would empty the cache). Both are recomputed from what is
    there (:func:`repair_accounting`), with a warning.
    """

    # The count as stored: len(cache) raises ValueError once a tampered count goes negative.
    def count() -> int:
        return int(cache.reset("count"))

    if cache.reset("size") < 0 or count() < 0:
        repair_accounting(cache)
    evicted, stalled = 0, False
    cache.reset("size_limit", limit, update=False)
    try:
        while cache.volume() > limit:
            before = count()
            cache.set(_EVICTION_MARKER, 0, retry=True)
            cache.delete(_EVICTION_MARKER, retry=True)
            gone = before - count()
            if gone <= 0:
                stalled = True
                break
            evicted += gone
    finally:
        cache.reset("size_limit", restore, update=False)
    # A count below zero, or over the limit with no entry left to evict (totals left high:
    # every fill would find the cache full): no concurrent fill explains that (one could a
    # round that evicted nothing), so the totals are wrong. Looked for only when it stalled.
    empty = stalled and next(iter(cache.iterkeys()), None) is None
    wrong = count() < 0 or (empty and (count() > 0 or cache.reset("size") > 0))
    if wrong and repair_accounting(cache):
        return evicted + evict_lru(cache, limit, restore=restore)
    return evicted


def repair_accounting(cache: diskcache.Cache) -> bool:
    """Set diskcache's count and size to what is stored, if they differ; True if they did.

    The count is that of the keys; the size, that of the value files under the directory (what
    diskcache counts: values kept inside the database count 0).
    """
    size, count = cache.reset("size"), cache.reset("count")
    real_count = sum(1 for _ in cache.iterkeys())
    real_size = 0
    # With no entry, diskcache counts no bytes, whatever value files are left over.
    for directory, _dirs, names in os.walk(cache.directory) if real_count else ():
        for name in names:
            path = os.path.join(directory, name)
            if _VALUE_NAME.fullmatch(os.path.relpath(path, cache.directory)):
                with contextlib.suppress(OSError):
                    info = os.lstat(path)
                    real_size += info.st_size if stat.S_ISREG(info.st_mode) else 0
    if (size, count) == (real_size, real_count):
        return False
    warnings.warn(
        MalformedRecordWarning(
            f"cache {cache.directory}: its index counted {count} entries of {size} bytes, "
            f"where {real_count} entries of {real_size} bytes are stored (a damaged or edited "
            "record); recounted"
        ),
        stacklevel=2,
    )
    cache.reset("count", real_count)
    cache.reset("size", real_size)
    return True


def link_open_file(fd: int, target: Path) -> bool:
    """Hard-link the inode open as ``fd`` to the new name ``target``; False if impossible here.

    Links the descriptor through ``/proc/self/fd`` (Linux), so the new name is exactly the
    inode the caller checked, never whatever a path names by now. ``linkat`` never replaces.
    """
    if not os.path.isdir("/proc/self/fd"):
        return False
    try:
        # dst_dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW); plain link() would try to
        # link the /proc symlink itself (EXDEV).
        with opendir(str(target.parent) or ".") as parent:
            os.link(f"/proc/self/fd/{fd}", target.name, dst_dir_fd=parent, follow_symlinks=True)
    except FileExistsError:
        raise FileExistsError(f"File already exists: {target!s}") from None
    except OSError:
        return False  # other filesystem, no hard links, entry evicted (no name left), ...
    return True


def write_all(fd: int, view: memoryview) -> None:
    """``os.write`` until every byte of ``view`` is written."""
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


class EntryReader(VerifyingReader):
    """A verifying reader of a cache entry that drops the entry when it does not match."""

    def __init__(
        self, source: BinaryIO, expected: Digest, *, name: str, on_mismatch: Callable[[], None]
    ) -> None:
        super().__init__(source, expected, name=name)
        self._on_mismatch = on_mismatch

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        try:
            return super().readinto(buffer)
        except IntegrityError:
            self._on_mismatch()  # edited after its check: the next use refetches
            raise


def holds(handle: BinaryIO, digest: Digest) -> bool:
    """Whether a shared entry file holds exactly ``digest``'s bytes (read at most size + 1).

    Plain reads, never a memory map: someone truncating a mapped shared file would kill this
    process with SIGBUS instead of failing a check.
    """
    handle.seek(0)
    hasher = Hasher()
    view = memoryview(bytearray(CHUNK_SIZE))
    while hasher.size <= digest.size and (n := readinto(handle, view)):
        hasher.update(view[:n])
    return hasher.digest() == digest


def copy_source(
    source: BinaryIO,
    fd: int,
    limit: int,
    stop: threading.Event,
    progress: Callable[[int], None],
) -> int:
    """Copy ``source`` from its position into ``fd``, at most ``limit`` bytes; the count.

    Stops early once ``stop`` is set; ``progress`` gets the running count (a ``CopyFunction``).
    """
    fileno = real_fileno(source)
    if fileno is not None:
        return copy_range(fileno, fd, source.tell(), 0, limit, stop, progress)
    copied = 0
    view = memoryview(bytearray(CHUNK_SIZE))
    while copied < limit and not stop.is_set() and (n := readinto(source, view[: limit - copied])):
        write_all(fd, view[:n])
        copied += n
        progress(copied)
    return copied


def prepare_directory(directory: Path) -> None:
    """Create the cache directory if needed and check that files can be made in it.

    Raises:
        StoreConfigError: It is a file, cannot be created or is not writable.
    """
    if os.path.lexists(directory) and not directory.is_dir():
        raise StoreConfigError(f"Cache directory {str(directory)!r} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreConfigError(
            f"Cannot create cache directory {str(directory)!r}: {e.strerror or e}"
        ) from e
    for name in (CACHE_DATABASE, f"{CACHE_DATABASE}-wal", f"{CACHE_DATABASE}-shm"):
        # SQLite follows symlinks: a planted one would make it write outside the directory.
        path = directory / name
        if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
            raise StoreConfigError(f"Cache database {str(path)!r} is not a regular file")
    # Probe by creating a file: os.access says yes to root and knows nothing of read-only
    # mounts, while a real write fails in both cases.
    try:
        fd, name = new_temp(str(directory))
        os.close(fd)
        unlink_temp(str(directory), name)
    except OSError as e:
        # The probe writes into directory/tmp: if that is there, it is what failed (a file or a
        # symlink in its place, or no write access to it), and the message must name it.
        temps = directory / TEMP_DIR
        problem = (
            f"is unusable: cannot create files in {str(temps)!r}"
            if os.path.lexists(temps)
            else "is not writable"
        )
        raise StoreConfigError(
            f"Cache directory {str(directory)!r} {problem}: {e.strerror or e}"
        ) from e
