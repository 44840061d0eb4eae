"""optuna-cas on an Optuna study kept in PostgreSQL (the throwaway cluster of the session)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from optuna_cas import (
    FileSystemArtifactStore,
    download_artifact,
    get_all_artifact_meta,
    upload_artifact,
)
from tests.conftest import random_bytes
from tests.support import postgres


def test_round_trip_through_a_postgresql_backed_study(
    postgres_db_url: str, tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    storage = optuna.storages.RDBStorage(postgres_db_url)
    assert storage.engine.dialect.name == "postgresql"
    store = FileSystemArtifactStore(tmp_path / "store")
    study = optuna.create_study(study_name="pg", storage=storage)
    trial = study.ask()
    payload = random_bytes(100_000, seed=7)
    on_trial = upload_artifact(
        artifact_store=store, file_path=str(make_file(payload, "model.bin")), study_or_trial=trial
    )
    on_study = upload_artifact(
        artifact_store=store, file_path=str(make_file(b"notes", "notes.txt")), study_or_trial=study
    )
    study.tell(trial, 1.0)

    # A second connection (a new storage object) reads what the first wrote to the database.
    reloaded = optuna.storages.RDBStorage(postgres_db_url)
    again = optuna.load_study(study_name="pg", storage=reloaded)
    [frozen] = again.get_trials()
    [trial_meta] = get_all_artifact_meta(frozen, storage=reloaded)
    [study_meta] = get_all_artifact_meta(again)
    assert (trial_meta.artifact_id, trial_meta.filename) == (on_trial, "model.bin")
    assert (study_meta.artifact_id, study_meta.filename) == (on_study, "notes.txt")

    target = tmp_path / "out" / "model.bin"
    target.parent.mkdir()
    download_artifact(artifact_store=store, file_path=str(target), artifact_id=on_trial)
    assert target.read_bytes() == payload
    storage.engine.dispose()
    reloaded.engine.dispose()


def test_a_missing_postgresql_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    with pytest.raises(postgres.PostgresNotFound, match=r"initdb.*make test"):
        postgres.find_postgres_program("initdb")


def test_the_newest_installed_version_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = [f"/usr/lib/postgresql/{v}/bin/pg_ctl" for v in ("9.6", "15", "13")]
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: installed)
    assert postgres.find_postgres_program("pg_ctl") == Path("/usr/lib/postgresql/15/bin/pg_ctl")
