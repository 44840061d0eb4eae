"""A ``moto_server`` subprocess on 127.0.0.1, started by optuna_cas.testing.servers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from optuna_cas.testing.servers import running_moto_server


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
    """Start ``moto_server`` on a free port (as the tests do); yield its endpoint URL."""
    with running_moto_server() as server:
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
