"""An in-process backend, for tests and throwaway studies."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from optuna_cas._validation import validate_key
from optuna_cas.backends.base import ObjectInfo
from optuna_cas.exceptions import ArtifactNotFound

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Keys and bytes in a dict, guarded by a lock (safe across threads, not processes).

    Example:
        >>> import io
        >>> backend = MemoryBackend()
        >>> backend.write("refs/a", io.BytesIO(b"hello"))
        >>> backend.open_reader("refs/a").read()
        b'hello'
    """

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        """Open ``key`` for reading from byte ``offset`` (up to ``length`` bytes).

        Example:
            >>> MemoryBackend().open_reader("nope")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.ArtifactNotFound: no object 'nope' in memory://
        """
        validate_key(key)
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            raise ArtifactNotFound(f"no object {key!r} in {self.describe()}")
        if length is not None:  # minimal window until the `ranged` branch lands
            return io.BytesIO(entry[0][offset : offset + length])
        stream = io.BytesIO(entry[0])
        stream.seek(offset)
        return stream

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        """Store the rest of ``content_body`` under ``key``.

        Example:
            >>> import io
            >>> b = MemoryBackend()
            >>> b.write("k", io.BytesIO(b"1")); b.write("k", io.BytesIO(b"2"), if_absent=True)
            >>> b.open_reader("k").read()
            b'1'
        """
        validate_key(key)
        buffer = io.BytesIO()
        shutil.copyfileobj(content_body, buffer)
        with self._lock:
            if if_absent and key in self._objects:
                return
            self._objects[key] = (buffer.getvalue(), time.time())

    def remove(self, key: str) -> None:
        """Delete ``key``; a missing key raises ``ArtifactNotFound``.

        Example:
            >>> import io
            >>> b = MemoryBackend(); b.write("k", io.BytesIO(b"1")); b.remove("k")
            >>> b.exists("k")
            False
        """
        validate_key(key)
        with self._lock:
            if self._objects.pop(key, None) is None:
                raise ArtifactNotFound(f"no object {key!r} in {self.describe()}")

    def remove_if_unchanged(self, key: str, seen: ObjectInfo) -> bool:
        """Delete ``key`` if its size and time are still ``seen``'s; True if deleted.

        Example:
            >>> import io
            >>> b = MemoryBackend(); b.write("k", io.BytesIO(b"1")); seen = b.stat("k")
            >>> b.touch("k"); b.remove_if_unchanged("k", seen)
            False
        """
        validate_key(key)
        with self._lock:
            entry = self._objects.get(key)
            if entry is None or len(entry[0]) != seen.size or entry[1] != seen.modified:
                return False
            del self._objects[key]
            return True

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored.

        Example:
            >>> MemoryBackend().exists("k")
            False
        """
        validate_key(key)
        with self._lock:
            return key in self._objects

    def touch(self, key: str) -> None:
        """Set ``key``'s modification time to now.

        Example:
            >>> import io
            >>> b = MemoryBackend(); b.write("k", io.BytesIO(b"x")); b.touch("k")
        """
        validate_key(key)
        with self._lock:
            entry = self._objects.get(key)
            if entry is None:
                raise ArtifactNotFound(f"no object {key!r} in {self.describe()}")
            self._objects[key] = (entry[0], time.time())

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``.

        Example:
            >>> import io
            >>> b = MemoryBackend(); b.write("k", io.BytesIO(b"abc"))
            >>> b.stat("k").size
            3
        """
        validate_key(key)
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            raise ArtifactNotFound(f"no object {key!r} in {self.describe()}")
        return ObjectInfo(key=key, size=len(entry[0]), modified=entry[1])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``.

        Example:
            >>> import io
            >>> b = MemoryBackend(); b.write("a/1", io.BytesIO(b"")); b.write("b/1", io.BytesIO(b""))
            >>> [info.key for info in b.list("a/")]
            ['a/1']
        """
        with self._lock:
            snapshot = [(k, v) for k, v in self._objects.items() if k.startswith(prefix)]
        for key, (data, modified) in snapshot:
            yield ObjectInfo(key=key, size=len(data), modified=modified)

    def describe(self) -> str:
        """Return ``memory://``.

        Example:
            >>> MemoryBackend().describe()
            'memory://'
        """
        return "memory://"
