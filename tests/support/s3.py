"""pytest fixtures for a real S3 API: ``moto_server`` in a subprocess on a free port.

Register with ``pytest_plugins = ["tests.support.s3"]``. One server per test session (per xdist
worker); every test gets a fresh bucket, emptied and deleted afterwards. Starting the server
and building clients is optuna_cas.testing.servers' (the benchmarks use it too).
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from optuna_cas.backends.s3 import S3Backend
from optuna_cas.testing.servers import (
    S3Server,
    make_s3_client,
    running_moto_server,
)
from optuna_cas.testing.servers import (
    empty_and_delete_s3_bucket as _empty_and_delete_bucket,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "TEST_PART_SIZE",
    "S3Server",
    "_empty_and_delete_bucket",
    "make_s3_client",
    "running_moto_server",
]

# Small enough that a 20 MiB blob takes the multipart path with several parts; 5 MiB is the
# smallest part S3 (and moto) accept.
TEST_PART_SIZE = 5 * 1024 * 1024


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A ``moto_server`` process on 127.0.0.1, started once per session."""
    # find_spec, not importorskip: importing moto.server here would load Flask for nothing.
    if importlib.util.find_spec("moto") is None:
        pytest.skip("needs moto[server] (the 'dev' extra)")
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with running_moto_server(log_path) as server:
        yield server


@pytest.fixture
def s3_client(s3_server: S3Server) -> S3Client:
    """A boto3 client on the test server, with botocore's default retries."""
    return make_s3_client(s3_server.endpoint_url)


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
