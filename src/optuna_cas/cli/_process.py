"""What the CLI changes in its process while a command runs, and puts back after.

:func:`~optuna_cas.cli.main` may be called in a process of its own making (tests, a notebook):
everything set here is undone when the command ends. Only the standard library is imported at
the top (start-up time, see ``optuna_cas.cli``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from collections.abc import Iterator

__all__ = ["closed_stdout_fails"]


class _ClosedStdout(io.BufferedIOBase):
    """A stdout the process was started without: every write fails as on a closed descriptor."""

    name = "<stdout>"

    def writable(self) -> bool:
        return True  # so that writes reach write() below and fail there, with EBADF

    def write(self, data: object, /) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF), self.name)


@contextlib.contextmanager
def closed_stdout_fails() -> Iterator[None]:
    """A command started with stdout closed (``>&-``) fails at its first line of output.

    Python sets ``sys.stdout`` to None then, and ``print()`` drops the text in silence: ``put
    --json >&-`` stored a file, exited 0, and its ID was printed nowhere (found by a probe).
    A stand-in whose writes fail makes it an error that the command reports (``put`` names
    what it stored on stderr), as a write to a closed descriptor is for coreutils' commands.
    A command that prints nothing is not affected.

    Example:
        >>> with closed_stdout_fails():  # stdout is open here: nothing changes
        ...     print("ok")
        ok
    """
    if sys.stdout is not None:
        yield
        return
    stand_in = io.TextIOWrapper(_ClosedStdout(), encoding="utf-8", write_through=True)
    sys.stdout = stand_in
    try:
        yield
    finally:
        if sys.stdout is stand_in:
            sys.stdout = None  # as the interpreter had it
