"""Where an artifact's metadata goes in Optuna: storage resolution and attribute access.

Optuna is an optional extra; it is imported on first use with an install hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna_cas.exceptions import StoreConfigError

__all__ = ["MetadataTarget", "resolve_target"]


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
    """A trial or a study in an Optuna storage, where artifact metadata is recorded."""

    storage: Any
    trial_id: int | None
    study_id: int | None

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
        ValueError: ``storage is required for FrozenTrial.`` (Optuna's message).
        TypeError: ``study_or_trial`` is not a Study, Trial or FrozenTrial.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study()
        >>> resolve_target(study, None).study_id
        0
    """
    optuna = import_optuna()
    if isinstance(study_or_trial, optuna.trial.Trial) and storage is None:
        storage = study_or_trial.storage
    elif isinstance(study_or_trial, optuna.study.Study) and storage is None:
        storage = study_or_trial._storage
    if isinstance(study_or_trial, optuna.trial.Trial | optuna.trial.FrozenTrial):
        if storage is None:
            raise ValueError("storage is required for FrozenTrial.")
        return MetadataTarget(storage=storage, trial_id=study_or_trial._trial_id, study_id=None)
    if isinstance(study_or_trial, optuna.study.Study):
        return MetadataTarget(storage=storage, trial_id=None, study_id=study_or_trial._study_id)
    raise TypeError(
        "study_or_trial must be an optuna Study, Trial or FrozenTrial, "
        f"got {type(study_or_trial).__name__}"
    )
