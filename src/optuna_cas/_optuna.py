"""Where an artifact's metadata goes in Optuna: storage resolution and attribute access.

Optuna is an optional extra; it is imported on first use with an install hint.
"""

from __future__ import annotations

import contextlib
import reprlib
from dataclasses import dataclass
from typing import Any

from optuna_cas.exceptions import StoreConfigError

__all__ = ["MetadataTarget", "refuse_a_finished_trial", "resolve_target"]


def import_optuna() -> Any:
    """Import optuna or explain how to get it.

    Example:
        >>> import_optuna().__name__
        'optuna'
    """
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - exercised without the extra
        raise StoreConfigError(
            "This function needs Optuna: pip install 'optuna-cas[optuna]'"
        ) from e
    return optuna


@dataclass(frozen=True)
class MetadataTarget:
    """A trial or a study in an Optuna storage, where artifact metadata is recorded.

    ``study_id`` is the study itself, or for a trial the study it belongs to when known
    (``None`` until :meth:`owning_study_id` looks it up).
    """

    storage: Any
    trial_id: int | None
    study_id: int | None

    def owning_study_id(self) -> int:
        """The study of the trial (or the study itself)."""
        if self.study_id is not None:
            return self.study_id
        assert self.trial_id is not None
        return study_id_of_trial(self.storage, self.trial_id)

    def system_attrs(self) -> dict[str, Any]:
        """Current system attributes of the trial or study."""
        if self.trial_id is not None:
            return dict(self.storage.get_trial_system_attrs(self.trial_id))
        return dict(self.storage.get_study_system_attrs(self.study_id))

    def set_system_attr(self, key: str, value: Any) -> None:
        """Set one system attribute."""
        if self.trial_id is not None:
            self.storage.set_trial_system_attr(self.trial_id, key, value)
        else:
            self.storage.set_study_system_attr(self.study_id, key, value)


def resolve_target(study_or_trial: Any, storage: Any) -> MetadataTarget:
    """Apply Optuna's rules: a Trial or Study brings its storage; a FrozenTrial needs one.

    Raises:
        ValueError: ``storage is required for FrozenTrial.`` (Optuna's message), for anything
            but a Trial or Study when ``storage`` is None, as in Optuna.
        TypeError: ``study_or_trial`` is not a Study, Trial or FrozenTrial (with a storage).

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study()
        >>> resolve_target(study, None).study_id
        0
        >>> resolve_target(None, study._storage)
        Traceback (most recent call last):
        ...
        TypeError: study_or_trial must be an optuna Study, Trial or FrozenTrial, got NoneType: None
    """
    optuna = import_optuna()
    if isinstance(study_or_trial, optuna.trial.Trial) and storage is None:
        storage = study_or_trial.storage
    elif isinstance(study_or_trial, optuna.study.Study) and storage is None:
        storage = study_or_trial._storage
    if storage is None:
        # Optuna's check, made before it looks at the type: None or a FixedTrial without a
        # storage gets this same ValueError there, so it does here.
        raise ValueError("storage is required for FrozenTrial.")
    if not callable(getattr(storage, "set_trial_system_attr", None)):
        # A URL string got this far in Optuna too, and failed after the upload on a missing
        # attribute (leaving an orphan ref here; found by a probe).
        raise TypeError(
            "storage must be an optuna storage (e.g. optuna.storages.get_storage(url)), got "
            f"{type(storage).__name__}: {reprlib.repr(storage)}"
        )
    if isinstance(study_or_trial, optuna.trial.Trial | optuna.trial.FrozenTrial):
        study = getattr(study_or_trial, "study", None)  # a live Trial knows its study
        study_id = getattr(study, "_study_id", None)
        return MetadataTarget(storage=storage, trial_id=study_or_trial._trial_id, study_id=study_id)
    if isinstance(study_or_trial, optuna.study.Study):
        return MetadataTarget(storage=storage, trial_id=None, study_id=study_or_trial._study_id)
    # With a storage, Optuna would fail on a missing ``_study_id`` attribute: say what is wrong.
    raise TypeError(
        "study_or_trial must be an optuna Study, Trial or FrozenTrial, "
        f"got {type(study_or_trial).__name__}: {reprlib.repr(study_or_trial)}"
    )


def refuse_a_finished_trial(study_or_trial: Any, target: MetadataTarget, *, asking: bool) -> None:
    """Raise Optuna's ``UpdateFinishedTrialError`` now if the trial has finished.

    Optuna writes the metadata first, so it refuses an upload to a finished trial before any
    byte moves; we store the content first (content before ref before metadata), so without
    this a probe's 287 MB went to the store only to be refused. A ``FrozenTrial`` tells its
    state for free (a finished trial never runs again); a live ``Trial`` is looked up in the
    storage only when ``asking`` (a large file). Otherwise Optuna's own refusal, after the
    upload, still holds.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(); study.optimize(lambda t: 0.0, n_trials=1)
        >>> trial = study.trials[0]
        >>> refuse_a_finished_trial(trial, resolve_target(trial, study._storage), asking=False)
        Traceback (most recent call last):
        ...
        optuna.exceptions.UpdateFinishedTrialError: Trial#0 has already finished and can not be updated.
    """
    if target.trial_id is None:
        return  # a study takes artifacts at any time
    optuna = import_optuna()
    if isinstance(study_or_trial, optuna.trial.FrozenTrial):
        frozen = study_or_trial
    elif asking:
        frozen = target.storage.get_trial(target.trial_id)
    else:
        return
    if frozen.state.is_finished():
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"Trial#{frozen.number} has already finished and can not be updated."
        )


def study_id_of_trial(storage: Any, trial_id: int) -> int:
    """The study a trial belongs to.

    Optuna's storage API has no public trial -> study lookup. Where the storage keeps one
    internally (in-memory and cached storages, the RDB trial table) it is used; otherwise,
    and if those internals ever change, the public API is scanned (slower, always right).

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(); trial = study.ask()
        >>> study_id_of_trial(study._storage, trial._trial_id) == study._study_id
        True
    """
    with contextlib.suppress(Exception):
        return _study_id_from_internals(storage, trial_id)
    for study in storage.get_all_studies():
        trials = storage.get_all_trials(study._study_id, deepcopy=False)
        if any(t._trial_id == trial_id for t in trials):
            return int(study._study_id)
    raise ValueError(f"Trial id {trial_id} belongs to no study in this storage")


def _study_id_from_internals(storage: Any, trial_id: int) -> int:
    mapping = getattr(storage, "_trial_id_to_study_id_and_number", None)
    if isinstance(mapping, dict) and trial_id in mapping:
        return int(mapping[trial_id][0])
    backend = getattr(storage, "_backend", None)
    if backend is not None:
        return _study_id_from_internals(backend, trial_id)
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session) as session:
        return int(models.TrialModel.find_or_raise_by_id(trial_id, session).study_id)
