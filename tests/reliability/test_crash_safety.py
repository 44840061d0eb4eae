"""Scenario 2: uploading and downloading processes SIGKILLed at random moments.

Each round starts an uploader (``upload_artifact`` to fresh trials of a study on a shared
SQLite file) and a downloader (``download_artifact`` to new files, alternately through a plain
and a cached store), waits until both are working, and kills each at its own random moment.
Payloads mix shared contents (dedup hits) with unique ones large enough that kills land inside
blob writes: 9 MiB locally, on S3 and on GCS (above the 8 MiB chunking threshold: chunked
uploads, packs written and published), 6 MiB on S3 and GCS (a whole blob, multipart on S3, a
resumable upload of several chunks on GCS).

Afterwards: ``verify`` finds no corrupt blob and no ref to a missing blob; every Optuna
metadata entry (in every trial, killed ones included) has its ref and blob (a file of at most
4 KiB: its ref holding the content) and downloads byte-exact; every journaled "returned" upload is in the metadata; every download destination
holds nothing or the complete verified file; a re-run of the interrupted uploads succeeds.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import (
    CachedArtifactStore,
    download_artifact,
    gc,
    get_all_artifact_meta,
    verify,
)
from optuna_cas.chunks.layout import CHUNK_MIN
from optuna_cas.digest import Digest
from optuna_cas.refs import INLINE_LIMIT
from tests.reliability._common import (
    MiB,
    holds_payload,
    payload_bytes,
    payload_name,
    rdb_storage,
    read_journal,
    record,
    s3_client,
    scale,
)
from tests.reliability._workers import crash_downloader, crash_store, crash_uploader

pytestmark = pytest.mark.reliability

ROUNDS = scale(10, 80)
KILL_WINDOW = 0.6  # seconds after a process reports ready
# Each pool has one file above the 8 MiB chunking threshold: the seeding run stores it, so
# every run checks at least one chunked artifact, and repeat uploads of it are chunked dedup hits.
# The smallest is kept inside its ref (INLINE_LIMIT); the next is a blob just above the limit.
SMALL_SIZES = [1024, INLINE_LIMIT + 1024]
REMOTE_POOL = [
    payload_name("pool", n, i)
    for i, n in enumerate([*SMALL_SIZES, 100 * 1024, 6 * MiB + 1, 9 * MiB + 3])
]
REMOTE_UNIQUE_SIZES = [256 * 1024, 6 * MiB + 1, 9 * MiB + 1]
POOL = {
    "local": [
        payload_name("pool", n, i)
        for i, n in enumerate([*SMALL_SIZES, 200 * 1024, 2 * MiB, 9 * MiB + 3])
    ],
    "s3": REMOTE_POOL,
    "gcs": REMOTE_POOL,
}
UNIQUE_SIZES = {
    "local": [512 * 1024, 9 * MiB],
    "s3": REMOTE_UNIQUE_SIZES,
    "gcs": REMOTE_UNIQUE_SIZES,
}
# Locally, some uploads are versions of one checkpoint with other rows rewritten: stored as
# deltas against each other (kills land in those too). The seeding run stores two.
EDIT_SIZE = 9 * MiB + 5
SEED_EDITS = [payload_name("edit", EDIT_SIZE, "seed", i) for i in range(2)]


def _forkserver() -> Any:
    # Fork from a clean server that has imported everything once: a round costs ~0.2 s
    # instead of a full interpreter start, so the kills can be many.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.reliability._preload"])
    return ctx


def _run_to_completion(ctx: Any, target: Any, cfg: dict[str, Any]) -> None:
    process = ctx.Process(target=target, args=(cfg, None))
    process.start()
    process.join(300)
    assert process.exitcode == 0, f"{target.__name__} failed (exit code {process.exitcode})"


@pytest.mark.timeout(scale(300, 1800))
@pytest.mark.parametrize(
    "kind",
    ["local", pytest.param("s3", marks=pytest.mark.s3), pytest.param("gcs", marks=pytest.mark.gcs)],
)
def test_sigkill_never_leaves_partial_data(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import optuna

    marks = {"start": time.monotonic()}
    ctx = _forkserver()
    rng = random.Random(f"kills-{kind}")
    db_url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = rdb_storage(db_url)
    optuna.create_study(study_name="crash", storage=storage)
    base: dict[str, Any] = {
        "kind": kind,
        "db_url": db_url,
        "study": "crash",
        "sources": str(tmp_path / "sources"),
        "cache_dir": str(tmp_path / "cache"),
        "pool": POOL[kind],
        "unique_sizes": UNIQUE_SIZES[kind],
        "edit_size": EDIT_SIZE if kind == "local" else None,
    }
    (tmp_path / "sources").mkdir()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    if kind == "local":
        base["store_dir"] = str(tmp_path / "store")
    elif kind == "s3":
        server = request.getfixturevalue("s3_server")
        base |= {
            "bucket": request.getfixturevalue("s3_bucket"),
            "endpoint": server.endpoint_url,
            "prefix": "crash",
        }
    else:
        server = request.getfixturevalue("gcs_server")
        base |= {
            "bucket": request.getfixturevalue("gcs_bucket").name,
            "endpoint": server.endpoint_url,
            "prefix": "crash",
        }
    up_journal = tmp_path / "uploads.jsonl"
    down_journal = tmp_path / "downloads.jsonl"

    # Something to download from the first round on.
    seeds = POOL[kind] + (SEED_EDITS if kind == "local" else [])
    _run_to_completion(
        ctx, crash_uploader, {**base, "round": -1, "journal": str(up_journal), "names": seeds}
    )

    marks["seeded"] = time.monotonic()

    def returned() -> list[dict[str, Any]]:
        return [e for e in read_journal(up_journal) if e["event"] == "returned"]

    kills = {"upload": 0, "download": 0}
    missed = {"upload": 0, "download": 0}  # the process had finished or died on its own
    started = time.monotonic()
    for r in range(ROUNDS):
        available = [[e["id"], e["filename"]] for e in returned()]
        up_ready, down_ready = ctx.Event(), ctx.Event()
        processes = {
            "upload": ctx.Process(
                target=crash_uploader,
                args=({**base, "round": r, "journal": str(up_journal)}, up_ready),
            ),
            "download": ctx.Process(
                target=crash_downloader,
                args=(
                    {
                        **base,
                        "round": r,
                        "journal": str(down_journal),
                        "artifacts": available,
                        "destination": str(downloads),
                    },
                    down_ready,
                ),
            ),
        }
        for process in processes.values():
            process.start()
        assert up_ready.wait(120) and down_ready.wait(120), "a worker never became ready"
        t0 = time.monotonic()
        schedule = sorted((rng.uniform(0.0, KILL_WINDOW), role) for role in processes)
        for at, role in schedule:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            process = processes[role]
            if process.exitcode is None:
                os.kill(process.pid, signal.SIGKILL)
                kills[role] += 1
            else:
                missed[role] += 1
        for process in processes.values():
            process.join(60)
            assert process.exitcode in (-signal.SIGKILL, 0) or process.exitcode is None
    kill_phase = time.monotonic() - started
    marks["killed"] = time.monotonic()

    # -- what the kills left behind -------------------------------------------------------
    store = crash_store(base)
    report = verify(store)
    assert report.corrupt == [] and report.missing == [] and report.malformed_refs == []

    study = optuna.load_study(study_name="crash", storage=storage)
    trials = study.get_trials(deepcopy=False)
    metas = [m for t in trials for m in get_all_artifact_meta(t, storage=storage)]
    out = tmp_path / "check"
    out.mkdir()
    chunked = 0  # of the metadata entries, those stored as chunks in packs (>= 8 MiB)
    inline = 0  # ... and those kept inside their ref (<= INLINE_LIMIT)
    edits = 0  # ... and versions of the edited checkpoint stored as deltas (locally)
    for n, meta in enumerate(metas):
        ref = store.get_ref(meta.artifact_id)  # the ref exists ...
        assert str(ref.digest) == meta.digest
        if ref.digest.size <= INLINE_LIMIT:  # ... holding the content of a small file
            assert ref.inline is not None and holds_payload(ref.inline, meta.filename), meta
            inline += 1
        else:
            assert store.content.has_blob(ref.digest)  # ... and so does its blob
        if meta.filename.startswith("edit-"):
            # Stored as a delta: ranges and changed rows, entries shorter than any chunk.
            table = store.content.chunks.manifest(ref.digest)
            edits += any(entry.length < CHUNK_MIN for entry in list(table)[:-1])
        chunked += store.content.chunks.has_manifest(ref.digest)
        target = out / f"{n}.bin"
        download_artifact(artifact_store=store, file_path=str(target), artifact_id=meta.artifact_id)
        assert holds_payload(target, meta.filename), meta
    meta_ids = {m.artifact_id for m in metas}
    # Killed between ref and metadata: harmless (nothing points at them), but their blobs
    # are kept by gc as long as the refs exist.
    refs_without_metadata = len(set(store.content.iter_ref_ids()) - meta_ids)
    up_events = list(read_journal(up_journal))
    assert {e["id"] for e in up_events if e["event"] == "returned"} <= meta_ids
    in_rounds = [e for e in up_events if 0 <= e["round"] < ROUNDS]
    begun = {(e["round"], e["seq"]): e["filename"] for e in in_rounds if e["event"] == "begin"}
    came_back = {(e["round"], e["seq"]) for e in in_rounds if e["event"] == "returned"}
    interrupted = [name for step, name in sorted(begun.items()) if step not in came_back]

    # Downloads: the destination holds the complete file or nothing; temp files beside it.
    down_events = list(read_journal(down_journal))
    targets = {e["target"]: e["filename"] for e in down_events if e["event"] == "begin"}
    finished = {e["target"] for e in down_events if e["event"] == "done"}
    complete = absent = 0
    for target, filename in targets.items():
        if os.path.lexists(target):
            assert holds_payload(Path(target), filename), target
            complete += 1
        else:
            absent += 1
            assert target not in finished
    leftovers = []
    for entry in os.listdir(downloads):
        if str(downloads / entry) in targets:
            continue
        leftovers.append(entry)  # only temp files of killed downloads may be here
        assert entry.startswith(".") and entry.endswith(".partial"), entry
        assert str(downloads / entry) not in targets
    # The cache the killed downloaders shared still serves only verified bytes.
    cache_temps = len(os.listdir(Path(base["cache_dir"]) / "tmp"))
    cached = CachedArtifactStore(store, directory=base["cache_dir"], size_limit=256 * MiB)
    cache_entries = len(cached.cache)
    for artifact_id, filename in {(m.artifact_id, m.filename) for m in metas}:
        with cached.open_reader(artifact_id) as reader:
            assert holds_payload(reader.read(), filename)

    # Leftovers of interrupted writes in the store itself.
    store_temps = 0
    incomplete_multipart: int | None = 0
    if kind == "local":
        store_temps = len(list(store.content.backend.list_temporary()))
    elif kind == "s3":
        client = s3_client(base["endpoint"], sdk_retries=True)
        uploads = client.list_multipart_uploads(Bucket=base["bucket"]).get("Uploads", [])
        incomplete_multipart = len(uploads)
    else:
        incomplete_multipart = None  # GCS lists no resumable sessions (they expire in a week)

    marks["checked"] = time.monotonic()
    # -- a re-run of the interrupted uploads succeeds -------------------------------------
    rerun = interrupted or POOL[kind]
    before = len(returned())
    _run_to_completion(
        ctx, crash_uploader, {**base, "round": 10_000, "journal": str(up_journal), "names": rerun}
    )
    rerun_events = returned()[before:]
    assert len(rerun_events) == len(rerun)
    for n, event in enumerate(rerun_events):
        target = out / f"rerun-{n}.bin"
        download_artifact(artifact_store=store, file_path=str(target), artifact_id=event["id"])
        assert holds_payload(target, event["filename"])
        assert store.get_ref(event["id"]).digest == Digest.of_bytes(
            payload_bytes(event["filename"])
        )
    after = verify(store)
    assert after.ok, after
    # Nothing uploads now: gc may reclaim every orphan and (locally) every stale temp file.
    cleanup = gc(store, grace_period=0, allow_short_grace=True)
    assert verify(store, deep=False).orphans == []

    marks["end"] = time.monotonic()
    names = list(marks)
    record(
        f"crash_safety_{kind}",
        {
            "phases_s": {b: round(marks[b] - marks[a], 1) for a, b in itertools.pairwise(names)},
            "command": f"pytest -m reliability 'tests/reliability/test_crash_safety.py::"
            f"test_sigkill_never_leaves_partial_data[{kind}]'",
            "rounds": ROUNDS,
            "kill_window_s": KILL_WINDOW,
            "kill_phase_s": round(kill_phase, 1),
            "kills": kills,
            "processes_done_before_kill": missed,
            "uploads": {
                "begun": len(begun),
                "returned": len(came_back),
                "interrupted_by_kill": len(interrupted),
                "rerun_after_kills": len(rerun),
            },
            "downloads": {
                "begun": len(targets),
                "finished": len(finished),
                "destination_complete": complete,
                "destination_absent": absent,
                "partial_temp_files_left_beside_destinations": len(leftovers),
                "cache_temp_files_left": cache_temps,
                "cache_entries_after_kills": cache_entries,
            },
            "store": {
                "metadata_entries_checked": len(metas),
                "metadata_entries_chunked": chunked,
                "metadata_entries_edited": edits,
                "metadata_entries_inline": inline,
                "refs_without_metadata": refs_without_metadata,
                "trials": len(trials),
                "verify_after_kills": {
                    "refs": report.refs_checked,
                    "blobs": report.blobs_checked,
                    "corrupt": len(report.corrupt),
                    "missing": len(report.missing),
                    "malformed_refs": len(report.malformed_refs),
                    "orphans": len(report.orphans),
                },
                "temp_files_left_in_store": store_temps,
                "incomplete_multipart_uploads_left": incomplete_multipart,
                "final_gc": {
                    "orphan_blobs_deleted": cleanup.deleted_count,
                    "temp_files_removed": cleanup.temp_files_removed,
                },
            },
            "outcome": "verify ok; metadata only for complete uploads; no partial file at any "
            "destination; re-run ok",
        },
    )
    assert kills["upload"] >= ROUNDS // 2 and kills["download"] >= ROUNDS // 2
    assert chunked >= 1, "no chunked upload was checked: the chunk path went untested"
    assert inline >= 1, "no small upload was checked: the inline path went untested"
    if kind == "local":
        assert edits >= 1, "no upload stored as a delta was checked: the path went untested"
