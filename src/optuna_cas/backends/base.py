"""The backend protocol: keys and bytes, nothing else.

A backend stores opaque byte strings under ``/``-separated keys. It never hashes, never parses
what it stores, and never leaves a partially written object visible. Everything
content-addressed lives one layer up, in :mod:`optuna_cas.content`.

Method names follow Optuna's store protocol (``open_reader``/``write``/``remove``) so that the
same middleware (:class:`~optuna_cas.Backoff`) can wrap either kind of object.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar, runtime_checkable

from optuna_cas.digest import RawReader
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "Backend",
    "ObjectInfo",
    "RequestRunner",
    "SealedFile",
    "StagedObject",
    "SupportsConditionalRemove",
    "SupportsMove",
    "SupportsRequestRunner",
    "SupportsStaging",
    "SupportsTempFiles",
    "move_aside",
    "mover_of",
    "read_at_most",
    "remove_if_unchanged",
    "run_once",
    "staging_of",
    "temp_files_of",
]

_T = TypeVar("_T")
_PIECE = 64 * 1024  # read_at_most's read size


class SealedFile(RawReader):
    """Bytes of a private file that stay as they are until the ``write`` given them returns.

    Bytes ``[start, start + length)`` of the file. A plain stream to any backend (positions
    count from ``start``; ``len()`` is ``length``); a remote one may send its ranges straight
    from the file (each part read as it goes out, and again on a retry) instead of reading it
    into part buffers first. Only for files nobody else can change: the pack writer's
    unlinked spool files, whose digest it checked just before. Read with ``pread``, never
    mapped; a file found shorter than promised is an error, never a short object.

    Args:
        fd: The file's descriptor (it stays the caller's to close).
        start: Where the bytes start in the file.
        length: How many there are.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as f:
        ...     _ = f.write(b"xhello"); _ = f.seek(1)
        ...     sealed = SealedFile.of(f)
        ...     sealed.read(), sealed.tell(), len(sealed), sealed.start
        (b'hello', 5, 5, 1)
    """

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self.fd, self.start, self._length, self._position = fd, start, length, 0

    @classmethod
    def of(cls, file: io.IOBase | BinaryIO) -> SealedFile:
        """``file`` from its position to its size now (its buffered writes flushed first)."""
        file.flush()
        start = file.tell()
        return cls(file.fileno(), start, max(os.fstat(file.fileno()).st_size - start, 0))

    def __len__(self) -> int:
        return self._length

    def seekable(self) -> bool:
        """Always true."""
        return True

    def tell(self) -> int:
        """The position, counted from ``start``."""
        return self._position

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        """Move like a file whose end is ``length``."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(base + pos, 0)
        return self._position

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read at the position, never past ``length``."""
        with memoryview(buffer) as whole:
            view = whole.cast("B")
            want = min(len(view), self._length - self._position)
            if want <= 0:
                return 0
            count = os.preadv(self.fd, [view[:want]], self.start + self._position)
        if not count:
            raise OSError(
                f"sealed file ended early: byte {self._position} of {self._length} "
                f"(from {self.start}) is gone"
            )
        self._position += count
        return count


class RequestRunner(Protocol):
    """Runs one network request, e.g. retrying it: ``runner("upload part 3 of k", send)``.

    Backends whose operations take several requests (a multipart or resumable upload) expose
    ``with_request_runner(runner) -> Backend``: a copy that sends *every* request of every
    operation through ``runner``. :class:`~optuna_cas.Backoff` uses it so that a fault retries
    one part, not a whole upload (0.7**7 odds of a clean 7-request upload at 30% faults).
    """

    def __call__(self, description: str, request: Callable[[], _T], /) -> _T:
        """Run ``request`` (described for logs) and return its result."""
        ...


def run_once(description: str, request: Callable[[], _T]) -> _T:
    """The default runner: send the request once.

    Example:
        >>> run_once("noop", lambda: 42)
        42
    """
    return request()


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about one stored object.

    Attributes:
        key: The object's key, relative to the backend's root/prefix.
        size: Its length in bytes.
        modified: Last-modified time as seconds since the epoch (UTC).
        changed: When the object last changed in any way, where the backend knows it (a local
            file's ctime; ``stat`` only): unlike ``modified``, no user can set it back, so a
            write whose author restored the mtime still shows here. Not compared.

    Example:
        >>> ObjectInfo(key="refs/x", size=3, modified=0.0).size
        3
    """

    key: str
    size: int
    modified: float
    changed: float | None = field(default=None, compare=False)


@runtime_checkable
class Backend(Protocol):
    """A flat key → bytes store.

    Contract (the conformance suite checks every implementation against it):

    * ``open_reader`` returns a readable binary stream positioned at ``offset``; a missing key
      raises :class:`~optuna_cas.exceptions.ArtifactNotFound`. With ``length`` the stream
      yields at most ``length`` bytes (fewer only at the object's end), and a remote backend
      asks its server for exactly that window, never the rest of the object. Positions stay
      the object's; a seekable bounded stream seeks only within ``[offset, offset + length]``
      and ``SEEK_END`` counts from the end of the window (:mod:`optuna_cas.backends.window`).
      A negative ``offset`` or ``length`` raises ``ValueError`` before any I/O.
    * ``write`` reads ``content_body`` from its *current* position to EOF and stores it
      atomically: readers see the old object, no object, or the whole new one. It never closes
      ``content_body``. With ``if_absent=True`` an existing object is left untouched (no error).
    * ``remove`` deletes; a missing key raises ``ArtifactNotFound``.
    * ``list(prefix)`` yields every object whose key starts with ``prefix`` (no order promised).
    * ``touch(key)`` sets the object's modification time to now without changing its bytes
      (garbage collection spares recently touched blobs; see :func:`optuna_cas.gc`).
    * Keys are validated with :func:`optuna_cas._validation.validate_key` before any I/O.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> isinstance(MemoryBackend(), Backend)
        True
    """

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        """Open ``key`` for reading from byte ``offset``, up to ``length`` bytes (None: all)."""
        ...

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        """Store the rest of ``content_body`` under ``key`` atomically."""
        ...

    def remove(self, key: str) -> None:
        """Delete ``key``."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``."""
        ...

    def touch(self, key: str) -> None:
        """Set the modification time of ``key`` to now."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``."""
        ...

    def describe(self) -> str:
        """A short URL-like name for messages, e.g. ``s3://bucket/prefix``."""
        ...


class StagedObject(Protocol):
    """A private temp file a backend will publish under a key (see :class:`SupportsStaging`)."""

    fd: int

    def commit(self, key: str) -> None:
        """Publish the file's bytes under ``key`` atomically (replacing what is there)."""
        ...

    def commit_new(self, key: str) -> ObjectInfo | None:
        """Publish under ``key`` unless an object is stored there; else return its info.

        When an object is returned nothing was published and the file is still staged: the
        caller discards it or, to repair a bad object, commits it over that one.
        """
        ...

    def still_published(self, size: int) -> bool:
        """After this object published its file: whether ``size`` bytes are still stored there.

        One look at the very path of the publish (a concurrent gc may have removed it since).
        False also when nothing was published; callers then make the full check.
        """
        ...

    def discard(self) -> None:
        """Drop the file; a no-op after :meth:`commit`."""
        ...


@runtime_checkable
class SupportsStaging(Protocol):
    """A backend that can hand out a private temp file on its own file system.

    The content store copies a source into it while hashing the copy, then commits it under
    the digest's key: one copy, and the digest is of exactly the bytes stored.

    Example:
        >>> import tempfile
        >>> from optuna_cas.backends.local import LocalBackend
        >>> isinstance(LocalBackend(tempfile.mkdtemp()), SupportsStaging)
        True
    """

    def stage(self, area: str) -> StagedObject:
        """A new, empty temp file below ``area``."""
        ...


@runtime_checkable
class SupportsRequestRunner(Protocol):
    """A backend whose operations take several requests and can run each through a runner.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> isinstance(MemoryBackend(), SupportsRequestRunner)
        False
    """

    def with_request_runner(self, runner: RequestRunner) -> Backend:
        """A copy that sends every request of every operation through ``runner``."""
        ...


@runtime_checkable
class SupportsTempFiles(Protocol):
    """A backend that can leave temp files behind when a writer dies (gc removes them).

    Example:
        >>> import tempfile
        >>> from optuna_cas.backends.local import LocalBackend
        >>> isinstance(LocalBackend(tempfile.mkdtemp()), SupportsTempFiles)
        True
    """

    def list_temporary(self) -> Iterator[ObjectInfo]:
        """Temp files of interrupted writes."""
        ...

    def remove_temporary(self, key: str) -> None:
        """Delete one temp file named by :meth:`list_temporary`."""
        ...


@runtime_checkable
class SupportsConditionalRemove(Protocol):
    """A backend that can delete an object only if it is still the one a listing described.

    gc decides from a listing and a last look; an upload may re-use (touch or re-publish) the
    blob between that look and the delete. A conditional delete closes that window.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> isinstance(MemoryBackend(), SupportsConditionalRemove)
        True
    """

    def remove_if_unchanged(self, key: str, seen: ObjectInfo) -> bool:
        """Delete ``key`` if its size and time are still ``seen``'s; True if deleted."""
        ...


@runtime_checkable
class SupportsMove(Protocol):
    """A backend that can give an object another key without copying its bytes (a rename).

    verify's quarantine moves corrupt objects aside with it: a copy writes out every hole of a
    sparse file planted at a key (2 GiB of disk for one holding 9 MiB), and doubles what a
    huge object costs while it runs.

    Example:
        >>> import tempfile
        >>> from optuna_cas.backends.local import LocalBackend
        >>> isinstance(LocalBackend(tempfile.mkdtemp()), SupportsMove)
        True
    """

    def move(self, key: str, new_key: str) -> None:
        """Give the object at ``key`` the key ``new_key`` (replacing what is there).

        Raises:
            ArtifactNotFound: Nothing is stored at ``key``.
            IntegrityError: What sits at ``key`` is no stored object (a FIFO, say).
            InvalidKeyError: ``new_key`` leads outside the store.
            OSError: The rename failed (e.g. ``EXDEV`` across file systems); nothing moved.
        """
        ...


@runtime_checkable
class _Decorator(Protocol):
    @property
    def inner(self) -> Backend: ...


def _layers(backend: object) -> Iterator[object]:
    """``backend``, then each backend a decorator (retries, say) wraps, innermost last."""
    current = backend
    yield current
    while isinstance(current, _Decorator):
        current = current.inner
        yield current


def innermost(backend: object) -> object:
    """The backend under every decorator (retries, say) that wraps ``backend``.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> backend = MemoryBackend()
        >>> innermost(backend) is backend
        True
    """
    *_, inner = _layers(backend)
    return inner


def staging_of(backend: object) -> SupportsStaging | None:
    """The layer of ``backend`` that can stage files, if any (also behind retries).

    Capabilities are typed Protocols; wrappers are plain decorators exposing ``inner``, so a
    local backend behind retries still offers staging and temp-file cleanup.

    Example:
        >>> import tempfile
        >>> from optuna_cas.backends.local import LocalBackend
        >>> staging_of(LocalBackend(tempfile.mkdtemp())) is not None
        True
    """
    return next((b for b in _layers(backend) if isinstance(b, SupportsStaging)), None)


def mover_of(backend: object) -> SupportsMove | None:
    """The layer of ``backend`` that can move objects without copying, if any.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> mover_of(MemoryBackend()) is None
        True
    """
    return next((b for b in _layers(backend) if isinstance(b, SupportsMove)), None)


def remove_if_unchanged(backend: Backend, seen: ObjectInfo) -> bool:
    """Delete ``seen.key`` only if it is still as ``seen`` describes it; True if deleted.

    This is gc's delete: an upload that re-used the object since gc's last look wins. Where
    no layer of ``backend`` can do that atomically (S3) the object is deleted
    unconditionally: the residual window documented in :mod:`optuna_cas.operations.gc`.

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> b = MemoryBackend(); b.write("k", io.BytesIO(b"x")); (info,) = b.list("")
        >>> remove_if_unchanged(b, info), remove_if_unchanged(b, info)
        (True, False)
    """
    layers = (b for b in _layers(backend) if isinstance(b, SupportsConditionalRemove))
    remover = next(layers, None)
    if remover is not None:
        return remover.remove_if_unchanged(seen.key, seen)
    try:
        backend.remove(seen.key)
    except ArtifactNotFound:
        return False
    return True


def move_aside(backend: Backend, key: str, prefix: str, *, limit: int | None = None) -> int:
    """Move the object at ``key`` to ``prefix + key`` (verify's quarantine); no-op if gone.

    A backend that can rename (:class:`SupportsMove`: a local store) renames: no byte is
    copied, so a sparse file planted at the key takes no more disk under ``prefix`` than it
    did. Any other backend copies, then removes; then an object longer than ``limit`` (the
    largest a key of its kind can legitimately hold, e.g. a pack) keeps only its first
    ``limit`` bytes: everything a good object of that kind could hold, while a planted
    terabyte costs no more than ``limit`` to set aside. A FIFO, socket or device at ``key``
    holds no bytes to keep: it is just removed.

    Returns:
        How many bytes past ``limit`` were not kept (0 when the object moved whole).

    Raises:
        InvalidKeyError: ``prefix + key`` leads outside the store (nothing was moved).

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> b = MemoryBackend(); b.write("k", io.BytesIO(b"xyz")); move_aside(b, "k", "q/", limit=2)
        1
        >>> [(info.key, info.size) for info in b.list("")]
        [('q/k', 2)]
    """
    mover = mover_of(backend)
    with contextlib.suppress(ArtifactNotFound):
        if mover is not None:
            try:
                mover.move(key, prefix + key)
                return 0
            except IntegrityError:
                backend.remove(key)
                return 0
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                # Across file systems (a mount inside the store): copy, bounded as below.
        try:
            reader = backend.open_reader(key)
        except IntegrityError:
            backend.remove(key)
            return 0
        with contextlib.ExitStack() as stack:
            stack.enter_context(reader)
            dropped = 0
            if limit is not None and (size := backend.stat(key).size) > limit:
                reader = stack.enter_context(backend.open_reader(key, length=limit))
                dropped = size - limit
            backend.write(prefix + key, reader)
        try:
            backend.remove(key)
        except ArtifactNotFound:
            raise
        except Exception as e:  # a role that may copy but not delete: say what is where
            try:
                backend.stat(key)  # still there? (a lost answer may hide a delete that acted)
                backend.remove(prefix + key)  # then the copy is not the only one
            except Exception:
                e.add_note(f"A copy of {key!r} is left at {prefix + key!r}.")
            raise
        return dropped
    return 0


def temp_files_of(backend: object) -> SupportsTempFiles | None:
    """The layer of ``backend`` that can leave temp files behind, if any.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> temp_files_of(MemoryBackend()) is None
        True
    """
    return next((b for b in _layers(backend) if isinstance(b, SupportsTempFiles)), None)


def read_at_most(backend: Backend, key: str, limit: int) -> bytes:
    """The object at ``key``, or its first ``limit + 1`` bytes if it is longer than ``limit``.

    For records with a size bound (refs, manifests): one byte too many tells the caller the
    object is too large. Read in pieces, so a small object costs a small buffer: a single
    ``read(limit + 1)`` would allocate the whole bound up front.

    Raises:
        ArtifactNotFound: No such object.

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> b = MemoryBackend(); b.write("k", io.BytesIO(b"abcdef"))
        >>> read_at_most(b, "k", 100), read_at_most(b, "k", 3)
        (b'abcdef', b'abcd')
    """
    data = bytearray()
    with backend.open_reader(key) as reader:
        while len(data) <= limit and (piece := reader.read(min(_PIECE, limit + 1 - len(data)))):
            data += piece
    return bytes(data)
