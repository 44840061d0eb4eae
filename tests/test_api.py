"""upload_artifact / get_all_artifact_meta / download_artifact with real Optuna studies."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

import optuna_cas
from optuna_cas import (
    ArtifactMeta,
    FileSystemArtifactStore,
    download_artifact,
    get_all_artifact_meta,
    upload_artifact,
)
from optuna_cas.content import blob_key
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from tests.conftest import random_bytes


@pytest.fixture(params=["inmemory", "sqlite"])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> optuna.Study:
    storage = None if request.param == "inmemory" else f"sqlite:///{tmp_path / 'optuna.db'}"
    return optuna.create_study(storage=storage)


@pytest.fixture
def store(tmp_path: Path) -> FileSystemArtifactStore:
    return FileSystemArtifactStore(tmp_path / "artifacts")


def blob_files(store: FileSystemArtifactStore) -> list[Path]:
    return [p for p in (store.content.backend.root / "blobs").rglob("*") if p.is_file()]  # type: ignore[attr-defined]


def test_upload_to_trial_records_optuna_metadata(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    path = make_file(b"hello", name="notes.txt")
    trial = study.ask()
    artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    raw = study._storage.get_trial_system_attrs(trial._trial_id)["artifacts:" + artifact_id]
    record = json.loads(raw)
    assert record["artifact_id"] == artifact_id
    assert record["filename"] == "notes.txt"
    assert record["mimetype"] == "text/plain"
    assert record["encoding"] is None
    assert record["size"] == 5 and record["digest"].startswith("blake3:")
    ref = store.get_ref(artifact_id)
    assert (ref.filename, ref.mimetype, ref.size) == ("notes.txt", "text/plain", 5)


def test_repeated_uploads_get_new_ids_but_one_blob(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    path = make_file(random_bytes(100_000))
    trial = study.ask()
    ids = [
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
        for _ in range(5)
    ]
    assert len(set(ids)) == 5
    assert len(blob_files(store)) == 1
    metas = get_all_artifact_meta(trial)
    assert [m.artifact_id for m in metas] == ids  # insertion order, [0] is the first upload


def test_study_level_artifacts_listed_separately(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    path = make_file(b"data", name="plot.png")
    study_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
    trial = study.ask()
    upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    metas = get_all_artifact_meta(study)
    assert [m.artifact_id for m in metas] == [study_id]
    assert metas[0].mimetype == "image/png"


def test_frozen_trial_needs_storage(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    path = make_file(b"x")
    trial = study.ask()
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    with pytest.raises(ValueError, match=r"storage is required for FrozenTrial\."):
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=frozen)
    with pytest.raises(ValueError, match=r"storage is required for FrozenTrial\."):
        get_all_artifact_meta(frozen)
    assert blob_files(store) == []
    assert get_all_artifact_meta(frozen, storage=study._storage) == []


@pytest.mark.parametrize("given", [None, optuna.trial.FixedTrial({})], ids=["None", "FixedTrial"])
def test_no_storage_raises_optunas_error_for_any_object(
    given: Any, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    # Optuna asks only "is there a storage?" before anything else: same type, same message.
    import optuna.artifacts as oa

    path = str(make_file(b"x"))
    calls = {
        "upload": lambda lib: lib.upload_artifact(
            artifact_store=store, file_path=path, study_or_trial=given
        ),
        "list": lambda lib: lib.get_all_artifact_meta(given),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as theirs:
            call(oa)
        with pytest.raises(ValueError) as ours:
            call(optuna_cas)
        assert str(ours.value) == str(theirs.value) == "storage is required for FrozenTrial.", name
    assert blob_files(store) == []


def test_not_a_study_or_trial_with_a_storage_is_named(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    # Optuna crashes here with AttributeError ('FixedTrial' object has no attribute
    # '_study_id'); ours says what was wrong with what.
    path = str(make_file(b"x"))
    for given in (None, optuna.trial.FixedTrial({})):
        with pytest.raises(TypeError, match=type(given).__name__) as caught:
            upload_artifact(
                artifact_store=store, file_path=path, study_or_trial=given, storage=study._storage
            )
        assert "study_or_trial" in str(caught.value)
        with pytest.raises(TypeError, match=type(given).__name__):
            get_all_artifact_meta(given, storage=study._storage)
    assert blob_files(store) == []


def test_frozen_trial_with_storage(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    # A RUNNING trial's FrozenTrial, as in callbacks that get study.trials[-1].
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    path = make_file(b"x")
    artifact_id = upload_artifact(
        artifact_store=store, file_path=str(path), study_or_trial=frozen, storage=study._storage
    )
    metas = get_all_artifact_meta(frozen, storage=study._storage)
    assert [m.artifact_id for m in metas] == [artifact_id]


@pytest.mark.parametrize(
    ("given", "size", "refused_first"),
    [("frozen", 5000, True), ("live", 5000, False), ("live", 2 * 1024 * 1024, True)],
)
def test_upload_to_finished_trial_raises_optuna_error_and_leaves_no_ref(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    make_file: Callable[..., Path],
    given: str,
    size: int,
    refused_first: bool,
) -> None:
    # Optuna refuses before any byte moves (it writes the metadata first); a probe saw 287 MB
    # stored here first. A FrozenTrial, or a large file, is now refused before the upload; a
    # small file for a live Trial still takes Optuna's refusal after: its ref goes, its blob
    # stays for gc.
    trial = study.ask()
    study.tell(trial, 0.5)
    path = make_file(random_bytes(size, seed=3))
    target = study.trials[0] if given == "frozen" else trial
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match="Trial#0 has already"):
        upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=target, storage=study._storage
        )
    assert list(store.content.iter_ref_ids()) == []
    root = store.content.backend.root  # type: ignore[attr-defined]
    stored = [p for p in root.rglob("*") if p.is_file()]
    assert (stored == []) == refused_first


@pytest.mark.parametrize(
    ("argument", "value", "named"),
    [
        ("mimetype", 1, "mimetype must be a str or None, got int: 1"),
        ("encoding", b"gzip", "encoding must be a str or None, got bytes"),
        ("artifact_store", "./artifacts", "artifact_store must be an artifact store"),
        ("storage", "sqlite:///t.db", "storage must be an optuna storage"),
    ],
)
def test_an_argument_of_the_wrong_kind_is_named_before_anything_is_stored(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    make_file: Callable[..., Path],
    argument: str,
    value: Any,
    named: str,
) -> None:
    # mimetype=1 returned an ID whose ref could not be read back; storage="sqlite:///..."
    # failed after the upload and left an orphan ref (found by a probe).
    kwargs: dict[str, Any] = {
        "artifact_store": store,
        "file_path": str(make_file(b"x" * 5000)),
        "study_or_trial": study,
    }
    if argument == "storage":
        study.optimize(lambda t: 0.0, n_trials=1)
        kwargs["study_or_trial"] = study.trials[0]
    kwargs[argument] = value
    with pytest.raises(TypeError, match=re.escape(named)):
        upload_artifact(**kwargs)
    assert list(store.content.iter_ref_ids()) == []


def test_upload_accepts_a_bytes_path_as_download_does(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    path = make_file(b"bytes path")
    artifact_id = upload_artifact(
        artifact_store=store, file_path=str(path).encode(), study_or_trial=study
    )
    assert get_all_artifact_meta(study)[0].filename == path.name
    assert store.open_reader(artifact_id).read() == b"bytes path"


def test_metadata_written_only_after_blob_and_ref(
    study: optuna.Study, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    seen: list[tuple[bool, bool]] = []
    store = FileSystemArtifactStore(tmp_path / "a")
    storage = study._storage
    original = storage.set_trial_system_attr

    def spy(trial_id: int, key: str, value: Any) -> None:
        artifact_id = key.removeprefix("artifacts:")
        ref = store.get_ref(artifact_id)
        seen.append((store.content.has_ref(artifact_id), store.content.has_blob(ref.digest)))
        original(trial_id, key, value)

    storage.set_trial_system_attr = spy  # type: ignore[method-assign]
    big = b"abc" * 2000  # > INLINE_LIMIT: a blob, written before the ref
    upload_artifact(artifact_store=store, file_path=str(make_file(big)), study_or_trial=study.ask())
    assert seen == [(True, True)]


def test_metadata_of_a_small_file_written_only_after_its_ref_with_the_content(
    study: optuna.Study, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    seen: list[bytes | None] = []
    store = FileSystemArtifactStore(tmp_path / "a")
    storage = study._storage
    original = storage.set_trial_system_attr

    def spy(trial_id: int, key: str, value: Any) -> None:
        seen.append(store.get_ref(key.removeprefix("artifacts:")).inline)
        original(trial_id, key, value)

    storage.set_trial_system_attr = spy  # type: ignore[method-assign]
    upload_artifact(
        artifact_store=store, file_path=str(make_file(b"abc")), study_or_trial=study.ask()
    )
    assert seen == [b"abc"]  # the ref, holding the content (no blob), came first
    assert list(store.content.iter_blobs()) == []


def test_failed_store_write_leaves_no_metadata(
    study: optuna.Study, make_file: Callable[..., Path]
) -> None:
    class Broken:
        def open_reader(self, artifact_id: str) -> Any:
            raise ArtifactNotFound(artifact_id)

        def write(self, artifact_id: str, content_body: Any) -> None:
            raise OSError("bucket unreachable")

        def remove(self, artifact_id: str) -> None:
            raise ArtifactNotFound(artifact_id)

    trial = study.ask()
    with pytest.raises(OSError, match="bucket unreachable"):
        upload_artifact(
            artifact_store=Broken(), file_path=str(make_file(b"x")), study_or_trial=trial
        )
    assert get_all_artifact_meta(trial) == []


def test_upload_bad_paths(
    study: optuna.Study, store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    trial = study.ask()
    with pytest.raises(FileNotFoundError, match=r"nope\.bin"):
        upload_artifact(
            artifact_store=store, file_path=str(tmp_path / "nope.bin"), study_or_trial=trial
        )
    with pytest.raises(IsADirectoryError, match="directory"):
        upload_artifact(artifact_store=store, file_path=str(tmp_path), study_or_trial=trial)
    assert get_all_artifact_meta(trial) == []
    assert blob_files(store) == []


def test_explicit_mimetype_and_encoding(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    trial = study.ask()
    gz = make_file(b"\x1f\x8b", name="log.txt.gz")
    upload_artifact(artifact_store=store, file_path=str(gz), study_or_trial=trial)
    upload_artifact(
        artifact_store=store,
        file_path=str(gz),
        study_or_trial=trial,
        mimetype="application/x-custom",
        encoding="identity",
    )
    guessed, explicit = get_all_artifact_meta(trial)
    assert (guessed.mimetype, guessed.encoding) == ("text/plain", "gzip")
    assert (explicit.mimetype, explicit.encoding) == ("application/x-custom", "identity")
    unknown = make_file(b"x", name="weights.unknownext")
    upload_artifact(artifact_store=store, file_path=str(unknown), study_or_trial=trial)
    assert get_all_artifact_meta(trial)[-1].mimetype == "application/octet-stream"


def test_deprecated_positional_call_warns_and_works(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    trial = study.ask()
    with pytest.warns(FutureWarning, match="Positional arguments"):
        artifact_id = upload_artifact(trial, str(make_file(b"x")), store)  # type: ignore[misc]
    assert get_all_artifact_meta(trial)[0].artifact_id == artifact_id


def test_dashboard_tombstones_are_skipped(
    study: optuna.Study, store: FileSystemArtifactStore, make_file: Callable[..., Path]
) -> None:
    trial = study.ask()
    keep = upload_artifact(
        artifact_store=store, file_path=str(make_file(b"a")), study_or_trial=trial
    )
    gone = upload_artifact(
        artifact_store=store, file_path=str(make_file(b"b")), study_or_trial=trial
    )
    study._storage.set_trial_system_attr(trial._trial_id, "artifacts:" + gone, json.dumps(None))
    assert [m.artifact_id for m in get_all_artifact_meta(trial)] == [keep]
    with pytest.raises(TypeError):  # what Optuna itself does with the tombstone
        optuna.artifacts.get_all_artifact_meta(trial)


def test_download_round_trip_and_refuses_overwrite(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    make_file: Callable[..., Path],
    tmp_path: Path,
) -> None:
    data = random_bytes(2 * 1024 * 1024 + 3)
    artifact_id = upload_artifact(
        artifact_store=store, file_path=str(make_file(data)), study_or_trial=study.ask()
    )
    target = tmp_path / "out" / "model.bin"
    target.parent.mkdir()
    download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact_id)
    assert target.read_bytes() == data
    with pytest.raises(FileExistsError, match=r"model\.bin"):
        download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact_id)
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.bin"]


def test_download_accepts_a_bytes_path_as_optuna_does(
    store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    # Optuna's os.path.exists and open take bytes paths; so must ours.
    import io

    store.write("a", io.BytesIO(b"data"))
    target = tmp_path / "out.bin"
    download_artifact(artifact_store=store, file_path=bytes(target), artifact_id="a")
    assert target.read_bytes() == b"data"
    with pytest.raises(FileExistsError, match=r"out\.bin"):
        download_artifact(artifact_store=store, file_path=bytes(target), artifact_id="a")


def test_download_to_an_empty_path_is_refused_as_optuna_refuses_it(
    store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    import io

    import optuna.artifacts as oa

    store.write("a", io.BytesIO(b"x"))
    with pytest.raises(FileNotFoundError) as theirs:
        oa.download_artifact(artifact_store=store, file_path="", artifact_id="a")
    with pytest.raises(FileNotFoundError) as ours:
        download_artifact(artifact_store=store, file_path="", artifact_id="a")
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("suffix", ["/", "/.", "/..", "/x/", "file/"])
def test_download_to_a_directory_path_is_refused_as_optuna_refuses_it(
    store: FileSystemArtifactStore, tmp_path: Path, suffix: str
) -> None:
    # Path("models/") is Path("models"): a file named models was written where the user
    # meant a directory (found by a probe).
    import io

    import optuna.artifacts as oa

    store.write("a", io.BytesIO(b"x"))
    for side in ("theirs", "ours"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "file").write_bytes(b"")
    before = sorted(tmp_path.rglob("*"))
    raised = []
    for side, download in (("theirs", oa.download_artifact), ("ours", download_artifact)):
        path = (
            str(tmp_path / side / "new") + suffix
            if suffix != "file/"
            else str(tmp_path / side / suffix)
        )
        with pytest.raises(OSError) as caught:
            download(artifact_store=store, file_path=path, artifact_id="a")
        raised.append((type(caught.value), caught.value.errno))
    assert raised[0] == raised[1]
    assert sorted(tmp_path.rglob("*")) == before
    # A missing artifact is looked up first, as Optuna does (review of the fix).
    for download in (oa.download_artifact, download_artifact):
        with pytest.raises(ArtifactNotFound):
            download(artifact_store=store, file_path=str(tmp_path / "x") + suffix, artifact_id="b")


def test_download_unknown_id_creates_nothing(
    store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    target = tmp_path / "x.bin"
    with pytest.raises(ArtifactNotFound, match="00000000-0000"):
        download_artifact(
            artifact_store=store,
            file_path=str(target),
            artifact_id="00000000-0000-0000-0000-000000000000",
        )
    assert list(tmp_path.iterdir()) == [tmp_path / "artifacts"]


def test_download_corrupt_blob_raises_and_leaves_no_file(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    make_file: Callable[..., Path],
    tmp_path: Path,
) -> None:
    data = random_bytes(3 * 1024 * 1024)
    artifact_id = upload_artifact(
        artifact_store=store, file_path=str(make_file(data)), study_or_trial=study.ask()
    )
    blob = store.content.backend.root / blob_key(store.get_ref(artifact_id).digest)  # type: ignore[attr-defined]
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(corrupted))
    out = tmp_path / "dl"
    out.mkdir()
    with pytest.raises(IntegrityError, match="does not match"):
        download_artifact(
            artifact_store=store, file_path=str(out / "m.bin"), artifact_id=artifact_id
        )
    assert list(out.iterdir()) == []


def test_artifact_meta_has_optuna_fields_first() -> None:
    meta = ArtifactMeta("i", "f", "m", None)
    assert (meta.artifact_id, meta.filename, meta.mimetype, meta.encoding) == ("i", "f", "m", None)
    assert meta.digest is None and meta.size is None


def test_not_found_is_catchable_as_optuna_and_filenotfound() -> None:
    from optuna.artifacts.exceptions import ArtifactNotFound as OptunaArtifactNotFound

    err = ArtifactNotFound("gone")
    assert isinstance(err, OptunaArtifactNotFound)
    assert isinstance(err, FileNotFoundError)
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ArtifactNotFound and str(again) == "gone"
