"""How the CLI's requests to a bucket are tried: ``--retries`` attempts, each bounded in time.

Against servers on 127.0.0.1 that say 503 to everything or never answer at all
(tests/support/unanswering.py), for s3:// and gs:// alike.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optuna_cas.cli import build_parser, main
from optuna_cas.middleware.retry import RetryPolicy
from tests.support.unanswering import Answering503, SilentServer


def _environment(endpoint: str, tmp_path: Path) -> dict[str, str]:
    """Dummy credentials, the endpoint for both schemes, and no AWS settings of this machine."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "OPTUNA_CAS_ENDPOINT_URL": endpoint,
        "STORAGE_EMULATOR_HOST": endpoint,
    }


def _attempts(paths: list[str]) -> list[str]:
    """The requests a command made, without google-cloud-storage's background bucket lookup.

    google-cloud-storage 3 looks a bucket up once per process on a thread of its own, for
    telemetry (``_bucket_metadata_cache``, its own 10 s timeout): not an attempt of ours.
    """
    return [path for path in paths if not re.match(r"GET /storage/v1/b/[^/?]+\?", path)]


@pytest.mark.parametrize("scheme", ["s3", "gs"])
@pytest.mark.parametrize("retries", [1, 3])
def test_retries_is_the_number_of_attempts(tmp_path: Path, scheme: str, retries: int) -> None:
    # The SDKs retried inside each attempt, unseen: "--retries 1" still sent up to 5 requests
    # to S3, and kept a GCS request going for two minutes. A subprocess, so that the old
    # behaviour fails this test in its timeout rather than hanging the suite.
    with Answering503("s3" if scheme == "s3" else "gcs") as server:
        env = {**os.environ, **_environment(server.endpoint_url, tmp_path)}
        argv = ["--store", f"{scheme}://b/x", "--retries", str(retries), "ls"]
        result = subprocess.run(
            [sys.executable, "-m", "optuna_cas", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert result.returncode == 1, result.stderr
        assert len(_attempts(server.paths)) == retries, server.paths
    warnings = [line for line in result.stderr.splitlines() if "failed on attempt" in line]
    assert len(warnings) == retries - 1
    assert result.stderr.splitlines()[-1].endswith("restarting")  # the server's 503 message


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_server_that_never_answers_fails_each_attempt_in_bounded_time(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    scheme: str,
) -> None:
    # The CLI's timeouts, shortened; at their real values (10 s, 60 s) an attempt at a server
    # that accepts and never answers ends in 60 s, where it took 3 minutes (S3) or 2 (GCS).
    monkeypatch.setattr("optuna_cas.cli._common.REQUEST_TIMEOUT", (0.5, 0.3))
    with SilentServer() as server:
        for name, value in _environment(server.endpoint_url, tmp_path).items():
            monkeypatch.setenv(name, value)
        started = time.monotonic()
        assert main(["--store", f"{scheme}://b/x", "--retries", "2", "ls"]) == 1
        elapsed = time.monotonic() - started
        if scheme == "s3":  # on GCS the SDK's bucket lookup (see _attempts) connects too
            assert server.connections == 2
    assert elapsed < 5
    # One warning per failed attempt that is retried, then the error: nothing silent.
    warnings = [r.getMessage() for r in caplog.records if r.name == "optuna_cas.retry"]
    assert len(warnings) == 1 and "failed on attempt 1 of 2" in warnings[0]
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"optuna-cas: error: {scheme}://b/x: connection problem")


def test_the_default_retries_ride_out_a_restart_of_seconds() -> None:
    # 5 attempts waited 0.8-1.5 s in all: a 3 s restart of the service failed a put, a get
    # and a gc midway (the gc after deleting 65 of 400 blobs).
    from optuna_cas.cli._common import DEFAULT_RETRIES

    assert build_parser().parse_args(["ls"]).retries == DEFAULT_RETRIES
    policy = RetryPolicy(max_retries=DEFAULT_RETRIES, jitter=False)
    schedule = [policy.delay(n) for n in range(DEFAULT_RETRIES - 1)]
    shortest, longest = sum(schedule) / 2, sum(schedule)  # jitter draws from the upper half
    assert shortest >= 25
    # What --help says is what Backoff does.
    assert f"add up to {int(shortest)}-{round(longest)} s" in " ".join(
        build_parser().format_help().split()
    )
