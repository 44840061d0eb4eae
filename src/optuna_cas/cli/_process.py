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
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = [
    "TERMINATED_EXIT_STATUS",
    "Terminated",
    "closed_stdout_fails",
    "escape_what_output_cannot_encode",
    "exit_without_interruption",
    "library_log_lines",
    "quiet_retries",
    "sigterm_interrupts",
]

# 128 + SIGTERM (15): what a shell reports for a command the signal ended.
TERMINATED_EXIT_STATUS = 128 + signal.SIGTERM


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


@contextlib.contextmanager
def quiet_retries(quiet: bool) -> Iterator[None]:
    """With ``-q``, no line per retried request: scripts get the result or one error line.

    Retries are logged at WARNING (printed by :func:`library_log_lines`); the level is
    restored after, for callers of :func:`~optuna_cas.cli.main` in a process of their own.

    Example:
        >>> import logging
        >>> with quiet_retries(True):
        ...     logging.getLogger("optuna_cas.retry").level == logging.ERROR
        True
    """
    if not quiet:
        yield
        return
    import logging

    global _quiet_depth, _level_before_quiet
    retry_logger = logging.getLogger("optuna_cas.retry")
    # Calls of main() may overlap on threads of one process: the first sets the level, the
    # last puts back what was there before the first (the logger is the process's).
    with _quiet_lock:
        if _quiet_depth == 0:
            _level_before_quiet = retry_logger.level
            retry_logger.setLevel(logging.ERROR)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                retry_logger.setLevel(_level_before_quiet)


_quiet_lock = threading.Lock()
_quiet_depth = 0
_level_before_quiet = 0


@contextlib.contextmanager
def library_log_lines() -> Iterator[None]:
    r"""The library's log records (a retried request, a cache set aside) as the CLI's warnings.

    Without a handler Python printed them raw on stderr: no ``optuna-cas: warning:`` prefix,
    and onto a progress bar being drawn (``...?/s]upload s3://... failed on attempt 1``, found
    by a probe). Here each is one escaped line with the prefix, printed above the bar
    (:func:`~optuna_cas._bars.write_line`). A handler only: levels stay as they are (``-q``
    raises the retry logger's, see :func:`quiet_retries`), and records still reach the
    handlers an application calling ``main()`` set up.

    Example:
        >>> import contextlib, io, logging
        >>> err = io.StringIO()
        >>> with contextlib.redirect_stderr(err), library_log_lines():
        ...     logging.getLogger("optuna_cas.retry").warning("read x failed:\nreset")
        >>> err.getvalue()
        'optuna-cas: warning: read x failed: reset\n'
    """
    import logging

    global _log_lines_depth
    logger = logging.getLogger("optuna_cas")
    # Calls of main() may overlap on threads of one process: one handler for all of them, or
    # each record would be printed once per call.
    with _log_lines_lock:
        if _log_lines_depth == 0:
            logger.addHandler(_log_line_handler())
        _log_lines_depth += 1
    try:
        yield
    finally:
        with _log_lines_lock:
            _log_lines_depth -= 1
            if _log_lines_depth == 0:
                logger.removeHandler(_log_line_handler())


_log_lines_lock = threading.Lock()
_log_lines_depth = 0
_handler: list[Any] = []  # the one handler, built on first use (logging is imported then)


def _log_line_handler() -> Any:
    import logging

    from optuna_cas._bars import write_line
    from optuna_cas._terminal import escape_for_terminal

    class LogLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                # Messages quote keys, URLs and SDK errors: one line, safe for a terminal.
                text = escape_for_terminal(" ".join(record.getMessage().split()))
                write_line(f"optuna-cas: {record.levelname.lower()}: {text}", sys.stderr)
            except Exception:
                self.handleError(record)

    if not _handler:
        _handler.append(LogLine(logging.WARNING))
    return _handler[0]


class Terminated(KeyboardInterrupt):
    """``SIGTERM`` arrived: raised where Ctrl-C raises ``KeyboardInterrupt``.

    A subclass, so that every cleanup Ctrl-C runs runs for it too: ours (temp files removed,
    tasks not started cancelled) and the libraries' that test for ``KeyboardInterrupt``
    (s3transfer cancels its transfers on it).
    """


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the command runs, ``SIGTERM`` raises :class:`Terminated`: stopped as by Ctrl-C.

    ``timeout(1)``, Kubernetes, Slurm and systemd stop a command with ``SIGTERM``. Left to the
    default action it killed the process outright: no JSON document, and a download's
    ``.partial`` temp file left beside the target for good (found by a probe). This is the
    CLI's choice only; the library never sets a signal handler.

    Only where the default action is in place, on the main thread (the only one Python runs
    handlers on): a handler an application installed before calling ``main()`` is left alone,
    and so is a ``SIGTERM`` the parent process chose to ignore.

    Unlike ``SIGINT``, ``SIGTERM`` is not held back while ``optuna_cas._forksafe``'s fork
    hooks run: the CLI never forks (no subprocesses, no process pools), so no hook runs while
    this handler is installed. A command that forks would need the same hold, or a
    ``Terminated`` raised inside a hook would be dropped by CPython, as Ctrl-C's is there.

    Example:
        >>> import os, signal
        >>> with sigterm_interrupts():
        ...     try:
        ...         os.kill(os.getpid(), signal.SIGTERM)
        ...     except Terminated as e:
        ...         print(e)
        terminated (SIGTERM)
        >>> signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        True
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    global _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_default_sigterm_in_child)
        _fork_hook_registered = True
    _state["active"] = True
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        _state["active"] = False  # first: a signal from here on is the default's to act on
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_fork_hook_registered = False
# Whether a command runs (a handler called after it ended acts as the default), and when the
# first SIGTERM came (a duplicate arriving with it is the same stop).
_state: dict[str, Any] = {"active": False, "first": 0.0}
# A stop sent to the process group and to the process itself arrives twice within this time.
_SAME_STOP_SECONDS = 2.0


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    if not _state["active"]:
        _die_of_sigterm()
    _state["first"] = time.monotonic()
    signal.signal(signal.SIGTERM, _after_first)
    raise Terminated("terminated (SIGTERM)")


def _after_first(signum: int, frame: FrameType | None) -> None:
    # The same stop delivered twice must not cut the first one's cleanup short (a temp file
    # left behind); a later one is an operator insisting: it stops the process at once, as
    # SIGTERM's default does, where ignoring it left only SIGKILL while a cleanup waited for
    # an upload's parts under retries (found in review).
    if _state["active"] and time.monotonic() - _state["first"] < _SAME_STOP_SECONDS:
        return
    _die_of_sigterm()


def _die_of_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _default_sigterm_in_child() -> None:
    # A process forked while a command runs (by another thread of an application calling
    # main()) must die of SIGTERM as usual: multiprocessing's terminate() relies on it, and
    # the child runs none of the command's cleanup (found in review).
    if signal.getsignal(signal.SIGTERM) in (_raise_terminated, _after_first):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def escape_what_output_cannot_encode() -> None:
    r"""Human output never dies on a character that stdout or stderr cannot encode.

    Under a C or POSIX locale without UTF-8 mode (``LC_ALL=C PYTHONUTF8=0``) Python's stdout is
    ASCII and raises on the first file name like ``modèle.pt``; such characters are printed as
    backslash escapes (``\xe8``) instead. UTF-8 streams are left alone: they encode every
    character our output can hold (lone surrogates are escaped by ``esc`` already), and
    ``--json`` output is ASCII anyway.

    Example:
        >>> escape_what_output_cannot_encode()  # UTF-8 streams are left as they are
    """
    import codecs

    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        reconfigure = getattr(stream, "reconfigure", None)
        if not isinstance(encoding, str) or reconfigure is None:
            continue  # closed (None), or replaced by something that is not a TextIOWrapper
        try:
            if codecs.lookup(encoding).name == "utf-8":
                continue
            reconfigure(errors="backslashreplace")
        except (LookupError, ValueError, OSError):
            continue  # an unknown codec or a detached stream: left as it is


def exit_without_interruption() -> None:
    """Ignore Ctrl-C from now on: the command's result is out and the process only exits.

    Python's default turned a Ctrl-C in the last moments (library threads joined, clients
    closed) into a traceback, or a failed status after an ``"ok": true`` document (found by
    a probe). Only on the main thread (the only one a handler can be set from), and only
    over Python's default handler: one an application installed is left alone.

    Example:
        >>> import signal, threading
        >>> before = signal.getsignal(signal.SIGINT)
        >>> threading.Thread(target=exit_without_interruption).start()  # not the main thread
        >>> signal.getsignal(signal.SIGINT) is before
        True
    """
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
