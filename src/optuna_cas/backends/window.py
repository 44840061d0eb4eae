"""Bounded reads: the ``offset``/``length`` window of ``Backend.open_reader``, checked once.

A reader opened with a ``length`` yields the object's bytes ``[offset, offset + length)``, fewer
only where the object ends first. Its positions stay the object's (``tell()`` starts at
``offset``, as for a reader opened without a length), it may seek anywhere in
``[offset, offset + length]``, and ``SEEK_END`` counts from the end of what it can yield.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

from optuna_cas.digest import RawReader

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["Window", "WindowReader", "check_range"]


def check_range(offset: int, length: int | None) -> None:
    """Refuse a negative ``offset`` or ``length`` before any I/O, naming the value.

    Raises:
        ValueError: Either is negative.

    Example:
        >>> check_range(0, None); check_range(5, 0)
        >>> check_range(0, -2)
        Traceback (most recent call last):
        ...
        ValueError: length must not be negative, got -2
    """
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset}")
    if length is not None and length < 0:
        raise ValueError(f"length must not be negative, got {length}")


class Window:
    """Where a reader may read and seek: from ``start`` up to ``stop`` (``None``: no bound).

    Example:
        >>> w = Window(10, 20)
        >>> w.end(size=15), w.seek(-2, io.SEEK_END, current=10, size=15)
        (15, 13)
        >>> w.seek(21, io.SEEK_SET, current=10, size=15)
        Traceback (most recent call last):
        ...
        ValueError: position 21 is outside the reader's window [10, 20]
    """

    def __init__(self, start: int, stop: int | None) -> None:
        self.start = start
        self.stop = stop

    @classmethod
    def of(cls, offset: int, length: int | None) -> Window:
        """The window of ``open_reader(key, offset=offset, length=length)``.

        Example:
            >>> Window.of(5, 3).stop, Window.of(5, None).stop
            (8, None)
        """
        return cls(offset, None if length is None else offset + length)

    def end(self, size: int) -> int:
        """Where reading stops in an object of ``size`` bytes.

        Example:
            >>> Window(0, 5).end(size=3), Window(0, None).end(size=3)
            (3, 3)
        """
        return size if self.stop is None else min(size, self.stop)

    def seek(self, pos: int, whence: int, *, current: int, size: int) -> int:
        """The position ``seek(pos, whence)`` moves to, or ``ValueError`` naming it.

        Without a bound, any position from 0 on is allowed (past the end reads nothing).
        """
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: current, io.SEEK_END: self.end(size)}
        if whence not in bases:
            raise ValueError(f"invalid whence: {whence!r}")
        target = bases[whence] + pos
        if self.stop is None:
            if target < 0:
                raise ValueError(f"negative seek position {target}")
        elif not self.start <= target <= self.stop:
            raise ValueError(
                f"position {target} is outside the reader's window [{self.start}, {self.stop}]"
            )
        return target


class WindowReader(RawReader):
    """A window of an object of known size, read by positional reads (no shared file offset).

    Args:
        pread: Fills a prefix of the buffer with the object's bytes from a position; returns
            the count (0 only past the end of the object).
        window: The bytes the reader may yield.
        size: The object's size when opened.
        on_close: Releases what ``pread`` reads from (a file descriptor, say).

    Example:
        >>> data = b"0123456789"
        >>> def pread(view, pos):
        ...     chunk = data[pos : pos + len(view)]
        ...     view[: len(chunk)] = chunk
        ...     return len(chunk)
        >>> reader = WindowReader(pread, Window(2, 6), size=len(data))
        >>> reader.read(), reader.seek(3), reader.read(2)
        (b'2345', 3, b'34')
    """

    def __init__(
        self,
        pread: Callable[[memoryview, int], int],
        window: Window,
        *,
        size: int,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._pread = pread
        self._window = window
        self._size = size
        self._on_close = on_close
        self._pos = window.start

    def seekable(self) -> bool:
        """Always True: within the window."""
        return True

    def tell(self) -> int:
        """The current position (the object's numbering)."""
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``pos`` relative to ``whence``; refused outside the window."""
        self._checkClosed()
        self._pos = self._window.seek(pos, whence, current=self._pos, size=self._size)
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Fill a prefix of ``buffer``; 0 at the end of the window (or of the object)."""
        self._checkClosed()
        with memoryview(buffer) as raw, raw.cast("B") as view:
            wanted = min(len(view), self._window.end(self._size) - self._pos)
            if wanted <= 0:
                return 0
            count = self._pread(view[:wanted], self._pos)
        self._pos += count
        return count

    def close(self) -> None:
        """Release the source (once)."""
        try:
            if not self.closed and self._on_close is not None:
                self._on_close()
        finally:
            super().close()
