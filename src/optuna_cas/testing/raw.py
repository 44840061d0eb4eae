"""Out-of-band views of what a store really holds, for the conformance suites' hooks.

A view reads and writes the storage *without* the backend under test: the memory backend's
dict, the local directory's files, the S3 bucket through a plain boto3 client, the GCS bucket
through the google client. The conformance suites check with it what was really written, and
plant objects behind the backend's back (a competing writer, a foreign tool's object).

Names are relative to the view's root (the backend's directory or prefix), ``/``-separated.

Example:
    >>> import io
    >>> from optuna_cas.backends.memory import MemoryBackend
    >>> backend = MemoryBackend()
    >>> view = MemoryView(backend)
    >>> backend.write("refs/a", io.BytesIO(b"x"))
    >>> view.read("refs/a"), view.keys("refs/")
    (b'x', ['refs/a'])
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from optuna_cas.backends.local import TEMP_PREFIX
from optuna_cas.backends.memory import MemoryBackend

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["DirectoryView", "GCSView", "MemoryView", "RawView", "S3View"]


class RawView(Protocol):
    """What the conformance suites need to see and touch behind a store's back."""

    def read(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or ``None`` if there is no such object."""
        ...

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` directly (any name the storage can hold)."""
        ...

    def keys(self, prefix: str = "") -> list[str]:
        """Every stored object's name starting with ``prefix``, sorted."""
        ...

    def version(self, key: str) -> object:
        """A token that changes whenever ``key`` is written anew (a touch need not change it).

        ``None`` if there is no such object.
        """
        ...

    def unfinished(self) -> list[str]:
        """Writes started and neither published nor cleaned up (multipart uploads, temp files)."""
        ...

    def backdate(self, key: str, seconds: float) -> bool:
        """Make ``key`` look ``seconds`` older; False if the storage cannot set times."""
        ...


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def _strip(prefix: str) -> str:
    return prefix.strip("/")


class _Same:
    """Equal only to a token of the very same object (kept alive, so its id is not reused)."""

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __repr__(self) -> str:
        return f"<object at {id(self.obj):#x}>"


class MemoryView:
    """The dict inside a :class:`~optuna_cas.backends.memory.MemoryBackend`.

    Example:
        >>> view = MemoryView(MemoryBackend())
        >>> view.write("a", b"1"); view.version("a") == view.version("a")
        True
    """

    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend

    def read(self, key: str) -> bytes | None:
        """The stored bytes, or ``None``."""
        with self._backend._lock:
            entry = self._backend._objects.get(key)
        return None if entry is None else entry[0]

    def write(self, key: str, data: bytes) -> None:
        """Put ``data`` in the dict, stamped now."""
        with self._backend._lock:
            self._backend._objects[key] = (bytes(data), time.time())

    def keys(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix``."""
        with self._backend._lock:
            return sorted(k for k in self._backend._objects if k.startswith(prefix))

    def version(self, key: str) -> object:
        """The identity of the stored bytes (every write stores a new bytes object)."""
        with self._backend._lock:
            entry = self._backend._objects.get(key)
        return None if entry is None else _Same(entry[0])

    def unfinished(self) -> list[str]:
        """Always empty: the dict is updated in one step."""
        return []

    def backdate(self, key: str, seconds: float) -> bool:
        """Move the entry's time back."""
        with self._backend._lock:
            data, modified = self._backend._objects[key]
            self._backend._objects[key] = (data, modified - seconds)
        return True


class DirectoryView:
    """The files below a local backend's root.

    Temp files (``.tmp-*``, a write in progress or abandoned) are :meth:`unfinished`, not
    :meth:`keys`.

    Example:
        >>> import tempfile
        >>> view = DirectoryView(tempfile.mkdtemp())
        >>> view.write("refs/a", b"1"); view.keys(), view.read("refs/b")
        (['refs/a'], None)
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def read(self, key: str) -> bytes | None:
        """The file's bytes, or ``None`` if there is no regular file there."""
        path = self.root / key
        return path.read_bytes() if path.is_file() and not path.is_symlink() else None

    def write(self, key: str, data: bytes) -> None:
        """Write the file in place (creating its directories)."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def _files(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                full = os.path.join(dirpath, name)
                found.append(os.path.relpath(full, self.root).replace(os.sep, "/"))
        return found

    def keys(self, prefix: str = "") -> list[str]:
        """Sorted names of the files (not temp files) starting with ``prefix``."""
        return sorted(
            k
            for k in self._files()
            if k.startswith(prefix) and not k.rpartition("/")[2].startswith(TEMP_PREFIX)
        )

    def version(self, key: str) -> object:
        """The file's inode: publishing a new file (a rename over it) changes it."""
        try:
            st = os.lstat(self.root / key)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size)

    def unfinished(self) -> list[str]:
        """Temp files left in the tree."""
        return sorted(k for k in self._files() if k.rpartition("/")[2].startswith(TEMP_PREFIX))

    def backdate(self, key: str, seconds: float) -> bool:
        """Move the file's times back."""
        st = os.lstat(self.root / key)
        os.utime(self.root / key, (st.st_atime - seconds, st.st_mtime - seconds))
        return True


class S3View:
    """A bucket (below ``prefix``) seen through a boto3 client of its own.

    Example:
        .. code-block:: python

            view = S3View(boto3.client("s3", endpoint_url=url), "bucket", prefix="p")
            view.read("refs/a")  # GetObject p/refs/a
    """

    def __init__(self, client: S3Client, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = _strip(prefix)

    def read(self, key: str) -> bytes | None:
        """GetObject, or ``None`` on NoSuchKey."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=_join(self.prefix, key))
        except self.client.exceptions.NoSuchKey:
            return None
        data: bytes = response["Body"].read()
        return data

    def write(self, key: str, data: bytes) -> None:
        """PutObject."""
        self.client.put_object(Bucket=self.bucket, Key=_join(self.prefix, key), Body=data)

    def keys(self, prefix: str = "") -> list[str]:
        """ListObjectsV2 below the view's prefix, names relative to it."""
        root = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root + prefix
        )
        return sorted(o["Key"][len(root) :] for page in pages for o in page.get("Contents", []))

    def version(self, key: str) -> object:
        """ETag and LastModified: a rewrite of the same bytes still changes the time."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=_join(self.prefix, key))
        except self.client.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise
        return (head["ETag"], head["LastModified"])

    def unfinished(self) -> list[str]:
        """Multipart uploads started below the prefix and neither completed nor aborted."""
        root = f"{self.prefix}/" if self.prefix else ""
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=root)
        return sorted(u["Key"][len(root) :] for u in uploads.get("Uploads", []))

    def backdate(self, key: str, seconds: float) -> bool:
        """False: S3 sets LastModified itself."""
        return False


class GCSView:
    """A bucket (below ``prefix``) seen through a ``google.cloud.storage.Bucket``.

    Example:
        .. code-block:: python

            view = GCSView(client.bucket("bucket"), prefix="p")
            view.keys("refs/")
    """

    def __init__(self, bucket: Any, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = _strip(prefix)

    def read(self, key: str) -> bytes | None:
        """Download the object, or ``None`` if GCS answers 404."""
        from google.api_core.exceptions import NotFound

        try:
            data: bytes = self.bucket.blob(_join(self.prefix, key)).download_as_bytes()
        except NotFound:
            return None
        return data

    def write(self, key: str, data: bytes) -> None:
        """Upload ``data`` in one request."""
        self.bucket.blob(_join(self.prefix, key)).upload_from_string(data)

    def keys(self, prefix: str = "") -> list[str]:
        """Object names below the view's prefix, relative to it."""
        root = f"{self.prefix}/" if self.prefix else ""
        blobs = self.bucket.client.list_blobs(self.bucket, prefix=root + prefix)
        return sorted(blob.name[len(root) :] for blob in blobs)

    def version(self, key: str) -> object:
        """The object's generation (a new one for every write)."""
        blob = self.bucket.get_blob(_join(self.prefix, key))
        return None if blob is None else blob.generation

    def unfinished(self) -> list[str]:
        """Always empty: GCS does not list open resumable sessions (they expire in a week)."""
        return []

    def backdate(self, key: str, seconds: float) -> bool:
        """False: GCS sets ``updated`` itself."""
        return False
