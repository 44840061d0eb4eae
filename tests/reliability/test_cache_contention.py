"""Scenario 5: four processes read overlapping artifacts through one small shared cache.

The artifacts (about four times the cache's size limit, plus one blob larger than the limit,
which must stream past the cache) live in S3; each process reads a Zipf-like mix of them,
alternately with ``open_reader`` and ``download_artifact``, so the cache fills, hits and
evicts concurrently. Every read must be byte-exact and the cache must end within its limit.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import DiskBlobCache
from tests.reliability._common import (
    MiB,
    boto3_store,
    payload_bytes,
    payload_name,
    record,
    scale,
)
from tests.reliability._workers import cache_reader

pytestmark = [pytest.mark.reliability, pytest.mark.s3]

PROCESSES = 4
READS = scale(80, 1500)  # per process
SIZE_LIMIT = 3 * MiB
SIZES = [96 * 1024, 192 * 1024, 384 * 1024, 768 * 1024]
ARTIFACTS = 16  # ~5.8 MiB in all: about twice the limit
TOO_BIG = 4 * MiB  # larger than the whole cache: streamed, never cached


def _directory_bytes(directory: Path) -> dict[str, int]:
    values = database = other = 0
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            size = os.stat(os.path.join(dirpath, name)).st_size
            if name.endswith(".val"):
                values += size
            elif name.startswith("cache.db"):
                database += size
            else:
                other += size
    return {"value_files": values, "database_files": database, "other": other}


@pytest.mark.timeout(scale(240, 1200))
def test_processes_sharing_a_small_cache_read_exact_bytes(
    s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    store = boto3_store(s3_bucket, s3_server.endpoint_url, prefix="cache", sdk_retries=True)
    names = [payload_name("shared", SIZES[i % len(SIZES)], i) for i in range(ARTIFACTS)]
    names.append(payload_name("huge", TOO_BIG, 0))
    artifacts = []
    for n, name in enumerate(names):
        artifact_id = f"artifact-{n}"
        store.put(artifact_id, _bytes_io(payload_bytes(name)), filename=name)
        artifacts.append([artifact_id, name])

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.reliability._preload"])
    start = ctx.Event()
    cache_dir = tmp_path / "shared-cache"
    cfgs = []
    processes = []
    for w in range(PROCESSES):
        out = tmp_path / f"out-{w}"
        out.mkdir()
        cfg = {
            "worker": w,
            "bucket": s3_bucket,
            "endpoint": s3_server.endpoint_url,
            "prefix": "cache",
            "cache_dir": str(cache_dir),
            "size_limit": SIZE_LIMIT,
            "reads": READS,
            "artifacts": artifacts,
            "out": str(out),
            "result": str(tmp_path / f"reader-{w}.json"),
        }
        cfgs.append(cfg)
        processes.append(ctx.Process(target=cache_reader, args=(cfg, start)))
    for process in processes:
        process.start()
    began = time.monotonic()
    start.set()  # all at once: maximal contention on the first fills
    for process in processes:
        process.join(scale(180, 1000))
    elapsed = time.monotonic() - began
    results = [json.loads(Path(cfg["result"]).read_text()) for cfg in cfgs]
    for result in results:
        assert "error" not in result, result["error"]
    assert [p.exitcode for p in processes] == [0] * PROCESSES

    with DiskBlobCache(cache_dir, size_limit=SIZE_LIMIT) as cache:
        info = cache.info()
    on_disk = _directory_bytes(cache_dir)
    temps = os.listdir(cache_dir / "tmp")
    max_seen = max(r["max_volume_seen"] for r in results)
    totals = {
        key: sum(int(r.get(key, 0)) for r in results)
        for key in ("reads", "open_reader", "download_artifact", "bytes_read", "mismatches")
    }
    record(
        "cache_contention",
        {
            "command": "pytest -m reliability tests/reliability/test_cache_contention.py",
            "processes": PROCESSES,
            "reads_per_process": READS,
            "artifacts": len(artifacts),
            "artifact_bytes": sum(len(payload_bytes(n)) for n in names),
            "size_limit": SIZE_LIMIT,
            "wall_time_s": round(elapsed, 1),
            "totals": totals,
            "cache_after": {
                "entries": info.entries,
                "size_bytes": info.size_bytes,
                "hits": info.hits,
                "misses": info.misses,
                "on_disk": on_disk,
                "temp_files_left": len(temps),
            },
            "max_volume_seen_by_a_reader": max_seen,
            "outcome": "every read byte-exact; cache within its limit after the run",
        },
    )
    assert totals["mismatches"] == 0
    assert totals["reads"] == PROCESSES * READS
    assert info.size_bytes <= SIZE_LIMIT
    assert on_disk["value_files"] <= SIZE_LIMIT
    assert temps == []
    assert info.hits > 0 and info.misses > 0
    # While readers add concurrently each may be one blob over before it evicts.
    assert max_seen <= SIZE_LIMIT + PROCESSES * max(SIZES)


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)
