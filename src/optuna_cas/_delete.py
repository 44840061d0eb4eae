"""``delete_artifact``: metadata first, then the ref; blobs are reclaimed by gc."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from optuna_cas._meta import ARTIFACTS_ATTR_PREFIX, is_tombstone
from optuna_cas._optuna import MetadataTarget, import_optuna, resolve_target
from optuna_cas.exceptions import ArtifactNotFound, not_found_as_ours
from optuna_cas.stores.base import content_store_of

__all__ = ["DELETED_ATTR_PREFIX", "delete_artifact", "record_deletion"]

# Study-level record of artifacts deleted from trials that had already finished (Optuna
# forbids changing a finished trial's attributes, so its "artifacts:<id>" entry must stay).
DELETED_ATTR_PREFIX = "artifacts-deleted:"


def delete_artifact(
    *,
    artifact_store: Any,
    artifact_id: str,
    study_or_trial: Any,
    storage: Any = None,
) -> None:
    """Delete an artifact: its Optuna metadata entry and its ref.

    The order is the reverse of an upload: the metadata stops pointing at the artifact first,
    then the ref goes, so no metadata ever points at missing data. The blob may be shared
    with other artifacts; :func:`optuna_cas.gc` reclaims it once nothing refers to it.

    Entries that cannot be read (not JSON, wrong fields) are deleted the same way.

    For a trial that is still running (and for study-level artifacts) the entry is replaced
    by JSON ``null``, optuna-dashboard's own tombstone. Optuna forbids changing a finished
    trial, so there the deletion is recorded on the study (``artifacts-deleted:<id>``);
    :func:`optuna_cas.get_all_artifact_meta` honours it, Optuna's own listing does not.

    Args:
        artifact_store: The store holding the artifact.
        artifact_id: The artifact to delete.
        study_or_trial: The ``Trial``, ``FrozenTrial`` or ``Study`` it was uploaded to.
        storage: Required only for a ``FrozenTrial``.

    Raises:
        ArtifactNotFound: The trial or study has no such (live) artifact; deleting twice
            raises too (unless the first deletion was interrupted before it removed the
            ref of an optuna-cas store: the second finishes it). The message names the ID.

    Example:
        >>> import io, optuna
        >>> from optuna_cas import MemoryArtifactStore, upload_artifact, get_all_artifact_meta
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "x.txt"); _ = open(path, "w").write("x")
        >>> store, study = MemoryArtifactStore(), optuna.create_study()
        >>> artifact_id = upload_artifact(artifact_store=store, file_path=path, study_or_trial=study)
        >>> delete_artifact(artifact_store=store, artifact_id=artifact_id, study_or_trial=study)
        >>> get_all_artifact_meta(study)
        []
    """
    target = resolve_target(study_or_trial, storage)
    if not is_live(target, artifact_id):
        # Only our content stores: their remove raises for a missing ref, so deleting twice
        # still raises. A foreign store's may not (Optuna's S3 store), even behind Backoff.
        if content_store_of(artifact_store) is not None and _was_deleted(target, artifact_id):
            # A deletion interrupted between its metadata and its ref (Ctrl-C; found by a
            # probe) left a ref no call could remove: this one finishes it.
            with contextlib.suppress(ArtifactNotFound):
                artifact_store.remove(artifact_id)
                return
        raise ArtifactNotFound(
            f"Artifact {artifact_id!r} is not recorded on {describe_target(target)} "
            "(or was deleted)"
        )
    record_deletion(target, artifact_id)
    # The ref may be gone already (e.g. removed by optuna-dashboard): the metadata was the record.
    # A foreign store says so with Optuna's ArtifactNotFound, which is made ours to be ignored.
    try:
        with contextlib.suppress(ArtifactNotFound), not_found_as_ours(artifact_id):
            artifact_store.remove(artifact_id)
    except Exception as e:  # a role that may not delete, a lost connection: say what is left
        e.add_note(
            f"Artifact {artifact_id!r} is recorded as deleted on {describe_target(target)}, "
            "but the store still holds it (gc keeps its content): call delete_artifact again "
            "once the store can be written, and it removes the rest."
        )
        raise


def describe_target(target: MetadataTarget) -> str:
    """A trial or study as its user knows it: the trial's *number* and the study's name.

    Optuna's internal trial and study IDs (``Trial#17``) mean nothing to the person who
    typed ``--trial 3``; they are shown only if the storage cannot name the study.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> from optuna_cas._optuna import resolve_target
        >>> study = optuna.create_study(study_name="demo")
        >>> describe_target(resolve_target(study.ask(), None))
        "trial 0 of study 'demo'"
    """
    storage = target.storage
    try:
        study = repr(storage.get_study_name_from_id(target.owning_study_id()))
        if target.trial_id is None:
            return f"study {study}"
        return f"trial {storage.get_trial(target.trial_id).number} of study {study}"
    except Exception:  # a storage that cannot say: the IDs are better than nothing
        if target.trial_id is None:
            return f"study with ID {target.study_id}"
        return f"trial with ID {target.trial_id}"


def record_deletion(target: MetadataTarget, artifact_id: str) -> bool:
    """Mark an artifact deleted in Optuna's storage, the way optuna-dashboard understands it.

    The entry becomes JSON ``null`` (the dashboard's tombstone). A finished trial cannot be
    changed, so there the deletion is recorded on its study as ``artifacts-deleted:<id>``.

    Returns:
        True if it was recorded on the study (the trial had finished), False for a tombstone.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study()
        >>> record_deletion(resolve_target(study, None), "a1")
        False
        >>> study._storage.get_study_system_attrs(study._study_id)["artifacts:a1"]
        'null'
    """
    optuna = import_optuna()
    try:
        target.set_system_attr(ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(None))
    except optuna.exceptions.UpdateFinishedTrialError:
        target.storage.set_study_system_attr(
            target.owning_study_id(),
            DELETED_ATTR_PREFIX + artifact_id,
            json.dumps({"trial_id": target.trial_id, "deleted": time.time()}),
        )
        return True
    return False


def deleted_on_study(target: MetadataTarget) -> set[str]:
    """IDs recorded as deleted on the study of a finished trial (empty for studies).

    Example:
        >>> deleted_on_study(MetadataTarget(storage=None, trial_id=None, study_id=0))
        set()
    """
    if target.trial_id is None:
        return set()
    attrs = target.storage.get_study_system_attrs(target.owning_study_id())
    return {
        k[len(DELETED_ATTR_PREFIX) :]
        for k in attrs
        if isinstance(k, str) and k.startswith(DELETED_ATTR_PREFIX)
    }


def _was_deleted(target: MetadataTarget, artifact_id: str) -> bool:
    """Whether the target records ``artifact_id`` as deleted (a tombstone, or on the study)."""
    attrs = target.system_attrs()
    key = ARTIFACTS_ATTR_PREFIX + artifact_id
    if key in attrs and is_tombstone(attrs[key]):
        return True
    return artifact_id in deleted_on_study(target)


def is_live(target: MetadataTarget, artifact_id: str) -> bool:
    """Whether ``artifact_id`` is recorded on the target and not deleted.

    The entry's value is not parsed: an entry that :func:`optuna_cas.get_all_artifact_meta`
    skips as malformed is still live here, so that it can be deleted.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> from optuna_cas._optuna import resolve_target
        >>> is_live(resolve_target(optuna.create_study(), None), "nope")
        False
    """
    attrs = target.system_attrs()
    key = ARTIFACTS_ATTR_PREFIX + artifact_id
    # Anything but a tombstone is live, readable or not: a malformed entry must be deletable.
    if key not in attrs or is_tombstone(attrs[key]):
        return False
    return artifact_id not in deleted_on_study(target)
