"""What a command that fails midway, is stopped, or cannot print leaves a script to go on.

An artifact stored before the failure is named where a script looks (stdout's JSON document,
else stderr), a stop by ``SIGTERM`` cleans up as Ctrl-C does, and the exit code says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from optuna_cas.cli import main
from optuna_cas.testing.faults import FaultProxy
from tests.conftest import random_bytes


def _stored_ids(store: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["--store", str(store), "--json", "ls"]) == 0
    return [row["artifact_id"] for row in json.loads(capsys.readouterr().out)["artifacts"]]


@pytest.mark.parametrize("quiet", [[], ["-q"]], ids=["", "quiet"])
def test_a_put_that_fails_midway_names_what_it_stored(
    tmp_path: Path,
    make_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    quiet: list[str],
) -> None:
    # Found by a probe: with --json the failure document had no rows, and the first file's ID
    # was only in a stderr line (which -q left out): a script could not find what was stored.
    first = make_file(b"first file", name="first.bin")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # refused by the upload itself, after the first file is stored
    store = tmp_path / "store"
    assert main(["--store", str(store), *quiet, "--json", "put", str(first), str(fifo)]) == 1
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["ok"] is False and document["error"]["kind"] == "error"
    assert "FIFO" in document["error"]["message"]
    [row] = document["artifacts"]  # the same row a success prints
    assert row["filename"] == "first.bin" and row["path"] == str(first)
    assert row["already_stored"] is False and row["size"] == len(b"first file")
    assert _stored_ids(store, capsys) == [row["artifact_id"]]
    assert f"stored before the error: first.bin as {row['artifact_id']}" in err

    assert main(["--store", str(store), *quiet, "put", str(first), str(fifo)]) == 1
    out, err = capsys.readouterr()
    new_id = (set(_stored_ids(store, capsys)) - {row["artifact_id"]}).pop()
    assert f"optuna-cas: stored before the error: first.bin as {new_id}\n" in err
    assert err.rstrip().splitlines()[-1].startswith("optuna-cas: error: Cannot upload")


def test_a_put_that_fails_before_storing_anything_lists_no_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["--store", str(tmp_path / "store"), "--json", "put", str(fifo)]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["artifacts"] == []
    assert "stored before" not in err


def _cli_with_stdout(
    redirect: str, *args: str, buffered: bool = True
) -> subprocess.CompletedProcess[str]:
    """The CLI in a shell, its stdout redirected (``>&-``: closed, ``>/dev/full``: failing).

    ``buffered``: as for most users, where a failing stdout fails at a flush; unbuffered
    (``PYTHONUNBUFFERED``, set in some CI and container images) it fails at the first write.
    """
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "optuna_cas", *args))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        ["bash", "-c", f"{command} {redirect}"], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("redirect", "buffered"),
    [(">&-", True), (">/dev/full", True), (">/dev/full", False)],
    ids=["closed", "full", "full-unbuffered"],
)
@pytest.mark.parametrize("mode", [["--json"], [], ["-q"]], ids=["json", "text", "quiet"])
def test_a_put_whose_stdout_fails_names_what_it_stored_and_fails(
    tmp_path: Path,
    make_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    redirect: str,
    buffered: bool,
    mode: list[str],
) -> None:
    # Found by a probe: `put --json >&-` exited 0 with the ID printed nowhere; with stdout on
    # a full disk it exited 1 without saying the upload had succeeded.
    store = tmp_path / "store"
    source = make_file(b"weights", name="w.pt")
    argv = ["--store", str(store), *mode, "put", str(source)]
    result = _cli_with_stdout(redirect, *argv, buffered=buffered)
    assert result.returncode == 1, result.stderr
    [artifact_id] = _stored_ids(store, capsys)
    lines = result.stderr.splitlines()
    assert lines[0] == f"optuna-cas: stored before the error: w.pt as {artifact_id}", lines
    reason = "Bad file descriptor" if redirect == ">&-" else "No space left on device"
    assert lines[1].startswith("optuna-cas: error: [Errno ") and reason in lines[1], lines
    assert len(lines) == 2  # nothing after the error: no "Exception ignored" at exit


# -- stopped by a signal: SIGTERM (timeout, Kubernetes, Slurm) as Ctrl-C ---------------------

SIGNALS = [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]


@contextlib.contextmanager
def _throttled_s3(server: Any, bucket: str) -> Iterator[tuple[FaultProxy, dict[str, str]]]:
    """A bandwidth-capped proxy in front of moto, and the environment that sends the CLI there.

    Transfers take seconds: long enough to send a signal in the middle of one.
    """
    parts = urlsplit(server.endpoint_url)
    assert parts.hostname and parts.port
    proxy = FaultProxy(
        parts.hostname, parts.port, bandwidth_bytes_per_s=4 * 1024 * 1024, keep_client_alive=True
    )
    with proxy:
        yield (
            proxy,
            {
                **os.environ,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "OPTUNA_CAS_ENDPOINT_URL": proxy.endpoint_url,
                "OPTUNA_CAS_STORE": f"s3://{bucket}/cli",
            },
        )


def _stop_midway(
    argv: list[str], env: dict[str, str], proxy: FaultProxy, signum: int, *, moved: str
) -> tuple[int, str, str]:
    """Run the CLI, send ``signum`` once 256 KiB have crossed the proxy (``moved``: which way)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "optuna_cas", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(getattr(r, moved) > 256 * 1024 for r in proxy.requests):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no transfer started"
        time.sleep(0.01)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


@pytest.mark.parametrize(("signum", "status", "kind"), SIGNALS, ids=["TERM", "INT"])
def test_a_download_stopped_by_a_signal_cleans_up_and_says_so(
    s3_server: Any, s3_bucket: str, tmp_path: Path, signum: int, status: int, kind: str
) -> None:
    # Found by a probe: `kill -TERM` during `get --json` exited 143 with no JSON document and
    # left the `.<name>.<random>.partial` temp file beside the target for good.
    source = tmp_path / "model.pt"
    source.write_bytes(random_bytes(6 * 1024 * 1024))
    with _throttled_s3(s3_server, s3_bucket) as (proxy, env):
        stored = subprocess.run(
            [sys.executable, "-m", "optuna_cas", "-q", "put", str(source)],
            env={**env, "OPTUNA_CAS_ENDPOINT_URL": s3_server.endpoint_url},  # no throttle
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stored.returncode == 0, stored.stderr
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        argv = ["--json", "--no-cache", "get", stored.stdout.strip(), str(downloads / "m.pt")]
        rc, out, err = _stop_midway(argv, env, proxy, signum, moved="response_bytes")
    assert rc == status, err
    assert err.splitlines()[-1] == f"optuna-cas: {kind}", err
    document = json.loads(out)
    assert document["ok"] is False and document["error"]["kind"] == kind
    assert list(downloads.iterdir()) == []  # neither the file nor its temp file


@pytest.mark.parametrize(("signum", "status", "kind"), SIGNALS, ids=["TERM", "INT"])
def test_a_put_stopped_by_a_signal_lists_the_files_it_stored(
    s3_server: Any,
    s3_bucket: str,
    make_file: Callable[..., Path],
    signum: int,
    status: int,
    kind: str,
) -> None:
    small = make_file(b"config", name="config.json")
    big = make_file(random_bytes(6 * 1024 * 1024), name="model.pt")
    with _throttled_s3(s3_server, s3_bucket) as (proxy, env):
        argv = ["--json", "put", str(small), str(big)]
        rc, out, err = _stop_midway(argv, env, proxy, signum, moved="request_bytes")
    assert rc == status, err
    document = json.loads(out)
    assert document["error"]["kind"] == kind
    [row] = document["artifacts"]
    assert row["filename"] == "config.json"
    assert f"stored before the error: config.json as {row['artifact_id']}" in err


def test_sigterm_during_cleanup_is_ignored_and_a_forked_child_dies_of_it() -> None:
    """Review: a second SIGTERM cut the first one's cleanup short, and a child forked while a
    command ran inherited the handler (it raised Terminated instead of dying, which breaks
    multiprocessing's terminate())."""
    from optuna_cas.cli._process import Terminated, sigterm_interrupts

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler here: the CLI leaves it alone")
    with sigterm_interrupts():
        pid = os.fork()
        if pid == 0:  # the child: SIGTERM must kill it at once, never run pytest on
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                os._exit(3)  # reached only if the signal did not kill
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Terminated:
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # the same stop again: ignored
            except Terminated:
                pytest.fail("a duplicate SIGTERM interrupted the cleanup")
        else:
            pytest.fail("SIGTERM did not raise Terminated")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_sigterm_after_the_first_stops_the_cleanup_at_once(tmp_path: Path) -> None:
    """An operator's second SIGTERM (after the same stop's duplicates) kills, as the default
    does: ignored, it left only SIGKILL while a cleanup waited on retried upload parts."""
    script = (
        "import os, signal, time\n"
        "from optuna_cas.cli._process import Terminated, sigterm_interrupts\n"
        "with sigterm_interrupts():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    except Terminated:\n"
        "        time.sleep(2.5)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(5)\n"
        "raise SystemExit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert done.returncode == -signal.SIGTERM


def _stats_then(tmp_path: Path, run: str) -> str:
    """A program with ``sys.argv`` set to ``stats --json`` of a small store, then ``run``."""
    from optuna_cas import FileSystemArtifactStore

    FileSystemArtifactStore(tmp_path / "store").write("a", io.BytesIO(b"x"))
    return (
        "import os, signal, sys, time\n"
        "from optuna_cas.cli import console_main, main\n"
        f"sys.argv = ['optuna-cas', '--store', {str(tmp_path / 'store')!r}, 'stats', '--json']\n"
        + run
    )


def test_a_ctrl_c_after_the_result_is_out_changes_nothing(tmp_path: Path) -> None:
    """The document said ``"ok": true`` and a Ctrl-C during the exit (threads joined, clients
    closed) made the status 130 or printed a traceback (found by a probe, by hand)."""
    program = _stats_then(
        tmp_path,
        "code = console_main()  # what the optuna-cas program runs\n"
        "os.kill(os.getpid(), signal.SIGINT)  # what a Ctrl-C right after the output sends\n"
        "time.sleep(0.2)\n"
        "sys.exit(code)\n",
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["ok"] is True


def test_main_called_by_an_application_leaves_its_ctrl_c_alone(tmp_path: Path) -> None:
    # Ignoring Ctrl-C once the result is out is the program's choice: main() called in an
    # application (with or without argv) left SIGINT ignored for good (review of e73f8b4).
    program = _stats_then(
        tmp_path,
        "main()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(42)\n",
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=120)
    assert done.returncode == 42


def test_a_ctrl_c_once_the_document_is_printed_adds_no_second_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Printed inside the command: a Ctrl-C between that and the command's return printed
    # '{"ok": true ...}{"ok": false ...}' (not JSON) and exited 130 (review of e73f8b4).
    from optuna_cas import FileSystemArtifactStore
    from optuna_cas.cli import _files

    FileSystemArtifactStore(tmp_path / "store").write("a", io.BytesIO(b"x"))
    printed = _files._emit_json

    def printed_then_interrupted(document: dict[str, Any]) -> None:
        printed(document)
        raise KeyboardInterrupt

    monkeypatch.setattr(_files, "_emit_json", printed_then_interrupted)
    code = main(["--store", str(tmp_path / "store"), "--quiet", "ls", "--json"])
    out = capsys.readouterr()
    assert (code, out.err) == (0, "")
    assert json.loads(out.out)["ok"] is True
