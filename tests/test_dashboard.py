"""optuna-dashboard behind ``optuna_cas.dashboard``: artifact deletes that lose nothing.

The dashboard's own delete removes the artifact, then records the deletion. On a finished
trial Optuna refuses the record (HTTP 500) and the metadata is left pointing at nothing; and
it removes any ID it is given, whether or not the trial in the URL records it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pytest

import optuna_cas
from optuna_cas.dashboard import dashboard_app, open_optuna_storage
from optuna_cas.exceptions import StoreConfigError

SCRIPT = Path(sys.executable).with_name("optuna-cas")
DATA = b"\x89PNG not really, but bytes all the same"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _RecordingStore(optuna_cas.FileSystemArtifactStore):
    """Our store, noting what the trial's metadata said at the moment of each remove."""

    def __init__(self, root: Path, storage: Any) -> None:
        super().__init__(root)
        self.storage = storage
        self.metadata_at_remove: list[Any] = []
        self.trial_id: int | None = None

    def remove(self, artifact_id: str) -> None:
        if self.trial_id is not None:
            attrs = self.storage.get_trial_system_attrs(self.trial_id)
            self.metadata_at_remove.append(attrs.get(f"artifacts:{artifact_id}"))
        super().remove(artifact_id)


@dataclass
class Served:
    url: str
    storage_url: str
    study: optuna.Study
    store: _RecordingStore
    store_root: Path
    source: Path

    def upload(self, study_or_trial: Any) -> str:
        return optuna_cas.upload_artifact(
            artifact_store=self.store, file_path=str(self.source), study_or_trial=study_or_trial
        )

    def delete(self, path: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(f"{self.url}/api/artifacts/{path}", method="DELETE")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, {}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def download(self, path: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}/artifacts/{path}", timeout=60) as response:
            return bytes(response.read())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    study = optuna.create_study(storage=storage_url, study_name="s")
    store = _RecordingStore(tmp_path / "store", study._storage)
    source = tmp_path / "curve.png"
    source.write_bytes(DATA)
    server = make_server("127.0.0.1", 0, dashboard_app(storage_url, store), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(
            f"http://127.0.0.1:{server.server_port}",
            storage_url,
            study,
            store,
            tmp_path / "store",
            source,
        )
    finally:
        server.shutdown()
        server.server_close()


def test_finished_trial_delete_is_refused_and_loses_nothing(served: Served) -> None:
    study = served.study
    trial = study.ask()
    artifact_id = served.upload(trial)
    study.tell(trial, 1.0)
    where = f"{study._study_id}/{trial._trial_id}/{artifact_id}"

    status, body = served.delete(where)

    # Unguarded, the dashboard answers 500 here after removing the ref: the metadata then
    # points at nothing. Now nothing is removed and the answer says what to do instead.
    assert status == 409, body
    assert "optuna-cas rm" in body["reason"] and "nothing was deleted" in body["reason"]
    assert served.store.content.has_ref(artifact_id)
    assert served.download(where) == DATA
    frozen = study.trials[0]
    assert [
        m.artifact_id for m in optuna_cas.get_all_artifact_meta(frozen, storage=study._storage)
    ] == [artifact_id]

    # The recovery path the answer names: the CLI records the deletion on the study.
    done = subprocess.run(
        [str(SCRIPT), "--store", str(served.store_root), "rm", artifact_id,
         "--storage", served.storage_url, "--study", "s", "--trial", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert optuna_cas.get_all_artifact_meta(frozen, storage=study._storage) == []
    assert not served.store.content.has_ref(artifact_id)


def test_running_trial_delete_records_the_deletion_before_removing(served: Served) -> None:
    study = served.study
    trial, twin = study.ask(), study.ask()
    artifact_id, twin_id = served.upload(trial), served.upload(twin)
    served.store.trial_id = trial._trial_id

    status, body = served.delete(f"{study._study_id}/{trial._trial_id}/{artifact_id}")

    assert status == 204, body
    # When the dashboard removed the ref, the metadata already said "deleted" (JSON null):
    # had the trial finished in between, nothing would point at a missing ref.
    assert served.store.metadata_at_remove == ["null"]
    assert optuna_cas.get_all_artifact_meta(trial) == []
    assert not served.store.content.has_ref(artifact_id)
    assert served.download(f"{study._study_id}/{twin._trial_id}/{twin_id}") == DATA
    assert served.delete(f"{study._study_id}/{trial._trial_id}/{artifact_id}")[0] == 404


@pytest.mark.parametrize("wrong", ["other trial", "no such trial", "other study"])
def test_delete_naming_the_wrong_trial_removes_nothing(served: Served, wrong: str) -> None:
    study = served.study
    owner, other = study.ask(), study.ask()
    artifact_id = served.upload(owner)
    study_id, trial_id = study._study_id, other._trial_id
    if wrong == "no such trial":
        trial_id = 999
    elif wrong == "other study":
        trial_id = owner._trial_id
        study_id = optuna.create_study(storage=served.storage_url)._study_id

    status, body = served.delete(f"{study_id}/{trial_id}/{artifact_id}")

    # Unguarded, the dashboard removes the ref first and only then notices (or never does).
    assert status == 404, body
    if wrong == "other trial":  # named by its number, as the dashboard shows it, not its ID
        assert other.number != other._trial_id
        assert body["reason"] == f"artifact {artifact_id}: trial {other.number} does not record it"
    assert served.store.content.has_ref(artifact_id)
    assert served.download(f"{study._study_id}/{owner._trial_id}/{artifact_id}") == DATA


def test_study_artifact_delete(served: Served) -> None:
    study = served.study
    artifact_id = served.upload(study)
    trial_artifact = served.upload(study.ask())

    assert served.delete(f"{study._study_id}/{trial_artifact}")[0] == 404  # not the study's
    assert served.store.content.has_ref(trial_artifact)
    assert served.delete(f"{study._study_id + 100}/{artifact_id}")[0] == 404  # no such study
    assert served.delete(f"{study._study_id}/{artifact_id}")[0] == 204
    assert optuna_cas.get_all_artifact_meta(study) == []
    assert not served.store.content.has_ref(artifact_id)


def test_legacy_dashboard_entries_on_the_study_can_still_be_deleted(served: Served) -> None:
    # Dashboards before optuna.artifacts recorded a trial's artifacts on its study.
    study = served.study
    trial = study.ask()
    artifact_id = "0b5e2f9e-1c1d-4c5e-9a55-3f0e7c2d9b10"
    served.store.write(artifact_id, io.BytesIO(DATA))
    meta = {"artifact_id": artifact_id, "filename": "x.png", "mimetype": "image/png"}
    key = f"dashboard:artifacts:{trial._trial_id}:{artifact_id}"
    study._storage.set_study_system_attr(
        study._study_id, key, json.dumps(meta | {"encoding": None})
    )

    assert served.delete(f"{study._study_id}/{trial._trial_id}/{artifact_id}")[0] == 204
    assert study._storage.get_study_system_attrs(study._study_id)[key] == "null"
    assert not served.store.content.has_ref(artifact_id)


def test_open_optuna_storage_refuses_to_invent_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "typo.sqlite3"
    with pytest.raises(StoreConfigError, match=r"typo\.sqlite3"):
        open_optuna_storage(f"sqlite:///{missing}")
    assert not missing.exists()
    with pytest.raises(StoreConfigError, match="no Optuna storage"):
        open_optuna_storage(str(tmp_path / "journal.log"))
    journal = tmp_path / "journal.log"
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    optuna.create_study(storage=storage, study_name="j")
    assert open_optuna_storage(str(journal)).get_all_studies()[0].study_name == "j"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["dashboard", "sqlite:///x.db"], 2, "no store given"),
        (["--store", "STORE", "dashboard", "sqlite:///x.db", "--port", "70000"], 2, "70000"),
        (["--store", "STORE", "dashboard", "sqlite:///DIR/none.db"], 1, "no SQLite database"),
    ],
)
def test_dashboard_command_errors(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    (tmp_path / "s").mkdir()  # the dashboard opens a store, it never creates one
    args = [a.replace("STORE", str(tmp_path / "s")).replace("DIR", str(tmp_path)) for a in args]
    env = {k: v for k, v in os.environ.items() if k != "OPTUNA_CAS_STORE"}
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == code, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    "spelling",
    [
        "{study}/{trial}/{artifact}%0A",  # bottle's "$" also matches before a final newline
        "{study}/{trial}/{head}%FF{tail}",  # bottle drops bytes that are not UTF-8
        "{study}/0000000000000000000000{trial}/{artifact}",  # longer than any ID
    ],
)
def test_delete_spelled_past_the_check_removes_nothing(served: Served, spelling: str) -> None:
    study = served.study
    trial = study.ask()
    artifact_id = served.upload(trial)
    study.tell(trial, 1.0)
    path = spelling.format(
        study=study._study_id,
        trial=trial._trial_id,
        artifact=artifact_id,
        head=artifact_id[:8],
        tail=artifact_id[8:],
    )
    connection = http.client.HTTPConnection("127.0.0.1", int(served.url.rsplit(":", 1)[1]))
    connection.request("DELETE", f"/api/artifacts/{path}")
    status = connection.getresponse().status

    # Bottle routes these to the dashboard's delete, which removes before it records (and
    # on this finished trial cannot record at all). The store it was given refuses.
    assert status == 404
    assert served.store.content.has_ref(artifact_id)
    assert served.download(f"{study._study_id}/{trial._trial_id}/{artifact_id}") == DATA


def test_deleting_a_study_removes_its_artifacts_only(served: Served) -> None:
    doomed = optuna.create_study(storage=served.storage_url)
    doomed_ids = [served.upload(doomed), served.upload(doomed.ask())]
    kept_study = served.study
    kept_trial = kept_study.ask()
    kept_id = served.upload(kept_trial)  # identical bytes: the same blob

    request = urllib.request.Request(
        f"{served.url}/api/studies/{doomed._study_id}",
        data=json.dumps({"remove_associated_artifacts": True}).encode(),
        headers={"Content-Type": "application/json"},
        method="DELETE",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 204
    assert not any(served.store.content.has_ref(i) for i in doomed_ids)
    assert served.download(f"{kept_study._study_id}/{kept_trial._trial_id}/{kept_id}") == DATA


def _delete_study(url: str, study_id: int) -> int:
    request = urllib.request.Request(
        f"{url}/api/studies/{study_id}",
        data=json.dumps({"remove_associated_artifacts": True}).encode(),
        headers={"Content-Type": "application/json"},
        method="DELETE",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_deleting_a_study_whose_artifacts_are_partly_gone(served: Served) -> None:
    # The dashboard removes every artifact its metadata lists before deleting the study; one
    # already removed (optuna-cas rm without --trial; a deletion recorded on the study for a
    # finished trial) must be skipped, not fail the whole delete with HTTP 500.
    doomed = optuna.create_study(storage=served.storage_url)
    running, finished = doomed.ask(), doomed.ask()
    gone_by_rm = served.upload(running)
    live = [served.upload(doomed), served.upload(running)]
    gone_on_finished = served.upload(finished)
    doomed.tell(finished, 1.0)
    served.store.remove(gone_by_rm)
    optuna_cas.delete_artifact(
        artifact_store=served.store,
        artifact_id=gone_on_finished,
        study_or_trial=doomed._storage.get_trial(finished._trial_id),
        storage=doomed._storage,
    )
    kept_trial = served.study.ask()
    kept_id = served.upload(kept_trial)

    assert _delete_study(served.url, doomed._study_id) == 204
    assert [s.study_name for s in served.study._storage.get_all_studies()] == ["s"]
    assert not any(served.store.content.has_ref(i) for i in live)
    assert served.download(f"{served.study._study_id}/{kept_trial._trial_id}/{kept_id}") == DATA


def test_deleting_a_single_artifact_already_gone_still_answers_404(served: Served) -> None:
    # Only a study deletion skips missing artifacts; a delete of one that is gone says so.
    trial = served.study.ask()
    artifact_id = served.upload(trial)
    served.store.remove(artifact_id)
    status, _ = served.delete(f"{served.study._study_id}/{trial._trial_id}/{artifact_id}")
    assert status == 404


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_dashboard_with_json_prints_one_object_naming_its_url(
    tmp_path: Path, signum: signal.Signals
) -> None:
    storage_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    optuna.create_study(storage=storage_url, study_name="s")
    (tmp_path / "store").mkdir()
    argv = ["--store", str(tmp_path / "store"), "--json", "dashboard", storage_url, "--port", "0"]
    server = subprocess.Popen(
        [str(SCRIPT), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    try:
        lines = [server.stdout.readline()]
        assert lines[0].startswith("{"), lines[0]  # not a line of text before the object
        while True:
            try:
                document = json.loads("".join(lines))
                break
            except json.JSONDecodeError:
                line = server.stdout.readline()
                assert line, "".join(lines)
                lines.append(line)
        assert document["ok"] is True
        with urllib.request.urlopen(document["url"], timeout=60) as response:
            assert response.status == 200
    finally:
        # How a server is meant to end: Ctrl-C, or SIGTERM from systemd, Kubernetes, timeout.
        server.send_signal(signum)
        rest, _ = server.communicate(timeout=60)
    assert server.returncode == 0
    assert rest == ""  # nothing after the object: request logs went to stderr


@pytest.mark.parametrize(
    ("stop", "status", "kind"),
    [(KeyboardInterrupt, 130, "interrupted"), ("Terminated", 143, "terminated")],
    ids=["INT", "TERM"],
)
def test_a_dashboard_stopped_before_it_serves_was_interrupted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stop: Any,
    status: int,
    kind: str,
) -> None:
    # Exit 0 is for a server stopped once it serves (its document printed). Stopped before,
    # while the storage loads, it exited 0 too, with no JSON document at all (review).
    from optuna_cas.cli import _process, main

    stop = getattr(_process, stop) if isinstance(stop, str) else stop

    def interrupted_while_loading(*args: Any, **kwargs: Any) -> None:
        raise stop()

    monkeypatch.setattr("optuna_cas.dashboard.serve_dashboard", interrupted_while_loading)
    (tmp_path / "store").mkdir()
    argv = ["--store", str(tmp_path / "store"), "--json", "dashboard", "sqlite:///x.db"]
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["kind"] == kind
    assert err.strip() == f"optuna-cas: {kind}"


def test_an_address_that_cannot_be_used_is_named(tmp_path: Path) -> None:
    from optuna_cas.dashboard import serve_dashboard

    storage = optuna.storages.InMemoryStorage()
    store = optuna_cas.FileSystemArtifactStore(tmp_path / "store")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "):
            serve_dashboard(storage, store, port=port)
    with pytest.raises(OSError, match=r"^cannot listen on 999\.1\.1\.1:8080: "):
        serve_dashboard(storage, store, host="999.1.1.1", port=8080)
