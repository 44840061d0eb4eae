"""What a command that fails midway, is stopped, or cannot print leaves a script to go on.

An artifact stored before the failure is named where a script looks (stdout's JSON document,
else stderr), a stop by ``SIGTERM`` cleans up as Ctrl-C does, and the exit code says so.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from optuna_cas.cli import main


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


def _cli_with_stdout(redirect: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a shell, its stdout redirected (``>&-``: closed, ``>/dev/full``: failing)."""
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "optuna_cas", *args))
    return subprocess.run(
        ["bash", "-c", f"{command} {redirect}"], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"], ids=["closed", "full"])
@pytest.mark.parametrize("mode", [["--json"], [], ["-q"]], ids=["json", "text", "quiet"])
def test_a_put_whose_stdout_fails_names_what_it_stored_and_fails(
    tmp_path: Path,
    make_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    redirect: str,
    mode: list[str],
) -> None:
    # Found by a probe: `put --json >&-` exited 0 with the ID printed nowhere; with stdout on
    # a full disk it exited 1 without saying the upload had succeeded.
    store = tmp_path / "store"
    source = make_file(b"weights", name="w.pt")
    result = _cli_with_stdout(redirect, "--store", str(store), *mode, "put", str(source))
    assert result.returncode == 1, result.stderr
    [artifact_id] = _stored_ids(store, capsys)
    lines = result.stderr.splitlines()
    assert lines[0] == f"optuna-cas: stored before the error: w.pt as {artifact_id}", lines
    reason = "Bad file descriptor" if redirect == ">&-" else "No space left on device"
    assert lines[1].startswith("optuna-cas: error: [Errno ") and reason in lines[1], lines
    assert len(lines) == 2
