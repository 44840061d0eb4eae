"""Worker pools: ``fork``, ``forkserver`` and ``spawn`` uploaders after the parent has hashed.

The first release hung forever in a forked child's first large hash: BLAKE3's global thread
pool comes across a fork without its threads. Fork is multiprocessing's default on Linux with
Python 3.11, and joblib and pre-fork servers fork too. The parent here hashes a large file and
talks to S3 and GCS first, so a forked worker inherits the hash pool and warm connection pools.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import Digest
from tests.reliability import _pools
from tests.reliability._common import record, scale

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

TASKS = scale(4, 24)


@pytest.mark.s3
@pytest.mark.gcs
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_pool_workers_upload_after_the_parent_hashed(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    gcs_endpoint = request.getfixturevalue("gcs_server").endpoint_url
    spec = {
        "root": str(tmp_path / "store"),
        "bucket": bucket,
        "endpoint": server.endpoint_url,
        "gcs_bucket": request.getfixturevalue("gcs_bucket").name,
        "gcs_endpoint": gcs_endpoint,
    }
    # For the GCS store that builds its own client (here, in forked and in spawned children).
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    _pools.STORES.clear()
    _pools.STORES.update(_pools.build(spec))
    warm = tmp_path / "warm.bin"
    warm.write_bytes(_pools.payload(-1, 24 * _pools.MiB))
    for store in _pools.STORES.values():  # multi-threaded hash + S3/GCS connections in the parent
        store.put(f"parent-{method}", warm)
    work = tmp_path / "work"
    work.mkdir()
    context = multiprocessing.get_context(method)
    results: list[Any]
    try:
        with context.Pool(2) as pool:
            pending = pool.map_async(
                _pools.upload_task, [(spec, task, str(work)) for task in range(TASKS)]
            )
            results = pending.get(timeout=scale(180, 900))  # a hung child times out here
    finally:
        _pools.STORES.clear()
    uploads = [item for batch in results for item in batch]
    fresh = _pools.build(spec)
    mismatched = []
    for kind, artifact_id, digest in uploads:
        with fresh[kind].open_reader(artifact_id) as reader:
            if str(Digest.of_bytes(reader.read())) != digest:
                mismatched.append(artifact_id)
    by_store = Counter(kind for kind, _, _ in uploads)
    record(
        f"worker_pools_{method}",
        {
            "tasks": TASKS,
            "uploads": len(uploads),
            "uploads_by_store": dict(sorted(by_store.items())),
            "mismatched": len(mismatched),
        },
    )
    assert by_store == dict.fromkeys(fresh, TASKS * len(_pools.SIZES))
    assert mismatched == []
