"""The real ``optuna-cas`` console script, in subprocesses, against local, S3 and GCS stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from tests.conftest import random_bytes

SCRIPT = Path(sys.executable).with_name("optuna-cas")


def run(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


@pytest.fixture(params=["local", "s3", "gcs"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A store URL and the environment the CLI needs to reach it."""
    if request.param == "local":
        return f"file://{tmp_path / 'store'}", {}
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "OPTUNA_CAS_ENDPOINT_URL": server.endpoint_url,
        }
        return f"s3://{bucket}/cli", env
    server = request.getfixturevalue("gcs_server")
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket.name}/cli", {
        "STORAGE_EMULATOR_HOST": server.endpoint_url,
        "GOOGLE_CLOUD_PROJECT": "test",
    }


def test_put_ls_get_rm_gc_verify_round_trip(
    store_env: tuple[str, dict[str, str]], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    url, env = store_env
    env = {**env, "OPTUNA_CAS_STORE": url, "OPTUNA_CAS_CACHE_DIR": str(tmp_path / "cache")}
    data = random_bytes(700_000)
    src = make_file(data, name="model.pt")
    first = run("put", str(src), env=env).stdout.strip().splitlines()[-1]
    second = run("put", str(src), env=env).stdout.strip().splitlines()[-1]
    assert first != second
    listing = json.loads(run("ls", "--json", env=env).stdout)
    assert {row["artifact_id"] for row in listing} == {first, second}
    assert all(row["filename"] == "model.pt" and row["size"] == len(data) for row in listing)
    stats = json.loads(run("stats", "--json", env=env).stdout)
    assert (stats["artifacts"], stats["unique_blobs"], stats["dedup_ratio"]) == (2, 1, 2.0)

    out = tmp_path / "out.pt"
    run("get", first, str(out), env=env)
    assert out.read_bytes() == data

    run("rm", first, env=env)
    run("rm", second, env=env)
    dry = run("gc", "--dry-run", "--grace", "0", "--allow-short-grace", env=env).stdout
    assert "would delete 1 unreferenced blobs" in dry
    run("gc", "--grace", "0", "--allow-short-grace", env=env)
    assert json.loads(run("stats", "--json", env=env).stdout)["unique_blobs"] == 0
    assert "0 corrupt, 0 missing" in run("verify", env=env).stdout


def test_sync_twice_moves_nothing_the_second_time(
    store_env: tuple[str, dict[str, str]], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    url, env = store_env
    local = f"file://{tmp_path / 'src-store'}"
    for i in range(3):
        run("--store", local, "put", str(make_file(random_bytes(10_000, seed=i))), env=env)
    first = run("sync", local, url, env=env).stdout
    assert "copied 3 refs and 3 blobs" in first
    second = run("sync", local, url, env=env).stdout
    assert "copied 0 refs and 0 blobs (0 B)" in second


def test_optuna_options_record_metadata(tmp_path: Path, make_file: Callable[..., Path]) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    study = optuna.create_study(study_name="cli", storage=db)
    study.ask()
    store = f"file://{tmp_path / 'store'}"
    artifact_id = run(
        "--store",
        store,
        "put",
        str(make_file(b"x", name="curve.png")),
        "--storage",
        db,
        "--study",
        "cli",
        "--trial",
        "0",
    ).stdout.splitlines()[-1]
    rows = json.loads(run("ls", "--storage", db, "--study", "cli", "--trial", "0", "--json").stdout)
    assert [(r["artifact_id"], r["mimetype"]) for r in rows] == [(artifact_id, "image/png")]
    run("--store", store, "rm", artifact_id, "--storage", db, "--study", "cli", "--trial", "0")
    assert (
        json.loads(run("ls", "--storage", db, "--study", "cli", "--trial", "0", "--json").stdout)
        == []
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--store", "ftp://x/y", "stats"], 1, "scheme 'ftp' is not one of"),
        (["stats"], 2, "no store given"),
        (
            ["--store", "{tmp}/s", "get", "00000000-0000-0000-0000-000000000000", "{tmp}/o"],
            1,
            "not found",
        ),
        (["--store", "{tmp}/s", "put", "{tmp}/missing.bin"], 1, "no such file"),
        (["--store", "{tmp}/s", "get", "../etc/passwd", "{tmp}/o"], 1, "Invalid artifact_id"),
        (["--store", "{tmp}/s", "frobnicate"], 2, "invalid choice"),
        (["ls", "--study", "x"], 2, "--study and --storage go together"),
    ],
)
def test_errors_are_one_clear_line(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    result = run(*[a.format(tmp=tmp_path) for a in args], check=False)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_missing_extra_is_named(tmp_path: Path) -> None:
    # Hide boto3 from the child interpreter with a site hook.
    hook = tmp_path / "hide"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('boto3', 'botocore'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, B())\n"
    )
    result = run("--store", "s3://bucket/x", "stats", env={"PYTHONPATH": str(hook)}, check=False)
    assert result.returncode == 1
    assert "pip install 'optuna-cas[s3]'" in result.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = run("--store", str(tmp_path / "s"), "--debug", "rm", "nope", check=False)
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_every_command_has_help_with_an_example() -> None:
    from optuna_cas.cli import COMMANDS

    for name, *_ in COMMANDS:
        out = run(name, "--help").stdout
        assert "example:" in out and "optuna-cas" in out, name


def test_python_dash_m_works(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "optuna_cas", "--store", str(tmp_path / "s"), "stats", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and json.loads(result.stdout)["artifacts"] == 0


def test_progress_bar_only_on_a_terminal() -> None:
    import io

    from optuna_cas._progress_bar import ProgressBar

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    piped = io.StringIO()
    bar = ProgressBar(stream=piped)
    bar("get x", 10, 100)
    bar.close()
    assert piped.getvalue() == ""
    tty = FakeTTY()
    bar = ProgressBar(stream=tty)
    bar("get x", 50, 100)
    bar("get x", 100, 100)
    bar.close()
    assert "get x [" in tty.getvalue() and "100%" in tty.getvalue() and "ETA" in tty.getvalue()
    quiet = FakeTTY()
    bar = ProgressBar(stream=quiet, enabled=False)
    bar("get x", 100, 100)
    assert quiet.getvalue() == ""
