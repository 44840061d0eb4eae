"""Commands that look after a store: gc, verify, sync, stats, cache, dashboard.

verify also cross-checks a study's metadata with the store (``--storage``/``--study``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from optuna_cas._terminal import escape_for_terminal as esc
from optuna_cas._terminal import human_bytes
from optuna_cas.cli._common import (
    CommandError,
    UsageError,
    _bar,
    _BarPerUnit,
    _cache_dir_source,
    _check_store_url,
    _count,
    _emit_json,
    _open,
    _optuna_target,
    _print,
    _report_json,
)

if TYPE_CHECKING:
    from pathlib import Path


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
    with _BarPerUnit(args, ("blobs", "manifests", "packs")) as bar:
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
        for key in [*report.deleted, *report.manifests_deleted, *report.packs_deleted]:
            _print(args, f"  {esc(key)}")
        for key in report.packs_repacked:
            _print(args, f"  {esc(key)} (repack)")
    _print(
        args,
        f"{verb} {_count(report.deleted_count, 'unreferenced blob')}; scanned "
        f"{_count(report.blobs_scanned, 'blob')}, {_count(report.refs_scanned, 'ref')}; kept "
        f"{report.kept_young} younger than the grace period",
    )
    if report.manifests_scanned or report.packs_scanned:
        repack = "would repack" if args.dry_run else "repacked"
        _print(
            args,
            f"chunked: {verb} {len(report.manifests_deleted)} of {report.manifests_scanned} "
            f"manifests, {len(report.packs_deleted)} of {report.packs_scanned} packs, "
            f"{_count(report.index_objects_deleted, 'index object')}; {repack} "
            f"{_count(len(report.packs_repacked), 'pack')} "
            f"({human_bytes(report.bytes_repacked)} live)",
        )
    # On a line of its own: the bytes of blobs, manifests, packs and index objects together.
    freed = "would free" if args.dry_run else "freed"
    _print(args, f"{freed} {human_bytes(report.bytes_freed)} in all")
    for artifact_id in report.bad_refs:
        _print(args, f"  bad ref {esc(artifact_id)} skipped (run 'optuna-cas verify')")
    for key in report.bad_manifests:
        _print(args, f"  bad manifest {esc(key)}: packs left alone (run 'optuna-cas verify')")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from optuna_cas import verify

    if args.study or args.storage:
        return _verify_study(args)
    if args.repair:
        raise UsageError("--repair mends a study's metadata: give --storage URL --study NAME")
    if args.fast and args.quarantine:
        # A fast check reads no bytes, so it finds little of what --quarantine moves aside.
        raise UsageError(
            "--quarantine moves aside what the deep check finds corrupt: leave out --fast"
        )
    store = _open(args)
    with _bar(args, unit="B" if not args.fast else "blobs") as bar:
        report = verify(store, deep=not args.fast, quarantine=args.quarantine, progress=bar)
    # Where --quarantine moved objects: kept there for inspection, never read again.
    quarantine_dir = f"{store.content.describe().rstrip('/')}/quarantine/"
    # An object --quarantine could not move is a problem still there: never exit 0 on it.
    status = 0 if report.ok and not report.quarantine_failed else 1
    if args.json:
        extra = {"quarantine_dir": quarantine_dir} if args.quarantine else {}
        _emit_json(_report_json(report) | extra)
        return status
    for key in report.corrupt:
        quarantined = "  (quarantined)" if key in report.quarantined else ""
        print(f"CORRUPT  {esc(key)}{quarantined}{_because(report.reasons.get(key))}")
    for missing in report.missing:
        print(
            f"MISSING  ref {esc(missing.artifact_id)} -> {esc(missing.digest)} "
            f"({esc(missing.problem)})"
        )
    for artifact_id in report.malformed_refs:
        print(f"BADREF   {esc(artifact_id)}{_because(report.reasons.get(artifact_id))}")
    for pack in report.missing_packs:
        aside = f"; a copy is at {esc(pack.quarantined)}" if pack.quarantined else ""
        print(f"NOPACK   {esc(pack.manifest)} -> {esc(pack.pack)} ({esc(pack.problem)}{aside})")
    if any(pack.quarantined for pack in report.missing_packs):
        _print(
            args,
            "a missing pack's copy under quarantine/ may still serve the files that need it: "
            "move it back to its key without the quarantine/ prefix, then run "
            "'optuna-cas verify --quarantine', which copies the sound ranges they read",
        )
    for key in report.bad_files:
        print(f"BADFILE  {esc(key)}{_because(report.reasons.get(key))}")
    for key in report.newer_format:
        print(f"NEWER    {esc(key)}{_because(report.reasons.get(key))}")
    for key in report.bad_index_objects:  # hints only: reported, not a failure
        _print(
            args, f"  bad index object {esc(key)} (a hint to uploaders): {esc(report.reasons[key])}"
        )
    mode = "deep" if report.deep else "fast"
    # Chunked files are read twice: their packs re-hashed, then each file read back whole.
    read = (
        "hashed: packs, then the chunked files read back" if report.manifests_checked else "hashed"
    )
    chunked = (
        f", {_count(report.manifests_checked, 'chunked file')} in "
        f"{_count(report.packs_checked, 'pack')}"
        if report.manifests_checked or report.packs_checked
        else ""
    )
    problems = (
        f", {_count(len(report.missing_packs), 'missing pack')}, "
        f"{_count(len(report.bad_files), 'unreadable file')}"
        if chunked
        else ""
    )
    # Counted with the rest: a BADREF line above and no word of it here read as all clear.
    bad_refs = f", {len(report.malformed_refs)} malformed" if report.malformed_refs else ""
    _print(
        args,
        f"{mode} verify: {_count(report.refs_checked, 'ref')}, "
        f"{_count(report.blobs_checked, 'blob')}{chunked} "
        f"({human_bytes(report.bytes_hashed)} {read}): {len(report.corrupt)} corrupt, "
        f"{len(report.missing)} missing{problems}{bad_refs}, "
        f"{_count(len(report.orphans), 'orphan')} "
        "(gc reclaims them)",
    )
    if report.newer_format:
        _print(
            args,
            f"{_count(len(report.newer_format), 'object')} in a newer format than this release "
            "reads, left as they are: upgrade optuna-cas to check them",
        )
    if report.optuna_store_files:
        _print(
            args,
            f"({len(report.optuna_store_files)} written by Optuna's own store: "
            "no digest to verify)",
        )
    if report.quarantined:
        _print(
            args,
            f"moved {_count(len(report.quarantined), 'object')} to {esc(quarantine_dir)} (kept for "
            "inspection, never read); their artifacts now read as missing: upload the same "
            "files again (put) to store a good copy",
        )
    if report.quarantine_failed:
        _print(
            args,
            f"could not move {_count(len(report.quarantine_failed), 'object')} to "
            f'{esc(quarantine_dir)} ("could not quarantine" above says why): they stay '
            "where they are",
        )
    return status


def _because(reason: str | None) -> str:
    return f": {esc(reason)}" if reason else ""


# Findings of verify --study, in print order: (report list, label, words in the summary for
# one finding, and for any other number: None adds an "s").
_STUDY_FINDINGS = [
    ("repairable", "DANGLING", "dangling with the blob stored", "dangling with the blob stored"),
    ("lost", "LOST", "lost", "lost"),
    ("missing_blobs", "NOBLOB", "ref without its blob", "refs without their blob"),
    ("conflicts", "CONFLICT", "conflict", None),
    ("malformed", "MALFORMED", "malformed", "malformed"),
    ("rebuilt", "REBUILT", "ref rebuilt", "refs rebuilt"),
    ("deleted", "DELETED", "deletion recorded", "deletions recorded"),
]
_UNREFERENCED_SHOWN = 20


def _verify_study(args: argparse.Namespace) -> int:
    """``verify --storage URL --study NAME [--repair]``: the study's metadata against the store.

    Only the study is checked, not the whole store: a store serves many studies, and its own
    check (``verify`` alone) re-reads every blob.
    """
    from optuna_cas import reconcile
    from optuna_cas.operations.reconcile import WRONG_STORE_NOTE

    if args.fast or args.quarantine:
        raise UsageError("--fast and --quarantine check the whole store: run them without --study")
    if not (args.study and args.storage):
        # Before the store is opened; in verify's words (the shared check names --trial too).
        raise UsageError("--study and --storage go together")
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
    for name, label, _, _ in _STUDY_FINDINGS:
        for finding in getattr(report, name):
            where = "study" if finding.trial_number is None else f"trial {finding.trial_number}"
            print(f"{label:9}  {esc(finding.artifact_id)}  ({where}): {esc(finding.reason)}")
    for finding in report.unreferenced[:_UNREFERENCED_SHOWN]:
        _print(args, f"UNNAMED    {esc(finding.artifact_id)}: {esc(finding.reason)}")
    if len(report.unreferenced) > _UNREFERENCED_SHOWN:
        more = len(report.unreferenced) - _UNREFERENCED_SHOWN
        _print(args, f"UNNAMED    ... and {more} more (--json lists them all)")
    counts = ", ".join(
        _count(report.counts[name], one, other)
        for name, _, one, other in _STUDY_FINDINGS
        if args.repair or name not in ("rebuilt", "deleted")
    )
    _print(
        args,
        f"study '{esc(args.study)}': {report.entries_checked} artifact "
        f"entr{'y' if report.entries_checked == 1 else 'ies'} checked: {counts}; "
        f"{len(report.unreferenced)} of {report.refs_listed} refs in the store named by no "
        "entry of this study (other studies sharing the store may use them; never deleted)",
    )
    recordable = [f for f in report.lost if not f.reason.endswith(WRONG_STORE_NOTE)]
    if not report.ok and not args.repair and (report.repairable or recordable):
        _print(args, "run again with --repair to rebuild refs and record lost artifacts deleted")
    return 0 if report.ok else 1


def cmd_sync(args: argparse.Namespace) -> int:
    from optuna_cas import sync
    from optuna_cas.operations.sync import same_location

    if args.store is not None:
        # sync reads SRC and writes DST: a --store would be ignored, and whoever typed it may
        # think it is one of the two. $OPTUNA_CAS_STORE, set for a whole session, is fine.
        raise UsageError(
            f"sync takes its stores as SRC and DST, not --store ({args.store!r}): leave out --store"
        )
    # Both URLs checked first: a malformed destination is a usage error before any listing.
    _check_store_url(args.src, "SRC")
    _check_store_url(args.dst, "DST")
    source = _open(args, args.src, option="SRC")
    # Reach the source (one listing) before the destination is created: a source that cannot
    # be read (no such bucket, no access) must not leave a new, empty destination behind.
    next(source.content.iter_ref_ids(), None)
    destination = _open(args, args.dst, create=True, option="DST")
    if same_location(source.content, destination.content):
        # It would store the files Optuna's own store wrote there a second time, as artifacts.
        raise UsageError(
            f"SRC and DST are the same store ({esc(source.content.describe())}): "
            "give another destination"
        )
    with _bar(args) as bar:
        report = sync(source, destination, progress=bar)
    if args.json:
        _emit_json(_report_json(report))  # with "ok", a property
        return 0 if report.ok else 1
    for artifact_id, reason in report.failed:
        print(f"FAILED    {esc(artifact_id)}: {esc(reason)}")
    for artifact_id, reason in report.conflicts:
        print(f"CONFLICT  {esc(artifact_id)}: {esc(reason)}")
    _print(
        args,
        # A content is a blob or a chunked file (report.blobs_* count both).
        f"copied {_count(len(report.refs_copied), 'ref')} and "
        f"{_count(report.blobs_copied, 'content')}"
        + (
            f" and {_count(len(report.legacy_copied), 'file')} Optuna's own store wrote"
            if report.legacy_copied
            else ""
        )
        + f" ({human_bytes(report.bytes_copied)}); {_count(report.refs_skipped, 'ref')} and "
        f"{_count(report.blobs_skipped, 'content')} were already there; "
        f"{len(report.failed)} failed, {_count(len(report.conflicts), 'conflict')}",
    )
    return 0 if report.ok else 1


def cmd_stats(args: argparse.Namespace) -> int:
    from optuna_cas import stats

    figures = stats(_open(args))
    if args.json:
        _emit_json(_report_json(figures))
        return 0
    print(f"artifacts         {figures.artifacts}")
    print(f"unique blobs      {figures.unique_blobs} ({figures.unreferenced_blobs} unreferenced)")
    print(
        f"chunked files     {figures.chunked_files} "
        f"({figures.unreferenced_chunked_files} unreferenced) in {_count(figures.packs, 'pack')}"
    )
    print(f"logical bytes     {human_bytes(figures.logical_bytes)}")
    inside = ", small files inside refs once per ref" if figures.inline_bytes else ""
    print(
        f"whole-file dedup  {human_bytes(figures.whole_file_bytes)} "
        f"(if each distinct content were stored once{inside})"
    )
    print(
        f"stored bytes      {human_bytes(figures.stored_bytes)} "
        f"(blobs {human_bytes(figures.blob_bytes)}, "
        f"chunked {human_bytes(figures.chunked_bytes)}, "
        f"inside refs {human_bytes(figures.inline_bytes)})"
    )
    print(f"dedup ratio       {figures.dedup_ratio:.2f}x")
    print(f"chunk dedup ratio {figures.chunk_dedup_ratio:.2f}x (whole-file dedup / stored)")
    if figures.bad_refs:
        print(f"bad refs          {figures.bad_refs} (skipped; run 'optuna-cas verify')")
    if figures.optuna_store_files:
        print(
            f"Optuna's files    {figures.optuna_store_files} "
            f"({human_bytes(figures.optuna_store_bytes)}, written by Optuna's own store: "
            "a full copy each, not counted above)"
        )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optuna_cas.middleware.cache import DiskBlobCache
    from optuna_cas.middleware.cache_config import (
        CACHE_DATABASE,
        DEFAULT_SIZE_LIMIT,
        CacheInfo,
        default_cache_dir,
    )

    if args.action == "prune" and args.max_bytes is None:
        raise UsageError("cache prune needs --max-bytes N")
    if args.action != "prune" and args.max_bytes is not None:
        raise UsageError(f"--max-bytes is for cache prune only, not cache {args.action}")
    directory = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    _check_cache_directory(args, directory)
    # Opening a cache creates it: where there is none, there is nothing to show, clear or
    # prune, and a look (or a mistyped --cache-dir) must not leave a new one behind.
    exists = (directory / CACHE_DATABASE).is_file()
    if exists:
        with DiskBlobCache(directory) as cache:
            if args.action == "clear":
                cache.clear()
            elif args.action == "prune":
                cache.prune(args.max_bytes)
            info = cache.info()
    else:
        info = CacheInfo(directory.absolute(), 0, 0, DEFAULT_SIZE_LIMIT, 0, 0)
    if args.json:
        _emit_json({**_report_json(info), "exists": exists})
        return 0
    if not exists:
        print(f"no cache in {esc(str(info.directory))} (nothing was created)")
        return 0
    print(f"directory  {esc(info.directory)}")
    print(f"entries    {info.entries}")
    print(f"size       {human_bytes(info.size_bytes)} of {human_bytes(info.size_limit)}")
    print(f"hits       {info.hits}")
    print(f"misses     {info.misses}")
    return 0


def _check_cache_directory(args: argparse.Namespace, directory: Path) -> None:
    """A cache directory that cannot be one (a file is there, or above it) is an error.

    Nothing is created to find out: ``cache info`` must not make a cache where there is none.
    """
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the nearest part of the path that is there
    if existing.is_dir():
        return
    what = "is not a directory" if existing == directory else f"is under {str(existing)!r}, a file"
    source = _cache_dir_source(args) or "the default cache directory"
    raise CommandError(f"{source}: {str(directory)!r} {what}")


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_cas.dashboard import serve_dashboard

    # Not create=True, although the web UI uploads: a mistyped --store must not become a new,
    # empty store that the dashboard then serves as if the artifacts were gone.
    store = _open(args, cached=True)
    serving = False

    def ready(url: str) -> None:
        nonlocal serving
        # The URL is the result (scripts and tests read it: --port 0 picks a free port).
        # Request logs go to stderr, so with --json this object is all there is on stdout.
        if args.json:
            _emit_json({"url": url})
        else:
            print(f"optuna-dashboard at {esc(url)} (Ctrl-C to stop)", flush=True)
        serving = True

    try:
        serve_dashboard(
            args.storage,
            store,
            host=args.host,
            port=args.port,
            ready=ready,
            log_requests=not args.quiet,
        )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI raises a subclass for it)
        if not serving:
            # Stopped before it served (loading a large storage): interrupted like any other
            # command, exit 130 (143) and, with --json, the failure document: none was printed.
            raise
        # Ctrl-C and SIGTERM are how a server is meant to end: exit 0. Its one --json document
        # ({"ok": true, "url": ...}) is out already; an "interrupted" one would be a second.
        _print(args, "stopped")
    return 0
