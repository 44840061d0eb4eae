"""``rm``: _files.cmd_rm, plus what it says about Optuna's metadata.

Without ``--storage``/``--study`` only the store's side of an artifact goes: its ref (and a file
Optuna's own store wrote under the ID). Any ``artifacts:<id>`` entry in Optuna's storage stays,
which the user must be told, since optuna-dashboard then still lists the artifact. With
``--study`` and the wrong (or no) ``--trial``, the error says where the artifact is recorded.
"""

from __future__ import annotations

import argparse
from typing import Any

from optuna_cas.cli._common import CommandError, _load_study, _print
from optuna_cas.cli._files import cmd_rm as _remove

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
