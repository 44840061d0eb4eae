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


# -- terminal safety: values from refs, attributes, file names and errors are escaped ---------

EVIL = "evil\x1b[2J\u202egpj.txt\nFORGED-ROW"  # clears the screen, reverses text, adds a row
RAW = ("\x1b", "\u202e", "\u2066", "\x07", "\x9b")  # ESC, RLO, LRI, BEL, CSI (C1)


def assert_no_raw_controls(text: str) -> None:
    found = [c for c in RAW if c in text]
    assert not found, f"raw control characters {found!r} in {text!r}"


def test_human_output_escapes_control_and_bidi_characters(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    study = optuna.create_study(study_name="esc", storage=db)
    trial_id = study.ask()._trial_id
    store = f"file://{tmp_path / 'store'}"
    trial = ["--storage", db, "--study", "esc", "--trial", "0"]

    put = run("--store", store, "put", str(make_file(b"x", name=EVIL)), *trial)
    assert_no_raw_controls(put.stdout)
    assert "evil\\x1b[2J\\u202egpj.txt\\x0aFORGED-ROW" in put.stdout
    artifact_id = put.stdout.splitlines()[-1]

    # Entries planted in the Optuna storage by someone else: a hostile ID and mimetype, and
    # a malformed entry whose key carries escapes (reported as one escaped warning line).
    hostile_id = "id\u2066\x9b2J"
    study._storage.set_trial_system_attr(
        trial_id,
        "artifacts:" + hostile_id,
        json.dumps(
            {
                "artifact_id": hostile_id,
                "filename": "\x07bell",
                "mimetype": "\x1b[31m",
                "encoding": None,
            }
        ),
    )
    study._storage.set_trial_system_attr(trial_id, "artifacts:\x1b[2Jbad", "{not json")

    for listing in (run("--store", store, "ls"), run("ls", *trial)):
        assert_no_raw_controls(listing.stdout + listing.stderr)
        rows = listing.stdout.splitlines()[1:]
        assert any(row.startswith(artifact_id) and "\\x0aFORGED-ROW" in row for row in rows)
        assert not any(row.startswith("FORGED-ROW") for row in rows)
    trial_listing = run("ls", *trial)
    assert len(trial_listing.stdout.splitlines()) == 3  # header, our upload, the planted entry
    assert "id\\u2066\\x9b2J" in trial_listing.stdout and "\\x1b[31m" in trial_listing.stdout
    (warning,) = trial_listing.stderr.splitlines()
    assert warning.startswith("optuna-cas: warning: artifact metadata 'artifacts:\\x1b[2Jbad'")

    # --json stays exact.
    rows = json.loads(run("ls", *trial, "--json").stdout)
    assert {r["filename"] for r in rows} == {EVIL, "\x07bell"}
    stored = json.loads(run("--store", store, "ls", "--json").stdout)
    assert [r["filename"] for r in stored] == [EVIL]

    removed = run("--store", store, "rm", artifact_id, *trial)
    assert_no_raw_controls(removed.stdout)


def test_verify_escapes_ids_of_bad_refs(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run("--store", str(store), "stats")  # creates the layout
    (store / "refs").mkdir(exist_ok=True)
    (store / "refs" / "ref\u202eevil").write_bytes(b"[" * 100_000)
    result = run("--store", str(store), "verify", check=False)
    assert result.returncode == 1
    assert "BADREF   ref\\u202eevil" in result.stdout
    assert_no_raw_controls(result.stdout + result.stderr)


def test_error_line_escapes_control_characters(tmp_path: Path) -> None:
    # botocore quotes the bucket name raw in its message.
    result = run(
        "--store",
        "s3://b\x1bc\u202ex/y",  # no "[": urlsplit would refuse it as an IPv6 address
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--retries",
        "1",
        "stats",
        env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        check=False,
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("optuna-cas: error: ") and "b\\x1bc\\u202ex" in line
    assert_no_raw_controls(result.stderr)


def test_escape_for_terminal() -> None:
    from optuna_cas._terminal import escape_for_terminal

    assert (
        escape_for_terminal("a\x00\t\n\x1b\x7f\x85\x9f b")
        == "a\\x00\\x09\\x0a\\x1b\\x7f\\x85\\x9f b"
    )
    bidi = "".join(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))
    assert escape_for_terminal(bidi) == "".join(f"\\u{ord(c):04x}" for c in bidi)
    assert escape_for_terminal("name\udc80") == "name\\udc80"  # a non-UTF-8 file name
    assert escape_for_terminal("naïve 模型 \\x1b.pt") == "naïve 模型 \\x1b.pt"
    assert escape_for_terminal(None) == "None"


# -- argument validation: a bad number is a usage error naming the option and the value --------


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["--retries", "0", "stats"], "--retries", "'0'"),
        (["--retries", "-3", "stats"], "--retries", "'-3'"),
        (["--retries", "1000000000", "stats"], "--retries", "'1000000000'"),
        (["--retries", "many", "stats"], "--retries", "'many'"),
        (["stats", "--retries", "101"], "--retries", "'101'"),
        (["gc", "--grace", "nan"], "--grace", "'nan'"),
        (["gc", "--grace", "inf"], "--grace", "'inf'"),
        (["gc", "--grace", "-1"], "--grace", "'-1'"),
        (["gc", "--grace", "soon"], "--grace", "'soon'"),
        (["cache", "prune", "--max-bytes", "-1"], "--max-bytes", "'-1'"),
        (["cache", "prune", "--max-bytes", "1.5"], "--max-bytes", "'1.5'"),
    ],
)
def test_bad_numbers_are_usage_errors(
    tmp_path: Path, args: list[str], option: str, value: str
) -> None:
    store = tmp_path / "store"
    result = run("--store", str(store), "--cache-dir", str(tmp_path / "cache"), *args, check=False)
    assert result.returncode == 2, result
    (line,) = [ln for ln in result.stderr.splitlines() if ": error: " in ln]
    assert f"argument {option}: {value} is not" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--retries", "1", "stats"],
        ["--retries", "100", "stats"],
        ["gc", "--grace", "0", "--allow-short-grace"],
        ["gc", "--grace", "7200.5"],
    ],
)
def test_good_numbers_at_the_bounds_are_accepted(tmp_path: Path, args: list[str]) -> None:
    run("--store", str(tmp_path / "store"), "-q", *args)
