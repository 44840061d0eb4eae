"""Source streams that behave like the awkward inputs a store meets: pipes, failing readers.

Nothing here needs pytest; the conformance suites and the project's own tests share them.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from optuna_cas.digest import RawReader

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "FailsAfter",
    "FailsAtEof",
    "HandsOver",
    "NonSeekable",
    "OnEof",
    "PatternSource",
    "random_bytes",
]


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes: the same ``(size, seed)`` gives the same bytes.

    Example:
        >>> random_bytes(4, seed=1) == random_bytes(4, seed=1) != random_bytes(4, seed=2)
        True
    """
    return random.Random(seed).randbytes(size)


class NonSeekable(RawReader):
    """``data`` behind a pipe-like stream: readable, not seekable, no ``tell``.

    Example:
        >>> source = NonSeekable(b"abc")
        >>> source.seekable(), source.read()
        (False, b'abc')
    """

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._inner = io.BytesIO(data)

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Fill ``buffer`` from the data; 0 at EOF."""
        return self._inner.readinto(buffer)


class FailsAtEof(RawReader):
    """Delivers ``data``, then raises ``OSError`` where EOF would be.

    That is what a verifying reader does on wrong bytes: everything was sent, and only the end
    tells it was bad. A backend must publish nothing then.

    Example:
        >>> source = FailsAtEof(b"ab")
        >>> source.read(2)
        b'ab'
        >>> source.read(2)
        Traceback (most recent call last):
        ...
        OSError: digest mismatch at EOF
    """

    def __init__(self, data: bytes, message: str = "digest mismatch at EOF") -> None:
        super().__init__()
        self._inner = io.BytesIO(data)
        self.message = message

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Fill ``buffer``; raise instead of returning 0 at EOF."""
        count = self._inner.readinto(buffer)
        if not count and memoryview(buffer).nbytes:
            raise OSError(self.message)
        return count


class FailsAfter(RawReader):
    """Yields ``good`` zero bytes, then raises ``error``: a caller's stream breaking mid-upload.

    Not seekable. The same ``error`` object is raised each time, so a test can check that a
    store let it through unchanged (``raised is source.error``).

    Example:
        >>> source = FailsAfter(3, OSError("disk went away"))
        >>> source.read(10) == bytes(3)
        True
        >>> source.read(10)
        Traceback (most recent call last):
        ...
        OSError: disk went away
    """

    def __init__(self, good: int, error: BaseException) -> None:
        super().__init__()
        self._left = good
        self.error = error

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Zeros until ``good`` bytes were given, then ``error``."""
        view = memoryview(buffer).cast("B")
        if self._left == 0 and len(view):
            raise self.error
        n = min(len(view), self._left)
        view[:n] = bytes(n)
        self._left -= n
        return n


class HandsOver(RawReader):
    """A raw stream over ``source`` whose ``read`` passes on (and records) what it returned.

    What a remote body does (botocore hands over the bytes the socket was read into), with
    ``readinto`` refused: a caller that copies through a buffer of its own fails. ``before``
    runs ahead of each ``read`` (raise from it to cut the stream there).

    Example:
        >>> raw = HandsOver(io.BytesIO(b"abc")); piece = raw.read(2)
        >>> piece, piece is raw.handed[0]
        (b'ab', True)
    """

    def __init__(self, source: io.BytesIO, before: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._source, self._before = source, before
        self.handed: list[bytes] = []

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Refused: a copy through the caller's buffer is what this stream exposes."""
        raise AssertionError("read through readinto: a copy the caller should not make")

    def read(self, size: int | None = -1) -> bytes:
        """The source's own bytes object, recorded in ``handed``."""
        if self._before is not None:
            self._before()
        piece = self._source.read(size)
        self.handed.append(piece)
        return piece


class OnEof(io.BytesIO):
    """A ``BytesIO`` that runs ``action`` once, the first time it is read to EOF.

    The moment a backend has read a whole body and not yet published it: the place to slip in
    a competing writer.

    Example:
        >>> seen = []
        >>> source = OnEof(b"ab", lambda: seen.append("eof"))
        >>> source.read(), seen
        (b'ab', [])
        >>> source.read(), seen
        (b'', ['eof'])
    """

    def __init__(self, data: bytes, action: Callable[[], None]) -> None:
        super().__init__(data)
        self._action: Callable[[], None] | None = action

    def read(self, size: int | None = -1) -> bytes:
        """Read, running the action when nothing is left."""
        chunk = super().read(size)
        self._on(len(chunk))
        return chunk

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read into ``buffer``, running the action when nothing is left."""
        count = super().readinto(buffer)
        self._on(count)
        return count

    def _on(self, count: int) -> None:
        if not count and self._action is not None:
            action, self._action = self._action, None
            action()


class PatternSource(RawReader):
    """``size`` bytes of a repeating ``block``, made on demand: a large, non-seekable input.

    It never holds more than one block, so a memory measurement counts only what the store
    keeps. Reads are short, like a pipe's: each returns at most the rest of the current block,
    so a store must loop to fill a part. A store asking for everything at once (``read()`` or
    ``read(-1)``) fails the test. ``sha256`` is the digest of the bytes delivered so far.

    Example:
        >>> source = PatternSource(5, b"abc")
        >>> source.read(4), source.read(4), source.read(4)
        (b'abc', b'ab', b'')
        >>> import hashlib
        >>> source.sha256.hexdigest() == hashlib.sha256(b"abcab").hexdigest()
        True
    """

    def __init__(self, size: int, block: bytes) -> None:
        super().__init__()
        if not block:
            raise ValueError("block must not be empty")
        self._left = size
        self._block = block
        self._offset = 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes; refuses an unbounded read."""
        if size is None or size < 0:
            raise AssertionError("a store must not read an unbounded amount at once")
        buffer = bytearray(min(size, self._left))
        count = self.readinto(buffer)
        return bytes(buffer[:count])

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Place the pattern's next bytes in ``buffer``, up to the end of the current block."""
        view = memoryview(buffer).cast("B")
        piece = self._block[self._offset : self._offset + min(len(view), self._left)]
        n = len(piece)
        view[:n] = piece
        self._offset = (self._offset + n) % len(self._block)
        self.sha256.update(piece)
        self._left -= n
        return n
