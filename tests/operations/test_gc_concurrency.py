"""Two processes upload while a third runs gc in a loop; nothing a returned upload needs is lost.

Each uploader makes a blob unreferenced on purpose (upload, remove), then uploads the same
bytes again about one grace period later, just as gc is about to delete that blob, and keeps
that second artifact. Each payload races gc exactly once, so a lost blob cannot be repaired
by a later upload and hide the bug. gc pauses between listing refs and deleting, as it does on
a large remote store. Each re-upload is timed to land just after its blob's grace period runs
out, when gc is about to delete it. The store refreshes re-used blobs after 0.2 s and gc's
grace is 2 s, so the protection holds as long as no upload stalls ~1.8 s between checking
its blob and writing its ref (the gc module's one assumption: 90 minutes with the defaults);
a 0.5 s grace proved too tight for a loaded 2-core machine. With the freshen and the re-check
after the ref both disabled, this test fails.

The chunked variant does the same with files stored as chunks: every payload shares a
backbone with all others (so packs are reused across processes), and every other payload is
first uploaded with a long tail of its own, so that its re-upload reuses only part of the
first upload's pack, which gc then repacks. The re-uploads race gc's deletes of manifests
and packs and its rewrites of manifests.
"""

from __future__ import annotations

import heapq
import json
import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import download_artifact, gc, verify
from optuna_cas.backends.local import LocalBackend
from optuna_cas.content import ContentStore
from optuna_cas.stores.base import ContentAddressedArtifactStore

FRESHEN_AFTER = 0.2
GRACE = 2.0
ITERATIONS = 150
# The chunked variant: files from this size on are chunks; every payload starts with BACKBONE.
CHUNK_THRESHOLD = 128 * 1024
BACKBONE = random.Random("backbone").randbytes(192 * 1024)


def open_test_store(root: Path, kind: str = "blobs") -> ContentAddressedArtifactStore:
    threshold = CHUNK_THRESHOLD if kind == "chunked" else 2**62
    return ContentAddressedArtifactStore(
        ContentStore(LocalBackend(root), freshen_after=FRESHEN_AFTER, chunk_threshold=threshold)
    )


def payload(worker: int, n: int, kind: str = "blobs") -> bytes:
    if kind == "chunked":  # mostly its own bytes, so that its pack is repacked once it is gone
        return BACKBONE + random.Random(f"{worker}-{n}").randbytes(256 * 1024)
    return random.Random(f"{worker}-{n}").randbytes(32 * 1024)


def junk_bytes(worker: int, n: int, kind: str) -> bytes:
    if kind == "chunked":
        return BACKBONE[: 96 * 1024] + random.Random(f"junk-{worker}-{n}").randbytes(512 * 1024)
    # Above INLINE_LIMIT (4 KiB): a blob for gc to delete, not content kept inside its ref.
    return random.Random(f"junk-{worker}-{n}").randbytes(5 * 1024)


def uploader(root: str, worker: int, journal: str, kind: str) -> None:
    store = open_test_store(Path(root), kind)
    rng = random.Random(worker)
    sources = Path(root).parent / f"sources-{worker}"
    sources.mkdir()
    pending: list[tuple[float, int]] = []  # heap of (when to re-upload, payload number)
    with open(journal, "w") as log:
        for n in range(ITERATIONS):
            path = sources / f"{n}.bin"
            path.write_bytes(payload(worker, n, kind))
            if kind == "chunked" and n % 2:
                # A longer first version: the re-upload reuses a third of its pack, which gc
                # then repacks (unless it deleted the pack first).
                path = sources / f"{n}-longer.bin"
                path.write_bytes(payload(worker, n, kind) + junk_bytes(worker, -n, kind))
            store.put(f"tmp-{worker}-{n}", path)
            store.remove(f"tmp-{worker}-{n}")  # its blob is unreferenced from now on
            # Plus garbage never used again, so that gc always has work whatever the timing.
            junk = sources / f"junk-{n}.bin"
            junk.write_bytes(junk_bytes(worker, n, kind))
            store.put(f"junk-{worker}-{n}", junk)
            store.remove(f"junk-{worker}-{n}")
            # Just past the grace period: the blob is unreferenced and old enough to collect.
            heapq.heappush(pending, (time.time() + GRACE + rng.uniform(0.0, 0.15), n))
            _reupload_due(store, worker, sources, pending, log)
            time.sleep(0.01)
        while pending:  # the last ones become due after the loop
            time.sleep(0.005)
            _reupload_due(store, worker, sources, pending, log)


def _reupload_due(
    store: ContentAddressedArtifactStore,
    worker: int,
    sources: Path,
    pending: list[tuple[float, int]],
    log: Any,
) -> None:
    while pending and pending[0][0] <= time.time():
        _, m = heapq.heappop(pending)
        store.put(f"keep-{worker}-{m}", sources / f"{m}.bin")
        log.write(json.dumps({"id": f"keep-{worker}-{m}", "n": m}) + "\n")
        log.flush()


def slow_sweep_start(task: str, done: int, total: int | None) -> None:
    if done == 0 and total:
        time.sleep(0.05)


def collector(root: str, stop_at: float, result: str, kind: str) -> None:
    store = open_test_store(Path(root), kind)
    counts = {"runs": 0, "deleted": 0, "manifests": 0, "packs": 0, "repacked": 0}
    while time.time() < stop_at:
        report = gc(store, grace_period=GRACE, progress=slow_sweep_start)
        counts["runs"] += 1
        counts["deleted"] += report.deleted_count + len(report.manifests_deleted)
        counts["manifests"] += len(report.manifests_deleted)
        counts["packs"] += len(report.packs_deleted)
        counts["repacked"] += len(report.packs_repacked)
    Path(result).write_text(json.dumps(counts))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["blobs", "chunked"])
def test_gc_loop_never_deletes_what_a_returned_upload_references(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "store"
    root.mkdir()
    ctx = multiprocessing.get_context("spawn")
    journals = [tmp_path / f"journal-{w}.jsonl" for w in range(2)]
    uploaders = [
        ctx.Process(target=uploader, args=(str(root), w, str(journals[w]), kind)) for w in range(2)
    ]
    for p in uploaders:
        p.start()
    stop_at = time.time() + 9
    gc_process = ctx.Process(
        target=collector, args=(str(root), stop_at, str(tmp_path / "gc.json"), kind)
    )
    gc_process.start()
    for p in uploaders:
        p.join(120)
        assert p.exitcode == 0
    gc_process.join(60)
    assert gc_process.exitcode == 0
    gc_stats = json.loads((tmp_path / "gc.json").read_text())
    assert gc_stats["deleted"] > 20  # gc really deleted content all through the run
    if kind == "chunked":  # and packs, and it repacked some while uploads reused them
        assert gc_stats["packs"] > 20 and gc_stats["repacked"] > 0, gc_stats

    store = open_test_store(root, kind)
    kept = 0
    for worker, journal in enumerate(journals):
        for line in journal.read_text().splitlines():
            event = json.loads(line)
            target = tmp_path / "out" / event["id"]
            target.parent.mkdir(exist_ok=True)
            download_artifact(artifact_store=store, file_path=str(target), artifact_id=event["id"])
            assert target.read_bytes() == payload(worker, event["n"], kind), event["id"]
            kept += 1
    assert kept > 100
    report = verify(store, deep=False)
    assert not report.missing and not report.missing_packs
