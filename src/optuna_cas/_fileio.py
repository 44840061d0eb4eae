"""Local file plumbing shared by the layers: safe opens, kernel copies, temp files, publishing.

Everything here treats the file system as untrusted: paths given by callers may name FIFOs,
devices or directories, and files may change or shrink while we read them. So sources are
opened without blocking and checked to be regular files, reads use explicit offsets, and new
files appear under their final name only when complete (temp file beside it, then a link).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from optuna_cas._validation import shorten_name
from optuna_cas.digest import CHUNK_SIZE, RawReader, readinto, rewind_point
from optuna_cas.exceptions import UnsupportedSourceError

__all__ = [
    "PositionalReader",
    "copy_range",
    "describe_mode",
    "kernel_copy",
    "materialize",
    "materialize_buffers",
    "naming_full_disk",
    "open_regular_file",
    "open_regular_file_stat",
    "out_of_space",
    "pread_full",
    "publish_new_file",
    "pwrite_all",
    "read_up_to",
    "real_fileno",
    "seekable",
    "temp_beside",
]

# Kernel copies go in steps this large: big enough that syscall overhead vanishes, small
# enough that a cancel (or a hashing thread trailing the copy) is never far behind.
COPY_STEP = 16 * 1024 * 1024
# A block a raw stream hands over (raw_blocks) is a new bytes object that lives until it is
# written. Measured on whole-blob downloads of 256 MiB from moto: with 2 or 4 MiB blocks, one
# download in three spent about 1 s of CPU copying them into the page cache (fresh memory is
# slow to touch on this VM); with 1 MiB none did; with 256 KiB every one was 30% slower.
RAW_BLOCK = 1024 * 1024
# Errors meaning "this kernel/filesystem pair cannot copy this way", not "the copy failed".
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


# Errors of a write that ran out of room: the kernel names no file in them.
_OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def naming_full_disk(where: str, why: str = "") -> Iterator[None]:
    """Re-raise running out of space (ENOSPC, EDQUOT, EFBIG) as an error naming ``where``.

    A write that fills a disk raises ``[Errno 28] No space left on device`` naming nothing,
    and a user whose store has room must learn which disk is full.

    Example:
        >>> import errno
        >>> with naming_full_disk("/data/model.pt"):
        ...     raise OSError(errno.ENOSPC, "No space left on device")
        Traceback (most recent call last):
        ...
        OSError: [Errno 28] No space left on device: '/data/model.pt'
    """
    try:
        yield
    except OSError as e:
        if not out_of_space(e) or e.filename is not None:
            raise
        raise OSError(e.errno, f"{e.strerror}{why}", where) from e


def out_of_space(error: BaseException) -> bool:
    """Whether ``error`` says a disk (or a quota, or a file size limit) is full.

    Example:
        >>> import errno
        >>> out_of_space(OSError(errno.ENOSPC, "No space left on device")), out_of_space(OSError())
        (True, False)
    """
    return isinstance(error, OSError) and error.errno in _OUT_OF_SPACE


def describe_mode(mode: int) -> str:
    """A file type in words, for error messages.

    Example:
        >>> import stat
        >>> describe_mode(stat.S_IFIFO), describe_mode(stat.S_IFREG)
        ('a FIFO', 'a regular file')
    """
    for test, words in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def open_regular_file(path: str | os.PathLike[str]) -> int:
    """Open a caller's file for reading; refuse anything but a regular file, without blocking.

    ``O_NONBLOCK`` keeps a FIFO from blocking the open forever; the type is then checked on
    the open descriptor (no race with a rename). Symlinks are followed: the caller named them.

    Args:
        path: The file.

    Returns:
        A read-only descriptor (close it).

    Raises:
        FileNotFoundError: No such file.
        UnsupportedSourceError: A directory, FIFO, device or socket (they block, never end or
            cannot be read as a file).

    Example:
        >>> open_regular_file("/dev/zero")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.UnsupportedSourceError: Cannot upload '/dev/zero': it is a character device, not a regular file
    """
    return open_regular_file_stat(path)[0]


def open_regular_file_stat(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """:func:`open_regular_file`, also returning the descriptor's ``fstat`` (the type check's).

    Example:
        >>> import tempfile
        >>> f = tempfile.NamedTemporaryFile(); _ = f.write(b"abc"); f.flush()
        >>> fd, st = open_regular_file_stat(f.name); os.close(fd); st.st_size
        3
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise FileNotFoundError(e.errno, f"No such file to upload: {name!r}") from None
    except OSError as e:
        if e.errno not in (errno.EISDIR, errno.ENXIO):  # a directory; a socket
            raise
        kind = describe_mode(os.stat(name).st_mode)
        raise UnsupportedSourceError(
            f"Cannot upload {name!r}: it is {kind}, not a regular file"
        ) from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsupportedSourceError(
            f"Cannot upload {name!r}: it is {describe_mode(st.st_mode)}, not a regular file"
        )
    return fd, st


def real_fileno(stream: BinaryIO) -> int | None:
    """The descriptor of a seekable regular file behind ``stream``, else None.

    Example:
        >>> import io
        >>> real_fileno(io.BytesIO(b"x")) is None
        True
    """
    try:
        fileno = stream.fileno()
        if not stat.S_ISREG(os.fstat(fileno).st_mode) or not stream.seekable():
            return None
        stream.tell()  # buffered readers: the stream's position, not the descriptor's
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fileno


def kernel_copy(
    src_fd: int,
    dst_fd: int,
    src_offset: int,
    dst_offset: int,
    cancel: threading.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
    limit: int | None = None,
) -> tuple[int, bool]:
    """``copy_file_range`` from ``src_offset`` to EOF, at explicit offsets on both sides.

    Descriptors' own positions are neither used nor changed.

    Args:
        src_fd: Source descriptor.
        dst_fd: Destination descriptor.
        src_offset: Where to start reading.
        dst_offset: Where to start writing.
        cancel: Stop between steps when set.
        on_progress: Called with the total bytes copied so far after each step.
        limit: Copy at most this many bytes (bounds a source that keeps growing).

    Returns:
        (bytes copied, whether EOF or ``limit`` was reached). ``False`` means the kernel
        refused this pair of files (or the copy was cancelled): finish in user space.

    Example:
        >>> import tempfile
        >>> src, dst = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        >>> _ = src.write(b"payload"); src.flush()
        >>> kernel_copy(src.fileno(), dst.fileno(), 3, 0)[0]
        4
    """
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is None:  # pragma: no cover - not Linux
        return 0, False
    copied = 0
    while cancel is None or not cancel.is_set():
        step = COPY_STEP if limit is None else min(COPY_STEP, limit - copied)
        if step <= 0:
            return copied, True
        try:
            n = copy_range(src_fd, dst_fd, step, src_offset + copied, dst_offset + copied)
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return copied, False
            raise
        if n == 0:
            return copied, True
        copied += n
        if on_progress is not None:
            on_progress(copied)
    return copied, False


def copy_range(
    src_fd: int,
    dst_fd: int,
    src_offset: int,
    dst_offset: int,
    length: int,
    cancel: threading.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Copy ``length`` bytes between explicit offsets; fewer only if the source ends first.

    In the kernel where it can (:func:`kernel_copy`), in user space from wherever it stopped
    otherwise. Returns the bytes copied (fewer if ``cancel`` was set); ``on_progress`` gets the
    running count, as in :func:`kernel_copy`.

    Example:
        >>> import tempfile
        >>> src, dst = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        >>> _ = src.write(b"payload"); src.flush()
        >>> copy_range(src.fileno(), dst.fileno(), 3, 2, 4), os.pread(dst.fileno(), 9, 2)
        (4, b'load')
    """
    copied, finished = kernel_copy(
        src_fd, dst_fd, src_offset, dst_offset, cancel, on_progress, limit=length
    )
    if finished:
        return copied
    view = memoryview(bytearray(min(CHUNK_SIZE, length - copied)))
    while (
        copied < length
        and (cancel is None or not cancel.is_set())
        and (n := os.preadv(src_fd, [view[: length - copied]], src_offset + copied))
    ):
        pwrite_all(dst_fd, view[:n], dst_offset + copied)
        copied += n
        if on_progress is not None:
            on_progress(copied)
    return copied


def pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``fd`` at ``offset``; fewer bytes only where the file ends.

    Example:
        >>> import tempfile
        >>> f = tempfile.TemporaryFile(); _ = f.write(b"abc"); f.flush()
        >>> view = memoryview(bytearray(b"....")); pread_full(f.fileno(), view, 1), bytes(view)
        (2, b'bc..')
    """
    got = 0
    while got < len(view) and (n := os.preadv(fd, [view[got:]], offset + got)):
        got += n
    return got


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """``os.pwrite`` at ``offset`` until every byte of ``view`` is written.

    Example:
        >>> import tempfile
        >>> f = tempfile.TemporaryFile(); pwrite_all(f.fileno(), memoryview(b"abc"), 2)
        >>> os.pread(f.fileno(), 5, 0)[2:]
        b'abc'
    """
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes from ``stream``, fewer only at EOF (raw streams return short reads).

    Returns ``bytes``, not ``bytearray``: the SDKs send ``bytes`` bodies without copying them.

    Raises:
        TypeError: ``stream`` is a text stream.

    Example:
        >>> read_up_to(io.BytesIO(b"abcdef"), 4), read_up_to(io.BytesIO(b"ab"), 4)
        (b'abcd', b'ab')
    """
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        if isinstance(chunk, str):
            raise TypeError("content_body must be a binary stream, got a text stream")
        chunks.append(chunk if isinstance(chunk, bytes) else bytes(chunk))
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def seekable(stream: BinaryIO) -> bool:
    """Whether ``stream`` can be read again from where it is now (it can seek and tell).

    Example:
        >>> r, w = os.pipe()
        >>> with open(r, "rb") as pipe:
        ...     seekable(io.BytesIO(b"x")), seekable(pipe)
        (True, False)
        >>> os.close(w)
    """
    position = rewind_point(stream)
    return position is not None and position >= 0


class PositionalReader(RawReader):
    """Reads a descriptor with ``pread`` from its own offset, leaving the descriptor alone.

    Lets the content store re-read a caller's open file without moving the caller's position
    and without a memory map (a truncated file then reads short instead of raising SIGBUS).

    Example:
        >>> import tempfile
        >>> f = tempfile.TemporaryFile(); _ = f.write(b"hello"); f.flush()
        >>> PositionalReader(f.fileno(), 1).read()
        b'ello'
    """

    def __init__(self, fd: int, start: int = 0) -> None:
        super().__init__()
        self._fd = fd
        self._offset = start

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Read at the current offset."""
        n = os.preadv(self._fd, [memoryview(buffer).cast("B")], self._offset)
        self._offset += n
        return n

    def seekable(self) -> bool:
        """Always True."""
        return True

    def tell(self) -> int:
        """This reader's own offset."""
        return self._offset

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move this reader's own offset (the descriptor's is never touched)."""
        if whence == io.SEEK_CUR:
            offset += self._offset
        elif whence == io.SEEK_END:
            offset += os.fstat(self._fd).st_size
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._offset = offset
        return offset


def temp_beside(target: Path) -> tuple[int, str]:
    """Create a new temp file in ``target``'s directory, to become ``target``; errors name it.

    Beside the target, a rename never crosses file systems. The file gets the mode any new
    file gets (``0o666`` less the umask, and the directory's default ACL), as Optuna's own
    ``download_artifact`` and ``open(path, "w")`` give: the published file is the user's
    file, not a private temp (``mkstemp`` would make it ``0o600``).

    Returns:
        (descriptor, temp path).

    Raises:
        FileNotFoundError: ``target``'s directory does not exist.
        OSError: The directory is not writable (the message names ``target``).

    Example:
        >>> import os, stat, tempfile
        >>> from pathlib import Path
        >>> fd, name = temp_beside(Path(tempfile.mkdtemp()) / "model.pt"); os.close(fd)
        >>> os.path.basename(name).startswith(".model.pt.")
        True
        >>> old = os.umask(0o027); fd, name = temp_beside(Path(name)); _ = os.umask(old)
        >>> oct(stat.S_IMODE(os.fstat(fd).st_mode)); os.close(fd)
        '0o640'
    """
    directory = target.parent if str(target.parent) else Path(".")
    prefix = f".{shorten_name(target.name, 64)}."
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    for _attempt in range(100):
        name = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}.partial")
        try:
            # 0o666: the kernel applies the umask (and default ACLs) itself. Reading the
            # umask to compute a mode would mean changing it, which races other threads.
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
        except OSError as e:
            raise type(e)(e.errno, f"Cannot create {str(target)!r}: {e.strerror}") from None
        except BaseException:
            # A KeyboardInterrupt raised as os.open returned: the file exists, and no caller
            # will remove it (found by a probe: left in the user's directory for good).
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
    raise FileExistsError(f"Cannot create a temp file beside {str(target)!r}: names all taken")


def publish_new_file(temp: Path, target: Path) -> None:
    """Give the complete file ``temp`` the name ``target``, failing if ``target`` exists.

    ``os.link`` is atomic and refuses an existing name; on filesystems without hard links we
    fall back to ``os.replace`` after one more existence check. ``temp`` is left for the caller.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> d = Path(tempfile.mkdtemp()); (d / "t").write_bytes(b"x")
        1
        >>> publish_new_file(d / "t", d / "final"); (d / "final").read_bytes()
        b'x'
    """
    try:
        os.link(temp, target)
    except FileExistsError:
        raise FileExistsError(f"File already exists: {target!s}") from None
    except OSError as e:
        if os.path.lexists(target):
            raise FileExistsError(f"File already exists: {target!s}") from None
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise type(e)(e.errno, f"Cannot create {str(target)!r}: {e.strerror}") from None
        os.replace(temp, target)


def materialize(reader: BinaryIO, target: Path) -> None:
    """Copy ``reader`` into a new file at ``target`` atomically, never overwriting.

    Bytes go to a temp file beside ``target``; only when the reader reached EOF cleanly (a
    verifying reader has then checked the digest) is it linked into place. Any failure removes
    the temp file, so no partial file is ever visible at ``target``.

    Args:
        reader: The content (typically verifying).
        target: The new file.

    Raises:
        FileExistsError: ``target`` exists (checked again at publication, atomically).

    Example:
        >>> import io, tempfile
        >>> from pathlib import Path
        >>> target = Path(tempfile.mkdtemp()) / "f"
        >>> materialize(io.BytesIO(b"abc"), target); target.read_bytes()
        b'abc'
    """
    materialize_buffers(_buffers_of(reader), target)


def materialize_buffers(buffers: Iterable[bytes | memoryview], target: Path) -> None:
    """As :func:`materialize`, writing ``buffers`` as they come (no copy into a buffer of ours).

    The file is linked into place only once the iterator ended cleanly (a verifying one,
    :func:`~optuna_cas.digest.verified_buffers`, has then checked the digest).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "f"
        >>> materialize_buffers([b"ab", memoryview(b"c")], target); target.read_bytes()
        b'abc'
    """
    if os.path.lexists(target):
        raise FileExistsError(f"File already exists: {target!s}")
    fd, temp_name = temp_beside(target)
    try:
        with open(fd, "wb") as out:
            for buffer in buffers:
                out.write(buffer)
        publish_new_file(Path(temp_name), target)
    finally:
        # The unlink is the first call of the finally, not inside a Python helper: a
        # KeyboardInterrupt at a helper's start skipped it and left the temp file in the
        # user's directory (found by interrupting at every call).
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass


def unbuffered(reader: BinaryIO) -> BinaryIO:
    """The raw stream under a *fresh* buffered reader (nothing buffered yet), else ``reader``.

    A remote backend's raw stream returns the bytes its response was read into; going
    through the buffer would copy every block once more.

    Example:
        >>> import io
        >>> raw = io.BytesIO(b"x"); unbuffered(io.BufferedReader(raw)) is raw
        True
    """
    return reader.raw if isinstance(reader, io.BufferedReader) else reader


def raw_blocks(reader: BinaryIO, size: int = RAW_BLOCK) -> Iterator[bytes]:
    """A fresh ``reader``'s bytes in blocks of up to ``size``, as its raw stream returns them.

    Example:
        >>> import io
        >>> list(raw_blocks(io.BufferedReader(io.BytesIO(b"abc")), 2))
        [b'ab', b'c']
    """
    raw = unbuffered(reader)
    while data := raw.read(size):
        yield data


def _buffers_of(reader: BinaryIO) -> Iterator[memoryview]:
    """``reader``'s bytes in views of one reused buffer (each valid until the next)."""
    view = memoryview(bytearray(CHUNK_SIZE))
    while n := readinto(reader, view):
        yield view[:n]


def copy_to_spool(source: BinaryIO, out: BinaryIO) -> None:
    for buffer in _buffers_of(source):
        out.write(buffer)
