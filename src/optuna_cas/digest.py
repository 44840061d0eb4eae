"""BLAKE3 digests and hashing that streams.

A :class:`Digest` names a blob: algorithm, hex digest and size travel together, so a reader can
check both length and content, and a second algorithm could coexist later under its own key
prefix.
"""

from __future__ import annotations

import io
import mmap
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import blake3

from optuna_cas.exceptions import IntegrityError

__all__ = [
    "ALGORITHM",
    "CHUNK_SIZE",
    "Digest",
    "Hasher",
    "RawReader",
    "VerifyingReader",
    "hash_fd",
    "hash_file",
    "hash_private_range",
    "hash_stream",
    "new_blake3",
    "readinto",
    "rewind_point",
    "verified_buffers",
]

ALGORITHM = "blake3"
# 1 MiB: large enough to amortise per-call overhead, small enough to stay in L2/L3 and keep
# memory bounded (measured: 256 KiB-8 MiB hash+copy equally fast here, 16 MiB+ slower).
CHUNK_SIZE = 1024 * 1024
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Digest:
    """The BLAKE3 digest and length of a byte string.

    Attributes:
        hexdigest: 64 lowercase hex characters.
        size: Length of the content in bytes.
        algorithm: Always ``"blake3"`` for now; part of every blob key.

    Example:
        >>> d = Digest.of_bytes(b"hello")
        >>> d.size, str(d)[:15]
        (5, 'blake3:ea8f163d')
    """

    hexdigest: str
    size: int
    algorithm: str = ALGORITHM

    def __post_init__(self) -> None:
        if self.algorithm != ALGORITHM:
            raise ValueError(f"Unsupported digest algorithm: {self.algorithm!r}")
        if not isinstance(self.hexdigest, str) or not _HEX.fullmatch(self.hexdigest):
            raise ValueError(f"Invalid blake3 hex digest: {self.hexdigest!r}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ValueError(f"Invalid size: {self.size!r}")

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"

    @classmethod
    def parse(cls, text: str, size: int) -> Digest:
        """Build a digest from its ``"blake3:<hex>"`` form and a size.

        Args:
            text: The string form produced by ``str(digest)``.
            size: The content length.

        Returns:
            The digest.

        Raises:
            ValueError: ``text`` is not ``blake3:`` followed by 64 hex characters.

        Example:
            >>> d = Digest.of_bytes(b"x")
            >>> Digest.parse(str(d), 1) == d
            True
        """
        algorithm, sep, hexdigest = text.partition(":")
        if not sep:
            raise ValueError(f"Invalid digest: {text!r} (expected 'blake3:<hex>')")
        return cls(hexdigest=hexdigest, size=size, algorithm=algorithm)

    @classmethod
    def computed(cls, hexdigest: str, size: int) -> Digest:
        """A digest a BLAKE3 hasher just produced over ``size`` counted bytes: not re-checked.

        Parsing untrusted text goes through the constructor (or :meth:`parse`), which
        validates; this skips that for values that are valid by construction (every upload
        makes one).

        Example:
            >>> h = blake3.blake3(b"x")
            >>> Digest.computed(h.hexdigest(), 1) == Digest.of_bytes(b"x")
            True
        """
        digest = object.__new__(cls)
        object.__setattr__(digest, "hexdigest", hexdigest)
        object.__setattr__(digest, "size", size)
        object.__setattr__(digest, "algorithm", ALGORITHM)
        return digest

    @classmethod
    def of_bytes(cls, data: bytes) -> Digest:
        """Hash a small in-memory byte string.

        Args:
            data: The bytes.

        Returns:
            Their digest.

        Example:
            >>> Digest.of_bytes(b"").size
            0
        """
        return cls(hexdigest=blake3.blake3(data).hexdigest(), size=len(data))


class Hasher:
    """Incremental BLAKE3 that also counts bytes.

    Example:
        >>> h = Hasher()
        >>> h.update(b"hel"); h.update(b"lo")
        >>> h.digest() == Digest.of_bytes(b"hello")
        True
    """

    def __init__(self) -> None:
        self._hasher = blake3.blake3()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed more bytes.

        Example:
            >>> h = Hasher(); h.update(memoryview(b"ab")); h.size
            2
        """
        self._hasher.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        """The digest of everything fed so far.

        Example:
            >>> Hasher().digest().size
            0
        """
        return Digest.computed(self._hasher.hexdigest(), self.size)


def hash_file(path: str | os.PathLike[str]) -> Digest:
    """Hash a file on disk by reading it (never memory-mapped: see :func:`hash_fd`).

    Args:
        path: A regular file.

    Returns:
        Its digest.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     _ = f.write(b"hello"); f.flush()
        ...     hash_file(f.name) == Digest.of_bytes(b"hello")
        True
    """
    with open(path, "rb", buffering=0) as f:
        return hash_fd(f.fileno())


# Large reads keep the per-call overhead small and give BLAKE3's thread pool enough work.
_READ_HASH_BUFFER = 16 * 1024 * 1024
# First buffer for a file that says it is empty (it may be a pseudo-file with content).
_SMALL_READ_BUFFER = 64 * 1024
# Below this a thread pool costs more than it saves (~0.2 ms to start one in a child process).
_PARALLEL_MIN_BYTES = 1024 * 1024
# BLAKE3's "AUTO" mode runs on a global thread pool that a forked child inherits without its
# threads: the child's first large hash then blocks forever. After a fork every hasher gets a
# pool of its own instead (threads created in the child), or a single thread for small inputs.
_GLOBAL_POOL_USABLE = True
_THREADS = max(1, os.cpu_count() or 1)


def _forked() -> None:
    global _GLOBAL_POOL_USABLE
    _GLOBAL_POOL_USABLE = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def new_blake3(expected_size: int | None = None) -> Any:
    """A BLAKE3 hasher using every core for large inputs, safe in forked children.

    Args:
        expected_size: Bytes about to be hashed, if known; small inputs get one thread.

    Returns:
        A ``blake3.blake3`` object.

    Example:
        >>> h = new_blake3(5); _ = h.update(b"hello")
        >>> h.hexdigest() == Digest.of_bytes(b"hello").hexdigest
        True
    """
    if (expected_size is not None and expected_size < _PARALLEL_MIN_BYTES) or _THREADS == 1:
        return blake3.blake3()
    if _GLOBAL_POOL_USABLE:
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    return blake3.blake3(max_threads=_THREADS)


def hash_fd(fd: int, start: int = 0) -> Digest:
    """Hash an open file from ``start`` to EOF with ``pread`` into one reused buffer.

    Reads, never maps: a file someone else can truncate would turn a memory map into SIGBUS.
    The descriptor's position is not used or changed. The digest is of exactly the bytes read
    (a pseudo-file whose size says 0, e.g. in /proc, is read to its real end).

    Args:
        fd: A readable file descriptor.
        start: Offset to start at.

    Returns:
        The digest of the bytes from ``start`` to EOF.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as f:
        ...     _ = f.write(b"xhello"); f.flush()
        ...     hash_fd(f.fileno(), 1) == Digest.of_bytes(b"hello")
        True
    """
    size_hint = max(os.fstat(fd).st_size - start, 0)
    hasher = new_blake3(size_hint)
    # A small file gets a buffer its size (+1 to see EOF in the same loop): zeroing a 1 MiB
    # one cost more than hashing a few KiB. One that fills up (the file is larger than its
    # size said: a pseudo-file, a file growing) is replaced by a large one.
    first = min(_READ_HASH_BUFFER, size_hint + 1 if size_hint else _SMALL_READ_BUFFER)
    view = memoryview(bytearray(first))
    offset = start
    while n := os.preadv(fd, [view], offset):
        hasher.update(view[:n])
        offset += n
        if n == len(view) < CHUNK_SIZE:
            view = memoryview(bytearray(CHUNK_SIZE))
    return Digest.computed(hasher.hexdigest(), offset - start)


# Private files are hashed through memory-map windows of this size: as fast as mapping the
# whole file (BLAKE3 multi-threads within a window) while only one window counts as resident.
HASH_WINDOW = 16 * 1024 * 1024


def hash_private_range(fd: int, hasher: Any, start: int, end: int) -> None:
    """Feed bytes ``[start, end)`` of a file *this process owns* to ``hasher`` via mmap.

    Only for files nobody else can truncate (our own temp copies): a truncation under a map
    kills the process with SIGBUS. Callers hashing anything else use :func:`hash_fd`.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as f:
        ...     _ = f.write(b"hello"); f.flush()
        ...     h = new_blake3(); hash_private_range(f.fileno(), h, 0, 5)
        ...     h.hexdigest() == Digest.of_bytes(b"hello").hexdigest
        True
    """
    # mmap offsets must be multiples of the allocation granularity: map from an aligned
    # offset and skip the slack in the first window.
    offset = start - start % mmap.ALLOCATIONGRANULARITY
    skip = start - offset
    while offset < end:
        length = min(HASH_WINDOW, end - offset)
        # Each view is released by its own with statement before the map closes (closing a
        # map with a view alive fails): an exception, even a KeyboardInterrupt between two
        # releases, leaves none alive.
        with (
            mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=offset) as window,
            memoryview(window) as view,
            view[skip:] as part,
        ):
            hasher.update(part)
        offset += length
        skip = 0


def verified_buffers(
    buffers: Iterable[bytes | memoryview], expected: Digest, *, name: str
) -> Iterator[bytes | memoryview]:
    """``buffers`` passed on unchanged and hashed; raises before ending unless they are ``expected``.

    The buffer-at-a-time twin of :class:`VerifyingReader`, for a producer whose buffers can be
    used as they are (no copy into a reader's buffer): a consumer that runs the iterator to
    its end has had every byte checked.

    Raises:
        IntegrityError: More bytes than expected (as soon as they arrive), or at the end a
            different size or digest.

    Example:
        >>> good = Digest.of_bytes(b"hello")
        >>> b"".join(verified_buffers([b"hel", b"lo"], good, name="file"))
        b'hello'
        >>> b"".join(verified_buffers([b"hel", b"LO"], good, name="file"))
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.IntegrityError: file: content does not match blake3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f (size 5)
    """
    hasher = Hasher()
    for buffer in buffers:
        hasher.update(buffer)
        _check_not_over(hasher, expected, name)
        yield buffer
    _check_digest(hasher, expected, name)


def _check_not_over(hasher: Hasher, expected: Digest, name: str) -> None:
    if hasher.size > expected.size:
        raise IntegrityError(f"{name}: more than the expected {expected.size} bytes")


def _check_digest(hasher: Hasher, expected: Digest, name: str) -> None:
    got = hasher.digest()
    if got.size != expected.size:
        raise IntegrityError(f"{name}: got {got.size} bytes, expected {expected.size}")
    if got != expected:
        raise IntegrityError(f"{name}: content does not match {expected} (size {expected.size})")


def hash_stream(stream: BinaryIO) -> Digest:
    """Hash a stream from its current position to EOF with bounded memory.

    Args:
        stream: Any readable binary stream.

    Returns:
        The digest of what was read.

    Example:
        >>> import io
        >>> hash_stream(io.BytesIO(b"hello")) == Digest.of_bytes(b"hello")
        True
    """
    hasher = Hasher()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    while True:
        n = readinto(stream, view)
        if not n:
            return hasher.digest()
        hasher.update(view[:n])


def readinto(stream: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` without allocating where the stream allows it.

    Args:
        stream: A readable binary stream.
        view: A writable buffer.

    Returns:
        Bytes placed in ``view``; 0 at EOF.

    Example:
        >>> import io
        >>> readinto(io.BytesIO(b"abc"), memoryview(bytearray(2)))
        2
    """
    method = getattr(stream, "readinto", None)
    if method is not None:
        n = method(view)
        return int(n or 0)
    chunk = stream.read(len(view))
    view[: len(chunk)] = chunk
    return len(chunk)


class RawReader(io.RawIOBase):
    """A raw binary stream that can be read: the base of this package's readers.

    Example:
        >>> RawReader().readable()
        True
    """

    def readable(self) -> bool:
        """Always True."""
        return True


def rewind_point(stream: BinaryIO) -> int | None:
    """Where ``stream`` is now if it can seek back there later, else ``None``.

    Example:
        >>> f = io.BytesIO(b"abc"); _ = f.read(1)
        >>> rewind_point(f), rewind_point(object())
        (1, None)
    """
    try:
        return stream.tell() if stream.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


class VerifyingReader(RawReader):
    """A reader that checks size and digest as bytes pass through.

    Raises :class:`~optuna_cas.exceptions.IntegrityError` as soon as more bytes than expected
    arrive, with the read that brings the last expected byte if the digest differs (before
    the caller sees that read's bytes), and at EOF if the length is short, so a consumer that
    reads to the end can never accept wrong bytes silently.

    Example:
        >>> import io
        >>> good = Digest.of_bytes(b"hello")
        >>> VerifyingReader(io.BytesIO(b"hello"), good, name="blob").read()
        b'hello'
        >>> VerifyingReader(io.BytesIO(b"hellO"), good, name="blob").read()
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.IntegrityError: blob: content does not match blake3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f (size 5)
    """

    def __init__(
        self, source: BinaryIO, expected: Digest, *, name: str, close_source: bool = True
    ) -> None:
        super().__init__()
        self._source = source
        self._close_source = close_source
        self._expected = expected
        self._name = name
        self._hasher = Hasher()
        self._verified = False
        # Where the content starts in a seekable source: a retry may rewind to it.
        self._origin = rewind_point(source)
        self._target: int | None = None  # where a seek asked to go (moved at the next read)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Read into ``buffer``, hashing what was read; verify at EOF."""
        if self._target is not None:
            self._move(self._target)
        view = memoryview(buffer).cast("B")
        n = readinto(self._source, view)
        if n:
            self._hasher.update(view[:n])
            _check_not_over(self._hasher, self._expected, self._name)
            if self._hasher.size == self._expected.size and not self._verified:
                # The last byte is in: check now, before the caller sees any of this read (a
                # file read in one call is never handed out unchecked). Bytes past the end
                # still fail the next read.
                _check_digest(self._hasher, self._expected, self._name)
                self._verified = True
            return n
        if not self._verified:
            _check_digest(self._hasher, self._expected, self._name)
            self._verified = True
        return 0

    def seekable(self) -> bool:
        """True if the source can be rewound (only back to the start is supported)."""
        return self._origin is not None

    def tell(self) -> int:
        """The position: bytes read so far, or where a seek asked to go."""
        return self._hasher.size if self._target is None else self._target

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move within the content (seekable sources only), verifying afresh from the start.

        A retried upload rewinds its input. Hashing is sequential, so any move re-reads the
        content from its start up to the new position: the bytes are all checked again. The
        end (``SEEK_END``) is where the expected size says. The move happens at the next read,
        so asking the size (a seek to the end and back) reads nothing.

        Example:
            >>> reader = VerifyingReader(io.BytesIO(b"hello"), Digest.of_bytes(b"hello"), name="x")
            >>> reader.seek(0, io.SEEK_END), reader.seek(0), reader.read()
            (5, 0, b'hello')
        """
        if self._origin is None:
            raise io.UnsupportedOperation("the source of this verifying reader cannot seek")
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self.tell(), io.SEEK_END: self._expected.size}
        if whence not in bases:
            raise ValueError(f"invalid whence {whence!r}")
        target = max(bases[whence] + offset, 0)
        self._target = None if target == self._hasher.size else target
        return target

    def _move(self, target: int) -> None:
        """Re-read (and hash) the content from its start up to ``target``."""
        self._target = None
        assert self._origin is not None  # only a seek sets a target, and it needs an origin
        self._source.seek(self._origin)
        self._hasher = Hasher()
        self._verified = False
        buffer = memoryview(bytearray(min(CHUNK_SIZE, max(target, 1))))
        while self._hasher.size < target:
            want = min(len(buffer), target - self._hasher.size)
            n = readinto(self._source, buffer[:want])
            if not n:
                break
            self._hasher.update(buffer[:n])

    @property
    def verified(self) -> bool:
        """True once every expected byte was read and the digest matched.

        Example:
            >>> reader = VerifyingReader(io.BytesIO(b"ab"), Digest.of_bytes(b"ab"), name="x")
            >>> reader.read(1), reader.verified, reader.read(1), reader.verified
            (b'a', False, b'b', True)
        """
        return self._verified

    def close(self) -> None:
        """Close this reader, and the source unless ``close_source=False``."""
        try:
            if self._close_source:
                self._source.close()
        finally:
            super().close()
