"""The real ``optuna-cas`` console script, in subprocesses, against local, S3 and GCS stores."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

from optuna_cas.refs import INLINE_LIMIT
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


def _s3_env(endpoint: str) -> dict[str, str]:
    """What the CLI needs to reach the moto server at ``endpoint`` (empty: only --endpoint-url)."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "OPTUNA_CAS_ENDPOINT_URL": endpoint,
    }


@pytest.fixture(params=["local", "s3", "gcs"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A store URL and the environment the CLI needs to reach it."""
    if request.param == "local":
        return f"file://{tmp_path / 'store'}", {}
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        return f"s3://{bucket}/cli", _s3_env(server.endpoint_url)
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
    listing = json.loads(run("ls", "--json", env=env).stdout)["artifacts"]
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
    assert "would delete 1 unreferenced blob;" in dry
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
    assert "copied 3 refs and 3 contents" in first
    second = run("sync", local, url, env=env).stdout
    assert "copied 0 refs and 0 contents (0 B)" in second


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
    rows = json.loads(
        run("ls", "--storage", db, "--study", "cli", "--trial", "0", "--json").stdout
    )["artifacts"]
    assert [(r["artifact_id"], r["mimetype"]) for r in rows] == [(artifact_id, "image/png")]
    run("--store", store, "rm", artifact_id, "--storage", db, "--study", "cli", "--trial", "0")
    assert json.loads(
        run("ls", "--storage", db, "--study", "cli", "--trial", "0", "--json").stdout
    ) == {"ok": True, "artifacts": []}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--store", "ftp://x/y", "stats"], 2, "unsupported scheme 'ftp'"),
        (["stats"], 2, "no store given"),
        (
            ["--store", "{tmp}", "get", "00000000-0000-0000-0000-000000000000", "{tmp}/o"],
            1,
            "not found",
        ),
        (["--store", "{tmp}/s", "put", "{tmp}/missing.bin"], 1, "no such file"),
        (["--store", "{tmp}", "get", "../etc/passwd", "{tmp}/o"], 1, "Invalid artifact_id"),
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
        [sys.executable, "-m", "optuna_cas", "--store", str(tmp_path), "stats", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and json.loads(result.stdout)["artifacts"] == 0


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
    rows = json.loads(run("ls", *trial, "--json").stdout)["artifacts"]
    assert {r["filename"] for r in rows} == {EVIL, "\x07bell"}
    stored = json.loads(run("--store", store, "ls", "--json").stdout)["artifacts"]
    assert [r["filename"] for r in stored] == [EVIL]

    removed = run("--store", store, "rm", artifact_id, *trial)
    assert_no_raw_controls(removed.stdout)


def test_human_output_on_an_ascii_stdout_escapes_what_it_cannot_encode(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    store = str(tmp_path / "store")
    data = random_bytes(9000, seed=5)
    put = run("--store", store, "-q", "put", str(make_file(data, name="modèle-π.pt")))
    artifact_id = put.stdout.strip()
    # A C locale without UTF-8 mode: stdout is ASCII, and so are file names.
    ascii_env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    ascii_env |= {"LC_ALL": "C", "PYTHONUTF8": "0"}

    def run_ascii(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), "--store", store, *args],
            capture_output=True,
            text=True,
            encoding="ascii",
            errors="strict",  # what the CLI wrote must be ASCII
            env=ascii_env,
            timeout=120,
        )

    listing = run_ascii("ls")
    assert listing.returncode == 0, listing.stderr
    assert "mod\\xe8le-\\u03c0.pt" in listing.stdout and listing.stderr == ""
    got = run_ascii("get", artifact_id, str(tmp_path / "copy.pt"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "copy.pt").read_bytes() == data
    # Into a directory the recorded name cannot be spelt in ASCII: one line that says why.
    (tmp_path / "downloads").mkdir()
    into = run_ascii("get", artifact_id, str(tmp_path / "downloads"))
    assert into.returncode == 1 and "Traceback" not in into.stderr
    assert "run under a UTF-8 locale" in into.stderr


def test_verify_escapes_ids_of_bad_refs(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "refs").mkdir(parents=True)
    (store / "refs" / "ref\u202eevil").write_bytes(b"[" * 100_000)
    result = run("--store", str(store), "verify", check=False)
    assert result.returncode == 1
    assert "BADREF   ref\\u202eevil" in result.stdout
    assert "0 missing, 1 malformed, 0 orphans" in result.stdout  # the summary counts it
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
    run("--store", str(tmp_path), "-q", *args)


# -- a CLI for people and scripts ------------------------------------------------------------

UUID0 = "00000000-0000-0000-0000-000000000000"


def run_bytes(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, env={**os.environ, **(env or {})}, timeout=120
    )
    assert result.returncode == 0, result
    return result


@pytest.mark.parametrize(
    "command",
    [
        ["ls"],
        ["stats"],
        ["verify"],
        ["get", UUID0, "{tmp}/out"],
        ["rm", UUID0],
        ["gc"],
        ["sync", "{store}", "{tmp}/dst"],
        ["dashboard", "sqlite:///{tmp}/db.sqlite3", "--port", "0"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize("form", ["path", "file-url"])
def test_read_commands_never_create_a_store(tmp_path: Path, command: list[str], form: str) -> None:
    typo = tmp_path / "artifcats"
    store = str(typo) if form == "path" else f"file://{typo}"
    args = [a.format(tmp=tmp_path, store=store) for a in command]
    if args[0] != "sync":
        args = ["--store", store, *args]
    result = run(*args, check=False)
    assert result.returncode == 1, result
    assert f"no store at '{typo}'" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created, dst included


def test_put_and_sync_destination_create_a_store(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    run("--store", str(tmp_path / "new"), "put", str(make_file(b"x")))
    assert (tmp_path / "new").is_dir()
    run("sync", str(tmp_path / "new"), f"file://{tmp_path / 'copy'}")
    assert (
        json.loads(run("--store", str(tmp_path / "copy"), "stats", "--json").stdout)["artifacts"]
        == 1
    )


def test_json_on_every_command_is_one_document_on_stdout(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    store = str(tmp_path / "store")
    env = {"OPTUNA_CAS_STORE": store, "OPTUNA_CAS_CACHE_DIR": str(tmp_path / "cache")}
    data = b"checkpoint" * (INLINE_LIMIT // 10 + 1)  # a blob, for sync and gc to move
    src = make_file(data, name="model.pt")

    def doc(*args: str, before: bool = False) -> dict[str, Any]:
        # --json is a global option: before the command or after it, the same document.
        argv = ["--json", *args] if before else [*args, "--json"]
        out = run(*argv, env=env).stdout
        parsed = json.loads(out)  # the whole of stdout: one document, nothing else
        assert isinstance(parsed, dict), out
        assert next(iter(parsed.items())) == ("ok", True), out  # every success leads with it
        return parsed

    put = doc("put", str(src))
    (row,) = put["artifacts"]
    assert (row["filename"], row["size"], row["already_stored"]) == ("model.pt", len(data), False)
    artifact_id = row["artifact_id"]
    got = doc("get", artifact_id, str(tmp_path / "out.pt"), before=True)
    assert (got["size"], got["verified"], got["digest"]) == (len(data), True, row["digest"])
    assert [r["artifact_id"] for r in doc("ls")["artifacts"]] == [artifact_id]
    assert doc("stats", before=True)["artifacts"] == 1
    assert doc("verify")["ok"] is True
    assert doc("sync", store, str(tmp_path / "copy"), before=True)["blobs_copied"] == 1
    assert doc("cache", "info")["entries"] == 0
    assert doc("rm", artifact_id, before=True) == {"ok": True, "removed": [artifact_id]}
    assert doc("gc", "--grace", "0", "--allow-short-grace")["deleted_count"] == 1


def test_put_takes_several_files_and_prints_their_ids_in_order(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    store = str(tmp_path / "store")
    files = [make_file(f"content {i}".encode(), name=f"f{i}.txt") for i in range(3)]
    out = run("--store", store, "put", *map(str, files)).stdout.splitlines()
    ids = out[-3:]
    listing = json.loads(run("--store", store, "ls", "--json").stdout)["artifacts"]
    by_id = {r["artifact_id"]: r["filename"] for r in listing}
    assert [by_id[i] for i in ids] == ["f0.txt", "f1.txt", "f2.txt"]
    quiet = run("--store", store, "-q", "put", *map(str, files)).stdout.splitlines()
    assert len(quiet) == 3 and not set(quiet) & set(ids)


def test_put_says_when_the_bytes_were_already_stored(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    store = str(tmp_path / "store")
    src = make_file(random_bytes(100_000), name="model.pt")
    first = run("--store", store, "put", str(src)).stdout
    assert "stored model.pt" in first and "already" not in first
    second = run("--store", store, "put", str(src)).stdout
    assert "model.pt: these bytes were already stored" in second
    again = json.loads(run("--store", store, "put", str(src), "--json").stdout)
    assert again["artifacts"][0]["already_stored"] is True


def test_put_says_already_stored_on_every_store(
    store_env: tuple[str, dict[str, str]], make_file: Callable[..., Path]
) -> None:
    url, env = store_env
    src = make_file(random_bytes(50_000), name="model.pt")
    first = json.loads(run("--store", url, "put", str(src), "--json", env=env).stdout)
    second = json.loads(run("--store", url, "put", str(src), "--json", env=env).stdout)
    assert first["artifacts"][0]["already_stored"] is False
    assert second["artifacts"][0]["already_stored"] is True


def test_get_into_a_directory_and_to_stdout(tmp_path: Path, make_file: Callable[..., Path]) -> None:
    store = str(tmp_path / "store")
    data = random_bytes(300_000)
    artifact_id = run("--store", store, "put", str(make_file(data, name="model.pt"))).stdout
    artifact_id = artifact_id.splitlines()[-1]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    out = run("--store", store, "get", artifact_id, f"{downloads}/").stdout
    assert (downloads / "model.pt").read_bytes() == data
    assert "downloads/model.pt" in out
    # An existing directory without the slash is a directory too; never overwritten.
    again = run("--store", store, "get", artifact_id, str(downloads), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    piped = run_bytes("--store", store, "get", artifact_id, "-")
    assert piped.stdout == data
    assert b"wrote" in piped.stderr  # the summary goes to stderr: stdout is the data
    quiet = run_bytes("--store", store, "-q", "get", artifact_id, "-")
    assert quiet.stdout == data and quiet.stderr == b""


def test_get_into_a_directory_refuses_a_hostile_recorded_file_name(tmp_path: Path) -> None:
    from optuna_cas import FileSystemArtifactStore

    store = FileSystemArtifactStore(tmp_path / "store")
    store.put("a1", io.BytesIO(b"payload"), filename="../escaped")
    store.put("a2", io.BytesIO(b"payload"), filename="name\x1b[2J")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for artifact_id in ("a1", "a2"):
        result = run(
            "--store", str(tmp_path / "store"), "get", artifact_id, f"{downloads}/", check=False
        )
        assert result.returncode == 1 and "not a plain file name" in result.stderr
        assert_no_raw_controls(result.stderr)
    assert list(downloads.iterdir()) == [] and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_downloaded_files_get_the_mode_the_umask_gives(
    tmp_path: Path, make_file: Callable[..., Path], umask: int, mode: int
) -> None:
    store = str(tmp_path / "store")
    # A small file (its ref holds it) and a blob (which the cache below holds too).
    ids = [
        run("--store", store, "put", str(make_file(data))).stdout.splitlines()[-1]
        for data in (b"weights", b"weights" * (INLINE_LIMIT // 7 + 1))
    ]
    outs = tmp_path / "outs"
    outs.mkdir()
    for artifact_id in ids:
        result = subprocess.run(
            [str(SCRIPT), "--store", store, "get", artifact_id, str(outs / f"{artifact_id}.cli")],
            capture_output=True,
            text=True,
            umask=umask,
            timeout=120,
        )
        assert result.returncode == 0, result
    # The library itself, also through the cache (a miss, then a hit).
    script = (
        "import sys\n"
        "from optuna_cas import CachedArtifactStore, FileSystemArtifactStore, download_artifact\n"
        "store = FileSystemArtifactStore(sys.argv[1])\n"
        "cached = CachedArtifactStore(store, directory=sys.argv[2])\n"
        "for artifact_id in sys.argv[4:]:\n"
        "    out = sys.argv[3] + '/' + artifact_id\n"
        "    download_artifact(artifact_store=store, file_path=out + '.lib', artifact_id=artifact_id)\n"
        "    for name in ('.miss', '.hit'):\n"
        "        download_artifact(artifact_store=cached, file_path=out + name, artifact_id=artifact_id)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, store, str(tmp_path / "cache"), str(outs), *ids],
        check=True,
        umask=umask,
        timeout=120,
    )
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in outs.iterdir()}
    expected = [f"{i}{suffix}" for i in ids for suffix in (".cli", ".lib", ".miss", ".hit")]
    assert modes == dict.fromkeys(expected, mode)


def test_errors_speak_the_clis_language(tmp_path: Path, make_file: Callable[..., Path]) -> None:
    store = str(tmp_path / "store")
    run("--store", store, "put", str(make_file(b"x")))
    short = run("--store", store, "gc", "--grace", "60", check=False)
    assert short.returncode == 2
    assert "--allow-short-grace" in short.stderr and "allow_short_grace" not in short.stderr
    assert "--grace 60" in short.stderr and "grace_period" not in short.stderr

    # Two studies in one storage: study "b"'s trial number 1 has another internal trial ID.
    db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    a = optuna.create_study(study_name="a", storage=db)
    for _ in range(3):
        a.ask()
    b = optuna.create_study(study_name="b", storage=db)
    b.ask()
    finished = b.ask()
    b.tell(finished, 1.0)
    assert finished._trial_id != finished.number
    target = ["--storage", db, "--study", "b", "--trial", "1"]
    put = run("--store", store, "put", str(make_file(b"y")), *target, check=False)
    assert put.returncode == 1
    assert "trial 1 of study 'b' has finished (COMPLETE)" in put.stderr
    assert "leave out --trial" in put.stderr and "Trial#" not in put.stderr
    assert f"trial {finished._trial_id}" not in put.stderr
    rm = run(
        "--store", store, "rm", UUID0, "--storage", db, "--study", "b", "--trial", "0", check=False
    )
    assert rm.returncode == 1
    assert "is not recorded on trial 0 of study 'b'" in rm.stderr, rm.stderr
    missing = run("ls", "--storage", db, "--study", "b", "--trial", "9", check=False)
    assert missing.returncode == 1 and "study 'b' has no trial number 9" in missing.stderr


def test_subcommand_help_does_not_repeat_the_global_options(tmp_path: Path) -> None:
    top = run("--help").stdout
    for option in ("--endpoint-url", "--retries", "--cache-dir", "--no-cache", "--json"):
        assert option in top
    for name in ("ls", "put", "get", "gc"):
        text = run(name, "--help").stdout
        assert "--endpoint-url" not in text and "--cache-dir" not in text, text
        assert "global options" in text
    # ... yet they are still accepted after the command.
    run("stats", "--store", str(tmp_path), "--retries", "1", "--json")


def test_ls_lists_everything_the_store_serves(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    import optuna.artifacts

    base = tmp_path / "store"
    base.mkdir()
    db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    study = optuna.create_study(study_name="s", storage=db)
    trial = study.ask()
    # Written by Optuna's own store before the switch: a flat file, no ref.
    legacy_id = optuna.artifacts.upload_artifact(
        artifact_store=optuna.artifacts.FileSystemArtifactStore(str(base)),
        file_path=str(make_file(b"old weights", name="old.pt")),
        study_or_trial=trial,
    )
    store_args = ["--store", str(base)]
    study_level = run(
        *store_args,
        "put",
        str(make_file(b"notes", name="notes.txt")),
        "--storage",
        db,
        "--study",
        "s",
    ).stdout.splitlines()[-1]
    on_trial = run(
        *store_args,
        "put",
        str(make_file(b"new", name="new.pt")),
        "--storage",
        db,
        "--study",
        "s",
        "--trial",
        "0",
    ).stdout.splitlines()[-1]

    rows = json.loads(run(*store_args, "ls", "--json").stdout)["artifacts"]
    assert {r["artifact_id"]: r["origin"] for r in rows} == {
        study_level: "optuna-cas",
        on_trial: "optuna-cas",
        legacy_id: "optuna-store",
    }
    (legacy,) = [r for r in rows if r["artifact_id"] == legacy_id]
    assert legacy["size"] == len(b"old weights") and legacy["digest"] is None
    human = run(*store_args, "ls").stdout
    assert legacy_id in human and "1 written by Optuna's own store" in human

    listed = json.loads(run("ls", "--storage", db, "--study", "s", "--json").stdout)
    got = {(r["artifact_id"], r["trial"]) for r in listed["artifacts"]}
    assert got == {(study_level, None), (on_trial, 0), (legacy_id, 0)}
    trial_only = json.loads(
        run("ls", "--storage", db, "--study", "s", "--trial", "0", "--json").stdout
    )["artifacts"]
    assert {r["artifact_id"] for r in trial_only} == {on_trial, legacy_id}
    # And get serves the legacy object (unverified: Optuna kept no digest).
    out = run(*store_args, "get", legacy_id, str(tmp_path / "old.pt")).stdout
    assert "not verified" in out and (tmp_path / "old.pt").read_bytes() == b"old weights"
    # stats and verify account for it too, apart from what they check and count.
    figures = json.loads(run(*store_args, "stats", "--json").stdout)
    assert figures["artifacts"] == 2 and figures["logical_bytes"] == len(b"notes" + b"new")
    assert (figures["optuna_store_files"], figures["optuna_store_bytes"]) == (1, 11)
    assert "Optuna's files    1 (11 B" in run(*store_args, "stats").stdout
    report = json.loads(run(*store_args, "verify", "--json").stdout)
    assert report["ok"] and report["optuna_store_files"] == [legacy_id]
    assert "(1 written by Optuna's own store: no digest to verify)" in (
        run(*store_args, "verify").stdout
    )


# -- progress on a terminal -----------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(
    *args: str, columns: int = 80, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal of ``columns`` columns; (rc, stdout, tty)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, **(env or {}), "COLUMNS": str(columns), "TERM": "xterm"}
    proc = subprocess.Popen(
        [str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=slave, env=env, text=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read() if proc.stdout else ""
    rc = proc.wait(timeout=120)
    os.close(master)
    return rc, stdout, b"".join(chunks).decode("utf-8", "replace")


def bar_segments(screen: str) -> list[str]:
    """Every state a line of the terminal was drawn in (redraws start with a carriage return)."""
    return [ANSI.sub("", s) for s in re.split(r"[\r\n]", screen) if s.strip()]


def test_put_and_get_show_progress_that_fits_an_80_column_terminal(
    store_env: tuple[str, dict[str, str]], tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    store, env = store_env
    env = {**env, "OPTUNA_CAS_CACHE_DIR": str(tmp_path / "cache")}
    name = "a-checkpoint-with-a-rather-long-file-name-" + "x" * 60 + ".pt"
    src = make_file(random_bytes(32 * 1024 * 1024), name=name)
    rc, stdout, screen = run_on_terminal("--store", store, "put", str(src), env=env)
    assert rc == 0, screen
    segments = bar_segments(screen)
    assert any(s.startswith("put a-check") and "%|" in s for s in segments), segments
    assert all(len(s) <= 80 for s in segments), [s for s in segments if len(s) > 80]
    artifact_id = stdout.splitlines()[-1]
    rc, _, screen = run_on_terminal(
        "--store", store, "get", artifact_id, str(tmp_path / "o"), env=env
    )
    assert rc == 0, screen
    segments = bar_segments(screen)
    assert any(s.startswith("get a-check") for s in segments), segments
    assert all(len(s) <= 80 for s in segments), [s for s in segments if len(s) > 80]
    # Without a terminal there is no bar at all.
    piped = run("--store", store, "put", str(src), env=env)
    assert piped.stderr == ""


def test_terminal_progress_draws_only_on_a_terminal() -> None:
    from optuna_cas._bars import TerminalProgress

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    piped = io.StringIO()
    with TerminalProgress(stream=piped) as bar:
        bar("get x", 10, 100)
    assert piped.getvalue() == ""
    tty = FakeTTY()
    with TerminalProgress(stream=tty) as bar:
        bar("get x", 50, 100)
        bar("get x", 100, 100)
    assert "get x" in tty.getvalue() and "%|" in tty.getvalue()
    quiet = FakeTTY()
    with TerminalProgress(stream=quiet, enabled=False) as bar:
        bar("get x", 100, 100)
    assert quiet.getvalue() == ""


def test_a_bar_of_bytes_counts_in_the_binary_units_of_the_summaries() -> None:
    import time

    from optuna_cas._bars import TerminalProgress

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = FakeTTY()
    with TerminalProgress(stream=tty) as bar:
        bar("get x", 0, 100 * 2**20)
        time.sleep(0.15)  # past tqdm's mininterval, so that the next call draws with a rate
        bar("get x", 30 * 2**20, 100 * 2**20)
        bar("put y", 0, None)  # a size not known yet
        time.sleep(0.15)
        bar("put y", 3 * 2**10, None)
    drawn = tty.getvalue()
    assert "| 30.0 MiB/100.0 MiB [" in drawn, drawn  # as human_bytes writes 30 MiB
    assert re.search(r"\d MiB/s\]", drawn) and "MB/s" not in drawn, drawn
    assert re.search(r"put y: 3\.0 KiB \[00:00, [\d.]+ KiB/s\]", drawn), drawn


def test_a_line_written_during_a_bar_gets_a_line_of_its_own() -> None:
    from optuna_cas._bars import TerminalProgress, write_line

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = FakeTTY()
    with TerminalProgress(stream=tty) as bar:
        bar("get x", 50, 100)
        drawn = len(tty.getvalue())
        write_line("optuna-cas: warning: read x failed on attempt 1", tty)
        after = tty.getvalue()[drawn:]
    # The bar erased (a carriage return, blanks, a carriage return), then the line, then the
    # bar again: never the line glued to the bar's figures.
    match = re.fullmatch(r"\r *\r(.*\n)(.*)", after, re.DOTALL)
    assert match is not None, repr(after)
    line, redrawn = match.groups()
    assert line == "optuna-cas: warning: read x failed on attempt 1\n"
    assert "get x" in redrawn and "50%" in redrawn


def test_a_retry_warns_above_the_bar_with_the_clis_prefix(
    s3_server: Any, s3_bucket: str, tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    # Found by a probe: a retry's log line was printed raw onto the bar being drawn
    # (`...357.8 MiB/s]upload s3://... failed on attempt 1`), without `optuna-cas: warning:`.
    from urllib.parse import urlsplit

    from optuna_cas.testing.faults import FaultProxy

    store = f"s3://{s3_bucket}/cli"
    source = make_file(random_bytes(8 * 1024 * 1024), name="model.pt")
    artifact_id = run(
        "--store", store, "-q", "put", str(source), env=_s3_env(s3_server.endpoint_url)
    ).stdout.strip()
    parts = urlsplit(s3_server.endpoint_url)
    assert parts.hostname and parts.port
    rate = 8 * 1024 * 1024  # a second for the download: the bar is drawn before the fault
    with FaultProxy(
        parts.hostname, parts.port, bandwidth_bytes_per_s=rate, keep_client_alive=True
    ) as proxy:
        # A body cut short: botocore retries no body, optuna-cas resumes it and logs a retry.
        proxy.fail_next(
            "truncate", methods=["GET"], matching=lambda _m, p: "/packs/" in p or "/blobs/" in p
        )
        argv = ["--store", store, "--no-cache", "get", artifact_id, str(tmp_path / "out.pt")]
        rc, _, screen = run_on_terminal(*argv, env=_s3_env(proxy.endpoint_url))
    assert rc == 0, screen
    segments = bar_segments(screen)
    retries = [s for s in segments if "failed on attempt 1 of" in s]
    assert len(retries) == 1, segments
    assert retries[0].startswith(f"optuna-cas: warning: read {store}/"), segments
    assert any(s.startswith("get model.pt") for s in segments), segments


def test_sync_names_failures_and_exits_1(tmp_path: Path) -> None:
    """A corrupt source blob is reported by ID and the exit status says so (not 0)."""
    import io

    from optuna_cas import FileSystemArtifactStore
    from optuna_cas.content import blob_key

    source = FileSystemArtifactStore(tmp_path / "src")
    fine, other = b"fine bytes" * 500, b"other bytes" * 500  # above INLINE_LIMIT: blobs
    source.write("good", io.BytesIO(fine))
    source.write("bad", io.BytesIO(other))
    blob = tmp_path / "src" / blob_key(source.get_ref("bad").digest)
    blob.chmod(0o644)
    blob.write_bytes(b"O" + other[1:])  # same size, wrong content
    result = subprocess.run(
        [sys.executable, "-m", "optuna_cas", "sync", str(tmp_path / "src"), str(tmp_path / "dst")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result
    assert "FAILED    bad" in result.stdout and "1 failed" in result.stdout
    assert FileSystemArtifactStore(tmp_path / "dst").open_reader("good").read() == fine


def test_stats_verify_and_gc_report_chunked_files(tmp_path: Path) -> None:
    from optuna_cas.backends.local import LocalBackend
    from optuna_cas.chunks.layout import manifest_key
    from optuna_cas.content import ContentStore

    root = tmp_path / "store"
    content = ContentStore(LocalBackend(root), chunk_threshold=256 * 1024)
    backbone = random_bytes(1_000_000, seed=1)
    for i in range(4):
        content.put_artifact(f"v{i}", io.BytesIO(backbone + random_bytes(300_000, seed=10 + i)))
    whole = b"w" * (INLINE_LIMIT + 1)  # below chunking, above INLINE_LIMIT: a whole blob
    content.put_artifact("small", io.BytesIO(whole))
    content.put_artifact("tiny", io.BytesIO(b"tiny"))  # kept inside its ref
    store = str(root)

    stats = json.loads(run("--store", store, "stats", "--json").stdout)
    assert (stats["chunked_files"], stats["unique_blobs"], stats["artifacts"]) == (4, 1, 6)
    assert stats["stored_bytes"] == (
        stats["blob_bytes"] + stats["chunked_bytes"] + stats["inline_bytes"]
    )
    assert (stats["blob_bytes"], stats["inline_bytes"], stats["whole_file_bytes"]) == (
        len(whole),
        4,
        4 * 1_300_000 + len(whole) + 4,
    )
    assert stats["chunk_dedup_ratio"] > 1.5  # the backbone is stored once, not four times
    human = run("--store", store, "stats").stdout
    assert "chunked files     4 (0 unreferenced)" in human and "whole-file dedup" in human

    report = json.loads(run("--store", store, "verify", "--json").stdout)
    assert report["ok"] and report["manifests_checked"] == 4 and report["packs_checked"] >= 4
    assert "4 chunked files in" in run("--store", store, "verify").stdout

    content.remove_ref("v0")
    content.remove_ref("v1")
    dry = run("--store", store, "gc", "--dry-run", "--grace", "0", "--allow-short-grace").stdout
    assert "chunked: would delete 2 of 4 manifests" in dry
    gone = json.loads(
        run("--store", store, "gc", "--grace", "0", "--allow-short-grace", "--json").stdout
    )
    assert len(gone["manifests_deleted"]) == 2 and gone["bytes_freed"] > 0

    pack = content.chunks.manifest(content.get_ref("v2").digest).packs[-1]
    for listed in content.chunks.iter_packs():
        if listed.hexdigest == pack.hexdigest:
            (root / listed.key).unlink()
    failed = run("--store", store, "verify", "--fast", check=False)
    assert failed.returncode == 1
    assert f"NOPACK   {manifest_key(content.get_ref('v2').digest)} -> {pack}" in failed.stdout


def test_put_of_a_new_version_says_how_much_of_it_was_new(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    store = str(tmp_path / "store")
    base = random_bytes(9 * 1024 * 1024)  # above the 8 MiB threshold: stored as chunks
    first = make_file(base, name="v1.pt")
    second = make_file(
        # seed=1: with base's seed (0), random_bytes(200_000) would be base's own first
        # 200,000 bytes, which the store holds already (a delta then stores only the edges).
        b"step=2" + base[:4_000_000] + random_bytes(200_000, seed=1) + base[4_200_000:],
        name="v2.pt",
    )
    run("--store", store, "put", str(first))
    out = json.loads(run("--store", store, "--json", "put", str(second)).stdout)["artifacts"][0]
    assert not out["already_stored"]
    assert 200_000 <= out["new_chunk_bytes"] <= 200_000 + 1024 * 1024
    text = run("--store", store, "put", str(second)).stdout
    assert "already stored" in text


# -- failures with --json, and --storage as the dashboard reads it (in-process: main()) --------


@pytest.mark.parametrize(
    ("argv", "code", "kind", "text"),
    [
        (["get", "nope", "out.bin"], 1, "error", "Artifact 'nope' not found"),
        (["lss"], 2, "usage", "invalid choice: 'lss'"),
        (["gc", "--grace", "10"], 2, "usage", "--grace 10 is unsafe"),
        (["get"], 2, "usage", "the following arguments are required"),
    ],
)
def test_a_failure_with_json_is_one_json_object_too(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    code: int,
    kind: str,
    text: str,
) -> None:
    from optuna_cas.cli import main

    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["--store", str(tmp_path / "store"), "--json", *argv]) == code
    out, err = capsys.readouterr()
    document = json.loads(out)  # exactly one object, nothing else on stdout
    assert document["ok"] is False and document["error"]["kind"] == kind
    assert text in document["error"]["message"] and text in err  # stderr says it as before


def test_storage_is_never_created_by_a_typo_and_journal_files_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from optuna.storages.journal import JournalFileBackend

    from optuna_cas.cli import main

    store = str(tmp_path / "store")
    (tmp_path / "store").mkdir()
    typo = tmp_path / "typo.db"
    assert main(["--store", store, "ls", "--storage", f"sqlite:///{typo}", "--study", "s"]) == 1
    assert f"--storage: no SQLite database at '{typo}'" in capsys.readouterr().err
    assert not typo.exists()
    assert main(["--store", store, "ls", "--storage", "bogus://x", "--study", "s"]) == 1
    assert "--storage: cannot open the Optuna storage 'bogus://x'" in capsys.readouterr().err
    journal = tmp_path / "journal.log"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    optuna.create_study(storage=storage, study_name="js")
    assert main(["--store", store, "--json", "ls", "--storage", str(journal), "--study", "js"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "artifacts": []}


def test_ls_marks_a_mimetype_it_cuts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from optuna_cas.cli import main

    (tmp_path / "f.docx").write_bytes(b"x" * 5000)
    store = str(tmp_path / "store")
    assert main(["--store", store, "-q", "put", str(tmp_path / "f.docx")]) == 0
    capsys.readouterr()
    assert main(["--store", store, "ls"]) == 0
    assert "  application/vnd.openx...  f.docx" in capsys.readouterr().out


# -- store URLs as open_store reads them -------------------------------------------------------


def test_a_memory_store_is_refused_because_nothing_would_survive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    from optuna_cas.cli import main

    assert main(["--store", "memory://", "put", str(make_file(b"x"))]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "'memory://'" in err and "survive" in err


def test_an_upper_case_s3_scheme_keeps_the_endpoint_and_the_cache(
    s3_server: Any, s3_bucket: str, tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    env = _s3_env("")  # only --endpoint-url names the server
    cache = str(tmp_path / "cache")
    remote = ["--endpoint-url", s3_server.endpoint_url, "--retries", "1", "--cache-dir", cache]
    artifact_id = run(
        *remote,
        "--store",
        f"S3://{s3_bucket}/x",
        "-q",
        "put",
        str(make_file(b"y" * 9000)),
        env=env,
    ).stdout.strip()
    run(
        *remote,
        "--store",
        f"S3://{s3_bucket}/x",
        "get",
        artifact_id,
        str(tmp_path / "out"),
        env=env,
    )
    assert (tmp_path / "out").read_bytes() == b"y" * 9000
    info = json.loads(run("--cache-dir", cache, "--json", "cache", "info", env=env).stdout)
    assert info["entries"] == 1  # read through the cache, as s3:// is


@pytest.mark.parametrize(
    "argv",
    [
        ["--store", "{tmp}/store", "ls"],
        ["--store", "gs://bucket/x", "ls"],
        ["sync", "{tmp}/store", "{tmp}/copy"],
    ],
    ids=["local", "gs", "sync"],
)
def test_endpoint_url_for_a_store_not_on_s3_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    from optuna_cas.cli import main

    (tmp_path / "store").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["--endpoint-url", "http://127.0.0.1:9", *argv]) == 2
    err = capsys.readouterr().err
    assert "--endpoint-url 'http://127.0.0.1:9' applies to s3:// stores only" in err
    assert repr(argv[1]) in err  # the store URL (sync: its source)
    assert not (tmp_path / "copy").exists()


def test_a_sync_whose_source_cannot_be_read_creates_no_destination(
    s3_server: Any, tmp_path: Path
) -> None:
    env = _s3_env(s3_server.endpoint_url)
    destination = tmp_path / "newdst"
    result = run(
        "--retries", "1", "sync", "s3://no-such-bucket/x", str(destination), env=env, check=False
    )
    assert result.returncode == 1, result
    assert "'no-such-bucket' does not exist" in result.stderr
    assert not destination.exists()


def test_an_unusable_default_cache_costs_a_warning_and_an_explicit_one_an_error(
    s3_server: Any, s3_bucket: str, tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    env = {
        **_s3_env(s3_server.endpoint_url),
        "OPTUNA_CAS_STORE": f"s3://{s3_bucket}/cache",
        "OPTUNA_CAS_CACHE_DIR": "",
        "XDG_CACHE_HOME": "",
        "HOME": "/proc/nohome",  # nothing can be created there, not even by root
    }
    data = b"z" * 9000
    artifact_id = run("-q", "put", str(make_file(data)), env=env).stdout.strip()

    def get(*options: str, extra_env: dict[str, str] | None = None) -> Any:
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        return out, run(
            *options, "get", artifact_id, str(out), env={**env, **(extra_env or {})}, check=False
        )

    out, result = get()  # the default directory cannot be created
    assert result.returncode == 0, result
    assert out.read_bytes() == data
    (warning,) = [line for line in result.stderr.splitlines() if "warning" in line]
    assert "/proc/nohome/.cache/optuna-cas" in warning and "--no-cache" in warning

    damaged = tmp_path / "xdg" / "optuna-cas"
    damaged.mkdir(parents=True)
    (damaged / "cache.db").write_bytes(b"not a database" * 100)
    out, result = get(extra_env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert result.returncode == 0, result
    assert out.read_bytes() == data
    assert "reading without the local cache" in result.stderr and "not a database" in result.stderr

    out, result = get("--cache-dir", "/proc/nohome/cache")  # asked for: an error
    assert result.returncode == 1 and not out.exists()
    assert "--cache-dir: " in result.stderr and "'/proc/nohome/cache'" in result.stderr

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tmp").write_text("a file where the cache keeps its temporary files")
    out, result = get("--cache-dir", str(cache))
    assert result.returncode == 1 and not out.exists()
    assert f"cannot create files in '{cache / 'tmp'}': Not a directory" in result.stderr


def test_a_reader_that_closes_stdout_early_ends_it_like_sigpipe(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    store = str(tmp_path / "store")
    run("--store", store, "-q", "put", str(make_file(b"x")), str(make_file(b"y")))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: `optuna-cas ls | head -0`
    try:
        result = subprocess.run(
            [str(SCRIPT), "--store", store, "ls"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")  # 128 + SIGPIPE, no message


def test_version_is_the_installed_package_version() -> None:
    from importlib.metadata import version

    result = run("--version")
    assert (result.stdout, result.stderr) == (f"optuna-cas {version('optuna-cas')}\n", "")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gc", "--grace", "10"], "--grace 10 is unsafe"),
        (["ls", "--study", "demo"], "--study and --storage go together"),
    ],
)
def test_a_usage_error_found_by_the_command_shows_the_commands_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    from optuna_cas.cli import main

    (tmp_path / "store").mkdir()
    assert main(["--store", str(tmp_path / "store"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: optuna-cas {argv[0]} "), err
    assert f"optuna-cas: error: {message}" in err


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("{tmp}/copy.sqlite3", "is a SQLite database, not a journal file: give it as sqlite:///"),
        ("{tmp}/notes.txt", "is not an Optuna journal file"),
        ("sqlite:///{tmp}/notes.txt", "file is not a database"),
        ("postgresql://me:secret@127.0.0.1:1/x", "cannot open the Optuna storage"),
    ],
    ids=["sqlite-path", "text-file", "sqlite-url-to-text", "postgres-unreachable"],
)
@pytest.mark.parametrize("command", ["ls", "verify"])
def test_a_bad_storage_is_named_with_the_forms_accepted(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    storage: str,
    expected: str,
    command: str,
) -> None:
    from optuna_cas.cli import main

    (tmp_path / "store").mkdir()
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'copy.sqlite3'}", study_name="s")
    # Two lines: Optuna takes a bad last line for one being written, and skips it.
    (tmp_path / "notes.txt").write_text("not json\nnor this\n")
    storage = storage.format(tmp=tmp_path)
    argv = ["--store", str(tmp_path / "store"), command, "--storage", storage, "--study", "s"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    shown = storage.replace("secret", "***")  # a password is never printed
    assert "--storage: " in err and repr(shown) in err and expected in err, err
    assert "secret" not in err
    if "notes" in storage:
        assert "or a database URL such as sqlite:///path.db" in err


def test_a_stdout_that_fails_or_is_closed_costs_one_line_not_a_traceback(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    # Found by a probe: --json on a full disk printed two chained tracebacks (the JSON
    # failure report went to the same full stdout), and `put` with stdout closed stored the
    # file but reported an AttributeError and exit 1.
    store = str(tmp_path / "store")
    source = make_file(b"weights", name="w.pt")
    run("--store", store, "-q", "put", str(source))
    with open("/dev/full", "w") as full:  # every write: ENOSPC
        result = subprocess.run(
            [str(SCRIPT), "--store", store, "--json", "ls"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "optuna-cas: error: [Errno 28] No space left on device"
    closed = subprocess.run(
        ["bash", "-c", f"{SCRIPT} --store {store} put {source} >&-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Stored, but its ID could be printed nowhere: an error that names it (probe; see
    # test_cli_outcomes.py).
    assert closed.returncode == 1 and "Traceback" not in closed.stderr, closed.stderr
    assert closed.stderr.endswith("optuna-cas: error: [Errno 9] Bad file descriptor: '<stdout>'\n")
    assert len(json.loads(run("--store", store, "--json", "ls").stdout)["artifacts"]) == 2


def test_get_into_a_directory_takes_a_name_put_read_in_bytes_that_are_not_utf8(
    tmp_path: Path,
) -> None:
    # put records such a name with surrogate escapes (os.fsdecode); get DIR/ writes it back
    # as the same bytes. Escapes that spell UTF-8 (a hidden U+202E) are still refused.
    from optuna_cas import FileSystemArtifactStore

    src = tmp_path / os.fsdecode(b"bad\xff\xfe.bin")
    src.write_bytes(b"payload")
    store = str(tmp_path / "store")
    artifact_id = run("--store", store, "put", str(src)).stdout.splitlines()[-1]
    FileSystemArtifactStore(store).put(
        "forged", io.BytesIO(b"payload"), filename="x\udce2\udc80\udcae.txt"
    )
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    result = run("--store", store, "get", artifact_id, f"{downloads}/", check=False)
    assert result.returncode == 0, result.stderr
    assert os.listdir(os.fsencode(downloads)) == [b"bad\xff\xfe.bin"]
    assert (downloads / os.fsdecode(b"bad\xff\xfe.bin")).read_bytes() == b"payload"
    forged = run("--store", store, "get", "forged", f"{downloads}/", check=False)
    assert forged.returncode == 1 and "not a plain file name" in forged.stderr
    assert len(os.listdir(downloads)) == 1
