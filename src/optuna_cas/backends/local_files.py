"""Files of the local backend: temp names, files made beside their targets, staged files.

A :class:`StagedFile` is the content store's private copy of an upload inside the store: it
is filled (and hashed) under a temp name, then published under its digest's key by rename, so
no reader ever sees a partial blob. Temp names start with :data:`TEMP_PREFIX`, which listing
skips and gc collects once stale.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable

from optuna_cas.backends.base import ObjectInfo
from optuna_cas.exceptions import IntegrityError

__all__ = [
    "TEMP_PREFIX",
    "StagedFile",
    "create_beside",
    "fsync_dir",
    "make_parent",
    "unique_name",
]

TEMP_PREFIX = ".tmp-"


class StagedFile:
    """A private temp file in the store (open for reading and writing), published by rename.

    Args:
        folder: Where the temp file is made (created if missing).
        resolve: The backend's key -> checked absolute path (containment walk included).
        fsync: Flush file and directory when publishing.

    Example:
        >>> import tempfile
        >>> from optuna_cas.backends.local import LocalBackend
        >>> LocalBackend(tempfile.mkdtemp()).stage("blobs").discard()
    """

    def __init__(self, folder: str, *, resolve: Callable[[str], str], fsync: bool) -> None:
        self._resolve = resolve
        self._fsync = fsync
        self.path = f"{folder}/{TEMP_PREFIX}{unique_name()}"
        self.fd = create_beside(self.path, folder, 0o644)
        self._published = False
        self._published_path: str | None = None

    def commit(self, key: str) -> None:
        """Publish the file under ``key`` with ``os.replace`` (atomic), then close it.

        Replacing is right for content-addressed keys: the bytes are verified and identical
        to any good copy already there, and a corrupt copy gets repaired (a reader holding the
        old file keeps reading it). The key's time becomes now, which also protects the blob
        from a concurrent gc for the grace period.
        """
        try:
            self._publish(self._resolve(key))
        finally:
            self.discard()

    def commit_new(self, key: str) -> ObjectInfo | None:
        """Publish under ``key`` unless a stored object (a regular file) is there; else its info.

        The content store's publish of a new blob: one containment walk serves both the look
        at the key and the rename (a ``stat`` and then a :meth:`commit` walked the key's
        directories twice). Anything else at the key (a symlink, a FIFO) is replaced, as
        :meth:`commit` would. When an object is returned the file stays staged.

        Example:
            >>> import os, tempfile
            >>> from optuna_cas.backends.local import LocalBackend
            >>> b = LocalBackend(tempfile.mkdtemp())
            >>> first = b.stage("blobs"); _ = os.write(first.fd, b"abc")
            >>> first.commit_new("blobs/x/y") is None
            True
            >>> second = b.stage("blobs"); second.commit_new("blobs/x/y").size
            3
            >>> second.discard()
        """
        path = self._resolve(key)
        try:
            st: os.stat_result | None = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            st = None  # (also when the fan-out directory is not there yet)
        if st is not None and stat.S_ISREG(st.st_mode):
            return ObjectInfo(key=key, size=st.st_size, modified=st.st_mtime)
        try:
            self._publish(path)
        finally:
            self.discard()
        return None

    def still_published(self, size: int) -> bool:
        """After a commit: whether the key still holds a regular file of ``size`` bytes.

        One ``lstat`` of the path the commit renamed to; its directories were checked for
        symlinks leading out of the store by that commit, moments before.

        Example:
            >>> import os, tempfile
            >>> from optuna_cas.backends.local import LocalBackend
            >>> b = LocalBackend(tempfile.mkdtemp())
            >>> staged = b.stage("blobs"); _ = os.write(staged.fd, b"abc")
            >>> staged.still_published(3)
            False
            >>> staged.commit("blobs/x/y"); staged.still_published(3)
            True
            >>> b.remove("blobs/x/y"); staged.still_published(3)
            False
        """
        if self._published_path is None:
            return False
        try:
            st = os.lstat(self._published_path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def _publish(self, path: str) -> None:
        if self._fsync:
            os.fsync(self.fd)
        try:
            os.replace(self.path, path)
        except FileNotFoundError:
            # The first blob in its fan-out directory (or our temp file was removed: then
            # the retry raises again, naming it).
            make_parent(path)
            os.replace(self.path, path)
        except IsADirectoryError:
            raise directory_in_the_way(path) from None
        self._published = True
        self._published_path = path
        if self._fsync:
            fsync_dir(path.rpartition("/")[0])

    def discard(self) -> None:
        """Close and remove the temp file (a no-op after :meth:`commit`)."""
        if self.fd >= 0:
            # Forgotten before it is closed: a KeyboardInterrupt as close returned made a
            # second call close the number again, maybe another thread's new descriptor.
            fd, self.fd = self.fd, -1
            os.close(fd)
        if self._published:
            return  # the temp name went with the rename: no unlink to fail
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def unique_name() -> str:
    """32 random hex digits for a temp name (a ``uuid4`` object per name cost more than this).

    Example:
        >>> len(unique_name())
        32
    """
    return os.urandom(16).hex()


def make_parent(path: str) -> None:
    """Create ``path``'s directory: one ``mkdir`` when only the last level is missing.

    Example:
        >>> import os, tempfile
        >>> root = tempfile.mkdtemp(); make_parent(f"{root}/a/b/c"); os.path.isdir(f"{root}/a/b")
        True
    """
    directory = path.rpartition("/")[0]
    try:
        os.mkdir(directory)
    except FileExistsError:
        pass  # another writer made it first
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)


def create_beside(path: str, directory: str, mode: int) -> int:
    """Create the new file ``path`` (read-write) in ``directory``, creating that if missing.

    Trying first and creating the directory only on failure saves a ``mkdir`` per write.

    Example:
        >>> import os, tempfile
        >>> root = tempfile.mkdtemp(); os.close(create_beside(f"{root}/d/f", f"{root}/d", 0o644))
        >>> os.path.isfile(f"{root}/d/f")
        True
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(path, flags, mode)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)  # the first object in this directory
        return os.open(path, flags, mode)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename into it) to stable storage.

    Example:
        >>> import tempfile
        >>> fsync_dir(tempfile.mkdtemp())
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def directory_in_the_way(where: str) -> IntegrityError:
    """The error for a directory planted where an object is to be published."""
    return IntegrityError(
        f"a directory sits at {where!r}, where an object is to be stored: optuna-cas never "
        "makes one there; move it away"
    )
