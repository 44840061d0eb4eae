"""Progress bars for the command line: ``progress(task, done, total)`` drawn by tqdm.

Bars go to stderr and only when it is a terminal, so pipes, logs and ``--json`` output stay
clean. Each bar is as wide as the terminal (less one column, so that no terminal wraps it:
a wrapped bar leaves a new line behind at every redraw) and is erased when its task ends.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from optuna_cas._terminal import human_bytes

__all__ = ["TerminalProgress", "shorten", "terminal_width", "write_line"]


def shorten(text: str, limit: int) -> str:
    """``text`` cut in the middle to at most ``limit`` characters, keeping both ends.

    Example:
        >>> shorten("put a-very-long-checkpoint-name.pt", 20)
        'put a-ver...-name.pt'
        >>> shorten("put model.pt", 20)
        'put model.pt'
    """
    if len(text) <= limit:
        return text
    keep = max(limit - 3, 2)
    return text[: (keep + 1) // 2] + "..." + text[len(text) - keep // 2 :]


def terminal_width(stream: TextIO, default: int = 80) -> int:
    """Columns of the terminal ``stream`` is on: ``$COLUMNS``, else the terminal's own size.

    Example:
        >>> import io
        >>> terminal_width(io.StringIO(), default=80) > 0
        True
    """
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
    return columns if columns > 0 else default


def write_line(line: str, stream: TextIO | None = None) -> None:
    r"""Print ``line`` on ``stream`` (default stderr) on a line of its own, above any bar there.

    A bar is redrawn in place, without a newline: a line printed as it is would land after the
    bar's figures (``...?/s]upload s3://... failed``, found by a probe), and the next redraw
    would overwrite it. tqdm's ``write`` erases the bars on that stream, prints the line and
    draws them again below it.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> write_line("optuna-cas: warning: slow", out)
        >>> out.getvalue()
        'optuna-cas: warning: slow\n'
    """
    stream = stream if stream is not None else sys.stderr
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:  # not imported: no bar was ever drawn (see _new_bar), none to erase
        print(line, file=stream, flush=True)
        return
    tqdm_module.tqdm.write(line, file=stream)
    stream.flush()


class TerminalProgress:
    """A progress callback that draws one tqdm bar per task on a terminal.

    Args:
        enabled: False draws nothing (``-q``).
        unit: ``"B"`` for byte counts (scaled to KiB, MiB, ...), else the name of an item.
        stream: Where to draw (default stderr); nothing is drawn unless it is a terminal.

    Example:
        >>> import io
        >>> bar = TerminalProgress(stream=io.StringIO())   # not a terminal: draws nothing
        >>> bar.enabled
        False
        >>> with bar:
        ...     bar("copy", 5, 10)
    """

    def __init__(self, *, enabled: bool = True, unit: str = "B", stream: TextIO | None = None):
        self._stream = stream if stream is not None else sys.stderr
        try:
            on_terminal = self._stream.isatty()
        except (AttributeError, ValueError):
            on_terminal = False
        self.enabled = enabled and on_terminal
        self._unit = unit
        self._task: str | None = None
        self._bar: Any = None

    def __call__(self, task: str, done: int, total: int | None) -> None:
        """Show that ``done`` of ``total`` units of ``task`` are done."""
        if not self.enabled:
            return
        if self._bar is None or task != self._task:
            self.close()
            self._bar = self._new_bar(task, total)
            self._task = task
        if total != self._bar.total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def _new_bar(self, task: str, total: int | None) -> Any:
        from tqdm import tqdm  # only when a bar is drawn: the import costs ~20 ms

        in_bytes = self._unit == "B"
        width = terminal_width(self._stream) - 1
        return (_binary_bytes_bar() if in_bytes else tqdm)(
            total=total,
            # A long file name must not push the bar and the figures off the line.
            desc=shorten(task, max(12, width // 3)),
            unit=self._unit,
            file=self._stream,
            ncols=width,
            # tqdm takes its row count from the terminal and draws nothing below row count - 1:
            # a pseudo-terminal that reports 0 rows (`script -c`, some `docker exec -t`) would
            # show no bar at all. One bar needs one row.
            nrows=20,
            leave=False,
            mininterval=0.1,
        )

    def close(self) -> None:
        """Erase the current bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._task = None

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# What a bar of bytes shows right of its bar, and all it shows while the total is unknown.
_BYTES_KNOWN_TOTAL = (
    "{desc}: {percentage:3.0f}%|{bar}| {done_b}/{total_b} [{elapsed}<{remaining}, {rate_b}]"
)
_BYTES_NO_TOTAL = "{desc}: {done_b} [{elapsed}, {rate_b}]"


def _binary_bytes_bar() -> Any:
    """A tqdm class whose byte counts and rate read as the summary lines do: ``28.6 MiB``.

    tqdm's own scaling writes ``28.6M`` and ``295MB/s``, and scales the rate by 1000 whatever
    ``unit_divisor`` says; the figures are formatted here instead, with :func:`human_bytes`.
    Built on first use: importing tqdm costs start-up time that only a drawn bar needs.
    """
    global _binary_bytes_class
    if _binary_bytes_class is None:
        from tqdm import tqdm

        class BinaryBytes(tqdm):  # type: ignore[misc]  # tqdm ships no types
            @property
            def format_dict(self) -> dict[str, Any]:
                figures: dict[str, Any] = dict(super().format_dict)
                done, total, elapsed = figures["n"], figures["total"], figures["elapsed"]
                rate = figures["rate"]
                if rate is None and elapsed:
                    rate = (done - figures["initial"]) / elapsed  # what tqdm falls back to
                figures["done_b"] = human_bytes(done)
                figures["total_b"] = "?" if total is None else human_bytes(total)
                figures["rate_b"] = f"{human_bytes(rate)}/s" if rate else "?/s"
                figures["bar_format"] = _BYTES_KNOWN_TOTAL if total else _BYTES_NO_TOTAL
                return figures

        _binary_bytes_class = BinaryBytes
    return _binary_bytes_class


_binary_bytes_class: Any = None
