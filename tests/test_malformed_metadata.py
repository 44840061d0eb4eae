"""Malformed ``artifacts:<id>`` entries in a real Optuna storage (in-memory and SQLite).

Anyone with the storage can write these attributes. One bad entry is reported (a
MalformedRecordWarning naming its key) and skipped; it never hides the good ones, and
delete_artifact can still remove it.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest

from optuna_cas import (
    FileSystemArtifactStore,
    delete_artifact,
    get_all_artifact_meta,
    upload_artifact,
)
from optuna_cas.exceptions import ArtifactNotFound, MalformedRecordWarning

GOOD = {"filename": "f.txt", "mimetype": "text/plain", "encoding": None}


def meta_json(artifact_id: str, **fields: Any) -> str:
    return json.dumps({"artifact_id": artifact_id, **GOOD, **fields})


# Key suffix -> stored value. Each must be skipped with exactly one warning naming its key.
BAD: dict[str, Any] = {
    "not-json": "this is not json",
    "truncated": '{"artifact_id": "truncated", "filename": ',
    "deep": "[" * 100_000 + "]" * 100_000,
    "deep-object": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "huge": json.dumps({"artifact_id": "huge", **GOOD, "pad": "x" * (2 * 1024 * 1024)}),
    "list": "[1, 2, 3]",
    "number": "5",
    "string": '"artifacts"',
    "empty": "",
    "missing-keys": json.dumps({"artifact_id": "missing-keys"}),
    "no-encoding": json.dumps({"artifact_id": "no-encoding", "filename": "f", "mimetype": "m"}),
    "filename-int": meta_json("filename-int", filename=3),
    "mimetype-list": meta_json("mimetype-list", mimetype=["text/plain"]),
    "encoding-dict": meta_json("encoding-dict", encoding={"a": 1}),
    "size-bool": meta_json("size-bool", size=True),
    "size-negative": meta_json("size-negative", size=-5),
    "size-string": meta_json("size-string", size="big"),
    "digest-int": meta_json("digest-int", digest=7),
    "id-int": json.dumps({"artifact_id": 7, **GOOD}),
    "id-mismatch": meta_json("someone-else"),
    "raw-dict": {"artifact_id": "raw-dict", **GOOD},  # not a JSON string at all
    "raw-int": 42,
}


@pytest.fixture(params=["inmemory", "sqlite"])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> optuna.Study:
    storage = None if request.param == "inmemory" else f"sqlite:///{tmp_path / 'optuna.db'}"
    return optuna.create_study(storage=storage)


@pytest.fixture
def store(tmp_path: Path) -> FileSystemArtifactStore:
    return FileSystemArtifactStore(tmp_path / "artifacts")


@contextmanager
def malformed_warnings() -> Iterator[list[str]]:
    """Collects the messages of every MalformedRecordWarning raised inside."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    messages.extend(str(w.message) for w in caught if w.category is MalformedRecordWarning)


def set_attr(study: optuna.Study, trial_id: int | None, key: str, value: Any) -> None:
    if trial_id is None:
        study._storage.set_study_system_attr(study._study_id, key, value)
    else:
        study._storage.set_trial_system_attr(trial_id, key, value)


@pytest.mark.parametrize("level", ["trial", "study"])
def test_bad_entries_are_skipped_with_one_warning_each(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    make_file: Callable[..., Path],
    level: str,
) -> None:
    trial = study.ask()
    owner: Any = trial if level == "trial" else study
    trial_id = trial._trial_id if level == "trial" else None

    def upload(data: bytes) -> str:
        return upload_artifact(
            artifact_store=store, file_path=str(make_file(data)), study_or_trial=owner
        )

    good = [upload(b"first")]
    for i, (suffix, value) in enumerate(BAD.items()):
        set_attr(study, trial_id, "artifacts:" + suffix, value)
        if i % 7 == 0:
            good.append(upload(f"good {i}".encode()))  # interleaved with the bad ones
    set_attr(study, trial_id, "artifacts:tombstone", json.dumps(None))  # silent, as before
    good.append(upload(b"last"))

    with malformed_warnings() as messages:
        metas = get_all_artifact_meta(owner)
    assert [m.artifact_id for m in metas] == good
    assert all(m.filename and m.digest and m.size for m in metas)
    assert len(messages) == len(BAD), messages
    for suffix in BAD:
        (message,) = [m for m in messages if f"'artifacts:{suffix}'" in m]
        assert message.startswith(f"artifact metadata 'artifacts:{suffix}': ")
        assert message.endswith("(skipped)")
    assert "it names artifact 'someone-else'" in " ".join(messages)
    assert not any("tombstone" in m for m in messages)


def test_string_created_does_not_break_the_order(study: optuna.Study) -> None:
    # Optuna ignores "created"; we sort by it, which crashed comparing str with float.
    trial = study.ask()
    for artifact_id, created in [("c", 3), ("a", "1.5"), ("b", 2.0)]:
        set_attr(
            study,
            trial._trial_id,
            f"artifacts:{artifact_id}",
            meta_json(artifact_id, created=created),
        )
    with malformed_warnings() as messages:
        assert [m.artifact_id for m in get_all_artifact_meta(trial)] == ["a", "b", "c"]
    assert messages == []
    # A created that is no number at all is unknown: the storage's order is kept, as Optuna does.
    set_attr(study, trial._trial_id, "artifacts:d", meta_json("d", created="yesterday"))
    attrs = study._storage.get_trial_system_attrs(trial._trial_id)
    storage_order = [k.removeprefix("artifacts:") for k in attrs if k.startswith("artifacts:")]
    metas = get_all_artifact_meta(trial)
    assert [m.artifact_id for m in metas] == storage_order
    assert {m.artifact_id: m.created for m in metas} == {"a": 1.5, "b": 2.0, "c": 3.0, "d": None}


@pytest.mark.parametrize("bad_value", ["not json", "[" * 100_000, '{"artifact_id": 1}'])
def test_delete_malformed_entry_of_a_running_trial(
    study: optuna.Study, store: FileSystemArtifactStore, bad_value: str
) -> None:
    trial = study.ask()
    store.write("bad", io.BytesIO(b"bytes behind a broken entry"))
    set_attr(study, trial._trial_id, "artifacts:bad", bad_value)
    delete_artifact(artifact_store=store, artifact_id="bad", study_or_trial=trial)
    assert study._storage.get_trial_system_attrs(trial._trial_id)["artifacts:bad"] == "null"
    with pytest.raises(ArtifactNotFound):
        store.get_ref("bad")
    with malformed_warnings() as messages:
        assert get_all_artifact_meta(trial) == []
    assert messages == []
    with pytest.raises(ArtifactNotFound):
        delete_artifact(artifact_store=store, artifact_id="bad", study_or_trial=trial)


def test_delete_malformed_entry_of_a_finished_trial(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    trial = study.ask()
    keep = upload_artifact(
        artifact_store=store, file_path=str(make_file(b"keep")), study_or_trial=trial
    )
    set_attr(study, trial._trial_id, "artifacts:bad", "{not json")  # no ref behind it
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    with malformed_warnings() as messages:
        assert [m.artifact_id for m in get_all_artifact_meta(frozen, storage=study._storage)] == [
            keep
        ]
    assert len(messages) == 1

    delete_artifact(
        artifact_store=store, artifact_id="bad", study_or_trial=frozen, storage=study._storage
    )
    study_attrs = study._storage.get_study_system_attrs(study._study_id)
    assert json.loads(study_attrs["artifacts-deleted:bad"])["trial_id"] == trial._trial_id
    with malformed_warnings() as messages:
        assert [m.artifact_id for m in get_all_artifact_meta(frozen, storage=study._storage)] == [
            keep
        ]
    assert messages == []  # deleted: no longer reported
    with pytest.raises(ArtifactNotFound):
        delete_artifact(
            artifact_store=store, artifact_id="bad", study_or_trial=frozen, storage=study._storage
        )
