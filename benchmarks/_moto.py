"""A ``moto_server`` subprocess on 127.0.0.1, started by the tests' own helper."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.s3 import running_moto_server

_RUNNING_ON = re.compile(rb"Running on (http://127\.0\.0\.1:\d+)")


def make_client(endpoint_url: str) -> Any:
    """A boto3 S3 client with dummy credentials and botocore's defaults otherwise."""
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@contextmanager
def moto_server() -> Iterator[str]:
    """Start ``moto_server`` on a free port (the tests' own helper); yield its endpoint URL."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-moto-") as tmp,
        running_moto_server(Path(tmp) / "moto.log") as server,
    ):
        yield server.endpoint_url


def delete_prefix(client: Any, bucket: str, prefix: str) -> None:
    """Delete every object under ``prefix`` so moto's memory stays flat."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        contents = page.get("Contents", [])
        if contents:
            client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": c["Key"]} for c in contents]}
            )


def count_objects(client: Any, bucket: str, prefix: str) -> tuple[int, int]:
    """Number and total size of the objects under ``prefix``."""
    count = total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for c in page.get("Contents", []):
            count += 1
            total += int(c["Size"])
    return count, total
