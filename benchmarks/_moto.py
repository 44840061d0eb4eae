"""A ``moto_server`` subprocess on 127.0.0.1 (like ``tests/support/s3.py``, without pytest)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    """Start ``moto_server`` on a free port (``-p0``); yield its endpoint URL."""
    with tempfile.TemporaryDirectory(prefix="bench-moto-") as tmp:
        log_path = Path(tmp) / "moto.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Log to a file, not a pipe: nobody drains a pipe while benchmarks run.
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                match = _RUNNING_ON.search(log_path.read_bytes())
                if match:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start:\n{log_path.read_text()}")
                time.sleep(0.02)
            yield match.group(1).decode()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
