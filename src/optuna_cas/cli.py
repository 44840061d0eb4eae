"""The ``optuna-cas`` command line: each command is a thin layer over one public function.

Exit codes: 0 success, 1 failure (one clear line on stderr; ``--debug`` adds the traceback),
2 usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import mimetypes
import os
import sys
import traceback
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from optuna_cas._json import clip
from optuna_cas._progress_bar import ProgressBar, human_bytes
from optuna_cas._terminal import escape_for_terminal as esc
from optuna_cas.exceptions import ArtifactNotFound, OptunaCasError
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["main"]

STORE_ENV = "OPTUNA_CAS_STORE"
ENDPOINT_ENV = "OPTUNA_CAS_ENDPOINT_URL"


class UsageError(Exception):
    """A problem with how the command was called (exit code 2)."""


def _print(args: argparse.Namespace, text: str) -> None:
    # Callers pass every value that comes from a ref, an attribute, a file name or an error
    # through esc() (untrusted text: see _terminal); the message itself is ours.
    if not args.quiet:
        print(text)


def _bar(args: argparse.Namespace) -> ProgressBar:
    return ProgressBar(enabled=not args.quiet)


def _open(
    args: argparse.Namespace, url: str | None = None, *, cached: bool = False
) -> ContentAddressedArtifactStore:
    from optuna_cas import Backoff, open_store

    url = url or args.store or os.environ.get(STORE_ENV)
    if not url:
        raise UsageError(f"no store given: pass --store URL or set {STORE_ENV}")
    endpoint = args.endpoint_url or os.environ.get(ENDPOINT_ENV)
    store: ContentAddressedArtifactStore = open_store(
        url, endpoint_url=endpoint if url.startswith("s3://") else None
    )
    if args.retries > 1:
        store = Backoff(store, max_retries=args.retries)
    if cached and not args.no_cache and url.split("://", 1)[0] in ("s3", "gs", "gcs"):
        from optuna_cas.middleware.cache import CachedArtifactStore

        store = CachedArtifactStore(store, directory=args.cache_dir)
    return store


def _optuna_target(args: argparse.Namespace) -> tuple[Any, Any] | None:
    """(study_or_trial, storage) from --storage/--study/--trial, or None if not given."""
    if not (args.study or args.storage or args.trial is not None):
        return None
    if not (args.study and args.storage):
        raise UsageError("--study and --storage go together (and --trial needs both)")
    from optuna_cas._optuna import import_optuna

    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=args.study, storage=args.storage)
    except KeyError as e:
        raise OptunaCasError(f"no study named {args.study!r} in {args.storage}") from e
    if args.trial is None:
        return study, study._storage
    storage = study._storage
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, args.trial)
    except KeyError as e:
        raise OptunaCasError(f"study {args.study!r} has no trial number {args.trial}") from e
    return storage.get_trial(trial_id), storage


# -- commands -------------------------------------------------------------------------------


def cmd_put(args: argparse.Namespace) -> int:
    from optuna_cas import upload_artifact

    path = args.file
    # Checked before the store is opened; FIFOs and devices are refused by the upload itself.
    if os.path.isdir(path):
        raise OptunaCasError(f"{path!r} is a directory, not a regular file")
    if not os.path.exists(path):
        raise OptunaCasError(f"no such file: {path!r}")
    store = _open(args)
    target = _optuna_target(args)
    if target is not None:
        artifact_id = upload_artifact(
            artifact_store=store,
            file_path=path,
            study_or_trial=target[0],
            storage=target[1],
            mimetype=args.mimetype,
            encoding=args.encoding,
        )
        ref = store.get_ref(artifact_id)
    else:
        filename = os.path.basename(path)
        guessed, guessed_encoding = mimetypes.guess_type(filename)
        artifact_id = str(uuid.uuid4())
        ref = store.put(
            artifact_id,
            path,
            filename=filename,
            mimetype=args.mimetype or guessed or "application/octet-stream",
            encoding=args.encoding or guessed_encoding,
        )
    _print(args, f"stored {esc(ref.filename)} ({human_bytes(ref.size)}, {ref.digest})")
    print(esc(artifact_id))  # always the last line: scripts capture it
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from optuna_cas import download_artifact

    store = _open(args, cached=True)
    bar = _bar(args)
    ref = None
    if bar.enabled and not os.path.lexists(args.dest):
        try:
            ref = store.get_ref(args.artifact_id)
        except ArtifactNotFound:
            ref = None  # maybe written by Optuna's own store: download_artifact handles it
    if ref is None:
        download_artifact(artifact_store=store, file_path=args.dest, artifact_id=args.artifact_id)
    else:
        # download_artifact's steps, with a progress bar on the transfer.
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            bar(f"get {esc(ref.filename or args.artifact_id)}", done, ref.size)

        store.content.materialize_blob(ref.digest, args.dest, progress=advance)
        bar.close()
    size = human_bytes(os.path.getsize(args.dest))
    _print(args, f"wrote {esc(args.dest)} ({size}, verified)")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from optuna_cas import get_all_artifact_meta

    target = _optuna_target(args)
    rows: list[dict[str, Any]]
    if target is not None:
        rows = [asdict(meta) for meta in get_all_artifact_meta(target[0], storage=target[1])]
    else:
        store = _open(args)
        rows = [
            {
                "artifact_id": ref.artifact_id,
                "filename": ref.filename,
                "mimetype": ref.mimetype,
                "encoding": ref.encoding,
                "digest": str(ref.digest),
                "size": ref.size,
                "created": ref.created,
            }
            for ref in sorted(store.content.iter_refs(), key=lambda r: r.created)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        _print(args, "no artifacts")
        return 0
    print(f"{'ARTIFACT ID':36}  {'SIZE':>10}  {'MIMETYPE':24}  FILENAME")
    for row in rows:
        size = human_bytes(row["size"]) if row.get("size") is not None else "?"
        artifact_id, mimetype = esc(row["artifact_id"]), esc(row["mimetype"])[:24]
        print(f"{artifact_id:36}  {size:>10}  {mimetype:24}  {esc(row['filename'])}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from optuna_cas import delete_artifact

    store = _open(args)
    target = _optuna_target(args)
    if target is not None:
        delete_artifact(
            artifact_store=store,
            artifact_id=args.artifact_id,
            study_or_trial=target[0],
            storage=target[1],
        )
    else:
        store.remove(args.artifact_id)
    _print(args, f"removed {esc(args.artifact_id)} (run 'optuna-cas gc' to reclaim unused blobs)")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from optuna_cas import gc

    bar = _bar(args)
    report = gc(
        _open(args),
        dry_run=args.dry_run,
        grace_period=args.grace,
        allow_short_grace=args.allow_short_grace,
        progress=bar,
    )
    bar.close()
    verb = "would delete" if args.dry_run else "deleted"
    if args.dry_run:
        for key in report.deleted:
            _print(args, f"  {esc(key)}")
    _print(
        args,
        f"{verb} {report.deleted_count} unreferenced blobs ({human_bytes(report.bytes_freed)}); "
        f"scanned {report.blobs_scanned} blobs, {report.refs_scanned} refs; "
        f"kept {report.kept_young} younger than the grace period",
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from optuna_cas import verify

    if args.study or args.storage:
        return _verify_study(args)
    if args.repair:
        raise UsageError("--repair mends a study's metadata: give --storage URL --study NAME")
    bar = _bar(args)
    report = verify(_open(args), deep=not args.fast, quarantine=args.quarantine, progress=bar)
    bar.close()
    for key in report.corrupt:
        print(f"CORRUPT  {esc(key)}" + ("  (quarantined)" if key in report.quarantined else ""))
    for missing in report.missing:
        print(
            f"MISSING  ref {esc(missing.artifact_id)} -> {esc(missing.digest)} "
            f"({esc(missing.problem)})"
        )
    for artifact_id in report.malformed_refs:
        print(f"BADREF   {esc(artifact_id)}")
    mode = "deep" if report.deep else "fast"
    _print(
        args,
        f"{mode} verify: {report.refs_checked} refs, {report.blobs_checked} blobs "
        f"({human_bytes(report.bytes_hashed)} hashed): {len(report.corrupt)} corrupt, "
        f"{len(report.missing)} missing, {len(report.orphans)} orphans (gc reclaims them)",
    )
    return 0 if report.ok else 1


# Findings of verify --study, in print order: (report list, label, words in the summary).
_STUDY_FINDINGS = [
    ("repairable", "DANGLING", "dangling with the blob stored"),
    ("lost", "LOST", "lost"),
    ("missing_blobs", "NOBLOB", "refs without their blob"),
    ("conflicts", "CONFLICT", "conflicts"),
    ("malformed", "MALFORMED", "malformed"),
    ("rebuilt", "REBUILT", "refs rebuilt"),
    ("deleted", "DELETED", "deletions recorded"),
]
_UNREFERENCED_SHOWN = 20


def _verify_study(args: argparse.Namespace) -> int:
    """``verify --storage URL --study NAME [--repair]``: the study's metadata against the store.

    Only the study is checked, not the whole store: a store serves many studies, and its own
    check (``verify`` alone) re-reads every blob.
    """
    from optuna_cas import reconcile

    if args.fast or args.quarantine:
        raise UsageError("--fast and --quarantine check the whole store: run them without --study")
    store = _open(args)
    target = _optuna_target(args)
    assert target is not None
    report = reconcile(store, target[0], repair=args.repair)
    if args.json:
        document = {"study": args.study, **asdict(report), "ok": report.ok}
        print(json.dumps(document | {"counts": report.counts}, indent=2))
        return 0 if report.ok else 1
    for name, label, _ in _STUDY_FINDINGS:
        for finding in getattr(report, name):
            where = "study" if finding.trial_number is None else f"trial {finding.trial_number}"
            print(f"{label:9}  {esc(finding.artifact_id)}  ({where}): {esc(finding.reason)}")
    for finding in report.unreferenced[:_UNREFERENCED_SHOWN]:
        _print(args, f"UNNAMED    {esc(finding.artifact_id)}: {esc(finding.reason)}")
    if len(report.unreferenced) > _UNREFERENCED_SHOWN:
        more = len(report.unreferenced) - _UNREFERENCED_SHOWN
        _print(args, f"UNNAMED    ... and {more} more (--json lists them all)")
    counts = ", ".join(
        f"{report.counts[name]} {words}"
        for name, _, words in _STUDY_FINDINGS
        if args.repair or name not in ("rebuilt", "deleted")
    )
    _print(
        args,
        f"study '{esc(args.study)}': {report.entries_checked} artifact "
        f"entr{'y' if report.entries_checked == 1 else 'ies'} checked: {counts}; "
        f"{len(report.unreferenced)} of {report.refs_listed} refs in the store named by no "
        "entry of this study (other studies sharing the store may use them; never deleted)",
    )
    if not report.ok and not args.repair and (report.repairable or report.lost):
        _print(args, "run again with --repair to rebuild refs and record lost artifacts deleted")
    return 0 if report.ok else 1


def cmd_sync(args: argparse.Namespace) -> int:
    from optuna_cas import sync

    bar = _bar(args)
    report = sync(_open(args, args.src), _open(args, args.dst), progress=bar)
    bar.close()
    _print(
        args,
        f"copied {len(report.refs_copied)} refs and {report.blobs_copied} blobs "
        f"({human_bytes(report.bytes_copied)}); {report.refs_skipped} refs and "
        f"{report.blobs_skipped} blobs were already there",
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from optuna_cas import stats

    figures = stats(_open(args))
    record = asdict(figures) | {"dedup_ratio": figures.dedup_ratio}
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"artifacts      {figures.artifacts}")
    print(f"unique blobs   {figures.unique_blobs} ({figures.unreferenced_blobs} unreferenced)")
    print(f"logical bytes  {human_bytes(figures.logical_bytes)}")
    print(f"stored bytes   {human_bytes(figures.stored_bytes)}")
    print(f"dedup ratio    {figures.dedup_ratio:.2f}x")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from optuna_cas.middleware.cache import DiskBlobCache

    cache = DiskBlobCache(args.cache_dir)
    try:
        if args.action == "clear":
            cache.clear()
        elif args.action == "prune":
            if args.max_bytes is None:
                raise UsageError("cache prune needs --max-bytes N")
            cache.prune(args.max_bytes)
        info = cache.info()
    finally:
        cache.close()
    if args.json:
        print(json.dumps(asdict(info) | {"directory": str(info.directory)}, indent=2))
    else:
        print(f"directory  {esc(info.directory)}")
        print(f"entries    {info.entries}")
        print(f"size       {human_bytes(info.size_bytes)} of {human_bytes(info.size_limit)}")
        print(f"hits       {info.hits}")
        print(f"misses     {info.misses}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_cas.dashboard import serve_dashboard

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port number from 0 to 65535")
    store = _open(args, cached=True)

    def ready(url: str) -> None:
        # The URL is the result (scripts and tests read it: --port 0 picks a free port).
        print(f"optuna-dashboard at {esc(url)} (Ctrl-C to stop)", flush=True)

    try:
        serve_dashboard(
            args.storage,
            store,
            host=args.host,
            port=args.port,
            ready=ready,
            log_requests=not args.quiet,
        )
    except KeyboardInterrupt:
        _print(args, "stopped")  # Ctrl-C is how a server is meant to end
    return 0


# -- parser ---------------------------------------------------------------------------------

COMMANDS: list[tuple[str, Callable[[argparse.Namespace], int], str, str]] = [
    (
        "put",
        cmd_put,
        "store a file; prints the new artifact ID last",
        "optuna-cas --store ./artifacts put model.pt\n"
        "optuna-cas --store s3://bucket/runs put model.pt --storage sqlite:///db.sqlite3 --study s --trial 3",
    ),
    (
        "get",
        cmd_get,
        "download an artifact to a new file (verified)",
        "optuna-cas --store ./artifacts get 6f1c...-uuid model.pt",
    ),
    (
        "ls",
        cmd_ls,
        "list the store's artifacts, or a study's / trial's",
        "optuna-cas --store ./artifacts ls\noptuna-cas ls --storage sqlite:///db.sqlite3 --study s --trial 0 --json",
    ),
    (
        "rm",
        cmd_rm,
        "remove an artifact (its blob is reclaimed by gc)",
        "optuna-cas --store ./artifacts rm 6f1c...-uuid",
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
        "optuna-cas cache info\noptuna-cas cache prune --max-bytes 5000000000",
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
        >>> build_parser().parse_args(["--store", "memory://", "stats"]).command
        'stats'
    """
    top = _common_options(suppress_defaults=False)
    # Options repeated after the command must not reset what was given before it: argparse
    # copies a subparser's defaults over the namespace, so the sub-level copies have none.
    common = _common_options(suppress_defaults=True)

    parser = argparse.ArgumentParser(
        prog="optuna-cas",
        parents=[top],
        description="Content-addressed artifact store for Optuna: put, get, gc, verify, sync.",
        epilog="example:\n  optuna-cas --store ./artifacts put model.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, func, summary, example in COMMANDS:
        p = sub.add_parser(
            name,
            parents=[common],
            help=summary,
            description=summary,
            epilog="example:\n  " + example.replace("\n", "\n  "),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        if name in ("put", "ls", "rm"):
            p.add_argument(
                "--storage", metavar="URL", help="Optuna storage URL, e.g. sqlite:///db.sqlite3"
            )
            p.add_argument("--study", metavar="NAME", help="Optuna study name")
            p.add_argument(
                "--trial", type=int, metavar="NUMBER", help="trial number within the study"
            )
        if name == "put":
            p.add_argument("file", help="file to store")
            p.add_argument("--mimetype", help="default: guessed from the file name")
            p.add_argument("--encoding", help="content encoding, e.g. gzip (default: guessed)")
        elif name == "get":
            p.add_argument("artifact_id", metavar="ID")
            p.add_argument("dest", metavar="DEST", help="new file to create")
        elif name == "rm":
            p.add_argument("artifact_id", metavar="ID")
        elif name in ("ls", "stats"):
            p.add_argument("--json", action="store_true", help="machine-readable output")
        elif name == "gc":
            p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
            p.add_argument(
                "--grace",
                type=_seconds,
                default=7200.0,
                metavar="SECONDS",
                help="keep blobs younger than this (default 7200)",
            )
            p.add_argument(
                "--allow-short-grace",
                action="store_true",
                help="accept --grace <= 1800 s (only if nothing uploads meanwhile)",
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
            p.add_argument("--json", action="store_true", help="machine-readable output")
            p.set_defaults(trial=None)
        elif name == "sync":
            p.add_argument("src", metavar="SRC", help="source store URL")
            p.add_argument("dst", metavar="DST", help="destination store URL")
        elif name == "cache":
            p.add_argument("action", choices=["info", "clear", "prune"])
            p.add_argument(
                "--max-bytes", type=_byte_count, metavar="N", help="prune down to N bytes"
            )
            p.add_argument("--json", action="store_true", help="machine-readable output")
        elif name == "dashboard":
            p.add_argument("storage", metavar="STORAGE", help="Optuna storage URL or journal file")
            p.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
            p.add_argument(
                "--port", type=int, default=8080, help="0 picks a free one (default 8080)"
            )
    return parser


def _common_options(*, suppress_defaults: bool) -> argparse.ArgumentParser:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress_defaults else value

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="URL",
        default=default(None),
        help=f"store URL (file://, s3://, gs://; default ${STORE_ENV})",
    )
    common.add_argument(
        "--endpoint-url",
        metavar="URL",
        default=default(None),
        help=f"S3-compatible endpoint (default ${ENDPOINT_ENV})",
    )
    common.add_argument(
        "--retries",
        type=_retries,
        default=default(5),
        metavar="N",
        help="attempts per request, 1 to 100 (default 5; 1 = no retry)",
    )
    common.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=default(None),
        help="read cache directory (default: see docs)",
    )
    common.add_argument(
        "--no-cache",
        action="store_true",
        default=default(False),
        help="do not read remote stores through the cache",
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="print only results"
    )
    common.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks"
    )
    return common


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code.

    Example:
        >>> main(["--store", "memory://", "--quiet", "stats", "--json"])  # doctest: +ELLIPSIS
        {
          "artifacts": 0,
        ...
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        # Warnings (e.g. a malformed Optuna entry that was skipped) as one escaped line each,
        # not Python's two-line form that echoes source code.
        warnings.showwarning = _show_warning
        return _run(parser, args)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"optuna-cas: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optuna-cas: interrupted", file=sys.stderr)
        return 130
    except (OptunaCasError, OSError, ValueError, TypeError) as e:
        if args.debug:
            _print_traceback()
        print(f"optuna-cas: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        if args.debug:
            _print_traceback()
        name = type(e).__name__
        print(f"optuna-cas: error: {name}: {_one_line(e)} (--debug for details)", file=sys.stderr)
        return 1


def _one_line(message: object) -> str:
    """An error or warning as one line, safe for a terminal (it may quote stored values)."""
    text = str(message) or type(message).__name__
    return esc(" ".join(text.split()))


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
    print(f"optuna-cas: warning: {_one_line(message)}", file=sys.stderr)


# -- argument types: a bad value is a usage error naming the option and the value -------------


def _retries(text: str) -> int:
    """``--retries``: attempts per request, 1 (no retry) to 100."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{clip(text, 40)} is not a whole number from 1 to 100")
    return value


def _seconds(text: str) -> float:
    """``--grace``: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{clip(text, 40)} is not a number of seconds >= 0")
    return value


def _byte_count(text: str) -> int:
    """``--max-bytes``: a whole number of bytes >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{clip(text, 40)} is not a whole number of bytes >= 0")
    return value
