"""The ``optuna-cas`` command line: each command is a thin layer over one public function.

Exit codes: 0 success, 1 failure (one clear line on stderr; ``--debug`` adds the traceback),
2 usage error. With ``--json`` every command prints exactly one JSON object on stdout.

Start-up is kept short (``optuna-cas --help`` must not take longer than ``import optuna``):
this module imports only the standard library at the top; each command imports what it uses.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from optuna_cas._terminal import escape_for_terminal as esc
from optuna_cas._terminal import human_bytes

if TYPE_CHECKING:
    from optuna_cas._bars import TerminalProgress
    from optuna_cas.refs import ArtifactRef
    from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["main"]

STORE_ENV = "OPTUNA_CAS_STORE"
ENDPOINT_ENV = "OPTUNA_CAS_ENDPOINT_URL"
GLOBAL_OPTIONS_NOTE = (
    "global options (--store, --json, -q, --retries, ...) may also follow the command;\n"
    "see 'optuna-cas --help'"
)


class UsageError(Exception):
    """A problem with how the command was called (exit code 2)."""


class CommandError(Exception):
    """A failure explained in the CLI's own words (exit code 1)."""


# -- output ---------------------------------------------------------------------------------


def _print(args: argparse.Namespace, text: str) -> None:
    """A human line on stdout (not with ``-q`` or ``--json``).

    Callers pass every value that comes from a ref, an attribute, a file name or an error
    through esc() (untrusted text: see _terminal); the message itself is ours.
    """
    if not args.quiet and not args.json:
        print(text)


def _note(args: argparse.Namespace, text: str) -> None:
    """A human line on stderr: for when stdout carries data (``get ID -``)."""
    if not args.quiet:
        print(text, file=sys.stderr)


def _emit_json(document: dict[str, Any]) -> None:
    """The one JSON object a command prints with ``--json``."""
    import json

    print(json.dumps(document, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)  # Path, Digest, ...


def _report_json(report: Any) -> dict[str, Any]:
    """A report dataclass as JSON: its fields and its computed properties (``ok``, ...)."""
    from dataclasses import asdict

    record = asdict(report)
    for name in dir(type(report)):
        if not name.startswith("_") and isinstance(getattr(type(report), name), property):
            record[name] = getattr(report, name)
    return record


def _bar(args: argparse.Namespace, unit: str = "B") -> TerminalProgress:
    from optuna_cas._bars import TerminalProgress

    return TerminalProgress(enabled=not args.quiet, unit=unit)


# -- stores and Optuna targets ----------------------------------------------------------------


def _open(
    args: argparse.Namespace,
    url: str | None = None,
    *,
    cached: bool = False,
    create: bool = False,
) -> ContentAddressedArtifactStore:
    """The store of ``--store`` (or ``url``); only ``create=True`` may create a local one."""
    from optuna_cas import Backoff, open_store

    url = url or args.store or os.environ.get(STORE_ENV)
    if not url:
        raise UsageError(f"no store given: pass --store URL or set {STORE_ENV}")
    endpoint = args.endpoint_url or os.environ.get(ENDPOINT_ENV)
    store: ContentAddressedArtifactStore = open_store(
        url, endpoint_url=endpoint if url.startswith("s3://") else None, create=create
    )
    if args.retries > 1:
        store = Backoff(store, max_retries=args.retries)
    if cached and not args.no_cache and url.split("://", 1)[0] in ("s3", "gs", "gcs"):
        from optuna_cas.middleware.cache import CachedArtifactStore

        store = CachedArtifactStore(store, directory=args.cache_dir)
    return store


def _load_study(args: argparse.Namespace) -> Any:
    """The study of ``--storage``/``--study``, or None if neither was given."""
    if not (args.study or args.storage or args.trial is not None):
        return None
    if not (args.study and args.storage):
        raise UsageError("--study and --storage go together (and --trial needs both)")
    from optuna_cas._optuna import import_optuna

    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=args.study, storage=args.storage)
    except KeyError as e:
        raise CommandError(f"no study named {args.study!r} in {args.storage}") from e


def _trial(args: argparse.Namespace, study: Any) -> Any:
    """The FrozenTrial ``--trial NUMBER`` names (the number the user typed, never the ID)."""
    storage = study._storage
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, args.trial)
    except KeyError as e:
        raise CommandError(f"study {args.study!r} has no trial number {args.trial}") from e
    return storage.get_trial(trial_id)


def _optuna_target(args: argparse.Namespace, *, uploading: bool = False) -> tuple[Any, Any] | None:
    """(study_or_trial, storage) from --storage/--study/--trial, or None if not given."""
    study = _load_study(args)
    if study is None:
        return None
    if args.trial is None:
        return study, study._storage
    trial = _trial(args, study)
    if uploading and trial.state.is_finished():
        raise CommandError(
            f"trial {args.trial} of study {args.study!r} has finished "
            f"({trial.state.name}) and Optuna allows no new artifacts on it; "
            "leave out --trial to attach the file to the study"
        )
    return trial, study._storage


# -- commands -------------------------------------------------------------------------------


def cmd_put(args: argparse.Namespace) -> int:
    # Checked before the store is opened; FIFOs and devices are refused by the upload itself.
    for path in args.files:
        if os.path.isdir(path):
            raise CommandError(f"{path!r} is a directory, not a regular file")
        if not os.path.exists(path):
            raise CommandError(f"no such file: {path!r}")
    store = _open(args, create=True)
    target = _optuna_target(args, uploading=True)
    rows: list[dict[str, Any]] = []
    try:
        for path in args.files:
            rows.append(_put_one(args, store, target, path))
    except BaseException:
        if rows and not args.quiet:
            stored = ", ".join(f"{esc(r['filename'])} as {esc(r['artifact_id'])}" for r in rows)
            print(f"optuna-cas: stored before the error: {stored}", file=sys.stderr)
        raise
    if args.json:
        _emit_json({"artifacts": rows})
        return 0
    for row in rows:  # always the last lines, one per file in order: scripts capture them
        print(esc(row["artifact_id"]))
    return 0


def _put_one(
    args: argparse.Namespace,
    store: ContentAddressedArtifactStore,
    target: tuple[Any, Any] | None,
    path: str,
) -> dict[str, Any]:
    import mimetypes
    import uuid

    from optuna_cas import upload_artifact
    from optuna_cas.middleware.watch import TransferWatch

    filename = os.path.basename(path)
    with _bar(args) as bar:
        watch = TransferWatch(
            f"put {esc(filename)}", os.path.getsize(path), bar if bar.enabled else None
        )
        watched = watch.watch(store)
        if target is not None:
            artifact_id = upload_artifact(
                artifact_store=watched,
                file_path=path,
                study_or_trial=target[0],
                storage=target[1],
                mimetype=args.mimetype,
                encoding=args.encoding,
            )
            ref = watched.get_ref(artifact_id)
        else:
            guessed, guessed_encoding = mimetypes.guess_type(filename)
            artifact_id = str(uuid.uuid4())
            ref = watched.put(
                artifact_id,
                path,
                filename=filename,
                mimetype=args.mimetype or guessed or "application/octet-stream",
                encoding=args.encoding or guessed_encoding,
            )
    already = not watch.stored_new_blob
    what = f"{human_bytes(ref.size)}, {ref.digest}"
    if already:
        _print(
            args,
            f"{esc(ref.filename)}: these bytes were already stored ({what}); "
            "only a new artifact ID was recorded",
        )
    else:
        _print(args, f"stored {esc(ref.filename)} ({what})")
    return _ref_json(ref) | {"path": path, "already_stored": already}


def _ref_json(ref: ArtifactRef) -> dict[str, Any]:
    return {
        "artifact_id": ref.artifact_id,
        "filename": ref.filename,
        "mimetype": ref.mimetype,
        "encoding": ref.encoding,
        "digest": str(ref.digest),
        "size": ref.size,
        "created": ref.created,
    }


def cmd_get(args: argparse.Namespace) -> int:
    from optuna_cas.exceptions import ArtifactNotFound
    from optuna_cas.middleware.watch import TransferWatch

    to_stdout = args.dest == "-"
    if to_stdout and args.json:
        raise UsageError("get ID - writes the artifact to stdout: --json has no room there")
    if to_stdout and sys.stdout.isatty():
        raise CommandError(
            "refusing to write an artifact to a terminal: redirect stdout or give a file"
        )
    store = _open(args, cached=True)
    try:
        ref: ArtifactRef | None = store.get_ref(args.artifact_id)
    except ArtifactNotFound:
        ref = None  # maybe written by Optuna's own store: read below, or not found there
    dest = args.dest
    if not to_stdout and (os.path.isdir(dest) or dest.endswith(("/", os.sep))):
        dest = os.path.join(dest, _file_name_for(args.artifact_id, ref))
    name = ref.filename if ref is not None and ref.filename else args.artifact_id
    with _bar(args) as bar:
        watch = TransferWatch(
            f"get {esc(name)}", ref.size if ref else None, bar if bar.enabled else None
        )
        watched = watch.watch(store)
        if to_stdout:
            size = _copy_to_stdout(watched, args.artifact_id)
        else:
            from optuna_cas import download_artifact

            download_artifact(artifact_store=watched, file_path=dest, artifact_id=args.artifact_id)
            size = os.path.getsize(dest)
    checked = "verified" if ref is not None else "not verified: Optuna's own store kept no digest"
    if args.json:
        _emit_json(
            {
                "artifact_id": args.artifact_id,
                "path": dest,
                "size": size,
                "digest": str(ref.digest) if ref is not None else None,
                "verified": ref is not None,
            }
        )
    elif to_stdout:
        _note(args, f"wrote {human_bytes(size)} to stdout ({checked})")
    else:
        _print(args, f"wrote {esc(dest)} ({human_bytes(size)}, {checked})")
    return 0


def _file_name_for(artifact_id: str, ref: ArtifactRef | None) -> str:
    """The name ``get ID DIR/`` gives the file: the recorded file name, if it is a safe one.

    The name comes from a ref anyone with the store can write: it must be a single plain
    path component, or it could lead the file out of DIR or hide what it is.
    """
    if ref is None or not ref.filename:
        return artifact_id  # Optuna's own store records no file name
    name = ref.filename
    if name in (".", "..") or "/" in name or "\\" in name or esc(name) != name:
        raise CommandError(
            f"artifact {artifact_id!r} records the file name {name!r}, which is not "
            "a plain file name: give DEST as a file path"
        )
    return name


def _copy_to_stdout(store: ContentAddressedArtifactStore, artifact_id: str) -> int:
    """Stream an artifact to stdout; the reader checks the digest as it goes."""
    from optuna_cas.digest import CHUNK_SIZE, readinto

    out = sys.stdout.buffer
    written = 0
    view = memoryview(bytearray(CHUNK_SIZE))
    with store.open_reader(artifact_id) as reader:
        while n := readinto(reader, view):
            out.write(view[:n])
            written += n
    out.flush()
    return written


def cmd_ls(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from optuna_cas._listing import OPTUNA_STORE, list_store_artifacts, list_study_artifacts

    study = _load_study(args)
    if study is not None:
        if args.trial is not None:
            _trial(args, study)  # the error names the number typed
        rows = list_study_artifacts(study, args.trial)
    else:
        rows = list_store_artifacts(_open(args).content)
    if args.json:
        _emit_json({"artifacts": [asdict(row) for row in rows]})
        return 0
    if not rows:
        _print(args, "no artifacts")
        return 0
    by_trial = study is not None
    header = f"{'ARTIFACT ID':36}  " + ("TRIAL  " if by_trial else "")
    print(header + f"{'SIZE':>10}  {'MIMETYPE':24}  FILENAME")
    for row in rows:
        size = human_bytes(row.size) if row.size is not None else "?"
        trial = ("-" if row.trial is None else str(row.trial)) if by_trial else ""
        mimetype = esc(row.mimetype or "-")[:24]
        line = f"{esc(row.artifact_id):36}  " + (f"{trial:>5}  " if by_trial else "")
        print(line + f"{size:>10}  {mimetype:24}  {esc(row.filename or '-')}")
    legacy = sum(1 for row in rows if row.origin == OPTUNA_STORE)
    if legacy and not by_trial:
        _print(args, f"({legacy} written by Optuna's own store: no file name, no digest to verify)")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    store = _open(args)
    target = _optuna_target(args)
    if target is not None:
        from optuna_cas import delete_artifact

        delete_artifact(
            artifact_store=store,
            artifact_id=args.artifact_id,
            study_or_trial=target[0],
            storage=target[1],
        )
    else:
        store.remove(args.artifact_id)
    if args.json:
        _emit_json({"removed": [args.artifact_id]})
    _print(args, f"removed {esc(args.artifact_id)} (run 'optuna-cas gc' to reclaim unused blobs)")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from optuna_cas import gc

    store = _open(args)
    # gc itself refuses this too, but in the library's words (allow_short_grace=True).
    freshen = store.content.freshen_after
    if args.grace <= freshen and not args.allow_short_grace:
        raise UsageError(
            f"--grace {args.grace:g} is unsafe while other processes upload: it must be above "
            f"{freshen:g} seconds (how often a re-used blob is marked as in use); add "
            "--allow-short-grace if nothing uploads to the store meanwhile"
        )
    with _bar(args, unit="blobs") as bar:
        report = gc(
            store,
            dry_run=args.dry_run,
            grace_period=args.grace,
            allow_short_grace=args.allow_short_grace,
            progress=bar,
        )
    if args.json:
        _emit_json(_report_json(report))
        return 0
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
    store = _open(args)
    with _bar(args, unit="B" if not args.fast else "blobs") as bar:
        report = verify(store, deep=not args.fast, quarantine=args.quarantine, progress=bar)
    if args.json:
        _emit_json(_report_json(report))
        return 0 if report.ok else 1
    for key in report.corrupt:
        reason = report.reasons.get(key)
        print(
            f"CORRUPT  {esc(key)}"
            + ("  (quarantined)" if key in report.quarantined else "")
            + (f": {esc(reason)}" if reason else "")
        )
    for missing in report.missing:
        print(
            f"MISSING  ref {esc(missing.artifact_id)} -> {esc(missing.digest)} "
            f"({esc(missing.problem)})"
        )
    for artifact_id in report.malformed_refs:
        reason = report.reasons.get(artifact_id)
        print(f"BADREF   {esc(artifact_id)}" + (f": {esc(reason)}" if reason else ""))
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
        from dataclasses import asdict

        _emit_json(
            {"study": args.study, **asdict(report), "ok": report.ok, "counts": report.counts}
        )
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

    source = _open(args, args.src)
    destination = _open(args, args.dst, create=True)
    with _bar(args) as bar:
        report = sync(source, destination, progress=bar)
    if args.json:
        _emit_json(_report_json(report))
        return 0
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
    if args.json:
        _emit_json(_report_json(figures))
        return 0
    print(f"artifacts      {figures.artifacts}")
    print(f"unique blobs   {figures.unique_blobs} ({figures.unreferenced_blobs} unreferenced)")
    print(f"logical bytes  {human_bytes(figures.logical_bytes)}")
    print(f"stored bytes   {human_bytes(figures.stored_bytes)}")
    print(f"dedup ratio    {figures.dedup_ratio:.2f}x")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from optuna_cas.middleware.cache import DiskBlobCache

    if args.action == "prune" and args.max_bytes is None:
        raise UsageError("cache prune needs --max-bytes N")
    cache = DiskBlobCache(args.cache_dir)
    try:
        if args.action == "clear":
            cache.clear()
        elif args.action == "prune":
            cache.prune(args.max_bytes)
        info = cache.info()
    finally:
        cache.close()
    if args.json:
        _emit_json(_report_json(info) | {"directory": str(info.directory)})
        return 0
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
    store = _open(args, cached=True, create=True)  # the web UI uploads too

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
        >>> build_parser().parse_args(["stats", "--json"]).json
        True
    """
    top = _common_options(after_command=False)
    # Global options may be repeated after the command. There they are accepted but not
    # shown in the command's help, and have no defaults: argparse copies a subparser's
    # defaults over the namespace, which would reset what was given before the command.
    common = _common_options(after_command=True)

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
            epilog="example:\n  " + example.replace("\n", "\n  ") + "\n\n" + GLOBAL_OPTIONS_NOTE,
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
            p.add_argument("files", nargs="+", metavar="FILE", help="files to store")
            p.add_argument("--mimetype", help="default: guessed from each file name")
            p.add_argument("--encoding", help="content encoding, e.g. gzip (default: guessed)")
        elif name == "get":
            p.add_argument("artifact_id", metavar="ID")
            p.add_argument(
                "dest",
                metavar="DEST",
                help="new file; or an existing directory (or one ending in /) to create "
                "DEST/<recorded file name> in; or - for stdout",
            )
        elif name == "rm":
            p.add_argument("artifact_id", metavar="ID")
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
            p.set_defaults(trial=None)
        elif name == "sync":
            p.add_argument("src", metavar="SRC", help="source store URL (must exist)")
            p.add_argument("dst", metavar="DST", help="destination store URL (created if local)")
        elif name == "cache":
            p.add_argument("action", choices=["info", "clear", "prune"])
            p.add_argument(
                "--max-bytes", type=_byte_count, metavar="N", help="prune down to N bytes"
            )
        elif name == "dashboard":
            p.add_argument("storage", metavar="STORAGE", help="Optuna storage URL or journal file")
            p.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
            p.add_argument(
                "--port", type=int, default=8080, help="0 picks a free one (default 8080)"
            )
    return parser


def _common_options(*, after_command: bool) -> argparse.ArgumentParser:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    def shown(text: str) -> str:
        return argparse.SUPPRESS if after_command else text

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="URL",
        default=default(None),
        help=shown(
            f"store URL (file://, s3://, gs://; default ${STORE_ENV}); only put and sync's "
            "destination create a new local store"
        ),
    )
    common.add_argument(
        "--endpoint-url",
        metavar="URL",
        default=default(None),
        help=shown(f"S3-compatible endpoint (default ${ENDPOINT_ENV})"),
    )
    common.add_argument(
        "--retries",
        type=_retries,
        default=default(5),
        metavar="N",
        help=shown("attempts per request, 1 to 100 (default 5; 1 = no retry)"),
    )
    common.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=default(None),
        help=shown("read cache directory (default: see docs)"),
    )
    common.add_argument(
        "--no-cache",
        action="store_true",
        default=default(False),
        help=shown("do not read remote stores through the cache"),
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help=shown("print one JSON object on stdout instead of text (every command)"),
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help=shown("print only results: no progress, no summaries"),
    )
    common.add_argument(
        "--debug", action="store_true", default=default(False), help=shown("show tracebacks")
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
    except BrokenPipeError:
        # The reader of stdout went away (``get ID - | head``): nothing more to say to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        print("optuna-cas: error: stdout was closed before the end", file=sys.stderr)
        return 1
    except Exception as e:
        if args.debug:
            _print_traceback()
        print(f"optuna-cas: error: {_describe(e)}", file=sys.stderr)
        return 1


def _describe(error: Exception) -> str:
    """One line for an error: ours and the usual OS errors as they are, others with a type."""
    from optuna_cas.exceptions import OptunaCasError

    known = (CommandError, OptunaCasError, OSError, ValueError, TypeError)
    if isinstance(error, known):
        return _one_line(error)
    return f"{type(error).__name__}: {_one_line(error)} (--debug for details)"


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
        raise argparse.ArgumentTypeError(f"{_clip(text)} is not a whole number from 1 to 100")
    return value


def _seconds(text: str) -> float:
    """``--grace``: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{_clip(text)} is not a number of seconds >= 0")
    return value


def _byte_count(text: str) -> int:
    """``--max-bytes``: a whole number of bytes >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{_clip(text)} is not a whole number of bytes >= 0")
    return value


def _clip(text: str, limit: int = 40) -> str:
    """``repr(text)``, cut to about ``limit`` characters (the value named in a usage error)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
