"""Byte plumbing shared by the remote backends: cutting uploads into parts, reading objects.

Nothing here knows an SDK. :class:`PartReader` turns the caller's stream into upload parts and
hands out the last part only once the stream reported EOF; :class:`FileParts` cuts a sealed
file into ranges of itself instead (no buffers); :class:`PartSender` sends parts with bounded
concurrency and memory; :class:`ObjectReader` turns an adapter's response bodies into one
seekable, length-checked raw stream.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

from optuna_cas.backends.base import SealedFile
from optuna_cas.backends.window import Window
from optuna_cas.digest import RawReader, readinto
from optuna_cas.exceptions import TransientBackendError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "Body",
    "Download",
    "FilePart",
    "FileParts",
    "ObjectReader",
    "Part",
    "PartReader",
    "PartSender",
    "PartUpload",
    "part_threads",
    "remaining_size",
]

# A head's rest shorter than this is copied out so the (part-sized) head can be freed.
_COMPACT_REST = 1024 * 1024
# A last part at most this fraction of a part is copied out, so its buffer can be reused.
_TAIL_FRACTION = 4
# What a sealed file's part is read from the file at a time.
_PART_READ = 256 * 1024


def remaining_size(stream: BinaryIO) -> int | None:
    """Bytes left in ``stream`` if it can tell cheaply (a seekable stream), else ``None``.

    Example:
        >>> f = io.BytesIO(b"abcdef"); _ = f.seek(2)
        >>> remaining_size(f), f.tell()
        (4, 2)
    """
    try:
        if not stream.seekable():
            return None
        position = stream.tell()
        end = stream.seek(0, io.SEEK_END)
    except (OSError, ValueError, AttributeError):
        return None
    # Not swallowed: a stream left at its end would be read as empty.
    stream.seek(position)
    return max(end - position, 0)


class PartUpload(Protocol):
    """One multipart (S3) or resumable (GCS) upload in progress; each method is one request.

    Every method may be called again after it failed (the request runner retries it).
    """

    completes_separately: bool
    """Whether :meth:`complete` is a request of its own (S3), or the last part publishes."""

    def send_part(self, number: int, offset: int, data: Part) -> None:
        """Send part ``number`` (1-based; ``data`` starts at byte ``offset``), not the last."""
        ...

    def send_last(self, number: int, offset: int, data: Part, total: int) -> None:
        """Send the last part (possibly empty); the caller's stream has reached EOF."""
        ...

    def complete(self) -> None:
        """Publish the object (when :attr:`completes_separately`)."""
        ...

    def abort(self) -> None:
        """Drop the upload; best effort, never raises."""
        ...


class PartReader:
    """``head``, then the rest of ``stream``, cut into parts of exactly ``part_size`` bytes.

    Parts are read into buffers of ``part_size`` bytes, each lent by :meth:`next` and given
    back by :meth:`release` once its part was sent, then reused: there are never more buffers
    than parts out at once (:class:`PartSender` bounds those), whatever the size of the upload,
    and no part is allocated per part (leaving the allocator to return it, or not). The SDKs
    send a ``bytearray`` body without copying it.

    Every part but the last is full. The last one is shorter, possibly empty, and is returned
    only after ``stream`` reported EOF: a backend that publishes with (or after) the last part
    therefore never publishes before the caller's stream was read to its end, which is where a
    verifying reader raises when the bytes are wrong.

    Example:
        >>> parts = PartReader(b"abc", io.BytesIO(b"defgh"), 3)
        >>> first = parts.next(); bytes(first); parts.release(first)
        b'abc'
        >>> second = parts.next(); bytes(second), second is first; parts.release(second)
        (b'def', True)
        >>> bytes(parts.next()), parts.eof
        (b'gh', True)
    """

    def __init__(self, head: bytes, stream: BinaryIO, part_size: int) -> None:
        self._head: memoryview | None = memoryview(head)
        self._stream = stream
        self._part_size = part_size
        self._free: list[bytearray] = []  # buffers given back, sent from other threads
        self._lock = threading.Lock()
        self.eof = False

    def next(self) -> bytearray:
        """The next part, in a buffer lent until :meth:`release`; short only at the end."""
        buffer = self._take()
        with memoryview(buffer) as view:
            filled = self._fill_from_head(view)
            while filled < len(view):
                count = readinto(self._stream, view[filled:])
                if not count:
                    break
                filled += count
        if filled < len(buffer):
            self.eof = True  # the last part
            if filled <= len(buffer) // _TAIL_FRACTION:
                # A short tail (a pack's is a fraction of a chunk) is copied out cheaply, so
                # the whole buffer stays reusable.
                tail = buffer[:filled]
                self.release(buffer)
                return tail
            try:
                del buffer[filled:]  # not lent again
            except BufferError:
                # A view of it outlived an earlier part's request (a failed one's traceback
                # may hold it), so it cannot shrink in place: copy the short last part.
                return buffer[:filled]
        return buffer

    def release(self, part: Part) -> None:
        """Take back the buffer of a part that was sent (or will never be)."""
        if isinstance(part, bytearray) and len(part) == self._part_size:
            with self._lock:
                self._free.append(part)

    def __enter__(self) -> PartReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let the buffers go (after the upload ended)."""
        with self._lock:
            self._free = []

    def _take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self._part_size)

    def _fill_from_head(self, view: memoryview) -> int:
        head = self._head
        if head is None:
            return 0
        filled = min(len(head), len(view))
        view[:filled] = head[:filled]
        rest = head[filled:]
        if not rest:
            self._head = None
        elif len(rest) <= _COMPACT_REST:
            self._head = memoryview(rest.tobytes())  # lets the part-sized head go now
        else:
            self._head = rest
        return filled


@dataclass(frozen=True)
class FilePart:
    """A part that is bytes ``[offset, offset + length)`` of a sealed file, read as it is sent.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as f:
        ...     _ = f.write(b"abcdef"); f.flush()
        ...     part = FilePart(f.fileno(), 1, 4)
        ...     len(part), part.body(skip=1).read()
        (4, b'cde')
    """

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length

    @classmethod
    def rest_of(cls, file: SealedFile) -> FilePart:
        """The range from ``file``'s position to its end.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryFile() as f:
            ...     _ = f.write(b"abcdef"); _ = f.seek(2)
            ...     part = FilePart.rest_of(SealedFile.of(f))
            ...     part.offset, len(part)
            (2, 4)
        """
        position = file.tell()
        return cls(file.fd, file.start + position, file.seek(0, io.SEEK_END) - position)

    def body(self, skip: int = 0) -> BinaryIO:
        """A new stream of the part from byte ``skip`` on, one per request.

        A retry reads the part again from the file. ``len()`` of the stream is what it will
        send, so an HTTP client can declare the length without reading it first.
        """
        raw = SealedFile(self.fd, self.offset + skip, self.length - skip)
        return cast(BinaryIO, _PartBody(raw, _PART_READ))


Part = bytearray | FilePart  # what a PartUpload sends: a lent buffer or a sealed file's range


class _PartBody(io.BufferedReader):
    """A buffered :class:`SealedFile` that still tells its length (HTTP clients ask ``len``).

    HTTP clients read a body 8-16 KiB at a time: buffered in C, that is one ``pread`` per
    256 KiB instead of a Python call and a ``pread`` per block.
    """

    def __len__(self) -> int:
        return len(cast("SealedFile", self.raw))


class FileParts:
    """A :class:`~optuna_cas.backends.base.SealedFile`'s rest as parts that are ranges of it.

    The same contract as :class:`PartReader` (every part full but the last, which may be
    empty; :attr:`eof` set with it) with no buffers: each part is read from the file while it
    is sent, so memory does not depend on part size or concurrency.

    Example:
        >>> import tempfile
        >>> from optuna_cas.backends.base import SealedFile
        >>> with tempfile.TemporaryFile() as f:
        ...     _ = f.write(b"abcdefg"); _ = f.seek(0)
        ...     parts = FileParts(SealedFile.of(f), 3)
        ...     [(p.offset, len(p)) for p in (parts.next(), parts.next(), parts.next())]
        [(0, 3), (3, 3), (6, 1)]
    """

    def __init__(self, file: SealedFile, part_size: int) -> None:
        self._fd = file.fd
        self._position = file.start + file.tell()
        self._end = file.start + file.seek(0, io.SEEK_END)  # read to the end, like a stream
        self._part_size = part_size
        self.eof = False

    def next(self) -> FilePart:
        """The next range; short (possibly empty) only at the end."""
        length = max(min(self._part_size, self._end - self._position), 0)
        part = FilePart(self._fd, self._position, length)
        self._position += length
        self.eof = length < self._part_size
        return part

    def release(self, part: Part) -> None:
        """Nothing to give back."""

    def __enter__(self) -> FileParts:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def part_threads(concurrency: int) -> ThreadPoolExecutor | None:
    """Threads to send parts on, for :class:`PartSender`; none for one part at a time.

    Example:
        >>> part_threads(1) is None, part_threads(4)._max_workers
        (True, 4)
    """
    if concurrency == 1:
        return None
    return ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="optuna-cas-upload")


class PartSender:
    """Sends one upload's parts on ``threads``, holding at most ``concurrency`` in memory.

    Without threads parts go out in order on the calling thread (GCS needs order). The threads
    (:func:`part_threads`) may serve several uploads at once: their parts then take turns, and
    the threads, each keeping some memory for its requests, stay as many as one upload uses.

    Example:
        >>> sent = []
        >>> with PartSender(2, part_threads(2)) as sender:
        ...     for n in range(3):
        ...         sender.submit(lambda n=n: sent.append(n))
        ...     sender.drain()
        >>> sorted(sent)
        [0, 1, 2]
    """

    def __init__(self, concurrency: int, threads: Executor | None) -> None:
        self._concurrency = concurrency
        self._pool = threads
        self._pending: set[Future[object]] = set()

    def __enter__(self) -> PartSender:
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self._pending:
            future.cancel()
        # Parts read the caller's stream: none may still run once its upload is over.
        wait(self._pending)

    def submit(self, send: Callable[[], object]) -> None:
        """Send one part; returns once fewer than ``concurrency`` parts are in flight."""
        if self._pool is None:
            send()
            return
        self._pending.add(self._pool.submit(send))
        # Wait *before* the caller reads the next part, so buffered parts stay within bounds.
        while len(self._pending) >= self._concurrency:
            done, self._pending = wait(self._pending, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # re-raises the part's (translated) error

    def drain(self) -> None:
        """Wait for every part in flight; raise the first failure."""
        done, self._pending = wait(self._pending)
        for future in done:
            future.result()


class Body(Protocol):
    """A response body as an adapter hands it over: fills buffers, then gets closed."""

    def readinto(self, buffer: memoryview) -> int:
        """Fill (a prefix of) ``buffer``; 0 only at the end of the body."""
        ...

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end) in a new object; b"" at the end.

        botocore's bodies hand over the bytes the socket was read into; their ``readinto``
        reads those same bytes and copies them (urllib3).
        """
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@dataclass
class Download:
    """One opened read of an object: its body from some offset, and the object's whole size.

    Example:
        >>> Download(body=io.BytesIO(b"xyz"), size=3).size
        3
    """

    body: Body
    size: int


class ObjectReader(RawReader):
    """A remote object as a seekable raw stream that never mistakes a cut body for EOF.

    Args:
        first: The download opened by ``open_reader`` (so a missing key fails there).
        offset: Where ``first`` starts.
        stop: Where a bounded read ends (exclusive; ``None``: the object's end). The reader
            yields nothing past it and seeks only within ``[offset, stop]``
            (:class:`~optuna_cas.backends.window.Window`).
        reopen: Opens the object again at a byte offset, up to the same ``stop`` (after a
            seek).
        guard: A context manager that translates SDK errors raised while reading.
        name: For messages, e.g. ``"s3://bucket key 'refs/a'"``.

    Example:
        >>> from contextlib import nullcontext
        >>> def reopen(at):
        ...     return Download(io.BytesIO(b"hello"[at:]), 5)
        >>> reader = ObjectReader(reopen(1), 1, reopen=reopen, guard=nullcontext, name="x")
        >>> reader.readall(), reader.seek(-2, io.SEEK_END), reader.readall()
        (b'ello', 3, b'lo')
        >>> def reopen_window(at):  # what a server sends for the range [at, 4)
        ...     return Download(io.BytesIO(b"hello"[at:4]), 5)
        >>> window = ObjectReader(
        ...     reopen_window(1), 1, stop=4, reopen=reopen_window, guard=nullcontext, name="x"
        ... )
        >>> window.readall(), window.seek(-1, io.SEEK_END), window.readall()
        (b'ell', 3, b'l')
    """

    def __init__(
        self,
        first: Download,
        offset: int,
        *,
        stop: int | None = None,
        reopen: Callable[[int], Download],
        guard: Callable[[], AbstractContextManager[object]],
        name: str,
    ) -> None:
        super().__init__()
        self._current: Download | None = first
        self._size = first.size
        self._window = Window(offset, stop)
        self._pos = offset
        self._reopen = reopen
        self._guard = guard
        self._name = name

    def seekable(self) -> bool:
        """Always True: a seek closes the body and the next read opens one at the new place."""
        return True

    def tell(self) -> int:
        """The current position."""
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``pos`` (relative to ``whence``); the next read starts a request there."""
        target = self._window.seek(pos, whence, current=self._pos, size=self._size)
        if target != self._pos:
            self._drop_body()
            self._pos = target
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Fill a prefix of ``buffer``; 0 only at the end of the object."""
        with memoryview(buffer) as raw, raw.cast("B") as view:
            body, wanted = self._body(len(view))
            if body is None:
                return 0
            with self._guard():
                count = body.readinto(view[:wanted])
        return self._advance(count)

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all the rest if negative), as the body hands them over.

        Unlike ``readinto``, no copy: a chunked read takes its blocks from here.

        Example:
            >>> from contextlib import nullcontext
            >>> body = lambda at: Download(io.BytesIO(b"hello"[at:]), 5)
            >>> ObjectReader(body(0), 0, reopen=body, guard=nullcontext, name="x").read(3)
            b'hel'
        """
        if size is None or size < 0:
            return self.readall()
        body, wanted = self._body(size)
        if body is None:
            return b""
        with self._guard():
            data = body.read(wanted)
        self._advance(len(data))
        return data

    def _body(self, size: int) -> tuple[Body | None, int]:
        """The body to read from (opened if a seek dropped it) and how much of ``size``."""
        self._checkClosed()
        if self._current is None and self._pos < self._window.end(self._size):
            self._current = self._reopen(self._pos)
            self._size = self._current.size
        wanted = min(size, self._window.end(self._size) - self._pos)
        if wanted <= 0 or self._current is None:
            return None, 0
        return self._current.body, wanted

    def _advance(self, count: int) -> int:
        if not count:
            # The body ended before the object (or window) did: a cut connection, never EOF.
            raise TransientBackendError(
                f"{self._name}: connection ended at byte {self._pos} of "
                f"{self._window.end(self._size)}"
            )
        self._pos += count
        return count

    def readall(self) -> bytes:
        """The rest of the object or window in one buffer (RawIOBase would go 8 KiB at a time)."""
        out = bytearray(max(self._window.end(self._size) - self._pos, 0))
        with memoryview(out) as view:
            done = 0
            while done < len(out):
                count = self.readinto(view[done:])
                if not count:
                    break
                done += count
        del out[done:]
        return bytes(out)

    def close(self) -> None:
        """Release the connection of the body being read, if any."""
        if not self.closed:
            self._drop_body()
        super().close()

    def _drop_body(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.body.close()
