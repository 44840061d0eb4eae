"""A small progress bar for the CLI: drawn on stderr only when it is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "human_bytes"]


def human_bytes(n: float) -> str:
    """Format a byte count.

    Example:
        >>> human_bytes(1536), human_bytes(12)
        ('1.5 KiB', '12 B')
    """
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


class ProgressBar:
    """Renders ``progress(task, done, total)`` callbacks as one updating line.

    Silent unless ``stream`` is a TTY (so logs and pipes stay clean) or ``enabled=False``.

    Example:
        >>> import io
        >>> bar = ProgressBar(stream=io.StringIO())   # not a TTY: draws nothing
        >>> bar("copy", 5, 10); bar.close()
    """

    def __init__(
        self, *, stream: TextIO | None = None, enabled: bool = True, unit: str = "B"
    ) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled and self._stream.isatty()
        self._unit = unit
        self._task = ""
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    @property
    def enabled(self) -> bool:
        """Whether anything will be drawn (a TTY and not disabled)."""
        return self._enabled

    def __call__(self, task: str, done: int, total: int | None) -> None:
        """Record progress; redraw at most ten times a second."""
        if not self._enabled:
            return
        now = time.monotonic()
        if task != self._task:
            self._task, self._started = task, now
        if now - self._last_draw < 0.1 and (total is None or done < total):
            return
        self._last_draw = now
        elapsed = now - self._started
        fmt = human_bytes if self._unit == "B" else (lambda n: f"{int(n)}")
        # Rate and ETA mean nothing in the first instants: show them once measurable.
        rate = done / elapsed if elapsed > 0.2 else None
        speed = f"{fmt(rate)}/s" if rate is not None else "--/s"
        if total:
            fraction = min(done / total, 1.0)
            filled = int(fraction * 24)
            eta = f"{(total - done) / rate:4.0f}s" if rate else "  --"
            line = (
                f"{task} [{'#' * filled}{'.' * (24 - filled)}] {fraction:4.0%} "
                f"{fmt(done)}/{fmt(total)} {speed} ETA {eta}"
            )
        else:
            line = f"{task} {fmt(done)} {speed}"
        self._stream.write("\r" + line[:120].ljust(120))
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the line (if anything was drawn)."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
