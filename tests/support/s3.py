"""pytest fixtures for a real S3 API: ``moto_server`` in a subprocess on a free port.

Register with ``pytest_plugins = ["tests.support.s3"]``. One server per test session (per xdist
worker); every test gets a fresh bucket, emptied and deleted afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from optuna_cas.backends.s3 import S3Backend

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Small enough that a 20 MiB blob takes the multipart path with several parts; 5 MiB is the
# smallest part S3 (and moto) accept.
TEST_PART_SIZE = 5 * 1024 * 1024

_READY_TIMEOUT_S = 30.0
_RUNNING_ON = re.compile(rb"Running on (http://127\.0\.0\.1:(\d+))")
_session: Any = None


@dataclass(frozen=True)
class S3Server:
    """A running ``moto_server``: where to reach it and its log file."""

    endpoint_url: str
    host: str
    port: int
    log_path: Path


def make_s3_client(endpoint_url: str, *, retries: bool = True) -> S3Client:
    """A boto3 S3 client for ``endpoint_url`` with dummy credentials.

    ``retries=False`` turns botocore's own retries off (``total_max_attempts: 1``; note that
    ``max_attempts: 1`` would still retry once) so tests see every fault themselves.
    """
    global _session
    import boto3
    from botocore.config import Config

    # One session for the whole run: building one reloads the service model (~50 ms).
    if _session is None:
        _session = boto3.session.Session()
    config = Config(retries={"total_max_attempts": 1}) if not retries else Config()
    client: S3Client = _session.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=config,
    )
    return client


def _wait_until_listening(proc: subprocess.Popen[bytes], log_path: Path) -> tuple[str, int]:
    # moto_server -p0 lets the OS pick the port (no race with another process grabbing a
    # port we probed) and werkzeug prints the real one once the socket is listening.
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        match = _RUNNING_ON.search(log_path.read_bytes())
        if match:
            return match.group(1).decode(), int(match.group(2))
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    log = log_path.read_text(errors="replace")
    raise RuntimeError(f"moto_server did not start (exit code {proc.returncode}):\n{log}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A ``moto_server`` process on 127.0.0.1, started once per session."""
    # find_spec, not importorskip: importing moto.server here would load Flask for nothing.
    if importlib.util.find_spec("moto") is None:
        pytest.skip("needs moto[server] (the 'dev' extra)")
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with running_moto_server(log_path) as server:
        yield server


@contextmanager
def running_moto_server(log_path: Path) -> Iterator[S3Server]:
    """A ``moto_server`` on 127.0.0.1 and a free port, for as long as the block runs.

    No pytest needed: the benchmarks start their server with this too.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The log goes to a file, not a pipe: nobody drains a pipe during the tests, and a full
    # pipe would block the server on its next access-log line.
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        endpoint_url, port = _wait_until_listening(proc, log_path)
        yield S3Server(endpoint_url=endpoint_url, host="127.0.0.1", port=port, log_path=log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_client(s3_server: S3Server) -> S3Client:
    """A boto3 client on the test server, with botocore's default retries."""
    return make_s3_client(s3_server.endpoint_url)


def _empty_and_delete_bucket(client: S3Client, bucket: str) -> None:
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        contents = page.get("Contents", [])
        if contents:
            client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": c["Key"]} for c in contents]}
            )
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_bucket(s3_client: S3Client) -> Iterator[str]:
    """A fresh, empty bucket; emptied and deleted afterwards so moto's memory stays flat."""
    bucket = f"test-{uuid.uuid4().hex[:24]}"
    s3_client.create_bucket(Bucket=bucket)
    yield bucket
    _empty_and_delete_bucket(s3_client, bucket)


@pytest.fixture
def s3_backend(s3_client: S3Client, s3_bucket: str) -> S3Backend:
    """An ``S3Backend`` on a fresh bucket, with 5 MiB parts so multipart is cheap to reach."""
    return S3Backend(
        s3_bucket,
        client=s3_client,
        part_size=TEST_PART_SIZE,
        multipart_threshold=TEST_PART_SIZE,
    )
