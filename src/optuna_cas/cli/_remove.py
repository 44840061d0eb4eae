"""``rm``: remove an artifact's ref (or a file Optuna's own store wrote), and its metadata.

Without ``--storage``/``--study`` only the store's side of an artifact goes: its ref (and a file
Optuna's own store wrote under the ID). Any ``artifacts:<id>`` entry in Optuna's storage stays,
which the user must be told, since optuna-dashboard then still lists the artifact. With
``--study`` and the wrong (or no) ``--trial``, the error says where the artifact is recorded.
"""

from __future__ import annotations

import argparse
from typing import Any

from optuna_cas._terminal import escape_for_terminal as esc
from optuna_cas.cli._common import (
    CommandError,
    _emit_json,
    _load_study,
    _open,
    _optuna_target,
    _print,
)

__all__ = ["cmd_rm"]

# After an rm of the store's side only (one line, human output only).
METADATA_NOTE = (
    "note: only the store's copy was removed; an Optuna metadata entry for this artifact (if "
    "any) was not touched: to delete it too, run rm again with --storage URL --study NAME "
    "[--trial NUMBER]"
)


def cmd_rm(args: argparse.Namespace) -> int:
    """``optuna-cas rm ID [--storage URL --study NAME [--trial NUMBER]]``."""
    from optuna_cas.exceptions import ArtifactNotFound

    try:
        code = _remove(args)
    except ArtifactNotFound as e:
        if args.study and args.storage:
            where = _where_recorded(_load_study(args), args.artifact_id)
            if where:
                raise CommandError(f"{e}; it is recorded on {where}") from e
        raise
    if not (args.storage or args.study or args.trial is not None):
        _print(args, METADATA_NOTE)
    return code


def _holds_optuna_store_file(store: Any, artifact_id: str) -> bool:
    """For rm's message only: a failing look must not stop the removal (review)."""
    try:
        return bool(store.content.holds_optuna_store_object(artifact_id))
    except Exception:
        return False


def _remove(args: argparse.Namespace) -> int:
    from optuna_cas.cli._store_dir import looks_like_an_optuna_id
    from optuna_cas.exceptions import ArtifactNotFound

    store = _open(args)
    target = _optuna_target(args)
    # What is left for gc: the content of a ref, unless kept inside it; nothing of a file
    # Optuna's own store wrote (one file per ID, deleted with it).
    try:
        flat_file, for_gc = False, store.get_ref(args.artifact_id).inline is None
    except ArtifactNotFound:
        # No ref: a file Optuna's own store wrote, or nothing (remove says so; with --study
        # only the metadata goes, as after an earlier rm without it).
        flat_file, for_gc = _holds_optuna_store_file(store, args.artifact_id), False
    except Exception:
        flat_file, for_gc = False, True  # a ref that cannot be read: removed like any other
    if flat_file and not looks_like_an_optuna_id(args.artifact_id):
        # A folder that looks like a store (a LaTeX project's refs/, a .git) may hold any
        # file: rm deleted main.tex and .git/config (found in review). Optuna's IDs are UUIDs.
        raise CommandError(
            f"{args.artifact_id!r} in {store.content.describe()} has no ref, and the file of that name "
            "is not one Optuna's upload_artifact writes (its IDs are UUIDs): nothing was "
            "removed (delete it by hand if it is an artifact)"
        )
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
    if for_gc:
        _print(
            args, f"removed {esc(args.artifact_id)} (run 'optuna-cas gc' to reclaim unused blobs)"
        )
    elif flat_file:
        _print(args, f"removed {esc(args.artifact_id)} (a file Optuna's own store wrote)")
    else:
        _print(args, f"removed {esc(args.artifact_id)}")
    return 0


def _where_recorded(study: Any, artifact_id: str) -> str:
    """Where in ``study`` the artifact is live, with the options that reach it; "" if nowhere.

    Read only after ``rm`` failed: one listing of the study's trials, nothing on success.
    """
    from optuna_cas._delete import is_live
    from optuna_cas._meta import ARTIFACTS_ATTR_PREFIX
    from optuna_cas._optuna import resolve_target

    if is_live(resolve_target(study, None), artifact_id):
        return "the study itself: leave out --trial"
    key = ARTIFACTS_ATTR_PREFIX + artifact_id
    for trial in study.get_trials(deepcopy=False):
        # The trial's own attributes first (no request); is_live also honours the deletions
        # recorded on the study for finished trials.
        if key in trial.system_attrs and is_live(
            resolve_target(trial, study._storage), artifact_id
        ):
            return f"trial {trial.number}: pass --trial {trial.number}"
    return ""
