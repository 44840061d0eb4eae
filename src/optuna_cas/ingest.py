"""Reading a caller's source into bytes we own, hashing exactly what we store.

The content store's ingest rules (DESIGN.md invariants 10, 11 and 13):

* **Hash what you store.** A digest comes from the bytes as they are written (the buffer that
  goes to our own temp file, or the stream verified on its way to the backend), never from a
  separate read that might see other bytes. So a blob always matches its key. The one upload
  that stores no bytes, a re-saved large file recognised as a dedup hit (see
  :func:`fingerprint`), records the digest of the bytes it read from the file, which the
  identity re-check after reading proves were the file's, and which names a blob this process
  knew to hold exactly those bytes.
* **Never map a file you do not own.** A training loop truncates ``model.pt`` before it writes
  it again; a memory map of it would kill the process with SIGBUS. Callers' files are read with
  ``pread`` or copied in the kernel; only our own temp copies are memory-mapped for hashing.
* **Read to EOF.** A pseudo-file whose size says 0 (``/proc/self/mountinfo``) has content: the
  size is a hint, never a bound.
* **Refuse what is not a file.** FIFOs, devices, sockets and directories are refused before a
  byte is read (a FIFO blocks forever; ``/dev/zero`` never ends).
* **A source that changed while it was read is an error.** Its identity (device, inode, size,
  mtime, ctime: any write or truncation changes ctime, which user code cannot set back) is
  compared before and after; a change raises :class:`~optuna_cas.exceptions.IntegrityError`
  naming the file, and the caller records nothing for it.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, BinaryIO

import blake3

from optuna_cas._fileio import kernel_copy, open_regular_file_stat, pwrite_all, real_fileno
from optuna_cas._forksafe import ForkSafeLock
from optuna_cas._verified_copy import OVERLAP_MIN_BYTES, hash_behind_copy
from optuna_cas.digest import CHUNK_SIZE, Digest, hash_fd, new_blake3, readinto
from optuna_cas.exceptions import IntegrityError

if TYPE_CHECKING:
    from optuna_cas.backends.base import StagedObject

__all__ = [
    "FileDigestMemo",
    "FileSource",
    "PublishReceipt",
    "copy_hashing",
    "copy_stream_hashing",
    "fingerprint",
    "hash_in_place",
]

# The user-space loop's buffer: 1 MiB measured as fast as any size here for hash + copy.
_BUFFER_BYTES = CHUNK_SIZE
# Files at least this large get a content fingerprint (see fingerprint()); below it a copy
# costs little more than the hash pass a fingerprint can save.
FINGERPRINT_MIN_BYTES = OVERLAP_MIN_BYTES
_FINGERPRINT_WINDOWS = 32
_FINGERPRINT_WINDOW_BYTES = 4096
# hash_in_place's read-ahead: this many buffers of _BUFFER_BYTES in flight.
_READ_AHEAD_BUFFERS = 3
# ... but a small file gets a buffer its size (plus one byte, to see EOF): zeroing a fresh 1 MiB
# buffer (~20 us, more on this VM's first touch of memory) cost more than copying and hashing a
# 4 KiB file, and a 64 KiB one still ~1 us. A file that says it is empty starts with this:
_MIN_BUFFER_BYTES = 64 * 1024


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileSource:
    """A regular file being uploaded: a descriptor, where the content starts, its identity.

    Args:
        fd: A readable descriptor of a regular file.
        start: Offset of the first byte to upload.
        name: For messages (the path, or the stream's name).
        owned: Close ``fd`` in :meth:`close`.
        before: ``fstat(fd)`` if the caller has just taken it (saves taking it again).

    Example:
        >>> import tempfile
        >>> f = tempfile.NamedTemporaryFile(); _ = f.write(b"abc"); f.flush()
        >>> with FileSource.open(f.name) as src:
        ...     src.size_hint
        3
    """

    def __init__(
        self, fd: int, start: int, name: str, *, owned: bool, before: os.stat_result | None = None
    ) -> None:
        self.fd = fd
        self.start = start
        self.name = name
        self._owned = owned
        self.before = os.fstat(fd) if before is None else before

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FileSource:
        """Open a path (regular files only; see :func:`optuna_cas._fileio.open_regular_file`).

        Example:
            >>> FileSource.open("/nonexistent/x")
            Traceback (most recent call last):
            ...
            FileNotFoundError: [Errno 2] No such file to upload: '/nonexistent/x'
        """
        fd, st = open_regular_file_stat(path)
        return cls(fd, 0, os.fspath(path), owned=True, before=st)

    @classmethod
    def of_stream(cls, stream: BinaryIO) -> FileSource | None:
        """The regular file behind an open stream, from the stream's position; else None.

        Example:
            >>> import io
            >>> FileSource.of_stream(io.BytesIO(b"x")) is None
            True
        """
        fd = real_fileno(stream)
        if fd is None:
            return None
        return cls(fd, stream.tell(), str(getattr(stream, "name", "<stream>")), owned=False)

    @property
    def size_hint(self) -> int:
        """Bytes the file's size promises from ``start`` (pseudo-files may hold more).

        Example:
            >>> import tempfile
            >>> f = tempfile.TemporaryFile(); _ = f.write(b"abcd"); f.flush()
            >>> FileSource(f.fileno(), 1, "f", owned=False).size_hint
            3
        """
        return max(self.before.st_size - self.start, 0)

    def check_unchanged(self) -> None:
        """Raise ``IntegrityError`` naming the file if it changed since it was opened.

        Example:
            >>> import tempfile
            >>> f = tempfile.TemporaryFile(); _ = f.write(b"a"); f.flush()
            >>> src = FileSource(f.fileno(), 0, "model.pt", owned=False)
            >>> _ = f.write(b"b"); f.flush()
            >>> src.check_unchanged()
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.IntegrityError: File 'model.pt' changed while it was being uploaded (size 1 -> 2); ...
        """
        after = os.fstat(self.fd)
        if _identity(after) != _identity(self.before):
            change = (
                f"size {self.before.st_size} -> {after.st_size}"
                if after.st_size != self.before.st_size
                else "rewritten"
                if after.st_ino == self.before.st_ino
                else "replaced"
            )
            raise IntegrityError(
                f"File {self.name!r} changed while it was being uploaded ({change}); nothing "
                "was stored for it: retry once it is written"
            )

    def close(self) -> None:
        """Close the descriptor if this object opened it."""
        if self._owned and self.fd >= 0:
            # Forgotten before it is closed: a KeyboardInterrupt as close returned made a
            # second call close the number again, maybe another thread's new descriptor.
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FileDigestMemo:
    """Digests of files this process stored, keyed by what changes whenever a file does.

    (device, inode, size, mtime_ns, ctime_ns) changes on every write (ctime cannot be set back
    by user code), so a hit means the same bytes: git's index and dvc's state db rely on the
    same fact. Like git ("racy git") only files whose ctime was at least ``settled_ns`` old when
    the copy began are remembered, since a write within one timestamp tick would not change it.
    Re-uploading an unchanged file then costs a stat and an existence check.

    It also remembers, per store, which content a large file's :func:`fingerprint` last named
    there and the state of the stored object then (:meth:`likely`, :meth:`remember_stored`), so
    that a file saved again with the same bytes (new inode) is hashed in place, not copied.

    Args:
        capacity: Entries kept of each kind (oldest forgotten first).
        settled_ns: How old a file's ctime must be to be remembered.

    Example:
        >>> import os, tempfile
        >>> memo = FileDigestMemo()
        >>> st = os.stat(tempfile.mkdtemp())
        >>> memo.remember(st, Digest.of_bytes(b""), st.st_ctime_ns + 10**10)
        >>> memo.get(st) == Digest.of_bytes(b"")
        True
    """

    def __init__(self, *, capacity: int = 4096, settled_ns: int = 2_000_000_000) -> None:
        self._capacity = capacity
        self._settled_ns = settled_ns
        self._entries: dict[tuple[int, ...], Digest] = {}
        # (store, fingerprint) -> (digest, the stored object's state when it was known good).
        self._contents: collections.OrderedDict[tuple[str, bytes], tuple[Digest, Hashable]] = (
            collections.OrderedDict()
        )
        # A fork while another thread holds the lock would leave the child's copy locked.
        self._lock = ForkSafeLock()

    def get(self, st: os.stat_result) -> Digest | None:
        """The digest remembered for this file identity, if any."""
        with self._lock:
            return self._entries.get(_identity(st))

    def remember(self, st: os.stat_result, digest: Digest, copy_started_ns: int) -> None:
        """Remember ``digest`` for the file whose identity before the copy was ``st``."""
        if copy_started_ns - st.st_ctime_ns < self._settled_ns:
            return
        with self._lock:
            if len(self._entries) >= self._capacity:
                self._entries.pop(next(iter(self._entries)))
            self._entries[_identity(st)] = digest

    def clear(self) -> None:
        """Forget everything.

        Example:
            >>> FileDigestMemo().clear()
        """
        with self._lock:
            self._entries.clear()
            self._contents.clear()

    def likely(self, store: str, fingerprint: bytes) -> tuple[Digest, Hashable] | None:
        """The content last stored in ``store`` whose fingerprint was ``fingerprint``, if any.

        Returns the digest and the stored object's state (as given to :meth:`remember_stored`)
        when this process last knew it held exactly those bytes. A hint, never a proof: the
        caller hashes the whole file before relying on it (see :func:`fingerprint`).

        Example:
            >>> memo = FileDigestMemo(); d = Digest.of_bytes(b"x")
            >>> memo.remember_stored("file:///s", b"fp", d, (1, 0.5))
            >>> memo.likely("file:///s", b"fp") == (d, (1, 0.5)), memo.likely("file:///t", b"fp")
            (True, None)
        """
        with self._lock:
            found = self._contents.get((store, fingerprint))
            if found is not None:
                self._contents.move_to_end((store, fingerprint))
            return found

    def remember_stored(
        self, store: str, fingerprint: bytes, digest: Digest, state: Hashable
    ) -> None:
        """Remember that ``store`` holds ``digest`` (fingerprint ``fingerprint``), in ``state``.

        Call it only when the stored bytes are known to be ``digest``'s: just written from a
        verified copy, or just compared. ``state`` (size and modification time, say) lets a
        later upload see whether the stored object changed since.
        """
        with self._lock:
            self._contents[(store, fingerprint)] = (digest, state)
            self._contents.move_to_end((store, fingerprint))
            while len(self._contents) > self._capacity:
                self._contents.popitem(last=False)


def fingerprint(src: FileSource) -> bytes | None:
    """A cheap guess at a large file's content: 32 windows of 4 KiB spread over it, and its size.

    Lets an upload recognise a file saved again with the same bytes (a new inode and mtime, as
    ``torch.save`` leaves it, so :class:`FileDigestMemo` misses) before it copies anything.
    Reads about 128 KiB with ``pread`` (never a map). Only a hint: files that differ outside
    the windows have equal fingerprints, so the caller hashes the whole file before trusting
    the content a fingerprint names. None for files smaller than ``FINGERPRINT_MIN_BYTES``.

    Example:
        >>> import tempfile
        >>> f = tempfile.TemporaryFile(); _ = f.write(bytes(FINGERPRINT_MIN_BYTES)); f.flush()
        >>> len(fingerprint(FileSource(f.fileno(), 0, "f", owned=False)))
        32
        >>> fingerprint(FileSource(f.fileno(), 1, "f", owned=False)) is None
        True
    """
    size = src.size_hint
    if size < FINGERPRINT_MIN_BYTES:
        return None
    hasher = blake3.blake3(size.to_bytes(8, "little"))
    last = size - _FINGERPRINT_WINDOW_BYTES
    for i in range(_FINGERPRINT_WINDOWS):
        offset = src.start + last * i // (_FINGERPRINT_WINDOWS - 1)
        hasher.update(os.pread(src.fd, _FINGERPRINT_WINDOW_BYTES, offset))
    return hasher.digest()


def hash_in_place(src: FileSource) -> Digest:
    """Hash a caller's file from ``src.start`` to EOF where it lies, reading ahead on a thread.

    ``pread`` only (a map of a file someone can truncate turns into SIGBUS). A helper thread
    reads the next buffers while this one hashes (both release the GIL): measured here ~25%
    faster than reading and hashing in turn. Memory: three 1 MiB buffers. The digest is of
    exactly the bytes read; the caller re-checks the file's identity afterwards.

    Example:
        >>> import tempfile
        >>> f = tempfile.TemporaryFile(); _ = f.write(b"xhello"); f.flush()
        >>> hash_in_place(FileSource(f.fileno(), 1, "f", owned=False)) == Digest.of_bytes(b"hello")
        True
    """
    if src.size_hint < OVERLAP_MIN_BYTES:
        return hash_fd(src.fd, src.start)
    hasher = new_blake3(src.size_hint)
    free: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[memoryview, int] | BaseException] = queue.SimpleQueue()
    for _ in range(_READ_AHEAD_BUFFERS):
        free.put(memoryview(bytearray(_BUFFER_BYTES)))

    def read_ahead() -> None:
        offset = src.start
        try:
            while (view := free.get()) is not None:
                n = os.preadv(src.fd, [view], offset)
                full.put((view, n))
                if not n:
                    return
                offset += n
        except BaseException as e:  # re-raised on the hashing thread
            full.put(e)

    thread = threading.Thread(target=read_ahead, name="optuna-cas-read", daemon=True)
    thread.start()
    size = 0
    try:
        while True:
            item = full.get()
            if isinstance(item, BaseException):
                raise item
            view, n = item
            if not n:
                break
            hasher.update(view[:n])
            size += n
            free.put(view)
    finally:
        free.put(None)  # stops the reader if this thread failed first
        thread.join()
    return Digest.computed(hasher.hexdigest(), size)


def copy_hashing(src_fd: int, src_start: int, out_fd: int, size_hint: int) -> Digest:
    """Copy a file from ``src_start`` to EOF into ``out_fd`` (ours, from offset 0); hash the copy.

    Large files are copied in the kernel on a helper thread while this thread hashes what has
    already landed in ``out_fd`` through a memory map (ours: nobody truncates it), so a fresh
    upload costs about one copy. Small files, pseudo-files (size 0) and file systems the kernel
    will not copy between use one loop that writes and hashes the same buffer. Either way the
    digest is of the bytes in ``out_fd``.

    Args:
        src_fd: The source (read with explicit offsets; never mapped).
        src_start: First byte to copy.
        out_fd: Our own file, open for reading and writing.
        size_hint: The size the source claims from ``src_start`` (picks the strategy).

    Returns:
        The digest and size of what was written.

    Example:
        >>> import tempfile
        >>> src, out = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        >>> _ = src.write(b"hello"); src.flush()
        >>> copy_hashing(src.fileno(), 0, out.fileno(), 5) == Digest.of_bytes(b"hello")
        True
    """
    hasher = new_blake3(size_hint)
    copied = 0
    if size_hint >= OVERLAP_MIN_BYTES:
        copied, finished = _overlapped_kernel_copy(src_fd, src_start, out_fd, hasher)
        if finished:
            return Digest.computed(hasher.hexdigest(), copied)
    # User space, from wherever the kernel stopped: the buffer we write is the one we hash.
    # One byte over the size hint lets a small file's second read see EOF at once.
    # A size hint of 0 may be a pseudo-file with content: it starts with a mid-size buffer. A
    # buffer that fills up is replaced by a full-size one (the file is larger than it said).
    left = size_hint - copied
    view = memoryview(bytearray(min(_BUFFER_BYTES, left + 1 if left > 0 else _MIN_BUFFER_BYTES)))
    while n := os.preadv(src_fd, [view], src_start + copied):
        pwrite_all(out_fd, view[:n], copied)
        hasher.update(view[:n])
        copied += n
        if n == len(view) < _BUFFER_BYTES:
            view = memoryview(bytearray(_BUFFER_BYTES))
    return Digest.computed(hasher.hexdigest(), copied)


def copy_stream_hashing(stream: BinaryIO, out_fd: int) -> Digest:
    """Copy a stream from its position to EOF into ``out_fd``, hashing the buffer written.

    Example:
        >>> import io, tempfile
        >>> out = tempfile.TemporaryFile()
        >>> copy_stream_hashing(io.BytesIO(b"abc"), out.fileno()).size
        3
    """
    hasher = new_blake3()
    buffer = bytearray(_BUFFER_BYTES)
    view = memoryview(buffer)
    written = 0
    while n := readinto(stream, view):
        pwrite_all(out_fd, view[:n], written)
        hasher.update(view[:n])
        written += n
    return Digest.computed(hasher.hexdigest(), written)


def _overlapped_kernel_copy(
    src_fd: int, src_start: int, out_fd: int, hasher: Any
) -> tuple[int, bool]:
    def copy(stop: threading.Event, progress: Callable[[int], None]) -> tuple[int, bool]:
        return kernel_copy(src_fd, out_fd, src_start, 0, stop, progress)

    (copied, finished), _ = hash_behind_copy(copy, out_fd, hasher)
    return copied, finished


def now_ns() -> int:
    """Wall-clock nanoseconds (compared with file ctimes by :class:`FileDigestMemo`).

    Example:
        >>> now_ns() > 0
        True
    """
    return time.time_ns()


class PublishReceipt:
    """Where an upload published its blob into a local store, for the re-check after its ref.

    :class:`~optuna_cas.content.ContentStore` checks the blob is still stored once the ref
    exists (a concurrent gc may have deleted it: see :mod:`optuna_cas.operations.gc`). When
    the upload itself has just published the blob by rename, one ``lstat`` of that path
    answers "still there"; anything else (a dedup hit, a remote store, a missing file) is
    answered by the full :meth:`~optuna_cas.blobstore.BlobStore.has_blob`.

    Example:
        >>> PublishReceipt().still_stored(Digest.of_bytes(b"x"))
        False
    """

    __slots__ = ("staged",)

    def __init__(self) -> None:
        self.staged: StagedObject | None = None

    def still_stored(self, digest: Digest) -> bool:
        """True if the blob this upload published is still at its key (False: unknown)."""
        return self.staged is not None and self.staged.still_published(digest.size)
