"""The CLI's answers to what a new user types wrong: exit codes, messages, quiet output."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from optuna_cas.cli import main


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s4://bucket/x", "unsupported scheme 's4'"),
        ("gs://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("file://relative/x", "must not name a host"),
        ("file://", "names no directory"),
        ("s3://b/p#frag", "fragments"),
        ("s3://b/p?x=1", "query strings"),
        ("s3://b/p?", "query strings"),  # an empty query was taken as part of nothing
        ("file:///tmp/runs#2", "fragments"),  # stored into /tmp/runs (review)
        ("file:///tmp/runs?v=2", "query strings"),
        ("s3://[", "Invalid store URL"),
        ("memory://", "survive"),
    ],
)
def test_a_malformed_store_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    assert main(["--store", url, "--json", "ls"]) == 2
    out, err = capsys.readouterr()
    assert message in err
    assert json.loads(out)["error"]["kind"] == "usage"
    assert "memory" not in err.split("give", 1)[-1]  # only schemes the CLI takes are offered


def test_an_unsupported_scheme_lists_only_what_the_cli_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--store", "s4://bucket/x", "stats"]) == 2
    err = capsys.readouterr().err
    assert "--store 's4://bucket/x'" in err and "gcs://" in err and "memory" not in err


@pytest.mark.parametrize(
    ("url", "message"),
    [("s4://x", "unsupported scheme 's4'"), ("gs://", "names no bucket"), ("memory://", "survive")],
)
def test_a_bad_store_from_the_environment_names_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.setenv("OPTUNA_CAS_STORE", url)
    assert main(["ls"]) == 1  # the command line is right: not a usage error
    err = capsys.readouterr().err
    assert f"error: $OPTUNA_CAS_STORE {url!r}" in err or "error: $OPTUNA_CAS_STORE: " in err, err
    assert message in err and "--store" not in err and "usage:" not in err


def test_an_unusable_cache_dir_from_the_environment_names_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from optuna_cas import MemoryArtifactStore
    from optuna_cas.cli._common import CommandError, _through_cache

    (tmp_path / "afile").write_text("not a directory")
    monkeypatch.setenv("OPTUNA_CAS_CACHE_DIR", str(tmp_path / "afile"))
    with pytest.raises(CommandError, match=r"^\$OPTUNA_CAS_CACHE_DIR: .*afile"):
        _through_cache(argparse.Namespace(cache_dir=None), MemoryArtifactStore())
    with pytest.raises(CommandError, match=r"^--cache-dir: .*afile"):
        _through_cache(argparse.Namespace(cache_dir=str(tmp_path / "afile")), MemoryArtifactStore())


def test_a_malformed_sync_destination_is_named_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "src").mkdir()
    assert main(["sync", str(tmp_path / "src"), "gs://"]) == 2
    assert "DST: Store URL 'gs://' names no bucket" in capsys.readouterr().err


def test_an_explicitly_empty_store_is_a_usage_error_not_the_default_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "default").mkdir()
    monkeypatch.setenv("OPTUNA_CAS_STORE", str(tmp_path / "default"))
    assert main(["--store", "", "ls"]) == 2
    assert "--store is empty" in capsys.readouterr().err
    assert main(["ls"]) == 0  # without --store, the variable is the store


def _optuna_files(store: Path, count: int) -> None:
    """Files as Optuna's own FileSystemArtifactStore writes them: one flat file per ID."""
    import io

    import optuna.artifacts

    own = optuna.artifacts.FileSystemArtifactStore(str(store))
    for i in range(count):
        own.write(f"2222222{i}-1111-1111-1111-111111111111", io.BytesIO(bytes([i]) * 3000))


@pytest.mark.parametrize("dst", ["{tmp}/ost", "{tmp}/ost/", "{tmp}/link", "file://{tmp}/ost"])
def test_sync_onto_the_same_store_is_refused_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dst: str
) -> None:
    store = tmp_path / "ost"
    store.mkdir()
    (tmp_path / "link").symlink_to(store)
    _optuna_files(store, 3)
    before = sorted(p.name for p in store.iterdir())
    assert main(["--json", "sync", str(store), dst.format(tmp=tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert "SRC and DST are the same store" in err and str(store) in err
    assert json.loads(out)["error"]["kind"] == "usage"
    assert sorted(p.name for p in store.iterdir()) == before


def test_library_sync_refuses_the_same_store(tmp_path: Path) -> None:
    from optuna_cas import Backoff, open_store, sync

    _optuna_files(tmp_path, 1)
    with pytest.raises(ValueError, match="same store"):
        sync(open_store(tmp_path), Backoff(open_store(f"file://{tmp_path}")))
    assert not (tmp_path / "refs").exists()
    other = tmp_path / "other"
    assert sync(open_store(tmp_path), open_store(other)).ok  # another directory is fine


def test_library_sync_tells_s3_stores_apart_by_endpoint(s3_server: object) -> None:
    import boto3

    from optuna_cas import Boto3ArtifactStore
    from optuna_cas.operations.sync import same_location

    def store(endpoint: str) -> Boto3ArtifactStore:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        return Boto3ArtifactStore("bucket", client, prefix="p")

    here = store(s3_server.endpoint_url)  # type: ignore[attr-defined]
    assert same_location(here.content, store(s3_server.endpoint_url).content)  # type: ignore[attr-defined]
    assert not same_location(here.content, store("http://127.0.0.1:9").content)


def _chunked_store(root: Path) -> object:
    import io

    from optuna_cas.backends.local import LocalBackend
    from optuna_cas.content import ContentStore
    from tests.conftest import random_bytes

    content = ContentStore(LocalBackend(root), chunk_threshold=256 * 1024)
    content.put_artifact("big", io.BytesIO(random_bytes(1_000_000, seed=3)))
    return content


@pytest.mark.parametrize("dry_run", [False, True])
def test_gc_says_the_bytes_freed_apart_from_the_blob_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    content = _chunked_store(tmp_path)
    content.remove_ref("big")  # type: ignore[attr-defined]
    gc = ["--store", str(tmp_path), "gc", "--grace", "0", "--allow-short-grace"]
    assert main(gc + (["--dry-run"] if dry_run else [])) == 0
    out = capsys.readouterr().out
    verb, freed = ("would delete", "would free") if dry_run else ("deleted", "freed")
    summary = next(line for line in out.splitlines() if line.startswith(verb))
    assert summary.startswith(f"{verb} 0 unreferenced blobs;") and "B" not in summary.split(";")[0]
    assert f"chunked: {verb} 1 of 1 manifests" in out
    assert re.search(rf"^{freed} 9\d\d\.\d KiB in all$", out, re.MULTILINE), out


def test_gc_bars_count_manifests_and_packs_in_their_own_unit() -> None:
    import argparse

    from optuna_cas.cli._common import _BarPerUnit

    bars = _BarPerUnit(argparse.Namespace(quiet=False), ("blobs", "manifests", "packs"))
    with bars:
        for task in [
            "gc: deleting unreferenced blobs",
            "gc: deleting unreferenced manifests",
            "gc: deleting unused packs",
            "gc: repacking",
        ]:
            bars(task, 0, 1)
    units = {unit: bar._unit for unit, bar in bars._bars.items()}  # type: ignore[attr-defined]
    assert units == {"blobs": "blobs", "manifests": "manifests", "packs": "packs", "B": "B"}


def test_quiet_ls_prints_rows_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    store = str(tmp_path / "store")
    assert main(["--store", store, "-q", "put", str(make_file(b"x" * 5000, name="m.pt"))]) == 0
    artifact_id = capsys.readouterr().out.strip()
    assert main(["--store", store, "-q", "ls"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == [artifact_id]
    assert main(["--store", store, "ls"]) == 0
    assert capsys.readouterr().out.startswith("ARTIFACT ID")  # kept without -q


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_keeps_retries_of_an_unreachable_endpoint_to_one_error_line(quiet: bool) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # Port 9 (discard): nothing listens, every request fails at once, as a transient error.
    argv = ["--store", "s3://bucket/x", "--endpoint-url", "http://127.0.0.1:9", "--retries", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "optuna_cas", *argv, *(["-q"] if quiet else []), "ls"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("optuna-cas: error: s3://bucket/x: connection problem")
    retries = [line for line in lines if "failed on attempt 1 of 2" in line]
    assert len(retries) == (0 if quiet else 1)
    assert len(lines) == (1 if quiet else 2)


@pytest.mark.parametrize("action", [["info"], ["clear"], ["prune", "--max-bytes", "0"]])
@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty-dir"])
def test_cache_commands_create_no_cache_where_there_is_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: list[str], made: bool
) -> None:
    directory = tmp_path / "nonexistent"
    if made:
        directory.mkdir()
    assert main(["--cache-dir", str(directory), "cache", *action]) == 0
    assert f"no cache in {directory}" in capsys.readouterr().out
    assert main(["--cache-dir", str(directory), "--json", "cache", *action]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["exists"], info["entries"], info["directory"]) == (False, 0, str(directory))
    assert list(directory.iterdir()) == [] if made else not directory.exists()


def test_cache_info_of_a_cache_that_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from optuna_cas import DiskBlobCache

    DiskBlobCache(tmp_path / "c").close()
    assert main(["--cache-dir", str(tmp_path / "c"), "--json", "cache", "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["exists"] is True and info["entries"] == 0


@pytest.mark.parametrize(
    ("dest", "code", "message"),
    [
        ("{tmp}/newdir/", 1, "the directory '{tmp}/newdir/' does not exist"),
        ("{tmp}/newdir/model.pt", 1, "the directory '{tmp}/newdir' does not exist"),
        ("{tmp}/afile/x.pt", 1, "the directory '{tmp}/afile' is not a directory"),
        ("", 2, "DEST is empty"),
    ],
)
def test_get_names_a_missing_directory_or_an_empty_dest(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_file: Callable[..., Path],
    dest: str,
    code: int,
    message: str,
) -> None:
    store = str(tmp_path / "store")
    (tmp_path / "afile").write_bytes(b"")
    assert main(["--store", store, "-q", "put", str(make_file(b"x" * 5000, name="m.pt"))]) == 0
    artifact_id = capsys.readouterr().out.strip()
    assert main(["--store", store, "get", artifact_id, dest.format(tmp=tmp_path)]) == code
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Errno" not in err
    assert not (tmp_path / "newdir").exists()


def test_verify_refuses_fast_with_quarantine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--store", str(tmp_path), "--json", "verify", "--fast", "--quarantine"]) == 2
    out, err = capsys.readouterr()
    assert "--quarantine moves aside what the deep check finds corrupt" in err
    assert json.loads(out)["error"]["kind"] == "usage"


def _store_with_a_corrupt_blob(store: Path, make_file: Callable[..., Path]) -> tuple[Path, Path]:
    """Put one 50 kB file into ``store`` and damage its blob in place; (file, blob) paths."""
    source = make_file(b"q" * 50_000, name="m.pt")
    assert main(["--store", str(store), "-q", "put", str(source)]) == 0
    (blob,) = (p for p in (store / "blobs").rglob("*") if p.is_file())
    blob.write_bytes(b"Q" * 50_000)  # damaged in place: same size, other bytes
    return source, blob


def test_verify_says_where_quarantined_objects_went_and_how_to_heal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    store = tmp_path / "store"
    source, blob = _store_with_a_corrupt_blob(store, make_file)
    capsys.readouterr()
    assert main(["--store", str(store), "verify", "--quarantine"]) == 1
    out = capsys.readouterr().out
    where = f"{store.as_uri()}/quarantine/"
    assert f"moved 1 object to {where}" in out and "upload the same files again" in out
    assert (store / "quarantine" / blob.relative_to(store)).is_file()
    assert main(["--store", str(store), "-q", "put", str(source)]) == 0  # heals it
    capsys.readouterr()
    assert main(["--store", str(store), "--json", "verify", "--quarantine"]) == 0
    assert json.loads(capsys.readouterr().out)["quarantine_dir"] == where


def test_rm_of_a_file_optunas_store_wrote_gives_no_gc_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    store = tmp_path / "store"  # not tmp_path: make_file's inputs/ is no artifact
    store.mkdir()
    _optuna_files(store, 1)
    flat = "22222220-1111-1111-1111-111111111111"
    assert main(["--store", str(store), "rm", flat]) == 0
    out = capsys.readouterr().out
    assert "gc" not in out and "Optuna's own store" in out
    assert not (store / flat).exists()
    assert main(["--store", str(store), "-q", "put", str(make_file(b"z" * 5000))]) == 0
    artifact_id = capsys.readouterr().out.strip()
    assert main(["--store", str(store), "rm", artifact_id]) == 0
    assert "run 'optuna-cas gc'" in capsys.readouterr().out  # a blob is left for gc
    assert main(["--store", str(store), "-q", "put", str(make_file(b"tiny"))]) == 0
    artifact_id = capsys.readouterr().out.strip()
    assert main(["--store", str(store), "rm", artifact_id]) == 0
    # Kept inside its ref; then the note that Optuna's metadata was not touched.
    assert capsys.readouterr().out.splitlines()[0] == f"removed {artifact_id}"


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["gc", "--grace", "-1"], "usage: optuna-cas gc "),
        (["gc", "--grace", "10"], "usage: optuna-cas gc "),
        (["dashboard", "x", "--port", "abc"], "usage: optuna-cas dashboard "),
        (["dashboard", "x", "--port", "99999"], "usage: optuna-cas dashboard "),
        (["stats", "extra"], "usage: optuna-cas stats "),
        (["--jsn", "stats"], "usage: optuna-cas [-h]"),
    ],
)
def test_usage_errors_share_one_prefix_and_show_the_commands_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], usage: str
) -> None:
    assert main(["--store", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert line.startswith("optuna-cas: error: ")


def test_a_bad_endpoint_is_named_by_where_it_came_from(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["--store", "s3://b/x", "--endpoint-url", "notaurl", "--json", "ls"]) == 2
    out, err = capsys.readouterr()
    assert "--endpoint-url 'notaurl' is not an http:// or https:// URL" in err
    assert json.loads(out)["error"]["kind"] == "usage"
    monkeypatch.setenv("OPTUNA_CAS_ENDPOINT_URL", "notaurl")
    assert main(["--store", "s3://b/x", "ls"]) == 1
    assert "$OPTUNA_CAS_ENDPOINT_URL 'notaurl' is not" in capsys.readouterr().err


def test_gcs_without_credentials_says_how_to_give_them(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    drop = ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # No home credentials, no gcloud configuration, and no probe of a GCE metadata server.
    env |= {"HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path), "NO_GCE_CHECK": "True"}
    result = subprocess.run(
        [sys.executable, "-m", "optuna_cas", "--store", "gs://b/x", "--retries", "1", "ls"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    assert "GOOGLE_APPLICATION_CREDENTIALS" in result.stderr
    assert "STORAGE_EMULATOR_HOST" in result.stderr
    assert "pass client=..." not in result.stderr


def test_s3_without_credentials_says_how_to_give_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe
    argv = ["--store", "s3://b/x", "--endpoint-url", "http://127.0.0.1:9", "--retries", "1"]
    assert main([*argv, "ls"]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert "no usable AWS credentials" in error
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in error and "AWS_PROFILE" in error


def test_an_emulator_host_without_a_scheme_names_the_variable_and_the_fix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:57517")
    assert main(["--store", "gs://b/x", "--retries", "1", "ls"]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert "STORAGE_EMULATOR_HOST '127.0.0.1:57517' is not an http" in error
    assert "e.g. http://127.0.0.1:57517" in error
    assert "InvalidSchema" not in error


def test_summaries_say_what_they_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    store = tmp_path / "store"
    for _ in range(3):  # three identical 2-byte files: kept inside their refs, once per ref
        assert main(["--store", str(store), "-q", "put", str(make_file(b"ab"))]) == 0
    _chunked_store(store)  # and one chunked file
    capsys.readouterr()
    assert main(["--store", str(store), "stats"]) == 0
    out = capsys.readouterr().out
    assert (
        "(if each distinct content were stored once, small files inside refs once per ref)" in out
    )
    assert main(["sync", str(store), str(tmp_path / "copy")]) == 0
    assert "copied 4 refs and 1 content" in capsys.readouterr().out  # the chunked file
    assert main(["--store", str(store), "verify"]) == 0
    assert "hashed: packs, then the chunked files read back)" in capsys.readouterr().out


def test_api_docstrings_name_what_optuna_and_the_os_raise(tmp_path: Path) -> None:
    import optuna

    from optuna_cas import (
        FileSystemArtifactStore,
        download_artifact,
        upload_artifact,
    )

    store = FileSystemArtifactStore(tmp_path / "store")
    (tmp_path / "m.txt").write_text("weights")
    study = optuna.create_study()
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        upload_artifact(
            artifact_store=store, file_path=str(tmp_path / "m.txt"), study_or_trial=trial
        )
    assert "UpdateFinishedTrialError" in (upload_artifact.__doc__ or "")
    artifact_id = upload_artifact(
        artifact_store=store, file_path=str(tmp_path / "m.txt"), study_or_trial=study
    )
    with pytest.raises(FileNotFoundError):
        download_artifact(
            artifact_store=store, file_path=str(tmp_path / "no" / "m.txt"), artifact_id=artifact_id
        )
    assert "FileNotFoundError: The directory" in (download_artifact.__doc__ or "")


def test_backends_doc_shows_the_real_wrapper_signatures() -> None:
    import inspect

    from optuna_cas import Backoff, CachedArtifactStore

    text = (Path(__file__).parent.parent / "docs" / "backends.md").read_text()
    assert next(iter(inspect.signature(Backoff).parameters)) == "backend"
    assert "`Backoff(backend, *," in text
    assert "cache_uploads" in inspect.signature(CachedArtifactStore).parameters
    assert 'materialize="copy", cache_uploads=True)`' in text


def test_overlapping_quiet_calls_put_the_retry_loggers_level_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Two threads each ran main(-q), the second starting inside the first and ending after
    # it: the second had saved the first's temporary ERROR level and put it back last, so
    # retries stayed hidden for the whole process (review).
    import logging
    import threading

    import optuna_cas.cli as cli

    logger = logging.getLogger("optuna_cas.retry")
    assert logger.level == logging.NOTSET
    store = str(tmp_path / "store")
    assert main(["--store", store, "-q", "put", __file__]) == 0
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    calls: list[int] = []
    real = cli._run_command

    def run(args: object) -> int:
        calls.append(1)
        if len(calls) == 1:  # A: waits for B to be inside too
            a_inside.set()
            assert b_inside.wait(30)
        else:  # B: ends only after A
            b_inside.set()
            assert a_done.wait(30)
        return real(args)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "_run_command", run)
    results: list[int] = []
    a = threading.Thread(target=lambda: results.append(main(["--store", store, "-q", "ls"])))
    b = threading.Thread(target=lambda: results.append(main(["--store", store, "-q", "ls"])))
    a.start()
    assert a_inside.wait(30)
    b.start()
    a.join(30)
    a_done.set()
    b.join(30)
    assert results == [0, 0]
    assert logger.level == logging.NOTSET


def test_a_study_listing_takes_size_and_digest_from_the_stores_refs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Optuna's own upload_artifact (and the dashboard's web upload) write metadata with no
    # digest or size: `ls --study` showed SIZE "?" although the store's ref knew it (probe).
    import optuna
    import optuna.artifacts

    from optuna_cas import FileSystemArtifactStore

    monkeypatch.delenv("OPTUNA_CAS_STORE", raising=False)
    db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    study = optuna.create_study(study_name="s", storage=db)
    store = str(tmp_path / "store")
    (tmp_path / "notes.txt").write_bytes(b"hello")
    artifact_id = optuna.artifacts.upload_artifact(
        artifact_store=FileSystemArtifactStore(store),
        file_path=str(tmp_path / "notes.txt"),
        study_or_trial=study,
    )
    capsys.readouterr()

    def listed(*store_args: str) -> dict[str, object]:
        assert main([*store_args, "ls", "--storage", db, "--study", "s", "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)["artifacts"]
        assert row["artifact_id"] == artifact_id and row["filename"] == "notes.txt"
        return dict(row)

    without_store = listed()  # the study alone: nothing else to ask
    assert without_store["size"] is None and without_store["digest"] is None
    with_store = listed("--store", store)
    assert with_store["size"] == 5 and str(with_store["digest"]).startswith("blake3:")
    assert with_store["origin"] == "optuna-cas"


def test_verify_reports_what_it_could_not_quarantine_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    # A quarantine directory symlinked out of the store crashed verify with a private error.
    store = tmp_path / "store"
    _, blob = _store_with_a_corrupt_blob(store, make_file)
    (tmp_path / "elsewhere").mkdir()
    (store / "quarantine").symlink_to(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["--store", str(store), "verify", "--quarantine"]) == 1
    out = capsys.readouterr().out
    key = blob.relative_to(store).as_posix()
    assert f"CORRUPT  {key}: " in out and "(quarantined)" not in out
    assert "could not quarantine: quarantine/ is refused" in out
    assert "could not move 1 object to" in out and "they stay where they are" in out
    assert main(["--store", str(store), "--json", "verify", "--quarantine"]) == 1
    assert json.loads(capsys.readouterr().out)["quarantine_failed"] == [key]
    assert blob.is_file() and list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("command", [["ls"], ["verify"], ["rm", "train.py"], ["stats"], ["gc"]])
def test_a_directory_that_is_not_a_store_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # A probe pointed --store at a project directory: its source files were listed as
    # artifacts Optuna's store wrote, and `rm train.py` deleted one.
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text("code")
    (project / "22222220-1111-1111-1111-111111111111").write_text("an artifact of Optuna's")
    assert main(["--store", str(project), "--json", *command]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["kind"] == "usage"
    assert f"--store {str(project)!r} is not an artifact store" in err and "'train.py'" in err
    assert sorted(p.name for p in project.iterdir()) == [
        "22222220-1111-1111-1111-111111111111",
        "train.py",
    ]


def test_a_put_into_a_directory_that_is_not_a_store_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "notes.md").write_text("notes")
    assert main(["--store", str(project), "put", str(make_file(b"x" * 5000))]) == 2
    assert "'notes.md'" in capsys.readouterr().err
    assert [p.name for p in project.iterdir()] == ["notes.md"]
    assert main(["--store", f"file://{project}", "ls"]) == 2  # the file:// spelling too


def test_a_stores_own_refs_directory_is_refused_with_its_parent_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    store = tmp_path / "store"
    assert main(["--store", str(store), "-q", "put", str(make_file(b"x" * 5000))]) == 0
    capsys.readouterr()
    assert main(["--store", str(store / "refs"), "ls"]) == 2  # its files are named by UUIDs
    assert "the refs/ directory inside a store" in capsys.readouterr().err
    assert main(["--store", str(store), "ls"]) == 0


def test_a_directory_optunas_own_store_wrote_is_still_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "22222220-1111-1111-1111-111111111111").write_text("an artifact of Optuna's")
    (legacy / ".DS_Store").write_text("hidden files are ignored")
    assert main(["--store", str(legacy), "ls"]) == 0
    assert "22222220-1111-1111-1111-111111111111" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["--store", str(tmp_path / "empty"), "ls"]) == 0  # an empty directory is new


def _help(*argv: str) -> str:
    """What ``optuna-cas ARGV --help`` prints, in one line (argparse wraps at the width)."""
    import contextlib
    import io

    from optuna_cas.cli import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return " ".join(out.getvalue().split())


def test_help_shows_the_cache_default_the_exit_codes_and_what_id_is() -> None:
    from optuna_cas.cli._common import CACHE_DIR_ENV
    from optuna_cas.middleware import cache_config

    assert CACHE_DIR_ENV == cache_config.CACHE_DIR_ENV  # the CLI's copy, kept for start-up
    top = _help()
    assert "--cache-dir DIR read cache directory (default $OPTUNA_CAS_CACHE_DIR" in top
    assert "~/.cache/optuna-" in top and "see docs" not in top
    codes = top.split("exit codes:", 1)[1]
    for code in (
        "0 success",
        "1 failure",
        "2 usage",
        "130 interrupted",
        "141 the",
        "143 terminated",
    ):
        assert code in codes
    for command in ("get", "rm"):
        assert re.search(r"positional arguments: ID the artifact ID to \w+", _help(command))
    cli_md = " ".join((Path(__file__).parents[1] / "docs" / "cli.md").read_text().split())
    documented = cli_md.split("Exit codes:", 1)[1][:400]
    for code in ("`0`", "`1`", "`2`", "`130`", "`141`", "`143`"):
        assert code in documented, code
    assert "OPTUNA_CAS_CACHE_DIR" in cli_md and "~/.cache/optuna-cas" in cli_md


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["verify", "--study", "s"], "--study and --storage go together\n"),  # no --trial there
        (["ls", "--study", "s"], "--study and --storage go together (and --trial needs both)"),
        (["cache", "info", "--max-bytes", "5"], "--max-bytes is for cache prune only"),
        (["cache", "clear", "--max-bytes", "5"], "--max-bytes is for cache prune only"),
        (["--store", "{tmp}", "sync", "{tmp}", "{tmp}/b"], "not --store ('{tmp}')"),
    ],
)
def test_options_the_command_would_ignore_are_refused_in_its_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    args = [a.format(tmp=tmp_path) for a in argv]
    assert main(["--cache-dir", str(cache), *args]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing done


@pytest.mark.parametrize("action", [["info"], ["clear"], ["prune", "--max-bytes", "0"]])
def test_cache_commands_refuse_a_cache_dir_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: list[str]
) -> None:
    (tmp_path / "afile").write_text("x")
    for directory, what in [("afile", "is not a directory"), ("afile/sub", "is under")]:
        assert main(["--cache-dir", str(tmp_path / directory), "--json", "cache", *action]) == 1
        out, err = capsys.readouterr()
        assert f"--cache-dir: '{tmp_path / directory}' {what}" in err
        assert json.loads(out)["ok"] is False


def test_counts_take_the_singular_for_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    store = tmp_path / "store"
    assert main(["--store", str(store), "-q", "put", str(make_file(b"s" * 9000))]) == 0
    capsys.readouterr()
    assert main(["sync", str(store), str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert "copied 1 ref and 1 content (8.8 KiB); 0 refs and 0 contents" in out, out
    assert main(["--store", str(store), "verify"]) == 0
    assert "deep verify: 1 ref, 1 blob (8.8 KiB hashed): " in capsys.readouterr().out
    assert main(["--store", str(store), "gc", "--grace", "0", "--allow-short-grace"]) == 0
    assert "scanned 1 blob, 1 ref;" in capsys.readouterr().out


def test_verify_study_summary_words_agree_with_their_counts() -> None:
    from optuna_cas.cli._common import _count
    from optuna_cas.cli._maintenance import _STUDY_FINDINGS

    said = {
        name: (_count(1, one, other), _count(2, one, other))
        for name, _, one, other in _STUDY_FINDINGS
    }
    assert said["repairable"] == (
        "1 dangling with the blob stored",
        "2 dangling with the blob stored",
    )
    assert said["conflicts"] == ("1 conflict", "2 conflicts")
    assert said["missing_blobs"] == ("1 ref without its blob", "2 refs without their blob")
    assert said["rebuilt"] == ("1 ref rebuilt", "2 refs rebuilt")


@pytest.mark.parametrize("argv", [["--json", "--version"], ["--version", "--json"]])
def test_version_with_json_is_one_json_object(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    from optuna_cas.cli import package_version

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "version": package_version()}


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("5G", 5 * 2**30),
        ("5GiB", 5 * 2**30),
        ("512k", 512 * 2**10),
        ("1.5M", 3 * 2**19),
        ("2T", 2 * 2**40),
        ("100", 100),
        ("100B", 100),
    ],
)
def test_max_bytes_takes_binary_units(text: str, size: int) -> None:
    from optuna_cas.cli import build_parser

    assert build_parser().parse_args(["cache", "prune", "--max-bytes", text]).max_bytes == size


@pytest.mark.parametrize(
    ("text", "seconds"), [("2h", 7200), ("30m", 1800), ("1d", 86400), ("90s", 90), ("7200", 7200)]
)
def test_grace_takes_duration_units(text: str, seconds: float) -> None:
    from optuna_cas.cli import build_parser

    assert build_parser().parse_args(["gc", "--grace", text]).grace == seconds


@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        (["cache", "prune", "--max-bytes", "5X"], "argument --max-bytes: '5X' is not a size"),
        (["cache", "prune", "--max-bytes", "5GB"], "argument --max-bytes: '5GB' is not a size"),
        (["gc", "--grace", "2w"], "argument --grace: '2w' is not a duration"),
    ],
)
def test_a_bad_unit_is_named_with_the_value(
    capsys: pytest.CaptureFixture[str], argv: list[str], bad: str
) -> None:
    assert main(argv) == 2
    assert bad in capsys.readouterr().err


def test_rm_says_what_it_removed_and_where_the_metadata_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    import optuna

    db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    optuna.create_study(study_name="demo", storage=db).ask()
    store = ["--store", str(tmp_path / "store")]
    study = ["--storage", db, "--study", "demo"]

    def put() -> str:
        source = make_file(b"w" * 9000)
        assert main([*store, "-q", "put", str(source), *study, "--trial", "0"]) == 0
        return capsys.readouterr().out.strip()

    first = put()
    assert main([*store, "rm", first]) == 0  # the ref only
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"removed {first}")
    assert len(out) == 2 and "Optuna metadata entry for this artifact (if any) was not" in out[1]
    assert "--storage URL --study NAME [--trial NUMBER]" in out[1]
    for quiet in (["-q"], ["--json"]):  # results only: no note
        assert main([*store, *quiet, "rm", put()]) == 0
        assert "note" not in capsys.readouterr().out
    second = put()
    assert main([*store, "rm", second, *study]) == 1  # on trial 0, not on the study
    err = capsys.readouterr().err
    assert f"Artifact '{second}' is not recorded on study 'demo'" in err
    assert err.rstrip().endswith("it is recorded on trial 0: pass --trial 0"), err
    assert main([*store, "rm", second, *study, "--trial", "0"]) == 0  # metadata and ref
    assert "note" not in capsys.readouterr().out
    assert main([*store, "rm", first, *study, "--trial", "0"]) == 0  # what rm alone left


def test_rm_with_the_study_after_an_rm_without_it_removes_the_metadata_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    # The note after an rm without --storage says to run rm again with it; that second rm
    # said "(a file Optuna's own store wrote)", which there was not (found in review).
    import optuna

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(storage=storage, study_name="demo").ask()
    store = str(tmp_path / "store")
    study_args = ["--storage", storage, "--study", "demo", "--trial", "0"]
    assert main(["--store", store, "-q", "put", str(make_file(b"x" * 5000)), *study_args]) == 0
    artifact_id = capsys.readouterr().out.strip()
    assert main(["--store", store, "rm", artifact_id]) == 0
    assert "not touched" in capsys.readouterr().out
    assert main(["--store", store, "rm", artifact_id, *study_args]) == 0
    assert capsys.readouterr().out == f"removed {artifact_id}\n"
    assert main(["--store", store, "--json", "ls", *study_args[:4]]) == 0
    assert json.loads(capsys.readouterr().out)["artifacts"] == []


@pytest.mark.parametrize("spelling", ["FILE://{}", "File://{}", "file://{}", "file:{}"])
def test_a_file_url_in_any_case_or_escaped_is_checked_like_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    # FILE:/// skipped the check (the path was taken from the URL only for "file:"), and rm
    # deleted a project's file (found in review).
    project = tmp_path / "my proj"
    project.mkdir()
    (project / "train.py").write_text("code")
    url = spelling.format(str(project).replace(" ", "%20"))
    assert main(["--store", url, "rm", "train.py"]) == 2
    assert "is not an artifact store" in capsys.readouterr().err
    assert (project / "train.py").exists()


def test_volume_and_os_entries_do_not_make_a_directory_a_non_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    # A freshly formatted volume holds lost+found; NAS shares and Windows drop @eaDir,
    # Thumbs.db and desktop.ini into folders: none is an artifact (found in review).
    volume = tmp_path / "vol"
    (volume / "lost+found").mkdir(parents=True)
    (volume / "@eaDir").mkdir()
    (volume / "Thumbs.db").write_bytes(b"thumbs")
    (volume / "desktop.ini").write_text("[.ShellClassInfo]")
    assert main(["--store", str(volume), "-q", "put", str(make_file(b"x" * 5000))]) == 0
    artifact_id = capsys.readouterr().out.strip()
    assert main(["--store", str(volume), "--json", "ls"]) == 0
    listed = [row["artifact_id"] for row in json.loads(capsys.readouterr().out)["artifacts"]]
    assert listed[0] == artifact_id  # (the OS's files are listed after it as Optuna's: harmless)


@pytest.mark.parametrize(
    ("entries", "victim"),
    [
        ({"Documents/": None, ".bashrc": "alias ll='ls -l'"}, ".bashrc"),  # a home directory
        ({"refs/": None, "main.tex": "\\documentclass{article}"}, "main.tex"),  # LaTeX's refs/
        ({"refs/": None, "objects/": None, "config": "[core]"}, "config"),  # a .git directory
        ({"data.csv@": "elsewhere.csv"}, "data.csv"),  # a folder of symlinks (git-annex, DVC)
    ],
)
def test_no_file_of_a_directory_that_is_not_a_store_can_be_removed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    entries: dict[str, str | None],
    victim: str,
) -> None:
    # Review: subfolders and dotfiles only, a folder named like one of ours beside a file, or
    # symlinks only, passed the check, and rm deleted .bashrc, main.tex, .git/config, a link.
    project = tmp_path / "proj"
    project.mkdir()
    (tmp_path / "elsewhere.csv").write_text("a,b")
    for name, text in entries.items():
        if name.endswith("/"):
            (project / name).mkdir()
        elif name.endswith("@"):
            (project / name[:-1]).symlink_to(tmp_path / str(text))
        else:
            (project / name).write_text(str(text))
    before = sorted(p.name for p in project.iterdir())
    # Refused as no store (2), or, beside a folder named like ours, as no artifact (1).
    assert main(["--store", str(project), "rm", victim]) in (1, 2)
    err = capsys.readouterr().err
    assert "is not an artifact store" in err or "nothing was removed" in err
    assert sorted(p.name for p in project.iterdir()) == before


def test_a_dotfile_is_never_removed_as_an_artifact_optunas_store_wrote(tmp_path: Path) -> None:
    # Optuna's IDs are UUIDs; a hidden name at a store's root is not one (review: rm .bashrc).
    from optuna_cas import FileSystemArtifactStore
    from optuna_cas._listing import list_store_artifacts
    from optuna_cas.exceptions import ArtifactNotFound

    store = FileSystemArtifactStore(tmp_path / "store")
    (tmp_path / "store" / ".bashrc").write_text("keep me")
    (tmp_path / "store" / "Thumbs.db").write_bytes(b"thumbs")
    for name in (".bashrc", "Thumbs.db"):
        with pytest.raises(ArtifactNotFound):
            store.remove(name)
    assert [row.artifact_id for row in list_store_artifacts(store.content)] == []
    assert (tmp_path / "store" / ".bashrc").read_text() == "keep me"


def test_a_plain_path_with_a_percent_sign_is_that_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    # open_store unquoted plain paths: "runs%20v2" made "runs v2", and the CLI's check looked
    # at one directory while the store opened another (review).
    from optuna_cas import open_store

    open_store(str(tmp_path / "runs%20v2"))
    assert (tmp_path / "runs%20v2").is_dir() and not (tmp_path / "runs v2").exists()
    (tmp_path / "pro%6a").mkdir()
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text("code")
    assert main(["--store", str(tmp_path / "pro%6a"), "rm", "train.py"]) == 1  # no artifact
    assert (tmp_path / "proj" / "train.py").exists()
    assert main(["--store", "file://" + str(tmp_path / "pro%256a"), "ls"]) == 0  # %25 is '%'


def test_a_store_with_a_readme_or_an_old_non_uuid_file_is_still_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file: Callable[..., Path]
) -> None:
    # A store with one of our folders may hold anything else beside it (third review: a
    # README, or a file an Optuna store.write wrote under a named ID, got a store refused).
    store = tmp_path / "store"
    assert main(["--store", str(store), "-q", "put", str(make_file(b"x" * 5000))]) == 0
    artifact_id = capsys.readouterr().out.strip()
    (store / "README.md").write_text("checkpoints of project X")
    (store / "best-model").write_bytes(b"written by Optuna's store.write")
    assert main(["--store", str(store), "ls"]) == 0
    assert artifact_id in capsys.readouterr().out
    assert main(["--store", str(store), "rm", "README.md"]) == 1  # not a UUID: no artifact
    assert "nothing was removed" in capsys.readouterr().err
    assert (store / "README.md").exists()


def test_a_file_url_with_a_tilde_is_checked_where_it_is_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # file:~/proj was checked as ./~/proj (absent: passed) and opened as $HOME/proj (review).
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text("code")
    assert main(["--store", "file:~/proj", "ls"]) == 2
    assert "'train.py'" in capsys.readouterr().err
