"""Our stores under Optuna's own functions and optuna-dashboard, and vice versa."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import optuna.artifacts as oa
import pytest

import optuna_cas
from optuna_cas import FileSystemArtifactStore
from tests.conftest import random_bytes


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_optuna_upload_and_download_through_our_store(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    store = FileSystemArtifactStore(tmp_path / "a")
    data = random_bytes(1_500_000)
    trial = optuna.create_study().ask()
    artifact_id = oa.upload_artifact(
        artifact_store=store, file_path=str(make_file(data)), study_or_trial=trial
    )
    oa.download_artifact(
        artifact_store=store, file_path=str(tmp_path / "o1"), artifact_id=artifact_id
    )
    assert (tmp_path / "o1").read_bytes() == data
    # ...and our download of what Optuna's function uploaded.
    optuna_cas.download_artifact(
        artifact_store=store, file_path=str(tmp_path / "o2"), artifact_id=artifact_id
    )
    assert (tmp_path / "o2").read_bytes() == data
    # Optuna's listing reads our metadata, and ours reads Optuna's.
    ours = optuna_cas.upload_artifact(
        artifact_store=store, file_path=str(make_file(data)), study_or_trial=trial
    )
    assert {m.artifact_id for m in oa.get_all_artifact_meta(trial)} == {artifact_id, ours}
    assert {m.artifact_id for m in optuna_cas.get_all_artifact_meta(trial)} == {artifact_id, ours}
    oa.download_artifact(artifact_store=store, file_path=str(tmp_path / "o3"), artifact_id=ours)
    assert (tmp_path / "o3").read_bytes() == data
    assert len(list(store.content.iter_blobs())) == 1


def test_our_functions_with_optunas_own_store(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    store = oa.FileSystemArtifactStore(str(tmp_path))
    data = random_bytes(300_000)
    trial = optuna.create_study().ask()
    artifact_id = optuna_cas.upload_artifact(
        artifact_store=store, file_path=str(make_file(data)), study_or_trial=trial
    )
    target = tmp_path / "out.bin"
    optuna_cas.download_artifact(
        artifact_store=store, file_path=str(target), artifact_id=artifact_id
    )
    assert target.read_bytes() == data
    meta = optuna_cas.get_all_artifact_meta(trial)[0]
    assert meta.digest is None and meta.size is None


def test_backoff_wraps_optunas_own_store(tmp_path: Path) -> None:
    import io

    store = optuna_cas.Backoff(oa.FileSystemArtifactStore(str(tmp_path)), sleep=lambda s: None)
    store.write("abc", io.BytesIO(b"payload"))
    with store.open_reader("abc") as reader:
        assert reader.read() == b"payload"
    store.remove("abc")
    with pytest.raises(oa.exceptions.ArtifactNotFound):
        store.remove("abc")


@pytest.mark.parametrize("wrap", ["plain", "backoff"])
def test_missing_artifact_in_optunas_store_raises_our_not_found(tmp_path: Path, wrap: str) -> None:
    # Optuna's stores raise Optuna's base class; `except optuna_cas.exceptions.ArtifactNotFound`
    # after the import change must still catch it, and the message stays Optuna's.
    base: object = oa.FileSystemArtifactStore(str(tmp_path))
    store = base if wrap == "plain" else optuna_cas.Backoff(base, sleep=lambda s: None)
    target = tmp_path / "out.bin"
    with pytest.raises(optuna_cas.exceptions.ArtifactNotFound, match="missing-id") as caught:
        optuna_cas.download_artifact(
            artifact_store=store, file_path=str(target), artifact_id="missing-id"
        )
    assert isinstance(caught.value.__cause__, oa.exceptions.ArtifactNotFound)
    assert not target.exists()


def test_delete_artifact_with_optunas_store_when_the_file_is_gone(tmp_path: Path) -> None:
    # The metadata is the record: a file already removed from Optuna's store (which raises
    # Optuna's ArtifactNotFound, not ours) must not stop the deletion.
    (tmp_path / "model.pt").write_bytes(b"weights")
    store = oa.FileSystemArtifactStore(str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    trial = optuna.create_study().ask()
    artifact_id = optuna_cas.upload_artifact(
        artifact_store=store, file_path=str(tmp_path / "model.pt"), study_or_trial=trial
    )
    store.remove(artifact_id)
    optuna_cas.delete_artifact(artifact_store=store, artifact_id=artifact_id, study_or_trial=trial)
    assert optuna_cas.get_all_artifact_meta(trial) == []


def test_files_left_by_optunas_filesystem_store_stay_readable(tmp_path: Path) -> None:
    import io

    oa.FileSystemArtifactStore(str(tmp_path)).write("legacy-1", io.BytesIO(b"old checkpoint"))
    ours = FileSystemArtifactStore(tmp_path)
    with ours.open_reader("legacy-1") as reader:
        assert reader.read() == b"old checkpoint"
    optuna_cas.download_artifact(
        artifact_store=ours, file_path=str(tmp_path / "dl.bin"), artifact_id="legacy-1"
    )
    assert (tmp_path / "dl.bin").read_bytes() == b"old checkpoint"


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, optuna.Study, FileSystemArtifactStore]]:
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    study = optuna.create_study(storage=storage)
    store = FileSystemArtifactStore(tmp_path / "artifacts")
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", study, store
    finally:
        server.shutdown()
        server.server_close()


def test_dashboard_serves_our_artifact_byte_exact(
    dashboard: tuple[str, optuna.Study, FileSystemArtifactStore], make_file: Callable[..., Path]
) -> None:
    url, study, store = dashboard
    data = random_bytes(2_000_000)
    trial = study.ask()
    artifact_id = optuna_cas.upload_artifact(
        artifact_store=store, file_path=str(make_file(data, name="curve.png")), study_or_trial=trial
    )
    study_art = optuna_cas.upload_artifact(
        artifact_store=store,
        file_path=str(make_file(b"a,b\n1,2\n", name="t.csv")),
        study_or_trial=study,
    )
    with urllib.request.urlopen(
        f"{url}/artifacts/{study._study_id}/{trial._trial_id}/{artifact_id}"
    ) as r:
        assert r.headers["Content-Type"] == "image/png"
        assert r.read() == data
    with urllib.request.urlopen(f"{url}/artifacts/{study._study_id}/{study_art}") as r:
        assert r.headers["Content-Type"] == "text/csv"
        assert r.read() == b"a,b\n1,2\n"


def test_dashboard_delete_returns_404_for_missing_via_our_exception(
    dashboard: tuple[str, optuna.Study, FileSystemArtifactStore], make_file: Callable[..., Path]
) -> None:
    url, study, store = dashboard
    trial = study.ask()
    artifact_id = optuna_cas.upload_artifact(
        artifact_store=store, file_path=str(make_file(b"x")), study_or_trial=trial
    )
    path = f"{url}/api/artifacts/{study._study_id}/{trial._trial_id}/{artifact_id}"
    request = urllib.request.Request(path, method="DELETE")
    with urllib.request.urlopen(request) as r:
        assert r.status == 204
    assert optuna_cas.get_all_artifact_meta(trial) == []  # the dashboard's tombstone is skipped
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(path, method="DELETE"))
    assert info.value.code == 404  # our ArtifactNotFound caught as Optuna's


def test_dashboard_deletes_what_optunas_store_wrote(
    dashboard: tuple[str, optuna.Study, FileSystemArtifactStore], make_file: Callable[..., Path]
) -> None:
    url, study, store = dashboard
    trial = study.ask()
    optunas = oa.FileSystemArtifactStore(str(store.content.backend.root))  # type: ignore[attr-defined]
    artifact_id = oa.upload_artifact(
        artifact_store=optunas, file_path=str(make_file(b"old")), study_or_trial=trial
    )
    path = f"{url}/api/artifacts/{study._study_id}/{trial._trial_id}/{artifact_id}"
    with urllib.request.urlopen(urllib.request.Request(path, method="DELETE")) as r:
        assert r.status == 204
    with pytest.raises(optuna_cas.exceptions.ArtifactNotFound):
        store.open_reader(artifact_id)
    assert optuna_cas.get_all_artifact_meta(trial) == []


def optunas_file_behind(
    tmp_path: Path, wrap: str, artifact_id: str
) -> optuna_cas.ContentAddressedArtifactStore:
    """Our store (plain, behind Backoff or a cache) where Optuna's own store wrote a file."""
    import io

    oa.FileSystemArtifactStore(str(tmp_path)).write(artifact_id, io.BytesIO(b"from optuna"))
    store: optuna_cas.ContentAddressedArtifactStore = FileSystemArtifactStore(tmp_path)
    if wrap == "backoff":
        return optuna_cas.Backoff(store)
    if wrap == "cached":
        return optuna_cas.CachedArtifactStore(store, directory=tmp_path / ".cache")
    return store


@pytest.mark.parametrize("wrap", ["plain", "backoff", "cached"])
def test_optunas_local_files_readable_through_wrappers(tmp_path: Path, wrap: str) -> None:
    store = optunas_file_behind(tmp_path, wrap, "legacy-2")
    with store.open_reader("legacy-2") as reader:
        assert reader.read() == b"from optuna"
    target = tmp_path / "dl"
    optuna_cas.download_artifact(
        artifact_store=store, file_path=str(target), artifact_id="legacy-2"
    )
    assert target.read_bytes() == b"from optuna"
    with pytest.raises(optuna_cas.exceptions.ArtifactNotFound):
        store.open_reader("never-written")


@pytest.mark.parametrize("wrap", ["plain", "backoff", "cached"])
def test_files_left_by_optunas_store_can_be_removed(tmp_path: Path, wrap: str) -> None:
    """``remove`` deletes what ``open_reader`` serves, as Optuna's own store would."""
    store = optunas_file_behind(tmp_path, wrap, "legacy-3")
    store.remove("legacy-3")
    assert not (tmp_path / "legacy-3").exists()
    with pytest.raises(oa.exceptions.ArtifactNotFound):
        store.open_reader("legacy-3")
    with pytest.raises(oa.exceptions.ArtifactNotFound, match="legacy-3"):
        store.remove("legacy-3")


def test_remove_takes_both_a_ref_and_an_old_file_under_the_id(tmp_path: Path) -> None:
    """sync back into a store that still holds Optuna's file makes such an ID: one remove."""
    import io

    store = FileSystemArtifactStore(tmp_path)
    store.write("both", io.BytesIO(b"new"))
    (tmp_path / "both").write_bytes(b"old")  # as Optuna's store left it
    store.remove("both")
    assert not (tmp_path / "both").exists()
    with pytest.raises(oa.exceptions.ArtifactNotFound):
        store.open_reader("both")  # not the old file again


def test_delete_artifact_removes_what_optuna_uploaded(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"old weights")
    (tmp_path / "store").mkdir()
    trial = optuna.create_study().ask()
    artifact_id = oa.upload_artifact(
        artifact_store=oa.FileSystemArtifactStore(str(tmp_path / "store")),
        file_path=str(tmp_path / "model.pt"),
        study_or_trial=trial,
    )
    store = FileSystemArtifactStore(tmp_path / "store")
    optuna_cas.delete_artifact(artifact_store=store, artifact_id=artifact_id, study_or_trial=trial)
    assert not (tmp_path / "store" / artifact_id).exists()
    assert optuna_cas.get_all_artifact_meta(trial) == []


@pytest.mark.s3
def test_objects_optunas_boto3_store_wrote_stay_readable(s3_client: object, s3_bucket: str) -> None:
    import io

    oa.Boto3ArtifactStore(s3_bucket, client=s3_client).write("legacy-s3", io.BytesIO(b"optuna s3"))
    ours = optuna_cas.Boto3ArtifactStore(s3_bucket, s3_client)
    with ours.open_reader("legacy-s3") as reader:
        assert reader.read() == b"optuna s3"


@pytest.mark.gcs
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_objects_optunas_gcs_store_wrote_stay_readable(
    gcs_client: object, gcs_bucket: object
) -> None:
    import io

    name = gcs_bucket.name  # type: ignore[attr-defined]
    oa.GCSArtifactStore(name, gcs_client).write("legacy-gcs", io.BytesIO(b"optuna gcs"))
    ours = optuna_cas.GCSArtifactStore(name, gcs_client)
    with ours.open_reader("legacy-gcs") as reader:
        assert reader.read() == b"optuna gcs"
