"""Commands that move artifacts: put, get, ls, rm."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from optuna_cas._terminal import escape_for_terminal as esc
from optuna_cas._terminal import human_bytes

if TYPE_CHECKING:
    from optuna_cas.refs import ArtifactRef
    from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.cli._common import (
    STORE_ENV,
    CommandError,
    UsageError,
    _bar,
    _emit_json,
    _load_study,
    _note,
    _open,
    _optuna_target,
    _print,
    _trial,
)


def cmd_put(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    # Files stored before a failure are results too: main() adds these rows to the --json
    # failure document (a script reads stdout, not the stderr line below).
    args.partial_result = {"artifacts": rows}
    # Checked before the store is opened; FIFOs and devices are refused by the upload itself.
    for path in args.files:
        if os.path.isdir(path):
            raise CommandError(f"{path!r} is a directory, not a regular file")
        if not os.path.exists(path):
            raise CommandError(f"no such file: {path!r}")
    store = _open(args, create=True)
    target = _optuna_target(args, uploading=True)
    try:
        for path in args.files:
            row, summary = _put_one(args, store, target, path)
            rows.append(row)  # before the summary: a stdout that fails must not lose the row
            _print(args, summary)
        if args.json:
            _emit_json({"artifacts": rows})
        else:
            for row in rows:  # always the last lines, one per file in order: scripts read them
                print(esc(row["artifact_id"]))
        # Here, not at exit: a stdout that cannot take the IDs (a full disk) fails while the
        # line below can still name what was stored.
        sys.stdout.flush()
    except BaseException:
        if rows:  # also with -q: an artifact ID is a result, not a summary
            stored = ", ".join(f"{esc(r['filename'])} as {esc(r['artifact_id'])}" for r in rows)
            print(f"optuna-cas: stored before the error: {stored}", file=sys.stderr)
        raise
    return 0


def _put_one(
    args: argparse.Namespace,
    store: ContentAddressedArtifactStore,
    target: tuple[Any, Any] | None,
    path: str,
) -> tuple[dict[str, Any], str]:
    """Store one file: its row (as ``--json`` prints it) and its summary line."""
    import mimetypes
    import uuid
    from dataclasses import asdict

    from optuna_cas import upload_artifact
    from optuna_cas._listing import ListedArtifact
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
        watch.finish()
    already = not watch.stored_new_blob
    what = f"{human_bytes(ref.size)}, {ref.digest}"
    if already:
        summary = (
            f"{esc(ref.filename)}: these bytes were already stored ({what}); "
            "only a new artifact ID was recorded"
        )
    elif watch.new_chunk_bytes or ref.size >= watched.content.chunk_threshold:
        summary = (
            f"stored {esc(ref.filename)} ({what}) as chunks: "
            f"{human_bytes(watch.new_chunk_bytes)} of them new"
        )
    else:
        summary = f"stored {esc(ref.filename)} ({what})"
    row = asdict(ListedArtifact.of_ref(ref))  # as `ls --json` shows it, less what ls adds
    del row["origin"], row["trial"]
    extra = {"path": path, "already_stored": already, "new_chunk_bytes": watch.new_chunk_bytes}
    return row | extra, summary


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
    if not to_stdout:
        _check_destination(args.dest)
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
        watch.finish()
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


def _check_destination(dest: str) -> None:
    """DEST names a directory that exists (where the new file goes): checked before any I/O."""
    if not dest:
        raise UsageError("DEST is empty: give a new file, a directory, or - for stdout")
    is_dir_form = dest.endswith(("/", os.sep))
    directory = dest if is_dir_form or os.path.isdir(dest) else os.path.dirname(dest) or "."
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise CommandError(
            f"cannot write {dest!r}: the directory {directory!r} {what} (get creates the file, "
            "not the directories above it)"
        )


def _file_name_for(artifact_id: str, ref: ArtifactRef | None) -> str:
    """The name ``get ID DIR/`` gives the file: the recorded file name, if it is a safe one.

    The name comes from a ref anyone with the store can write: it must be a single plain
    path component, or it could lead the file out of DIR or hide what it is.
    """
    if ref is None or not ref.filename:
        return artifact_id  # Optuna's own store records no file name
    name = ref.filename
    if not _is_plain_file_name(name):
        raise CommandError(
            f"artifact {artifact_id!r} records the file name {name!r}, which is not "
            "a plain file name: give DEST as a file path"
        )
    return name


def _is_plain_file_name(name: str) -> bool:
    r"""Whether ``name`` is one path component that shows as itself on a terminal.

    A name ``put`` read from disk in bytes that are not UTF-8 (``bad\xff.bin``) is recorded
    with surrogate escapes (``bad\udcff.bin``), as ``os.fsdecode`` spells it: it is written
    back as the very same bytes, so it is plain if the rest of it is. Escapes that spell valid
    UTF-8 (a forged ``\udce2\udc80\udcae`` that writes U+202E) are not: ``fsdecode`` never makes
    them, and the file's name on disk would be the character the escapes hide. Nor are bytes
    0x80-0x9f, C1 controls to a terminal that takes 8-bit codes.

    Example:
        >>> _is_plain_file_name("model.pt"), _is_plain_file_name("bad\udcff.bin")
        (True, True)
        >>> [_is_plain_file_name(n) for n in ("../x", "a\x1b[2J", "\udce2\udc80\udcae", "\udc9b")]
        [False, False, False, False]
    """
    visible = name
    if any("\ud800" <= c <= "\udfff" for c in name):
        try:
            if os.fsdecode(os.fsencode(name)) != name:
                return False  # escapes of bytes that decode to something else
        except UnicodeEncodeError:
            return False  # a lone surrogate no file name can hold
        if any("\udc80" <= c <= "\udc9f" for c in name):
            return False  # C1 control bytes (0x9b is CSI to an 8-bit terminal)
        visible = "".join(c for c in name if not "\udca0" <= c <= "\udcff")
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return False
    return esc(visible) == visible


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

    from optuna_cas._listing import (
        OPTUNA_STORE,
        list_store_artifacts,
        list_study_artifacts,
        with_refs,
    )

    study = _load_study(args)
    if study is not None:
        if args.trial is not None:
            _trial(args, study)  # the error names the number typed
        rows = list_study_artifacts(study, args.trial)
        if any(row.digest is None for row in rows) and (args.store or os.environ.get(STORE_ENV)):
            # Written by Optuna's upload_artifact or the dashboard through our store: its refs
            # know size, digest and (for the dashboard's) the name.
            rows = with_refs(rows, _open(args).content)
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
    _print(args, header + f"{'SIZE':>10}  {'MIMETYPE':24}  FILENAME")  # not with -q: rows only
    for row in rows:
        size = human_bytes(row.size) if row.size is not None else "?"
        trial = ("-" if row.trial is None else str(row.trial)) if by_trial else ""
        mimetype = esc(row.mimetype or "-")
        mimetype = mimetype if len(mimetype) <= 24 else mimetype[:21] + "..."
        line = f"{esc(row.artifact_id):36}  " + (f"{trial:>5}  " if by_trial else "")
        print(line + f"{size:>10}  {mimetype:24}  {esc(row.filename or '-')}")
    legacy = sum(1 for row in rows if row.origin == OPTUNA_STORE)
    if legacy and not by_trial:
        _print(args, f"({legacy} written by Optuna's own store: no file name, no digest to verify)")
    return 0
