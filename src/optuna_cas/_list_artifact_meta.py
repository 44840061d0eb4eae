"""``get_all_artifact_meta``."""

from __future__ import annotations

import json
from typing import Any

from optuna_cas._delete import deleted_on_study
from optuna_cas._meta import ARTIFACTS_ATTR_PREFIX, ArtifactMeta
from optuna_cas._optuna import resolve_target

__all__ = ["get_all_artifact_meta"]


def get_all_artifact_meta(study_or_trial: Any, *, storage: Any = None) -> list[ArtifactMeta]:
    """List the artifacts of a trial or study, in upload order where known.

    Same as ``optuna.artifacts.get_all_artifact_meta`` (a ``Study`` lists only study-level
    artifacts), except that entries optuna-dashboard deleted (JSON ``null``, on which Optuna
    crashes) and deleted by :func:`optuna_cas.delete_artifact` are skipped, and each entry
    carries ``digest`` and ``size`` when it was uploaded by optuna-cas.

    Args:
        study_or_trial: A ``Trial``, ``FrozenTrial`` or ``Study``.
        storage: Required only for a ``FrozenTrial``.

    Returns:
        One :class:`~optuna_cas.ArtifactMeta` per live artifact, in upload order.

    Example:
        >>> import optuna
        >>> from optuna_cas import get_all_artifact_meta
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> get_all_artifact_meta(optuna.create_study())
        []
    """
    target = resolve_target(study_or_trial, storage)
    deleted = deleted_on_study(target)
    metas: list[ArtifactMeta] = []
    for key, value in target.system_attrs().items():
        if not key.startswith(ARTIFACTS_ATTR_PREFIX):
            continue
        if value is None or json.loads(value) is None:
            continue  # deleted (optuna-dashboard's tombstone)
        meta = ArtifactMeta.from_json(value)
        if meta.artifact_id not in deleted:  # deleted after its trial finished
            metas.append(meta)
    # Upload order on every storage (RDB storages return attributes in key order). Entries
    # written by Optuna or optuna-dashboard carry no time: with any of those present we cannot
    # place them, so the storage's order is kept, as Optuna does.
    if all(meta.created is not None for meta in metas):
        metas.sort(key=lambda meta: meta.created or 0.0)
    return metas
