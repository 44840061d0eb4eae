"""Hostile sources and destinations through Optuna's API and the CLI.

procfs and sysfs files, FIFOs, devices, sockets, directories and symlinks, as the file to upload
or as the place to download to. Each either works exactly (pseudo-files are read to their real
end) or is refused at once with an error naming the path; nothing blocks, nothing is written
through a link, and nothing is recorded for a refused upload.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from optuna_cas import (
    FileSystemArtifactStore,
    download_artifact,
    get_all_artifact_meta,
    upload_artifact,
)
from optuna_cas.exceptions import UnsupportedSourceError
from tests.reliability._common import record

pytestmark = [pytest.mark.reliability]

TALLY: dict[str, int] = {"sources": 0, "destinations": 0, "cli": 0}


def _within(seconds: float, fn: Callable[[], Any]) -> BaseException | None:
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), "blocked"
    return outcome[0]


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[dict[str, Path]]:
    regular = tmp_path / "regular.bin"
    regular.write_bytes(b"weights" * 1000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    directory = tmp_path / "dir"
    directory.mkdir()
    links = {}
    for name, target in [
        ("link-to-regular", regular),
        ("link-to-fifo", fifo),
        ("link-to-zero", Path("/dev/zero")),
        ("dangling-link", tmp_path / "nowhere"),
    ]:
        link = tmp_path / name
        link.symlink_to(target)
        links[name] = link
    yield {
        "regular": regular,
        "fifo": fifo,
        "socket": sock_path,
        "directory": directory,
        "dev-zero": Path("/dev/zero"),
        "dev-null": Path("/dev/null"),
        **links,
    }
    sock.close()


@pytest.fixture
def trial() -> Any:
    return optuna.create_study().ask()


REFUSED = ["fifo", "socket", "directory", "dev-zero", "dev-null", "link-to-fifo", "link-to-zero"]


@pytest.mark.parametrize("name", REFUSED)
def test_special_sources_are_refused_through_upload_artifact(
    tmp_path: Path, hostile: dict[str, Path], trial: Any, name: str
) -> None:
    store = FileSystemArtifactStore(tmp_path / "store")
    error = _within(
        20,
        lambda: upload_artifact(
            artifact_store=store, file_path=str(hostile[name]), study_or_trial=trial
        ),
    )
    expected = IsADirectoryError if name == "directory" else UnsupportedSourceError  # as Optuna
    assert isinstance(error, expected), error
    assert str(hostile[name]) in str(error)
    assert get_all_artifact_meta(trial) == []  # nothing recorded
    assert list(store.content.iter_ref_ids()) == [] and list(store.content.iter_blobs()) == []
    TALLY["sources"] += 1


def test_dangling_link_is_a_missing_file(
    tmp_path: Path, hostile: dict[str, Path], trial: Any
) -> None:
    store = FileSystemArtifactStore(tmp_path / "store")
    with pytest.raises(FileNotFoundError, match="dangling-link"):
        upload_artifact(
            artifact_store=store, file_path=str(hostile["dangling-link"]), study_or_trial=trial
        )
    TALLY["sources"] += 1


@pytest.mark.parametrize(
    "path", ["/proc/version", "/proc/self/status", "/sys/kernel/mm/transparent_hugepage/enabled"]
)
def test_pseudo_files_round_trip_through_optuna_api(tmp_path: Path, trial: Any, path: str) -> None:
    if not os.path.exists(path):  # pragma: no cover - present on every Linux we run on
        pytest.skip(f"{path} missing")
    store = FileSystemArtifactStore(tmp_path / "store")
    artifact_id = upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial)
    out = tmp_path / "out"
    download_artifact(artifact_store=store, file_path=str(out), artifact_id=artifact_id)
    data = out.read_bytes()
    assert len(data) > 0  # /proc files say their size is 0
    if "self" not in path:  # /proc/self/status changes from read to read
        assert data == Path(path).read_bytes()
    TALLY["sources"] += 1


@pytest.mark.parametrize(
    "name", ["fifo", "directory", "dev-null", "link-to-regular", "dangling-link", "socket"]
)
def test_special_destinations_are_never_written_through(
    tmp_path: Path, hostile: dict[str, Path], trial: Any, name: str
) -> None:
    store = FileSystemArtifactStore(tmp_path / "store")
    artifact_id = upload_artifact(
        artifact_store=store, file_path=str(hostile["regular"]), study_or_trial=trial
    )
    before = hostile["regular"].read_bytes()
    error = _within(
        20,
        lambda: download_artifact(
            artifact_store=store, file_path=str(hostile[name]), artifact_id=artifact_id
        ),
    )
    assert isinstance(error, FileExistsError), error
    assert hostile["regular"].read_bytes() == before  # not written through the link
    assert not (tmp_path / "nowhere").exists()  # the dangling link's target was not created
    TALLY["destinations"] += 1


@pytest.mark.parametrize("parent", ["missing", "file"])
def test_impossible_destination_directories_name_the_destination(
    tmp_path: Path, hostile: dict[str, Path], trial: Any, parent: str
) -> None:
    store = FileSystemArtifactStore(tmp_path / "store")
    artifact_id = upload_artifact(
        artifact_store=store, file_path=str(hostile["regular"]), study_or_trial=trial
    )
    base = tmp_path / "no-such-dir" if parent == "missing" else hostile["regular"]
    target = base / "model.pt"
    with pytest.raises(OSError) as info:
        download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact_id)
    assert str(target) in str(info.value) and ".partial" not in str(info.value)
    TALLY["destinations"] += 1


@pytest.mark.parametrize("name", ["fifo", "dev-zero", "directory"])
def test_cli_put_refuses_special_files_quickly(
    tmp_path: Path, hostile: dict[str, Path], name: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "optuna_cas",
            "--store",
            str(tmp_path / "store"),
            "put",
            str(hostile[name]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result
    assert str(hostile[name]) in result.stderr and "not a regular file" in result.stderr
    TALLY["cli"] += 1


def test_cli_get_to_a_fifo_does_not_block(tmp_path: Path, hostile: dict[str, Path]) -> None:
    store_dir = tmp_path / "store"
    put = subprocess.run(
        [
            sys.executable,
            "-m",
            "optuna_cas",
            "--store",
            str(store_dir),
            "-q",
            "put",
            str(hostile["regular"]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    artifact_id = put.stdout.split()[-1]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "optuna_cas",
            "--store",
            str(store_dir),
            "get",
            artifact_id,
            str(hostile["fifo"]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "exists" in result.stderr
    TALLY["cli"] += 1
    record("hostile_sources", dict(TALLY))
