"""The ``optuna-cas`` command line: each command is a thin layer over one public function.

Exit codes: 0 success, 1 failure (one clear line on stderr; ``--debug`` adds the traceback),
2 usage error, 130 interrupted, 141 stdout closed by its reader before the end (as for
SIGPIPE), 143 terminated (SIGTERM, cleaned up as for Ctrl-C); ``EXIT_CODES_NOTE`` shows them
in ``--help``. With ``--json`` every command prints exactly one JSON object on stdout.

Start-up is kept short (``optuna-cas --help`` must not take longer than ``import optuna``):
this module imports only the standard library at the top; each command imports what it uses.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from optuna_cas._bars import write_line
from optuna_cas._terminal import escape_for_terminal as esc
from optuna_cas.cli import _common, _process
from optuna_cas.cli._common import (
    CACHE_DIR_ENV,
    DEFAULT_RETRIES,
    ENDPOINT_ENV,
    GLOBAL_OPTIONS_NOTE,
    REQUEST_TIMEOUT,
    STORE_ENV,
    CommandError,
    UsageError,
    _byte_count,
    _emit_json,
    _port,
    _retries,
    _seconds,
)
from optuna_cas.cli._files import cmd_get, cmd_ls, cmd_put
from optuna_cas.cli._maintenance import (
    cmd_cache,
    cmd_dashboard,
    cmd_gc,
    cmd_stats,
    cmd_sync,
    cmd_verify,
)
from optuna_cas.cli._remove import cmd_rm

__all__ = ["COMMANDS", "build_parser", "console_main", "main", "package_version"]

# -- parser ---------------------------------------------------------------------------------

# The top-level help's list of exit codes (docs/cli.md lists the same).
EXIT_CODES_NOTE = """exit codes:
  0    success
  1    failure, or verify / sync found a problem (one line on stderr)
  2    usage error (a mistyped command, option or value)
  130  interrupted (Ctrl-C)
  141  the reader of stdout went away early (optuna-cas ls | head -1), as for SIGPIPE
  143  terminated (SIGTERM: timeout, kill, a scheduler), cleaned up as for Ctrl-C"""

COMMANDS: list[tuple[str, Callable[[argparse.Namespace], int], str, str]] = [
    (
        "put",
        cmd_put,
        "store files; prints their new artifact IDs last, one per line",
        "optuna-cas --store ./artifacts put model.pt config.json\n"
        "optuna-cas --store s3://bucket/runs put model.pt --storage sqlite:///db.sqlite3 --study s --trial 3",
    ),
    (
        "get",
        cmd_get,
        "download an artifact to a new file, into a directory, or to stdout (verified)",
        "optuna-cas --store ./artifacts get 6f1c...-uuid model.pt\n"
        "optuna-cas --store ./artifacts get 6f1c...-uuid downloads/\n"
        "optuna-cas --store ./artifacts get 6f1c...-uuid - | tar -xz",
    ),
    (
        "ls",
        cmd_ls,
        "list everything the store serves, or a study's (all trials) or a trial's artifacts",
        "optuna-cas --store ./artifacts ls\noptuna-cas ls --storage sqlite:///db.sqlite3 --study s --json",
    ),
    (
        "rm",
        cmd_rm,
        "remove an artifact's ref (gc reclaims its blob); with --storage and --study, "
        "its Optuna metadata too",
        "optuna-cas --store ./artifacts rm 6f1c...-uuid\n"
        "optuna-cas --store ./artifacts rm 6f1c...-uuid --storage sqlite:///db.sqlite3 "
        "--study s --trial 3",
    ),
    (
        "gc",
        cmd_gc,
        "delete blobs no artifact uses (safe during uploads)",
        "optuna-cas --store ./artifacts gc --dry-run",
    ),
    (
        "verify",
        cmd_verify,
        "check every ref has its blob and every blob its bytes; or a study's metadata",
        "optuna-cas --store s3://bucket/runs verify --fast\n"
        "optuna-cas --store ./artifacts verify --storage sqlite:///db.sqlite3 --study s --repair",
    ),
    (
        "sync",
        cmd_sync,
        "copy artifacts between stores, moving only missing blobs",
        "optuna-cas sync ./artifacts s3://bucket/runs",
    ),
    (
        "stats",
        cmd_stats,
        "artifacts, blobs, logical vs stored bytes, dedup ratio",
        "optuna-cas --store ./artifacts stats --json",
    ),
    (
        "cache",
        cmd_cache,
        "inspect or clear the local read cache",
        "optuna-cas cache info\noptuna-cas cache prune --max-bytes 5G",
    ),
    (
        "dashboard",
        cmd_dashboard,
        "serve optuna-dashboard over the store (previews, downloads, safe deletes)",
        "optuna-cas --store ./artifacts dashboard sqlite:///db.sqlite3 --port 8080",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render the CLI reference in the docs).

    Example:
        >>> build_parser().parse_args(["--store", "./artifacts", "stats"]).command
        'stats'
        >>> build_parser().parse_args(["stats", "--json"]).json
        True
    """
    top = _common_options(after_command=False)
    # Global options may be repeated after the command. There they are accepted but not
    # shown in the command's help, and have no defaults: argparse copies a subparser's
    # defaults over the namespace, which would reset what was given before the command.
    common = _common_options(after_command=True)

    parser: argparse.ArgumentParser = _Parser(
        prog="optuna-cas",
        parents=[top],
        description="Content-addressed artifact store for Optuna: put, get, gc, verify, sync.",
        epilog="example:\n  optuna-cas --store ./artifacts put model.pt\n\n" + EXIT_CODES_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action=_ShowVersion,
        help='print the version of optuna-cas and exit (with --json: {"version": ...})',
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, func, summary, example in COMMANDS:
        p = sub.add_parser(
            name,
            parents=[common],
            help=summary,
            description=summary,
            epilog="example:\n  " + example.replace("\n", "\n  ") + "\n\n" + GLOBAL_OPTIONS_NOTE,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # A usage error found while the command runs shows the command's own usage line.
        p.set_defaults(func=func, usage=p.format_usage)
        if name in ("put", "ls", "rm"):
            p.add_argument(
                "--storage", metavar="URL", help="Optuna storage URL, e.g. sqlite:///db.sqlite3"
            )
            p.add_argument("--study", metavar="NAME", help="Optuna study name")
            p.add_argument(
                "--trial", type=int, metavar="NUMBER", help="trial number within the study"
            )
        if name == "put":
            p.add_argument("files", nargs="+", metavar="FILE", help="files to store")
            p.add_argument("--mimetype", help="default: guessed from each file name")
            p.add_argument("--encoding", help="content encoding, e.g. gzip (default: guessed)")
        elif name == "get":
            p.add_argument("artifact_id", metavar="ID", help="the artifact ID to download")
            p.add_argument(
                "dest",
                metavar="DEST",
                help="new file in an existing directory; or an existing directory to create "
                "DEST/<recorded file name> in; or - for stdout",
            )
        elif name == "rm":
            p.add_argument("artifact_id", metavar="ID", help="the artifact ID to remove")
        elif name == "gc":
            p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
            p.add_argument(
                "--grace",
                type=_seconds,
                default=7200.0,
                metavar="DURATION",
                help="keep blobs younger than this: seconds, or with s, m, h or d "
                "(default 2h = 7200)",
            )
            p.add_argument(
                "--allow-short-grace",
                action="store_true",
                help="accept --grace <= 1800 s (30m; only if nothing uploads meanwhile)",
            )
        elif name == "verify":
            p.add_argument("--fast", action="store_true", help="check presence and size only")
            p.add_argument("--quarantine", action="store_true", help="move corrupt blobs aside")
            p.add_argument(
                "--storage", metavar="URL", help="with --study: check that study's metadata"
            )
            p.add_argument(
                "--study", metavar="NAME", help="cross-check the study's artifacts with the store"
            )
            p.add_argument(
                "--repair",
                action="store_true",
                help="with --study: rebuild refs from the metadata, record lost ones deleted",
            )
            p.set_defaults(trial=None)
        elif name == "sync":
            p.add_argument("src", metavar="SRC", help="source store URL (must exist)")
            p.add_argument("dst", metavar="DST", help="destination store URL (created if local)")
        elif name == "cache":
            p.add_argument("action", choices=["info", "clear", "prune"])
            p.add_argument(
                "--max-bytes",
                type=_byte_count,
                metavar="N",
                help="prune only: down to N bytes (K, M, G, T: powers of 1024, e.g. 5G)",
            )
        elif name == "dashboard":
            p.add_argument("storage", metavar="STORAGE", help="Optuna storage URL or journal file")
            p.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
            p.add_argument(
                "--port", type=_port, default=8080, help="0 picks a free one (default 8080)"
            )
    return parser


def _common_options(*, after_command: bool) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    options = [
        common.add_argument(
            "--store",
            metavar="URL",
            help=f"store URL (a path, file://, s3://, gs:// or gcs://; default ${STORE_ENV}); only put "
            "and sync's "
            "destination create a new local store",
        ),
        common.add_argument(
            "--endpoint-url",
            metavar="URL",
            help=f"S3-compatible endpoint of s3:// stores (default ${ENDPOINT_ENV})",
        ),
        common.add_argument(
            "--retries",
            type=_retries,
            default=DEFAULT_RETRIES,
            metavar="N",
            help=f"attempts per request, 1 to 100 (default {DEFAULT_RETRIES}: the waits between "
            "them add up to 25-51 s, which rides out a restart of the service; 1 = one attempt, "
            f"no retry). An attempt on s3:// or gs:// gives up after {REQUEST_TIMEOUT[0]:g} s "
            f"without a connection or {REQUEST_TIMEOUT[1]:g} s stuck on one read or write",
        ),
        common.add_argument(
            "--cache-dir",
            metavar="DIR",
            help=f"read cache directory (default ${CACHE_DIR_ENV}, else "
            "$XDG_CACHE_HOME/optuna-cas, else ~/.cache/optuna-cas)",
        ),
        common.add_argument(
            "--no-cache", action="store_true", help="do not read remote stores through the cache"
        ),
        common.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object on stdout instead of text (every command)",
        ),
        common.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            help="print only results: no progress, no summaries",
        ),
        common.add_argument("--debug", action="store_true", help="show tracebacks"),
    ]
    if after_command:  # repeated after the command (see build_parser): hidden, no defaults
        for option in options:
            option.default = option.help = argparse.SUPPRESS
    return common


def package_version() -> str:
    """The installed optuna-cas version, from package metadata.

    Imported only when asked for (``--version``): start-up stays short. Without metadata
    (running from a source tree that was never installed) it is the version in the source.

    Example:
        >>> import optuna_cas
        >>> package_version() == optuna_cas.__version__
        True
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("optuna-cas")
    except PackageNotFoundError:
        from optuna_cas import __version__

        return __version__


class _ShowVersion(argparse.Action):
    """``--version``: like argparse's own, but the version is looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> NoReturn:
        # --json may come before or after --version: the whole command line says whether.
        argv = parser.argv if isinstance(parser, _Parser) else sys.argv[1:]
        if getattr(namespace, "json", False) or _wants_json(argv):
            _emit_json({"version": package_version()})
        else:
            print(f"optuna-cas {package_version()}")
        parser.exit()


class _ParseError(Exception):
    """argparse's complaint about the command line, raised instead of exiting."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (its subparsers too) whose errors reach :func:`main`, for ``--json``.

    ``argv`` is the command line being parsed (set by :func:`main`), for ``--version``.
    """

    argv: Sequence[str] = ()

    def error(self, message: str) -> NoReturn:
        raise _ParseError(self, message)


def console_main() -> int:
    """The ``optuna-cas`` program (and ``python -m optuna_cas``): :func:`main` on ``sys.argv``.

    A Ctrl-C after the command returned is ignored (the process only exits then); an
    application calls :func:`main`, which leaves its handlers alone.

    Example:
        >>> import subprocess, sys; run = "from optuna_cas.cli import console_main; console_main()"
        >>> done = subprocess.run([sys.executable, "-c", run, "--version"], capture_output=True)
        >>> done.returncode, done.stdout.startswith(b"optuna-cas ")
        (0, True)
    """
    return _main(None, as_program=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code.

    Example:
        >>> import tempfile
        >>> main(["--store", tempfile.mkdtemp(), "--quiet", "stats", "--json"])  # doctest: +ELLIPSIS
        {
          "ok": true,
          "artifacts": 0,
        ...
        0
    """
    return _main(argv, as_program=False)


def _main(argv: Sequence[str] | None, *, as_program: bool) -> int:
    _process.escape_what_output_cannot_encode()
    parser = build_parser()
    if isinstance(parser, _Parser):
        parser.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
    except _ParseError as e:
        return _usage_failure(e.parser.format_usage(), str(e), argv)
    if extra:
        # argparse's parse_args would report these with the top-level usage: show the command's
        # unless one of them came before the command (a mistyped global option).
        words = list(sys.argv[1:] if argv is None else argv)
        before = words[: words.index(args.command)] if args.command in words else []
        usage = parser.format_usage() if set(extra) & set(before) else args.usage()
        return _usage_failure(usage, f"unrecognized arguments: {' '.join(extra)}", argv)
    with warnings.catch_warnings():
        # Warnings (e.g. a malformed Optuna entry that was skipped) as one escaped line each,
        # not Python's two-line form that echoes source code.
        warnings.showwarning = _show_warning
        return _run(args, as_program=as_program)


def _usage_failure(usage: str, message: str, argv: Sequence[str] | None) -> int:
    """A command line argparse refused: the usage line and one error line; exit code 2.

    Every error line starts ``optuna-cas: error:``, whether argparse or the command found it.
    """
    print(usage, end="", file=sys.stderr)
    print(f"optuna-cas: error: {message}", file=sys.stderr)
    if _wants_json(sys.argv[1:] if argv is None else argv):
        _json_failure("usage", UsageError(message))
    return 2


def _run(args: argparse.Namespace, *, as_program: bool) -> int:
    with (
        _process.quiet_retries(args.quiet),
        _process.library_log_lines(),
        _process.closed_stdout_fails(),
        _process.sigterm_interrupts(),
    ):
        code = _run_command(args)
        if as_program:
            _process.exit_without_interruption()
        if code != 0:
            _drop_what_stdout_could_not_take()
        return code


def _run_command(args: argparse.Namespace) -> int:
    """Run the command; a failure is one line on stderr, and one JSON document with --json.

    A command that has results even when it fails (``put``: the files stored before the error)
    sets ``args.partial_result``: its keys go into the failure document too.
    """
    _common.PRINTED.clear()
    try:
        code = int(args.func(args))
        if sys.stdout is not None:  # None when started with stdout closed (>&-)
            sys.stdout.flush()  # here, so that a reader gone early is handled below, not at exit
        return code
    except UsageError as e:
        print(args.usage(), end="", file=sys.stderr)
        print(f"optuna-cas: error: {_one_line(e)}", file=sys.stderr)
        if args.json:
            _json_failure("usage", e, _partial_result(args))
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated): the same cleanup ran
        if _common.PRINTED and args.command != "dashboard":
            return 0 if _common.PRINTED[-1] else 1  # the result is out: a second would be noise
        terminated = isinstance(e, _process.Terminated)
        kind = "terminated" if terminated else "interrupted"
        print(f"optuna-cas: {kind}", file=sys.stderr)
        if args.json:
            _json_failure(kind, e, _partial_result(args))
        return _process.TERMINATED_EXIT_STATUS if terminated else 130
    except BrokenPipeError as e:
        if not _stdout_reader_gone():
            return _failed(args, e)  # another pipe (a FIFO given as a destination): an error
        # The reader of stdout went away (``ls | head -1``, ``get ID - | head``): no message,
        # and the status of a process killed by SIGPIPE, as coreutils' commands end there.
        _stdout_to_devnull()
        return _SIGPIPE_EXIT_STATUS
    except Exception as e:
        return _failed(args, e)


def _failed(args: argparse.Namespace, e: Exception) -> int:
    """Report a failed command (one line, or the traceback with --debug); its exit code."""
    if args.debug:
        _print_traceback()
    print(f"optuna-cas: error: {_describe(e)}", file=sys.stderr)
    if args.json:
        _json_failure("error", e, _partial_result(args))
    return 1


def _partial_result(args: argparse.Namespace) -> dict[str, Any]:
    """What the command had done when it failed, for its failure document (see _run_command)."""
    partial: dict[str, Any] = getattr(args, "partial_result", None) or {}
    return partial


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


# 128 + SIGPIPE (13): what a shell reports for a command the signal ended.
_SIGPIPE_EXIT_STATUS = 141


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether an unparsable command line asked for ``--json``, or a prefix argparse takes."""
    return any(len(arg) >= 4 and "--json".startswith(arg) for arg in argv)


def _json_failure(kind: str, error: BaseException, partial: dict[str, Any] | None = None) -> None:
    """With ``--json``, a failure is one JSON object on stdout too (the message also on stderr).

    ``kind``: ``"usage"`` (exit code 2), ``"error"`` (1), ``"interrupted"`` (130) or
    ``"terminated"`` (143).
    ``partial``: keys added after ``"error"``: what the command did before it failed.
    """
    message = " ".join(_with_notes(error).split()) or type(error).__name__
    public = next(c for c in type(error).__mro__ if not c.__name__.startswith("_"))
    error_record = {"kind": kind, "type": public.__name__, "message": message}
    try:
        _emit_json({"ok": False, "error": error_record, **(partial or {})})
    except (OSError, ValueError, AttributeError):
        # stdout itself failed (a full disk, closed): the message is on stderr already.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            _stdout_to_devnull()


def _drop_what_stdout_could_not_take() -> None:
    """After a failure, a stdout that cannot be flushed (a full disk) goes to /dev/null.

    It keeps the text it could not write, and the interpreter's flush at exit failed again:
    ``Exception ignored ... No space left on device`` after the error line, and exit code 120
    instead of 1 (found in review; ``--json`` had this already, see _json_failure).
    """
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            _stdout_to_devnull()


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that the flush at interpreter exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _describe(error: Exception) -> str:
    """One line for an error: ours and the usual OS errors as they are, others with a type."""
    from optuna_cas.exceptions import OptunaCasError

    known = (CommandError, OptunaCasError, OSError, ValueError, TypeError)
    if isinstance(error, UnicodeEncodeError) and sys.getfilesystemencoding() != "utf-8":
        # A file name (``get ID DIR/`` of a recorded name like ``modèle.pt``) that the file
        # system encoding of a C or POSIX locale cannot spell: the cure is the locale.
        return (
            f"{_one_line(error)} (file names are encoded as {sys.getfilesystemencoding()!r} "
            "here: run under a UTF-8 locale, e.g. LC_ALL=C.UTF-8, or with PYTHONUTF8=1)"
        )
    if isinstance(error, known):
        return _one_line(error)
    return f"{type(error).__name__}: {_one_line(error)} (--debug for details)"


def _one_line(message: object) -> str:
    """An error or warning as one line, safe for a terminal (it may quote stored values)."""
    return esc(" ".join(_with_notes(message).split()) or type(message).__name__)


def _with_notes(message: object) -> str:
    """``message``, then an exception's notes (what a failure left behind, say)."""
    return " ".join(map(str, [message, *getattr(message, "__notes__", ())]))


def _print_traceback() -> None:
    lines = traceback.format_exc().splitlines()
    print("\n".join(esc(line) for line in lines), file=sys.stderr)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    write_line(f"optuna-cas: warning: {_one_line(message)}", sys.stderr)  # above a bar
