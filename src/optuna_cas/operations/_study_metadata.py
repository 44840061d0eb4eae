"""Every artifact metadata entry of a study, its trials' included, read as untrusted input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna_cas._delete import DELETED_ATTR_PREFIX
from optuna_cas._list_artifact_meta import _read_entry
from optuna_cas._meta import ARTIFACTS_ATTR_PREFIX, ArtifactMeta, is_tombstone
from optuna_cas._optuna import MetadataTarget
from optuna_cas._terminal import clip
from optuna_cas._validation import validate_artifact_id
from optuna_cas.digest import Digest
from optuna_cas.exceptions import MalformedRecordError

__all__ = ["MetadataEntry", "read_study_metadata"]

# (artifact ID from the attribute's key, trial number or None, why it cannot be read)
Unreadable = tuple[str, int | None, str]


@dataclass(frozen=True)
class MetadataEntry:
    """A live ``artifacts:<id>`` entry that reads well.

    Attributes:
        target: The trial or study it is recorded on.
        trial_number: The trial's number within its study; None for the study itself.
        meta: The parsed entry; its ``artifact_id`` is a valid ID and matches the key.
        digest: The recorded digest with its size; None in entries Optuna or optuna-dashboard
            wrote.
    """

    target: MetadataTarget
    trial_number: int | None
    meta: ArtifactMeta
    digest: Digest | None


def read_study_metadata(
    storage: Any, study_id: int
) -> tuple[list[MetadataEntry], list[Unreadable], dict[str, int | None]]:
    """The live entries of a study and of each of its trials, in trial order, the study last.

    An entry is not live when it is a tombstone (JSON ``null``) or, on a trial, recorded
    deleted on the study (``artifacts-deleted:<id>``), as :func:`optuna_cas.get_all_artifact_meta`
    decides. An entry that cannot be read (bounded parse, field types, an ID that differs
    from its key or is not a valid ID, a digest that is not one or comes without a size) is
    returned with the reason instead, never raised.

    Returns:
        The live entries, the unreadable ones, and the IDs of deleted entries with their
        trial numbers.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study()
        >>> storage, study_id = study._storage, study._study_id
        >>> storage.set_study_system_attr(study_id, "artifacts:a", "{not json")
        >>> entries, unreadable, deleted = read_study_metadata(storage, study_id)
        >>> unreadable[0][:2], entries, deleted
        (('a', None), [], {})
    """
    study_attrs = dict(storage.get_study_system_attrs(study_id))
    recorded_deleted = {
        key[len(DELETED_ATTR_PREFIX) :]
        for key in study_attrs
        if isinstance(key, str) and key.startswith(DELETED_ATTR_PREFIX)
    }
    sources: list[tuple[MetadataTarget, int | None, dict[str, Any]]] = [
        (MetadataTarget(storage, t._trial_id, study_id), t.number, dict(t.system_attrs))
        for t in storage.get_all_trials(study_id, deepcopy=False)
    ]
    sources.append((MetadataTarget(storage, None, study_id), None, study_attrs))
    entries: list[MetadataEntry] = []
    unreadable: list[Unreadable] = []
    deleted: dict[str, int | None] = {}
    for target, number, attrs in sources:
        for key, value in attrs.items():
            if not isinstance(key, str) or not key.startswith(ARTIFACTS_ATTR_PREFIX):
                continue
            artifact_id = key[len(ARTIFACTS_ATTR_PREFIX) :]
            # As get_all_artifact_meta: study-level records apply to trials' entries only.
            if is_tombstone(value) or (number is not None and artifact_id in recorded_deleted):
                deleted[artifact_id] = number
                continue
            try:
                meta, digest = _parse_entry(key, value)
            except MalformedRecordError as e:
                unreadable.append((artifact_id, number, str(e)))
                continue
            entries.append(MetadataEntry(target, number, meta, digest))
    return entries, unreadable, deleted


def _parse_entry(key: str, value: Any) -> tuple[ArtifactMeta, Digest | None]:
    meta = _read_entry(key, value)  # bounded parse, field types, ID matches the key
    try:
        validate_artifact_id(meta.artifact_id)
        if meta.digest is None:
            return meta, None  # written by Optuna or optuna-dashboard
        if meta.size is None:
            raise ValueError(f"digest {clip(meta.digest)} without a size")
        return meta, Digest.parse(meta.digest, meta.size)
    except ValueError as e:  # InvalidKeyError is one too
        raise MalformedRecordError(f"artifact metadata {clip(key)}: {e}") from e
