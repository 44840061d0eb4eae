"""Processes reading chunked files through one shared cache that cannot hold all their packs.

Each file's chunks lie in several packs, so every download that misses starts a prefetch
thread, keeps the file's manifest in the cache and copies the file out of cached packs, while
the other processes fill, hit and evict the same packs and manifests. Every download must be
byte-exact without a warning (no copy found wrong and retried), leave nothing beside its
target, and the cache must end within its limit.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import random
from pathlib import Path

import pytest

from tests.reliability._common import MiB, record, scale

pytestmark = [pytest.mark.reliability]

THRESHOLD = 256 * 1024
PART = 1 * MiB + 7  # one pack per part upload (packs are sealed at the end of an upload)
PARTS = 4
FILES = 3
PROCESSES = 3
DOWNLOADS = scale(12, 120)  # per process
SIZE_LIMIT = 6 * MiB  # the packs of all files: ~12 MiB


def _reader(root: str, worker: int, files: list[tuple[str, str]], result: str) -> None:
    from optuna_cas import CachedArtifactStore, FileSystemArtifactStore, download_artifact

    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    # Nobody tampers here: a warning (a copy that did not hash right, a cache that failed)
    # would mean a race between the processes, silently covered by a fallback.
    logging.getLogger("optuna_cas").addHandler(Collect(logging.WARNING))
    rng = random.Random(worker)
    out = Path(root) / f"out-{worker}"
    out.mkdir()
    store = CachedArtifactStore(
        FileSystemArtifactStore(Path(root) / "store", chunk_threshold=THRESHOLD),
        directory=Path(root) / "cache",
        size_limit=SIZE_LIMIT,
    )
    failures = []
    for n in range(DOWNLOADS):
        artifact_id, expected = rng.choice(files)
        target = out / f"{n}.bin"
        try:
            download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact_id)
            got = hashlib.sha256(target.read_bytes()).hexdigest()
            if got != expected:
                failures.append(f"{artifact_id}: wrong bytes")
            target.unlink()
        except Exception as e:  # every failure is reported, none may happen
            failures.append(f"{artifact_id}: {type(e).__name__}: {e}")
        if leftovers := os.listdir(out):
            failures.append(f"left {leftovers} beside the target")
            break
    store.close()
    failures += [f"warning: {text}" for text in warnings]
    Path(result).write_text("\n".join(failures))


@pytest.mark.timeout(scale(240, 1200))
def test_chunked_files_through_a_shared_small_cache_are_byte_exact(tmp_path: Path) -> None:
    from optuna_cas import DiskBlobCache, FileSystemArtifactStore

    writer = FileSystemArtifactStore(tmp_path / "store", chunk_threshold=THRESHOLD)
    files = []
    for f in range(FILES):
        parts = [random.Random(f * 100 + p).randbytes(PART) for p in range(PARTS)]
        for p, part in enumerate(parts):
            writer.put(f"part-{f}-{p}", io.BytesIO(part))
        data = b"".join(parts)
        ref = writer.put(f"file-{f}", io.BytesIO(data))
        packs = writer.content.chunks.manifest(ref.digest).packs
        assert len(packs) >= PARTS  # a multi-pack file: the prefetch path runs
        files.append((f"file-{f}", hashlib.sha256(data).hexdigest()))

    ctx = multiprocessing.get_context("spawn")
    results = [tmp_path / f"result-{w}.txt" for w in range(PROCESSES)]
    processes = [
        ctx.Process(target=_reader, args=(str(tmp_path), w, files, str(results[w])))
        for w in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(scale(200, 1100))
        assert process.exitcode == 0, f"a reader died or hung (exit code {process.exitcode})"
    failures = [line for r in results for line in r.read_text().splitlines()]
    with DiskBlobCache(tmp_path / "cache", size_limit=SIZE_LIMIT) as cache:
        volume, entries = cache.volume(), len(cache)
    record(
        "chunked_cache_contention",
        {
            "processes": PROCESSES,
            "downloads_per_process": DOWNLOADS,
            "files": FILES,
            "packs_per_file": PARTS,
            "size_limit": SIZE_LIMIT,
            "volume_after": volume,
            "entries_after": entries,
            "failures": len(failures),
        },
    )
    assert failures == []
    assert volume <= SIZE_LIMIT
