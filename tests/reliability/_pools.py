"""Workers of the worker-pool scenario (importable by spawned and forkserver children).

Under ``fork`` a worker uses the store objects its parent built (module globals inherited with
the process image): the case where BLAKE3's thread pool and the SDK's connection pool come
along without their threads or with the parent's sockets. Under ``spawn`` and ``forkserver``
the globals are empty and the worker builds its stores from their description.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
SIZES = (40 * 1024, 2 * MiB, 10 * MiB)  # the last one takes the multi-threaded hash

STORES: dict[str, Any] = {}


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """The three stores; the GCS one needs ``STORAGE_EMULATOR_HOST`` set (see upload_task)."""
    from optuna_cas import Boto3ArtifactStore, FileSystemArtifactStore, GCSArtifactStore

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return {
        "local": FileSystemArtifactStore(spec["root"]),
        # No client passed: the store builds (and after a fork rebuilds) its own.
        "s3": Boto3ArtifactStore(
            spec["bucket"], prefix="pools", endpoint_url=spec["endpoint"], part_size=5 * MiB
        ),
        # No client either: google-cloud-storage finds the emulator (anonymously) through
        # STORAGE_EMULATOR_HOST, the way Optuna users point theirs at one.
        "gcs": GCSArtifactStore(spec["gcs_bucket"], prefix="pools", chunk_size=4 * MiB),
    }


def payload(worker_task: int, size: int) -> bytes:
    import blake3

    return bytes(blake3.blake3(f"pool-{worker_task}-{size}".encode()).digest(length=size))


def upload_task(args: tuple[dict[str, Any], int, str]) -> list[tuple[str, str, str]]:
    """Write this task's files and upload each to every store; returns (store, id, digest)."""
    spec, task, directory = args
    if not STORES:
        # A spawned child inherits the parent's environment, but a forkserver child gets the
        # server's, which may predate the variable (the server outlives a test).
        os.environ.setdefault("STORAGE_EMULATOR_HOST", spec["gcs_endpoint"])
    stores = STORES or build(spec)
    done = []
    for size in SIZES:
        path = Path(directory) / f"task-{task}-{size}.bin"
        path.write_bytes(payload(task, size))
        for kind, store in stores.items():
            artifact_id = f"{kind}-{task}-{size}-{os.getpid()}"
            ref = store.put(artifact_id, path)
            done.append((kind, artifact_id, str(ref.digest)))
    return done
