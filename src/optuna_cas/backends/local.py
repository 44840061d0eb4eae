"""A backend on a local (or network-mounted) directory.

Writes are atomic: bytes go to a uniquely named temporary file in the *target's own directory*
(so the final rename never crosses a filesystem), then ``os.replace`` publishes them, or
``os.link`` when the key must be created only if absent (link fails atomically if the target
exists). A reader therefore sees the whole object or none of it, even if the writer is killed.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from optuna_cas._validation import shorten_name, validate_key
from optuna_cas.backends.base import ObjectInfo
from optuna_cas.digest import CHUNK_SIZE, readinto
from optuna_cas.exceptions import ArtifactNotFound, InvalidKeyError, StoreConfigError

__all__ = ["TEMP_PREFIX", "LocalBackend", "StagedCopy"]

TEMP_PREFIX = ".tmp-"


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
        validate_key(key)
        # A symlinked directory inside the store must not lead reads or writes outside it.
        # One lstat per directory of the key (1-3 of them) instead of resolving the whole
        # absolute path: small uploads do this several times each.
        root = self._root_str
        current = root
        for part in key.split("/")[:-1]:
            current = f"{current}/{part}"
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                break  # not created yet: nothing below it can be a link
            if stat.S_ISLNK(mode):
                target = os.path.realpath(current)
                if target != root and not target.startswith(root + os.sep):
                    raise InvalidKeyError(f"Invalid key: {key!r} (resolves outside {root!r})")
        return Path(f"{root}/{key}")

    def _missing(self, key: str) -> ArtifactNotFound:
        return ArtifactNotFound(f"no object {key!r} in {self.describe()}")

    def open_reader(self, key: str, *, offset: int = 0) -> BinaryIO:
        """Open ``key`` for reading from ``offset``; symlinks are not followed.

        Example:
            >>> import tempfile
            >>> LocalBackend(tempfile.mkdtemp()).open_reader("refs/none")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.ArtifactNotFound: no object 'refs/none' in file://...
        """
        path = self._path(key)
        try:
            fd = os.open(
                path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            )
        except FileNotFoundError as e:
            raise self._missing(key) from e
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENOTDIR):
                raise self._missing(key) from e
            raise
        reader = open(fd, "rb", buffering=CHUNK_SIZE)  # noqa: SIM115 - handed to the caller
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
        path = self._path(key)
        if if_absent:
            try:
                mode: int | None = os.lstat(path).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and stat.S_ISREG(mode):
                return
            if mode is not None:
                # Something that is not a stored object (a symlink, say) sits at the key:
                # replace that entry itself, never what it points at.
                if_absent = False
        name = f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
        temp = path.with_name(shorten_name(name, 255))
        try:
            out_file = open(temp, "xb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)  # first object in this directory
            out_file = open(temp, "xb")  # noqa: SIM115
        try:
            with out_file as out:
                _copy_to(content_body, out)
                if self._fsync:
                    out.flush()
                    os.fsync(out.fileno())
            if if_absent:
                try:
                    os.link(temp, path)
                except FileExistsError:
                    pass  # someone else published the same key first: keep theirs
            else:
                os.replace(temp, path)
        finally:
            # After link or on failure the temp name is still there; after replace it is not.
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
        if self._fsync:
            _fsync_dir(path.parent)

    def stage_copy(self, source_fd: int, offset: int, directory: str) -> StagedCopy:
        """Start copying a file (from ``offset`` to EOF) into a temp file under ``directory``.

        The copy runs in the kernel on a background thread while the caller does something
        else (the content store hashes the same file meanwhile); it is published under a key
        with :meth:`StagedCopy.commit` or dropped with :meth:`StagedCopy.abort`.

        Example:
            >>> import os, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp())
            >>> src = tempfile.TemporaryFile(); _ = src.write(b"payload"); src.flush()
            >>> staged = b.stage_copy(src.fileno(), 0, "blobs")
            >>> staged.commit("blobs/x/y", if_absent=True); b.open_reader("blobs/x/y").read()
            b'payload'
        """
        # The same containment check as every key below ``directory`` gets, done *before*
        # the copy starts: a symlinked directory must not receive the bytes at all.
        folder = self._path(f"{directory}/staged").parent
        folder.mkdir(parents=True, exist_ok=True)
        return StagedCopy(self, source_fd, offset, folder)

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

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a stored object (a regular file, not a symlink).

        Example:
            >>> import tempfile
            >>> LocalBackend(tempfile.mkdtemp()).exists("k")
            False
        """
        try:
            return stat.S_ISREG(os.lstat(self._path(key)).st_mode)
        except FileNotFoundError:
            return False

    def touch(self, key: str) -> None:
        """Set ``key``'s modification time to now (a dedup hit protects its blob from gc).

        Example:
            >>> import io, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp()); b.write("k", io.BytesIO(b"x")); b.touch("k")
        """
        try:
            os.utime(self._path(key), follow_symlinks=False)
        except FileNotFoundError as e:
            raise self._missing(key) from e

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``.

        Example:
            >>> import io, tempfile
            >>> b = LocalBackend(tempfile.mkdtemp()); b.write("k", io.BytesIO(b"abc"))
            >>> b.stat("k").size
            3
        """
        path = self._path(key)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError as e:
            raise self._missing(key) from e
        if not _is_regular(st.st_mode):
            raise self._missing(key)
        return ObjectInfo(key=key, size=st.st_size, modified=st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every stored object whose key starts with ``prefix``; temp files and links skipped.

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
        if not start.is_dir() or start.is_symlink():
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
                if _is_regular(st.st_mode):
                    yield ObjectInfo(key=key, size=st.st_size, modified=st.st_mtime)

    def list_temporary(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Temp files left by interrupted writes (for garbage collection).

        Example:
            >>> import tempfile
            >>> list(LocalBackend(tempfile.mkdtemp()).list_temporary())
            []
        """
        start = self._root / prefix if prefix else self._root
        if not start.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(start):
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
        try:
            os.unlink(self._root / key)
        except FileNotFoundError:
            pass

    def describe(self) -> str:
        """``file://`` URL of the root.

        Example:
            >>> LocalBackend("/tmp").describe()
            'file:///tmp'
        """
        return self._root.as_uri()


class StagedCopy:
    """A kernel copy running on a background thread into a temp file; commit or abort it.

    Example:
        >>> import tempfile
        >>> b = LocalBackend(tempfile.mkdtemp())
        >>> src = tempfile.TemporaryFile(); _ = src.write(b"x"); src.flush()
        >>> b.stage_copy(src.fileno(), 0, "blobs").abort()
    """

    def __init__(self, backend: LocalBackend, source_fd: int, offset: int, folder: Path) -> None:
        self._backend = backend
        # Our own descriptor: the caller may close or seek theirs while we copy.
        self._source_fd = os.dup(source_fd)
        self._offset = offset
        self._temp = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        self._out_fd = os.open(
            self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
        )
        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="optuna-cas-stage", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            copied, finished = _kernel_copy(
                self._source_fd, self._out_fd, self._offset, self._cancel
            )
            if not finished and not self._cancel.is_set():
                # The kernel refused this pair of files: finish in user space from where it stopped.
                with open(self._source_fd, "rb", closefd=False) as src:
                    src.seek(self._offset + copied)
                    while chunk := src.read(CHUNK_SIZE):
                        if self._cancel.is_set():
                            return
                        os.write(self._out_fd, chunk)
        except BaseException as e:  # reported by commit()
            self._error = e

    def commit(self, key: str, *, if_absent: bool) -> None:
        """Wait for the copy, then publish it under ``key`` (atomic; ``if_absent`` as in write)."""
        try:
            self._thread.join()
            if self._error is not None:
                raise self._error
            if self._backend._fsync:
                os.fsync(self._out_fd)
            path = self._backend._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            if if_absent:
                try:
                    os.link(self._temp, path)
                except FileExistsError:
                    pass
            else:
                os.replace(self._temp, path)
        finally:
            self._cleanup()

    def abort(self) -> None:
        """Stop the copy and remove the temp file."""
        self._cancel.set()
        self._thread.join()
        self._cleanup()

    def _cleanup(self) -> None:
        for fd in (self._out_fd, self._source_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._out_fd = self._source_fd = -1
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


def _copy_to(source: BinaryIO, out: io.BufferedWriter) -> None:
    """Copy the rest of ``source`` into ``out``, in the kernel when both are real files."""
    fileno = _real_fileno(source)
    if fileno is not None:
        out.flush()
        start = source.tell()
        copied, finished = _kernel_copy(fileno, out.fileno(), start)
        source.seek(start + copied)
        if finished:
            return
    # Not a real file, or the kernel refused (e.g. across some filesystems): copy in user space.
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    while n := readinto(source, view):
        out.write(view[:n])


# Errors meaning "this kernel/filesystem pair cannot copy this way", not "the copy failed".
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


def _kernel_copy(
    src_fd: int, dst_fd: int, offset: int, cancel: threading.Event | None = None
) -> tuple[int, bool]:
    """copy_file_range from ``offset`` to EOF; returns (bytes copied, reached EOF)."""
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is None:  # pragma: no cover - not Linux
        return 0, False
    copied = 0
    while cancel is None or not cancel.is_set():
        try:
            n = copy_range(src_fd, dst_fd, 64 * CHUNK_SIZE, offset + copied)
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return copied, False
            raise
        if n == 0:
            return copied, True
        copied += n
    return copied, False


def _real_fileno(stream: BinaryIO) -> int | None:
    """The descriptor of a seekable regular file behind ``stream``, else None."""
    try:
        fileno = stream.fileno()
        if not stat.S_ISREG(os.fstat(fileno).st_mode) or not stream.seekable():
            return None
        # Buffered readers may have read ahead: the descriptor's offset is not the stream's.
        stream.tell()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    return fileno


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
