"""reconcile: a study's Optuna metadata against the store, on real in-memory and SQLite studies."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

from optuna_cas import (
    FileSystemArtifactStore,
    ReconcileReport,
    delete_artifact,
    download_artifact,
    gc,
    get_all_artifact_meta,
    reconcile,
    upload_artifact,
)
from optuna_cas.digest import Digest
from optuna_cas.operations.reconcile import CATEGORIES, Finding
from optuna_cas.refs import INLINE_LIMIT, ArtifactRef
from tests.conftest import random_bytes
from tests.support.stores import STORE_BUILDERS
from tests.test_malformed_metadata import BAD, meta_json


def blob_sized(text: bytes) -> bytes:
    """``text`` repeated past INLINE_LIMIT: content stored as a blob, not inside its ref.

    A ref is rebuilt from the metadata only if the blob it names is still stored; a small
    file's content lives only inside its ref (see the test on small files below).
    """
    return text * (INLINE_LIMIT // len(text) + 1)


@pytest.fixture(params=["inmemory", "sqlite"])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> optuna.Study:
    storage = None if request.param == "inmemory" else f"sqlite:///{tmp_path / 'optuna.db'}"
    return optuna.create_study(storage=storage)


@pytest.fixture
def store(tmp_path: Path) -> FileSystemArtifactStore:
    return FileSystemArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def upload(
    store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> Callable[[Any, bytes], str]:
    def upload(owner: Any, data: bytes, name: str = "model.pt") -> str:
        path = make_file(data, name=name)
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=owner)

    return upload


def collect_all(store: FileSystemArtifactStore) -> None:
    """gc with no grace: every blob no ref names goes now."""
    gc(store, grace_period=0, allow_short_grace=True)


def found(findings: list[Finding]) -> list[tuple[str, int | None]]:
    return [(f.artifact_id, f.trial_number) for f in findings]


def problems(report: ReconcileReport) -> dict[str, int]:
    """The report's non-empty lists but 'consistent', by name."""
    return {k: n for k, n in report.counts.items() if n and k != "consistent"}


def study_attrs(study: optuna.Study) -> dict[str, Any]:
    return dict(study._storage.get_study_system_attrs(study._study_id))


def trial_attrs(study: optuna.Study, number: int) -> dict[str, Any]:
    return dict(study._storage.get_all_trials(study._study_id)[number].system_attrs)


def test_a_consistent_study_is_ok(
    study: optuna.Study, store: FileSystemArtifactStore, upload: Callable[..., str]
) -> None:
    upload(study.ask(), b"one")
    upload(study, b"two")
    report = reconcile(store, study)
    assert report.ok and problems(report) == {}
    assert report.entries_checked == 2 and len(report.consistent) == 2


def test_dashboard_removed_ref_of_a_running_trial_is_rebuilt(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    upload: Callable[..., str],
    tmp_path: Path,
) -> None:
    data = random_bytes(300_000)
    trial = study.ask()
    artifact_id = upload(trial, data, "weights.bin")
    ref_before = store.get_ref(artifact_id)
    store.remove(artifact_id)  # optuna-dashboard's remove(); its tombstone never came

    report = reconcile(store, study)
    assert not report.ok
    assert found(report.repairable) == [(artifact_id, 0)]
    assert "no ref in the store" in report.repairable[0].reason
    assert problems(report) == {"repairable": 1}

    repaired = reconcile(store, study, repair=True)
    assert repaired.ok and found(repaired.rebuilt) == [(artifact_id, 0)]
    assert store.get_ref(artifact_id) == ref_before  # same digest, name, type, time
    out = tmp_path / "out.bin"
    download_artifact(artifact_store=store, file_path=str(out), artifact_id=artifact_id)
    assert out.read_bytes() == data

    again = reconcile(store, study, repair=True)
    assert again.ok and problems(again) == {} and len(again.consistent) == 1


def test_removed_ref_whose_blob_is_gone_gets_the_dashboards_tombstone(
    study: optuna.Study, store: FileSystemArtifactStore, upload: Callable[..., str]
) -> None:
    trial = study.ask()
    kept = upload(trial, b"kept")
    lost = upload(trial, blob_sized(b"lost"))
    store.remove(lost)
    collect_all(store)

    report = reconcile(store, study)
    assert found(report.lost) == [(lost, 0)]
    assert "its blob blake3:" in report.lost[0].reason
    assert problems(report) == {"lost": 1}
    assert [m.artifact_id for m in get_all_artifact_meta(trial)] == [kept, lost]

    repaired = reconcile(store, study, repair=True)
    assert repaired.ok and found(repaired.deleted) == [(lost, 0)]
    assert "JSON null" in repaired.deleted[0].reason
    assert trial_attrs(study, 0)["artifacts:" + lost] == "null"
    assert [m.artifact_id for m in get_all_artifact_meta(trial)] == [kept]
    assert (again := reconcile(store, study, repair=True)).ok and problems(again) == {}


def test_finished_trial_deletion_is_recorded_on_the_study(
    study: optuna.Study, store: FileSystemArtifactStore, upload: Callable[..., str]
) -> None:
    trial = study.ask()
    lost = upload(trial, blob_sized(b"lost"))
    rebuildable = upload(trial, blob_sized(b"still stored"))
    study.tell(trial, 1.0)  # finished: Optuna refuses any change to its attributes
    store.remove(lost)
    store.remove(rebuildable)
    collect_all(store)
    store.content.put_blob(io.BytesIO(blob_sized(b"still stored")))  # this one's bytes are back

    report = reconcile(store, study)
    assert found(report.lost) == [(lost, 0)] and found(report.repairable) == [(rebuildable, 0)]

    repaired = reconcile(store, study, repair=True)
    assert repaired.ok
    assert found(repaired.rebuilt) == [(rebuildable, 0)]
    assert found(repaired.deleted) == [(lost, 0)]
    assert "Optuna's own listing" in repaired.deleted[0].reason
    assert "artifacts-deleted:" + lost in study_attrs(study)
    assert trial_attrs(study, 0)["artifacts:" + lost] != "null"  # unchanged: it had finished
    frozen = study.trials[0]
    listed = [m.artifact_id for m in get_all_artifact_meta(frozen, storage=study._storage)]
    assert listed == [rebuildable]
    assert (again := reconcile(store, study, repair=True)).ok and problems(again) == {}


def test_plain_remove_of_a_study_artifact_dangles(
    study: optuna.Study, store: FileSystemArtifactStore, upload: Callable[..., str]
) -> None:
    artifact_id = upload(study, blob_sized(b"study-level"))
    store.remove(artifact_id)  # `optuna-cas rm ID` without --study/--trial
    report = reconcile(store, study)
    assert found(report.repairable) == [(artifact_id, None)] and not report.ok


def test_conflicting_ref_is_reported_and_left_alone(
    study: optuna.Study, store: FileSystemArtifactStore, upload: Callable[..., str]
) -> None:
    artifact_id = upload(study.ask(), b"original")
    other = store.content.put_blob(io.BytesIO(b"swapped in"))
    swapped = ArtifactRef(artifact_id, other, filename="model.pt")
    store.content.put_ref(swapped)

    for repair in (False, True):
        report = reconcile(store, study, repair=repair)
        assert found(report.conflicts) == [(artifact_id, 0)] and not report.ok
        assert str(other) in report.conflicts[0].reason
        assert str(Digest.of_bytes(b"original")) in report.conflicts[0].reason
        assert store.get_ref(artifact_id) == swapped


def test_damaged_ref_is_rebuilt_from_the_metadata(
    study: optuna.Study, store: FileSystemArtifactStore, upload: Callable[..., str], tmp_path: Path
) -> None:
    artifact_id = upload(study.ask(), blob_sized(b"bytes to keep"))
    (tmp_path / "artifacts" / "refs" / artifact_id).write_bytes(b"[" * 100_000)
    report = reconcile(store, study)
    assert found(report.repairable) == [(artifact_id, 0)]
    assert "the ref is damaged" in report.repairable[0].reason
    assert reconcile(store, study, repair=True).ok
    out = tmp_path / "out"
    download_artifact(artifact_store=store, file_path=str(out), artifact_id=artifact_id)
    assert out.read_bytes() == blob_sized(b"bytes to keep")


def test_a_small_files_removed_or_damaged_ref_cannot_be_rebuilt(
    study: optuna.Study, store: FileSystemArtifactStore, upload: Callable[..., str], tmp_path: Path
) -> None:
    # Its bytes were only inside the ref: the artifact is lost with it, correctly.
    trial = study.ask()
    kept = upload(trial, b"small and kept")
    removed = upload(trial, b"small, ref removed")
    damaged = upload(trial, b"small, ref damaged")
    assert list(store.content.iter_blobs()) == []
    store.remove(removed)
    (tmp_path / "artifacts" / "refs" / damaged).write_bytes(b"[" * 100_000)

    report = reconcile(store, study)
    assert found(report.consistent) == [(kept, 0)] and report.repairable == []
    assert found(report.lost) == [(removed, 0)] and "is not stored" in report.lost[0].reason
    assert "kept inside its ref, and went with it" in report.lost[0].reason
    assert found(report.conflicts) == [(damaged, 0)]
    assert "nothing to rebuild the ref from" in report.conflicts[0].reason

    repaired = reconcile(store, study, repair=True)
    assert repaired.rebuilt == [] and found(repaired.deleted) == [(removed, 0)]
    assert found(repaired.conflicts) == [(damaged, 0)]  # left for a human: never hidden
    assert [m.artifact_id for m in get_all_artifact_meta(trial)] == [kept, damaged]


def test_ref_present_but_blob_missing_is_reported(
    study: optuna.Study, store: FileSystemArtifactStore, upload: Callable[..., str]
) -> None:
    artifact_id = upload(study.ask(), blob_sized(b"vanishing"))
    store.content.remove_blob(store.get_ref(artifact_id).digest)  # out-of-band delete
    for repair in (False, True):
        report = reconcile(store, study, repair=repair)
        assert found(report.missing_blobs) == [(artifact_id, 0)] and not report.ok


@pytest.mark.parametrize("level", ["trial", "study"])
def test_malformed_entries_are_reported_with_their_reasons(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    upload: Callable[..., str],
    level: str,
) -> None:
    trial = study.ask()
    good = upload(trial, b"good")
    bad = {
        **BAD,
        "..": meta_json(".."),  # not a valid artifact ID
        "bad-digest": meta_json("bad-digest", digest="blake3:zz", size=1),
        "no-size": meta_json("no-size", digest=str(Digest.of_bytes(b"x"))),
    }
    for suffix, value in bad.items():
        if level == "trial":
            study._storage.set_trial_system_attr(trial._trial_id, "artifacts:" + suffix, value)
        else:
            study._storage.set_study_system_attr(study._study_id, "artifacts:" + suffix, value)
    before = (study_attrs(study), trial_attrs(study, 0))

    for repair in (False, True):
        report = reconcile(store, study, repair=repair)
        number = 0 if level == "trial" else None
        assert sorted(found(report.malformed)) == sorted((s, number) for s in bad)
        reasons = {f.artifact_id: f.reason for f in report.malformed}
        assert "nested deeper than" in reasons["deep"]
        assert "Invalid artifact_id" in reasons[".."]
        assert "Invalid blake3 hex digest" in reasons["bad-digest"]
        assert "without a size" in reasons["no-size"]
        assert all(
            reason.startswith("artifact metadata 'artifacts:") for reason in reasons.values()
        )
        assert found(report.consistent) == [(good, 0)] and not report.ok
        assert (study_attrs(study), trial_attrs(study, 0)) == before  # repair left them alone


def test_refs_no_metadata_names_are_reported_never_deleted(
    study: optuna.Study, store: FileSystemArtifactStore, upload: Callable[..., str]
) -> None:
    named = upload(study.ask(), b"named")
    store.write("another-studys-artifact", io.BytesIO(b"elsewhere"))
    tombstoned = upload(study.ask(), b"tombstoned")
    study._storage.set_trial_system_attr(
        study.trials[1]._trial_id, "artifacts:" + tombstoned, "null"
    )

    report = reconcile(store, study, repair=True)
    assert report.ok  # unreferenced refs are not a fault
    by_id = {f.artifact_id: f for f in report.unreferenced}
    assert set(by_id) == {"another-studys-artifact", tombstoned}
    assert "another study" in by_id["another-studys-artifact"].reason
    assert by_id[tombstoned].trial_number == 1
    assert "records it deleted" in by_id[tombstoned].reason
    assert {r.artifact_id for r in store.content.iter_refs()} == {
        named,
        tombstoned,
        "another-studys-artifact",
    }


def test_entries_written_by_optunas_own_store(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    make_file: Callable[..., Path],
    tmp_path: Path,
) -> None:
    # Optuna's own FileSystemArtifactStore on the same directory: a flat file per ID and
    # metadata without a digest. Served by our store, so not dangling.
    optunas = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    trial = study.ask()
    path = str(make_file(b"legacy"))
    legacy = optuna.artifacts.upload_artifact(
        artifact_store=optunas, file_path=path, study_or_trial=trial
    )
    gone = optuna.artifacts.upload_artifact(
        artifact_store=optunas, file_path=path, study_or_trial=trial
    )
    (tmp_path / "artifacts" / gone).unlink()

    report = reconcile(store, study)
    assert found(report.consistent) == [(legacy, 0)]
    assert found(report.lost) == [(gone, 0)] and "records no digest" in report.lost[0].reason
    assert reconcile(store, study, repair=True).ok
    assert [m.artifact_id for m in get_all_artifact_meta(trial)] == [legacy]


def test_repair_of_a_mixed_study_is_idempotent(
    study: optuna.Study, store: FileSystemArtifactStore, upload: Callable[..., str]
) -> None:
    running, finished = study.ask(), study.ask()
    ids = [
        upload(t, blob_sized(bytes([i]))) for i, t in enumerate([running, finished, study, running])
    ]
    study.tell(finished, 0.0)
    delete_artifact(artifact_store=store, artifact_id=ids[3], study_or_trial=running)
    for artifact_id in ids[:3]:
        store.remove(artifact_id)
    collect_all(store)
    store.content.put_blob(io.BytesIO(blob_sized(bytes([1]))))  # the finished trial's are back

    first = reconcile(store, study, repair=True)
    assert first.ok
    assert found(first.rebuilt) == [(ids[1], 1)]
    assert found(first.deleted) == [(ids[0], 0), (ids[2], None)]  # trials in order, then the study
    second = reconcile(store, study, repair=True)
    assert second.ok and problems(second) == {} and found(second.consistent) == [(ids[1], 1)]
    assert set(CATEGORIES) == set(second.counts)


def test_refuses_what_is_not_a_study(store: FileSystemArtifactStore) -> None:
    with pytest.raises(TypeError, match="optuna Study"):
        reconcile(store, "my-study")


def test_blob_collected_while_its_ref_is_rebuilt_leaves_no_dangling_ref(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    upload: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    artifact_id = upload(study.ask(), blob_sized(b"about to be collected"))
    digest = store.get_ref(artifact_id).digest
    store.remove(artifact_id)
    put_ref = store.content.put_ref

    def put_ref_then_gc_runs(ref: ArtifactRef) -> None:
        # gc judged the blob unreferenced before the ref existed, and deletes it right now.
        put_ref(ref)
        store.content.remove_blob(digest)

    monkeypatch.setattr(store.content, "put_ref", put_ref_then_gc_runs)
    report = reconcile(store, study, repair=True)
    assert report.rebuilt == [] and found(report.deleted) == [(artifact_id, 0)]
    assert "collected during the repair" in report.deleted[0].reason
    assert not store.content.has_ref(artifact_id)


def test_nothing_is_recorded_deleted_against_a_store_without_a_trace_of_the_study(
    study: optuna.Study, upload: Callable[..., str], tmp_path: Path
) -> None:
    ids = [upload(study.ask(), b"one"), upload(study, b"two")]
    before = (study_attrs(study), trial_attrs(study, 0))
    wrong = FileSystemArtifactStore(tmp_path / "another-projects-store")
    wrong.write("unrelated", io.BytesIO(b"unrelated"))

    report = reconcile(wrong, study, repair=True)
    assert found(report.lost) == [(ids[0], 0), (ids[1], None)] and report.deleted == []
    assert all("the right one?" in f.reason for f in report.lost) and not report.ok
    assert (study_attrs(study), trial_attrs(study, 0)) == before


@pytest.mark.parametrize("kind", ["memory", "s3", "gcs", "cached-backoff-s3"])
def test_repair_on_every_kind_of_store(
    kind: str, request: pytest.FixtureRequest, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    remote = STORE_BUILDERS[kind](request)
    study = optuna.create_study()
    trial = study.ask()
    data = random_bytes(100_000, seed=1)
    ids = [
        upload_artifact(
            artifact_store=remote, file_path=str(make_file(d, name=n)), study_or_trial=trial
        )
        for d, n in [(data, "kept.bin"), (blob_sized(b"lost"), "lost.bin")]
    ]
    lost_digest = remote.get_ref(ids[1]).digest
    for artifact_id in ids:
        remote.remove(artifact_id)
    remote.content.remove_blob(lost_digest)

    report = reconcile(remote, study)
    assert found(report.repairable) == [(ids[0], 0)] and found(report.lost) == [(ids[1], 0)]
    repaired = reconcile(remote, study, repair=True)
    assert found(repaired.rebuilt) == [(ids[0], 0)] and found(repaired.deleted) == [(ids[1], 0)]
    out = tmp_path / "out.bin"
    download_artifact(artifact_store=remote, file_path=str(out), artifact_id=ids[0])
    assert out.read_bytes() == data
    assert (again := reconcile(remote, study)).ok and problems(again) == {}
