"""``get_all_artifact_meta``."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from optuna_cas._delete import deleted_on_study
from optuna_cas._meta import ARTIFACTS_ATTR_PREFIX, ArtifactMeta, is_tombstone
from optuna_cas._optuna import resolve_target
from optuna_cas._terminal import clip
from optuna_cas.exceptions import MalformedRecordError, MalformedRecordWarning

if TYPE_CHECKING:  # optuna is an extra: imported for the annotations only
    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial, Trial


__all__ = ["get_all_artifact_meta"]


def get_all_artifact_meta(
    study_or_trial: Trial | FrozenTrial | Study, *, storage: BaseStorage | None = None
) -> list[ArtifactMeta]:
    """List the artifacts of a trial or study, in upload order where known.

    Same as ``optuna.artifacts.get_all_artifact_meta`` (a ``Study`` lists only study-level
    artifacts), except that entries optuna-dashboard deleted (JSON ``null``, on which Optuna
    crashes) and deleted by :func:`optuna_cas.delete_artifact` are skipped, and each entry
    carries ``digest``, ``size`` and ``created`` when it was uploaded by optuna-cas.
    ``created`` (the upload time) puts the list in upload order when every entry has one;
    otherwise (entries Optuna or optuna-dashboard wrote) the storage's order is kept.

    Anyone with access to the Optuna storage can write these entries. One that cannot be read
    (not JSON, too large or deeply nested, not an object, a missing key or a value of the
    wrong type, an ``artifact_id`` that is not the one in its key) is skipped with a
    :class:`~optuna_cas.exceptions.MalformedRecordWarning` naming the attribute and the
    reason, so that it never hides the others. (Optuna raises on the first such entry.)

    Args:
        study_or_trial: A ``Trial``, ``FrozenTrial`` or ``Study``.
        storage: Required only for a ``FrozenTrial``.

    Returns:
        One :class:`~optuna_cas.ArtifactMeta` per live artifact, in upload order where known.

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
        if not isinstance(key, str) or not key.startswith(ARTIFACTS_ATTR_PREFIX):
            continue
        if is_tombstone(value):
            continue  # deleted (optuna-dashboard's tombstone)
        if key[len(ARTIFACTS_ATTR_PREFIX) :] in deleted:
            continue  # deleted after its trial finished (checked first: it may be unreadable)
        try:
            metas.append(_read_entry(key, value))
        except MalformedRecordError as e:
            warnings.warn(f"{e} (skipped)", MalformedRecordWarning, stacklevel=2)
    # Upload order on every storage (RDB storages return attributes in key order). Entries
    # written by Optuna or optuna-dashboard carry no time: with any of those present we cannot
    # place them, so the storage's order is kept, as Optuna does.
    if all(meta.created is not None for meta in metas):
        metas.sort(key=lambda meta: meta.created or 0.0)
    return metas


def _read_entry(key: str, value: Any) -> ArtifactMeta:
    what = f"artifact metadata {clip(key)}"
    meta = ArtifactMeta.from_json(value, what=what)
    if ARTIFACTS_ATTR_PREFIX + meta.artifact_id != key:
        raise MalformedRecordError(f"{what}: it names artifact {clip(meta.artifact_id)}")
    return meta
