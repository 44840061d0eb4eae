"""A backend on a local (or network-mounted) directory.

Writes are atomic: bytes go to a uniquely named temporary file in the *target's own directory*
(so the final rename never crosses a filesystem), then ``os.replace`` publishes them, or
``os.link`` when the key must be created only if absent (link fails atomically if the target
exists). A reader therefore sees the whole object or none of it, even if the writer is killed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from optuna_cas._fileio import describe_mode, kernel_copy, pwrite_all, real_fileno
from optuna_cas._validation import shorten_name, validate_key
from optuna_cas.backends.base import ObjectInfo
from optuna_cas.backends.local_files import (
    TEMP_PREFIX,
    StagedFile,
    create_beside,
    directory_in_the_way,
    fsync_dir,
    make_parent,
    unique_name,
)
from optuna_cas.backends.window import Window, WindowReader, check_range
from optuna_cas.digest import CHUNK_SIZE, readinto
from optuna_cas.exceptions import (
    ArtifactNotFound,
    IntegrityError,
    InvalidKeyError,
    StoreConfigError,
)

__all__ = ["TEMP_PREFIX", "LocalBackend", "StagedFile"]

# First buffer of a user-space copy (see _copy_to).
_FIRST_BUFFER_BYTES = 64 * 1024


class LocalBackend:
    """Objects as files below ``root``; the key's ``/`` become directories.

    Args:
        root: The directory. Created (with parents) if missing; a file there is an error.
        fsync: Flush each object to stable storage before publishing it. Off by default:
            a killed *process* never leaves a partial object either way (the rename is atomic);
            ``fsync=True`` also survives power loss, at roughly half the write throughput.

    Raises:
        StoreConfigError: ``root`` exists and is not a directory, or cannot be created.

    Example:
        >>> import io, tempfile
        >>> backend = LocalBackend(tempfile.mkdtemp())
        >>> backend.write("refs/a", io.BytesIO(b"hi"))
        >>> backend.open_reader("refs/a").read()
        b'hi'
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = False) -> None:
        try:
            path = Path(root).expanduser()
        except RuntimeError as e:  # "~nosuchuser/..."
            raise StoreConfigError(f"Cannot use store path {str(root)!r}: {e}") from e
        try:
            if path.exists() and not path.is_dir():
                raise StoreConfigError(f"Store path {str(path)!r} exists and is not a directory")
            path.mkdir(parents=True, exist_ok=True)
            self._root = path.resolve()
        except OSError as e:  # too long, permission denied, a file in the way, ...
            raise StoreConfigError(f"Cannot create store directory {str(path)!r}: {e}") from e
        self._root_str = str(self._root)
        self._uri = self._root.as_uri()  # every miss names it: Path.as_uri is slow
        self._fsync = fsync

    @property
    def root(self) -> Path:
        """The resolved root directory.

        Example:
            >>> import tempfile
            >>> LocalBackend(tempfile.mkdtemp()).root.is_dir()
            True
        """
        return self._root

    def _path(self, key: str) -> Path:
        return Path(self._stored(key))

    def _stored(self, key: str) -> str:
        """``key``'s path, to read or remove what is stored there.

        A key whose directory is a symlink (wherever it leads) names nothing stored in it:
        ``ArtifactNotFound``, as for any missing object, so that verify reports it missing
        and an upload that needs its chunks stores them in a new pack. A write to a key under
        that directory still raises ``InvalidKeyError``: nothing goes through the link.
        """
        try:
            return self._fspath(key)
        except _OutsideTheStore as e:
            raise ArtifactNotFound(f"no object {key!r} in {self.describe()} ({e})") from e

    def _fspath(self, key: str) -> str:
        """``key``'s absolute path as a string (no ``Path``: the hot paths of small uploads)."""
        validate_key(key)
        # A symlinked directory inside the store leads nowhere, wherever it points: one
        # leading out would take reads and writes out of the store, and one leading back in
        # was followed here but not by listings, so gc missed the refs behind it and deleted
        # their blobs (found by a probe). One lstat per directory of the key (1-3 of them):
        # small uploads do this several times each.
        self._refuse_links(key.split("/")[:-1], key)
        return f"{self._root_str}/{key}"

    def _refuse_links(self, directories: list[str], what: str) -> None:
        """Raise ``_OutsideTheStore`` if one of ``directories`` (a path below the root) is a link."""
        current = self._root_str
        for part in directories:
            current = f"{current}/{part}"
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                return  # not created yet: nothing below it can be a link
            if stat.S_ISLNK(mode):
                raise _OutsideTheStore(
                    f"Invalid key: {what!r} ({current!r} is a symlink; a store follows none)"
                )

    def _missing(self, key: str) -> ArtifactNotFound:
        return ArtifactNotFound(f"no object {key!r} in {self.describe()}")

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        """Open ``key`` for reading from ``offset`` (up to ``length`` bytes); no symlinks.

        With a ``length`` the reader reads the window with ``pread`` (it never moves a shared
        file offset) and seeks only within it (see :mod:`optuna_cas.backends.window`).

        Example:
            >>> import io, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp()); b.write("k", io.BytesIO(b"0123456789"))
            >>> b.open_reader("k", offset=2, length=3).read()
            b'234'
            >>> b.open_reader("refs/none")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.ArtifactNotFound: no object 'refs/none' in file://...
        """
        path = self._path(key)
        check_range(offset, length)  # before the open, like the other backends (no fd to leak)
        try:
            # O_NONBLOCK: a FIFO planted at a key must not block the open forever; the type
            # is then checked on the descriptor itself (no race with a swap of the name).
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise self._missing(key) from e
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._missing(key) from e
            if e.errno == errno.ENXIO:  # a socket (or a device without driver) cannot be opened
                raise IntegrityError(
                    f"{key!r} in {self.describe()} is {_describe_entry(path)}, not a stored "
                    "object (run 'optuna-cas verify')"
                ) from e
            raise
        # From `handed` on, a reader is being made to own fd and close it, even when a
        # KeyboardInterrupt drops it as it is returned; closing fd here too closed another
        # thread's new descriptor of that number (found by interrupting at every call). An
        # interrupt before the reader holds fd leaks it instead: one descriptor, no harm.
        handed = False
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise self._missing(key)  # a directory is a key prefix, not an object
            if not stat.S_ISREG(st.st_mode):
                raise IntegrityError(
                    f"{key!r} in {self.describe()} is {describe_mode(st.st_mode)}, not a stored "
                    "object (run 'optuna-cas verify')"
                )
            handed = True
            if length is not None:
                return _window_reader(fd, Window.of(offset, length), st.st_size)
            # A buffer no larger than the object (refs are a few hundred bytes): the buffer is
            # allocated when the reader is made.
            buffering = max(8192, min(CHUNK_SIZE, st.st_size))
            reader = open(fd, "rb", buffering=buffering)  # noqa: SIM115 - handed to the caller
        except BaseException:
            if not handed:
                os.close(fd)
            raise
        if offset:
            reader.seek(offset)
        return reader

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        """Store the rest of ``content_body`` under ``key`` atomically.

        Example:
            >>> import io, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp())
            >>> b.write("k", io.BytesIO(b"1")); b.write("k", io.BytesIO(b"2"), if_absent=True)
            >>> b.open_reader("k").read()
            b'1'
        """
        path = self._fspath(key)
        try:
            mode: int | None = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None  # (the rest fails where it did, naming the key)
        if mode is not None and stat.S_ISDIR(mode):
            raise directory_in_the_way(key)  # before any byte is written
        if if_absent and mode is not None:
            if stat.S_ISREG(mode):
                return
            # Something that is not a stored object (a symlink, say) sits at the key:
            # replace that entry itself, never what it points at.
            if_absent = False
        directory, _, name = path.rpartition("/")
        temp = f"{directory}/{shorten_name(f'{TEMP_PREFIX}{unique_name()}-{name}', 255)}"
        fd = create_beside(temp, directory, 0o666)
        published = False
        try:
            try:
                _copy_to(content_body, fd)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if if_absent:
                try:
                    os.link(temp, path)
                except FileExistsError:
                    pass  # someone else published the same key first: keep theirs
            else:
                os.replace(temp, path)
                published = True
        finally:
            # After link or on failure the temp name is still there; after replace it is not.
            if not published:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
        if self._fsync:
            fsync_dir(directory)

    def stage(self, area: str) -> StagedFile:
        """A new private temp file under ``area`` (e.g. ``"blobs"``), to fill and then publish.

        The content store copies and hashes into it, then names it with
        :meth:`StagedFile.commit`; nothing is visible under any key before that.

        Example:
            >>> import os, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp())
            >>> staged = b.stage("blobs"); _ = os.write(staged.fd, b"payload")
            >>> staged.commit("blobs/x/y"); b.open_reader("blobs/x/y").read()
            b'payload'
        """
        # The same containment check every key below ``area`` gets, done *before* any byte is
        # written: a symlinked directory must not receive the bytes at all.
        folder = self._fspath(f"{area}/staged").rpartition("/")[0]
        return StagedFile(folder, resolve=self._fspath, fsync=self._fsync)

    def remove(self, key: str) -> None:
        """Delete ``key``; a missing key raises ``ArtifactNotFound``.

        Example:
            >>> import tempfile
            >>> LocalBackend(tempfile.mkdtemp()).remove("k")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.ArtifactNotFound: no object 'k' in file://...
        """
        path = self._path(key)
        try:
            if path.is_dir():
                raise self._missing(key)
            os.unlink(path)
        except FileNotFoundError as e:
            raise self._missing(key) from e

    def move(self, key: str, new_key: str) -> None:
        """Give the object at ``key`` the key ``new_key`` with one rename: no byte is copied.

        verify's quarantine: a copy wrote out every hole of a sparse file planted at a key.
        Both keys get the containment check every key gets, before the rename: a symlinked
        directory on the way to ``new_key`` is refused (wherever it leads), and nothing
        is moved through it. What sits at ``new_key`` is replaced (the entry, never what a
        symlink there points at).

        Raises:
            ArtifactNotFound: Nothing is stored at ``key`` (a symlink or directory there
                stores nothing, as :meth:`open_reader` sees it).
            IntegrityError: A FIFO, socket or device sits at ``key``.
            InvalidKeyError: ``new_key`` leads outside the store, or to ``key``'s own file.
            OSError: The rename failed (``EXDEV`` across file systems, a directory at
                ``new_key``); nothing moved.

        Example:
            >>> import io, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp()); b.write("k", io.BytesIO(b"x"))
            >>> b.move("k", "q/k"); b.exists("k"), b.open_reader("q/k").read()
            (False, b'x')
        """
        source, target = self._stored(key), self._fspath(new_key)
        try:
            mode = os.lstat(source).st_mode
        except (FileNotFoundError, NotADirectoryError) as e:
            raise self._missing(key) from e
        if stat.S_ISLNK(mode) or stat.S_ISDIR(mode):
            raise self._missing(key)
        if not stat.S_ISREG(mode):
            raise IntegrityError(
                f"{key!r} in {self.describe()} is {describe_mode(mode)}, not a stored object"
            )
        with contextlib.suppress(OSError):
            # lstat of the target: a symlink there is an entry the rename replaces, not the
            # file it points at; through a symlinked directory it is the object itself.
            if os.path.samestat(os.lstat(source), os.lstat(target)):
                # rename() of a file onto itself, or onto a hard link of it, does nothing: a
                # quarantine/ symlinked back into the store would report a move that left the
                # object where it was (found in review).
                raise InvalidKeyError(
                    f"Invalid key: {new_key!r} (it is {key!r} itself in {self.describe()})"
                )
        try:
            os.rename(source, target)
        except FileNotFoundError as e:
            if not os.path.lexists(source):
                raise self._missing(key) from e  # removed meanwhile (gc, say)
            make_parent(target)  # the first object moved to that directory
            os.rename(source, target)
        if self._fsync:
            fsync_dir(target.rpartition("/")[0])
            fsync_dir(source.rpartition("/")[0])

    def remove_if_unchanged(self, key: str, seen: ObjectInfo) -> bool:
        """Delete ``key`` only if it is still the file ``seen`` describes; True if deleted.

        POSIX has no compare-and-unlink, so the file is first renamed away (atomic: from then
        on nobody can touch or replace it through its key), then checked; if an upload touched
        or re-published it since ``seen`` was taken, it is linked back (unless a newer copy
        was published meanwhile) instead of deleted.

        Example:
            >>> import io, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp()); b.write("k", io.BytesIO(b"x"))
            >>> seen = b.stat("k"); b.remove_if_unchanged("k", seen), b.exists("k")
            (True, False)
        """
        try:
            path = self._path(key)
        except ArtifactNotFound:
            return False
        doomed = path.with_name(
            shorten_name(f"{TEMP_PREFIX}gc-{uuid.uuid4().hex}-{path.name}", 255)
        )
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return False
        unchanged = False
        try:
            st = os.lstat(doomed)
            unchanged = (
                stat.S_ISREG(st.st_mode)
                and st.st_size == seen.size
                and st.st_mtime == seen.modified
            )
        finally:
            if not unchanged:
                # Changed since gc looked, or the look failed (an NFS error, retried by
                # Backoff): put it back, unless a newer copy was published meanwhile. The
                # look failing deleted it unchecked (found in review).
                with contextlib.suppress(FileExistsError):
                    os.link(doomed, path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(doomed)
        return unchanged

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a stored object (a regular file, not a symlink).

        Example:
            >>> import tempfile
            >>> LocalBackend(tempfile.mkdtemp()).exists("k")
            False
        """
        try:
            return stat.S_ISREG(os.lstat(self._stored(key)).st_mode)
        except (FileNotFoundError, ArtifactNotFound):
            return False

    def touch(self, key: str) -> None:
        """Set ``key``'s modification time to now (a dedup hit protects its blob from gc).

        Example:
            >>> import io, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp()); b.write("k", io.BytesIO(b"x")); b.touch("k")
        """
        path = self._stored(key)
        try:
            os.utime(path, follow_symlinks=False)
        except FileNotFoundError as e:
            raise self._missing(key) from e
        except PermissionError as e:
            # A store shared by several users: a file another user owns cannot be touched.
            raise PermissionError(
                e.errno,
                f"cannot refresh the time of {path} (so that gc spares it a while longer): "
                f"{e.strerror}; is it another user's file?",
            ) from e

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``.

        Example:
            >>> import io, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp()); b.write("k", io.BytesIO(b"abc"))
            >>> b.stat("k").size
            3
        """
        path = self._stored(key)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError as e:
            raise self._missing(key) from e
        if not stat.S_ISREG(st.st_mode):
            raise self._missing(key)
        return ObjectInfo(key=key, size=st.st_size, modified=st.st_mtime, changed=st.st_ctime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``; temp files and symlinks skipped.

        FIFOs, sockets and devices planted at a key are listed (reading them raises
        ``IntegrityError``), so that verify and gc report them instead of never seeing them.

        Raises:
            InvalidKeyError: A directory ``prefix`` names (``refs/``, ``blobs/blake3/``) is a
                symlink: nothing is listed rather than a listing that misses what is there.

        Example:
            >>> import io, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp())
            >>> b.write("a/1", io.BytesIO(b"")); b.write("b/1", io.BytesIO(b""))
            >>> [info.key for info in b.list("a/")]
            ['a/1']
        """
        # Walk only the deepest directory the prefix names, not the whole tree.
        directory, _, _ = prefix.rpartition("/")
        start = self._root / directory if directory else self._root
        if directory:
            validate_key(directory)
            # A symlinked directory on the way is refused, not skipped: gc listing refs/ as
            # empty (a link) would delete every blob they name, and verify would pass blobs
            # no read can open. Links deeper down are skipped: reads refuse them too.
            self._refuse_links(directory.split("/"), prefix)
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            rel_dir = os.path.relpath(dirpath, self._root)
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we walked
                if not stat.S_ISLNK(st.st_mode):
                    yield ObjectInfo(key=key, size=st.st_size, modified=st.st_mtime)

    def list_temporary(self) -> Iterator[ObjectInfo]:
        """Temp files left by interrupted writes (for garbage collection).

        Example:
            >>> import tempfile
            >>> list(LocalBackend(tempfile.mkdtemp()).list_temporary())
            []
        """
        if not self._root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self._root):
            # Our folders are never hidden: a .git or .snapshot beside them is someone else's,
            # and gc deleted its .tmp-* files (found in review).
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    full = os.path.join(dirpath, name)
                    try:
                        st = os.stat(full, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    key = os.path.relpath(full, self._root).replace(os.sep, "/")
                    yield ObjectInfo(key=key, size=st.st_size, modified=st.st_mtime)

    def remove_temporary(self, key: str) -> None:
        """Delete one temp file reported by :meth:`list_temporary`.

        Example:
            >>> import tempfile
            >>> LocalBackend(tempfile.mkdtemp()).remove_temporary("blobs/.tmp-x")
        """
        name = key.rpartition("/")[2]
        if not name.startswith(TEMP_PREFIX) or ".." in key.split("/"):
            raise InvalidKeyError(f"Invalid key: {key!r} (not a temporary file)")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._root / key)

    def describe(self) -> str:
        """``file://`` URL of the root.

        Example:
            >>> LocalBackend("/tmp").describe()
            'file:///tmp'
        """
        return self._uri


def _window_reader(fd: int, window: Window, size: int) -> BinaryIO:
    """A buffered reader of ``window`` of the open regular file ``fd``; it owns ``fd``."""

    def pread(view: memoryview, position: int) -> int:
        return os.preadv(fd, [view], position)

    raw = WindowReader(pread, window, size=size, on_close=functools.partial(os.close, fd))
    buffer = min(CHUNK_SIZE, max(window.end(size) - window.start, 1))  # no more than it holds
    return cast(BinaryIO, io.BufferedReader(raw, buffer_size=buffer))


def _describe_entry(path: Path) -> str:
    try:
        return describe_mode(os.lstat(path).st_mode)
    except OSError:
        return "not a regular file"


def _copy_to(source: BinaryIO, out_fd: int) -> None:
    """Copy the rest of ``source`` into the new file ``out_fd``, in the kernel when possible."""
    if type(source) is io.BytesIO:
        # Refs and other small records: one write straight from the buffer, no copy.
        with source.getbuffer() as buffer:
            start = source.tell()
            pwrite_all(out_fd, buffer[start:], 0)
            end = len(buffer)
        source.seek(max(start, end))  # consumed to EOF, as the loop below leaves it
        return
    written = 0
    fileno = real_fileno(source)
    if fileno is not None:
        start = source.tell()
        written, finished = kernel_copy(fileno, out_fd, start, 0)
        source.seek(start + written)
        if finished:
            return
    # Not a real file, or the kernel refused (e.g. across some filesystems): copy in user
    # space. Refs are a few hundred bytes: start with a small buffer (zeroing a fresh 1 MiB
    # one costs more than the write) and grow it once the source proves large.
    view = memoryview(bytearray(_FIRST_BUFFER_BYTES))
    while n := readinto(source, view):
        pwrite_all(out_fd, view[:n], written)
        written += n
        if n == len(view) and len(view) < CHUNK_SIZE:
            view = memoryview(bytearray(CHUNK_SIZE))


class _OutsideTheStore(InvalidKeyError):
    """A key whose directory is a symlink (the store follows none, wherever it leads)."""
