"""Streams and their seeks: a verified stream that spools itself, a reader that counts bytes.

Optuna's ``FileSystemArtifactStore.open_reader`` returns a plain file, so code such as
``np.load(store.open_reader(i))``, ``zipfile.ZipFile(...)`` or ``torch.load(...)`` (a zip)
works on it. Our readers verify as they stream, and a verifying stream cannot hand out bytes
from the middle of a file it has not hashed yet. :class:`SpoolOnSeek` keeps the streaming
path for readers that never move (the usual case: no copy, no temp file). The first seek that
actually moves opens the content afresh, copies all of it through its verifying reader into a
private temp file (unlinked at once, so no other process can change it), and serves every
read and seek from there: one extra pass over the file, then random access at disk speed,
never a byte that was not checked.

:class:`CountingReader` reports the bytes that pass (a progress bar) and passes seeks through,
so a retried upload can rewind it and a remote backend can size its parts from its length.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from typing import BinaryIO, cast

from optuna_cas._fileio import naming_full_disk, out_of_space
from optuna_cas.digest import CHUNK_SIZE, RawReader, readinto

__all__ = ["SPOOLED_FIRST", "CountingReader", "SpoolOnSeek", "checked_copy", "seekable_reader"]

# A whole blob up to this size (the chunking threshold) is copied, checked, into a private temp
# file before open_reader hands out a byte; a larger one (stored with chunking off) streams.
SPOOLED_FIRST = 8 * 1024 * 1024


class SpoolOnSeek(RawReader):
    """A reader of ``size`` bytes that streams ``reader`` until a seek moves it.

    Args:
        reader: The open verifying reader, at the start of the content.
        reopen: Opens the content again from its start (verifying as it is read).
        size: The content's length (for ``SEEK_END``).

    Example:
        >>> import io
        >>> r = SpoolOnSeek(io.BytesIO(b"hello"), lambda: io.BytesIO(b"hello"), 5)
        >>> r.read(2), r.seek(-1, io.SEEK_END), r.read(), r.seek(0), r.read()
        (b'he', 4, b'o', 0, b'hello')
    """

    def __init__(self, reader: BinaryIO, reopen: Callable[[], BinaryIO], size: int) -> None:
        super().__init__()
        self._reader = reader
        self._reopen = reopen
        self._size = size
        self._position = 0  # of the stream; the spool keeps its own
        self._target: int | None = None  # where a seek asked to go (moved at the next read)
        self._spool: BinaryIO | None = None
        # Once a seek moved, the stream is never read again: a failed spool (corrupt content,
        # a dropped connection) is tried again at the next read, whatever seeks came between.
        self._moved = False

    def seekable(self) -> bool:
        """Always True."""
        return True

    def tell(self) -> int:
        """The position (where a seek asked to go, if nothing was read since)."""
        if self._target is not None:
            return self._target
        return self._spool.tell() if self._spool is not None else self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move; nothing is read until the next read (asking the size costs nothing)."""
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self.tell(), io.SEEK_END: self._size}
        if whence not in bases:
            raise ValueError(f"invalid whence {whence!r}")
        target = bases[whence] + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        self._target = target
        return target

    @property
    def size(self) -> int:
        """The content's length."""
        return self._size

    @property
    def spooled(self) -> bool:
        """Whether reads come from the verified spool (a seek moved and it was made)."""
        return self._spool is not None

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Read into ``buffer``: from the stream while it has not moved, else the spool."""
        target = self._target
        self._moved = self._moved or (target is not None and target != self._position)
        if self._spool is None and self._moved:
            # Until it succeeds the seek stands (the target is kept for the next try).
            self._spool = self._spool_all()
        self._target = None
        if self._spool is not None:
            if target is not None:
                self._spool.seek(target)
            return self._spool.readinto(buffer)  # type: ignore[attr-defined, no-any-return]
        n = readinto(self._reader, memoryview(buffer).cast("B"))
        self._position += n
        return n

    def readall(self) -> bytes:
        """The rest, in large reads (``RawIOBase``'s own reads 8 KiB at a time)."""
        parts = []
        while data := self.read(CHUNK_SIZE):
            parts.append(data)
        return b"".join(parts)

    def _spool_all(self) -> BinaryIO:
        """All of the content, read afresh through its verifying reader, in a private file."""
        with self._reopen() as fresh:
            spool = checked_copy(fresh, " (a seek copies the artifact into $TMPDIR first)")
        self._reader.close()
        return spool

    def close(self) -> None:
        """Close the stream and the spool."""
        try:
            self._reader.close()
            if self._spool is not None:
                self._spool.close()
        finally:
            super().close()


def checked_copy(reader: BinaryIO, why: str) -> BinaryIO:
    """All of ``reader`` (a verifying reader, read to its end) in a private temp file, at 0.

    ``why`` says, should ``$TMPDIR`` be full, what the copy was for.

    Example:
        >>> import io
        >>> checked_copy(io.BytesIO(b"abc"), "").read()
        b'abc'
    """
    with naming_full_disk(tempfile.gettempdir(), why):
        spool = cast(BinaryIO, tempfile.TemporaryFile(prefix="optuna-cas-seek-"))  # noqa: SIM115
        try:
            block = memoryview(bytearray(CHUNK_SIZE))
            while n := readinto(reader, block):
                spool.write(block[:n])
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
    return spool


def seekable_reader(
    reader: BinaryIO, reopen: Callable[[], BinaryIO], size: int, *, checked_as_read: bool
) -> BinaryIO:
    """What ``open_reader`` hands out: only checked bytes, and seekable (see concepts.md).

    Args:
        reader: A verifying reader of the content (it checks the whole at its end).
        reopen: Opens another such reader, from the start.
        size: The content's length.
        checked_as_read: Whether ``reader`` checks what it puts in its buffer before the
            caller can read it (a chunked file's: chunk by chunk).

    * Up to :data:`CHUNK_SIZE`: read and checked whole at once (one buffer's memory).
    * Checked as read: streamed; a seek outside the buffer spools (:class:`SpoolOnSeek`).
    * Up to :data:`SPOOLED_FIRST`: read and checked whole into a private temp file first.
    * Larger: streamed, checked at the end; any seek that moves spools.

    Example:
        >>> import io
        >>> seekable_reader(io.BytesIO(b"x"), lambda: io.BytesIO(b"x"), 1, checked_as_read=False).read()
        b'x'
    """
    if isinstance(reader, io.BytesIO):
        return reader
    if size <= CHUNK_SIZE:
        with reader:
            return io.BytesIO(reader.read())
    if checked_as_read:
        return cast(BinaryIO, io.BufferedReader(SpoolOnSeek(reader, reopen, size), CHUNK_SIZE))
    if size <= SPOOLED_FIRST:
        try:
            with reader:
                return checked_copy(
                    reader, " (a file up to 8 MiB is checked there before it is read)"
                )
        except OSError as e:
            if not out_of_space(e):
                raise
            # No room in $TMPDIR: stream it as a larger file is, checked at its end (a read
            # must not fail for want of a copy it could do without).
            reader = reopen()
    return cast(BinaryIO, _SeeksReachTheSpool(SpoolOnSeek(reader, reopen, size), CHUNK_SIZE))


class _SeeksReachTheSpool(io.BufferedReader):
    """A buffer over :class:`SpoolOnSeek` that serves no move from the buffer until spooled.

    ``BufferedReader`` serves a seek within its buffer itself, without telling the raw
    stream; until the spool exists, the buffer holds bytes of the stream not all checked yet
    (a verifying stream checks at its end), and a reader that reads a header, seeks back and
    stops would get them unchecked. So a seek that moves goes to the raw stream.
    """

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        raw = cast(SpoolOnSeek, self.raw)
        if raw.spooled or whence == io.SEEK_END:  # SEEK_END always reaches the raw stream
            return super().seek(offset, whence)
        here = self.tell()
        target = offset + (here if whence == io.SEEK_CUR else 0)
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target == here or target < 0:
            return super().seek(offset, whence)  # errors and non-moves as BufferedReader has them
        # As a seek from the end: BufferedReader drops its buffer and asks the raw stream.
        return super().seek(target - raw.size, io.SEEK_END)


class CountingReader(RawReader):
    """Passes reads, and seeks where ``inner`` can, through; reports the bytes read.

    A rewind (a retried upload seeking back to where it started) takes back what it will
    read again, so the total reported is the bytes delivered once. Seeks also let a remote
    backend ask the length (a seek to the end and back): without it an upload of more than
    10,000 parts of the configured size fails on S3.

    Args:
        inner: The stream read.
        report: Called with each read's byte count (negative after a rewind).
        closes_inner: Whether :meth:`close` closes ``inner``.
        seeks: Whether seeks pass through; if not, the reader says it cannot seek (so a store
            spools it once instead of reading it again).

    Example:
        >>> seen = []
        >>> reader = CountingReader(io.BytesIO(b"hello"), seen.append)
        >>> reader.read(3), reader.seek(0), reader.read(), sum(seen)
        (b'hel', 0, b'hello', 5)
    """

    def __init__(
        self,
        inner: BinaryIO,
        report: Callable[[int], None],
        *,
        closes_inner: bool = True,
        seeks: bool = True,
    ) -> None:
        super().__init__()
        self._inner = inner
        self._seeks = seeks
        self._report = report
        self._closes_inner = closes_inner
        self._start: int | None = None
        self._counted = 0  # bytes reported, from the start on

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Read into ``buffer`` and report the count."""
        if self._start is None:
            self._note_start()
        n = readinto(self._inner, memoryview(buffer).cast("B"))
        if n:
            self._counted += n
            self._report(n)
        return n

    def seekable(self) -> bool:
        """Whether ``inner`` can seek (and seeks pass through)."""
        if not self._seeks:
            return False
        try:
            return bool(self._inner.seekable())
        except (AttributeError, ValueError):
            return False

    def tell(self) -> int:
        """``inner``'s position."""
        position = self._inner.tell()
        if self._start is None:
            self._start = position
        return position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move ``inner``; a move back takes back the bytes that will be read again."""
        if not self._seeks:
            raise io.UnsupportedOperation("seek")
        if self._start is None:
            self._note_start()
        position = self._inner.seek(offset, whence)
        # A seek forward (asking the size) moved no bytes: nothing to take back.
        behind = max(0, position - (self._start or 0))
        if behind < self._counted:
            self._report(behind - self._counted)
            self._counted = behind
        return position

    def close(self) -> None:
        """Close ``inner`` too if asked to."""
        try:
            if self._closes_inner:
                self._inner.close()
        finally:
            super().close()

    def _note_start(self) -> None:
        """Where this stream started, for rewinds (0 for a stream that cannot tell)."""
        try:
            self.tell()
        except (AttributeError, OSError, ValueError):
            self._start = 0
