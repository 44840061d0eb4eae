"""Bodies of the reliability suite's worker processes (importable by spawn and forkserver).

Each takes one picklable ``cfg`` dict. Workers write their counts to ``cfg["result"]`` (JSON)
and record every event that matters to a checker in a SIGKILL-safe :class:`Journal`.
"""

from __future__ import annotations

import json
import os
import random
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from tests.reliability._common import (
    Journal,
    boto3_store,
    count_logs,
    gcs_store,
    holds_payload,
    payload_bytes,
    payload_name,
    rdb_storage,
    write_payload,
)

# Payloads shared by every trial of the distributed study (drawn with these weights): repeats
# are the common case (dedup), the 6 MiB one goes multipart through the faulty proxy.
STUDY_POOL = [
    # Just above INLINE_LIMIT (4 KiB): the smallest blob. The last entry, 1 KiB, is kept
    # inside its ref (no blob for gc to race).
    (payload_name("pool", 4 * 1024 + 1, 0), 30),
    (payload_name("pool", 64 * 1024, 1), 30),
    (payload_name("pool", 256 * 1024, 2), 20),
    (payload_name("pool", 1024 * 1024, 3), 15),
    (payload_name("pool", 6 * 1024 * 1024 + 1, 4), 5),
    (payload_name("pool", 1024, 5), 10),
]
SCRATCH_SIZE = 48 * 1024


def _write_result(cfg: dict[str, Any], data: dict[str, Any]) -> None:
    Path(cfg["result"]).write_text(json.dumps(data, indent=2, default=str))


def _quiet_optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# -- scenario 1 and 3: a distributed study through faults while gc loops ---------------------


def study_worker(cfg: dict[str, Any]) -> None:
    """Optimise the shared study until ``cfg["duration"]`` has passed since setup.

    Each trial uploads checkpoints drawn from ``STUDY_POOL`` (many repeats), uploads a
    "scratch" payload unique to this worker and step and deletes it again (its blob becomes
    garbage), re-uploads scratch payloads deleted about one gc grace period ago (a dedup hit
    on a blob gc is about to collect: each payload races gc exactly once, so a lost blob can
    never be repaired by a later upload), and reads back checkpoints of completed trials.
    """
    counts: Counter[str] = Counter()
    retries = count_logs("optuna_cas.retry")
    cache_warnings = count_logs("optuna_cas.cache")
    try:
        optuna = _quiet_optuna()
        from optuna_cas import (
            Backoff,
            CachedArtifactStore,
            delete_artifact,
            download_artifact,
            get_all_artifact_meta,
            upload_artifact,
        )
        from optuna_cas.digest import Digest

        worker = cfg["worker"]
        rng = random.Random(f"study-worker-{worker}-{cfg['seed']}")
        work = Path(cfg["work"]) / f"worker-{worker}"
        sources, out = work / "sources", work / "out"
        sources.mkdir(parents=True)
        out.mkdir()
        journal = Journal(Path(cfg["journal"]))
        storage = rdb_storage(cfg["db_url"])
        study = optuna.load_study(
            study_name=cfg["study"],
            storage=storage,
            sampler=optuna.samplers.RandomSampler(seed=worker),
        )
        inner = boto3_store(
            cfg["bucket"],
            cfg["endpoint"],
            prefix=cfg["prefix"],
            timeout=cfg["client_timeout"],
            freshen_after=cfg["freshen_after"],
            sdk_checksums=cfg["sdk_checksums"],
        )
        store = CachedArtifactStore(
            Backoff(inner, min_delay=0.02, max_delay=0.5, seed=worker),
            directory=work / "cache",
            size_limit=64 * 1024 * 1024,
        )
        pool_paths = [write_payload(sources, name) for name, _ in STUDY_POOL]
        weights = [w for _, w in STUDY_POOL]
        digests = {p.name: Digest.of_bytes(payload_bytes(p.name)).hexdigest for p in pool_paths}
        pending: list[tuple[float, Path]] = []  # (when to re-upload, scratch source)
        scratch_numbers = iter(range(1_000_000))

        def upload(trial: Any, path: Path, kind: str) -> str:
            artifact_id: str = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial
            )
            journal.log(
                "returned",
                id=artifact_id,
                digest=digests[path.name],
                kind=kind,
                trial=trial.number,
            )
            counts["uploads"] += 1
            counts[f"uploads_{kind}"] += 1
            counts["bytes_uploaded"] += path.stat().st_size
            return artifact_id

        def read_back(trial_number: int) -> None:
            done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if not done:
                return
            chosen = rng.choice(done)
            metas = get_all_artifact_meta(chosen, storage=storage)
            if not metas:
                return
            meta = rng.choice(metas)
            if rng.random() < 0.5:
                target = out / f"read-{trial_number}-{counts['reads']}.bin"
                download_artifact(
                    artifact_store=store, file_path=str(target), artifact_id=meta.artifact_id
                )
                data = target.read_bytes()
                target.unlink()
                counts["reads_download_artifact"] += 1
            else:
                with store.open_reader(meta.artifact_id) as reader:
                    data = reader.read()
                counts["reads_open_reader"] += 1
            counts["reads"] += 1
            if not holds_payload(data, meta.filename):
                counts["read_mismatches"] += 1
                journal.log("mismatch", id=meta.artifact_id, filename=meta.filename)

        def objective(trial: Any) -> float:
            x = trial.suggest_float("x", -10.0, 10.0)
            for step in range(cfg["checkpoints_per_trial"]):
                path = rng.choices(pool_paths, weights)[0]
                upload(trial, path, "checkpoint")
                trial.report((x - 2.0) ** 2 + 1.0 / (step + 1), step)
            # A scratch payload: uploaded, then deleted, so its blob becomes garbage ...
            name = payload_name("scratch", SCRATCH_SIZE, worker, next(scratch_numbers))
            path = write_payload(sources, name)
            digests[name] = Digest.of_bytes(payload_bytes(name)).hexdigest
            scratch_id = upload(trial, path, "scratch")
            journal.log("deleting", id=scratch_id)
            delete_artifact(artifact_store=store, artifact_id=scratch_id, study_or_trial=trial)
            counts["deletes"] += 1
            pending.append((time.time() + cfg["grace"] * rng.uniform(0.8, 1.4), path))
            pending.sort()
            # ... and about one grace period later the same bytes come back, and stay.
            while pending and pending[0][0] <= time.time():
                upload(trial, pending.pop(0)[1], "revived")
            for _ in range(cfg["reads_per_trial"]):
                read_back(trial.number)
            counts["trials"] += 1
            return (x - 2.0) ** 2

        deadline = time.time() + cfg["duration"]
        while time.time() < deadline:
            study.optimize(objective, n_trials=1)
        counts["scratch_never_revived"] = len(pending)
        journal.close()
        _write_result(
            cfg,
            {**counts, "retries": retries.count, "cache_warnings": cache_warnings.count},
        )
    except BaseException:
        _write_result(cfg, {**counts, "error": traceback.format_exc()})
        raise


def gc_loop(cfg: dict[str, Any]) -> None:
    """Run gc back to back until ``cfg["stop_file"]`` appears; log each run's deletions."""
    runs: list[dict[str, Any]] = []
    retries = count_logs("optuna_cas.retry")
    try:
        from optuna_cas import Backoff, gc

        inner = boto3_store(
            cfg["bucket"],
            cfg["endpoint"],
            prefix=cfg["prefix"],
            timeout=cfg.get("client_timeout"),
            freshen_after=cfg["freshen_after"],
            sdk_checksums=cfg["sdk_checksums"],
        )
        store = Backoff(inner, min_delay=0.02, max_delay=0.5, seed=99)
        stop_file = Path(cfg["stop_file"])
        while not stop_file.exists():
            started = time.time()
            report = gc(store, grace_period=cfg["grace"])
            runs.append(
                {
                    "start": started,
                    "end": time.time(),
                    "deleted": ["".join(key.split("/")[2:4]) for key in report.deleted],
                    "kept_young": report.kept_young,
                    "blobs_scanned": report.blobs_scanned,
                    "refs_scanned": report.refs_scanned,
                }
            )
            time.sleep(cfg.get("pause", 0.05))
        _write_result(cfg, {"runs": runs, "retries": retries.count})
    except BaseException:
        _write_result(cfg, {"runs": runs, "error": traceback.format_exc()})
        raise


# -- scenario 2: processes SIGKILLed at random moments ----------------------------------------


def crash_store(cfg: dict[str, Any], *, cached: bool = False) -> Any:
    """The store of a crash-test process: local directory, S3 or GCS (SDK retries on)."""
    from optuna_cas import Backoff, CachedArtifactStore, FileSystemArtifactStore

    if cfg["kind"] == "local":
        store: Any = FileSystemArtifactStore(cfg["store_dir"])
    else:
        make = {"s3": boto3_store, "gcs": gcs_store}[cfg["kind"]]
        store = Backoff(
            make(cfg["bucket"], cfg["endpoint"], prefix=cfg["prefix"], sdk_retries=True),
            min_delay=0.02,
            max_delay=0.2,
        )
    if cached:
        store = CachedArtifactStore(store, directory=cfg["cache_dir"], size_limit=256 * 1024**2)
    return store


def crash_uploader(cfg: dict[str, Any], ready: Any = None) -> None:
    """Upload payloads to fresh trials until killed (or ``cfg["uploads"]`` are done).

    The journal gets ``begin`` once the source file is complete, and ``returned`` only after
    ``upload_artifact`` returned. ``cfg["names"]`` (if given) is the exact list to upload, in
    order (the re-run); otherwise shared and unique payloads are mixed at random.
    """
    optuna = _quiet_optuna()
    from optuna_cas import upload_artifact

    rng = random.Random(f"uploader-{cfg['round']}")
    sources = Path(cfg["sources"])
    journal = Journal(Path(cfg["journal"]))
    storage = rdb_storage(cfg["db_url"])
    study = optuna.load_study(study_name=cfg["study"], storage=storage)
    store = crash_store(cfg)
    names: list[str] | None = cfg.get("names")
    limit = len(names) if names is not None else cfg.get("uploads", 10_000)

    def pick(n: int) -> str:
        if names is not None:
            return names[n]
        roll = rng.random()
        if roll < 0.5 and not (cfg.get("edit_size") and roll >= 0.3):
            return str(rng.choice(cfg["pool"]))
        if roll < 0.5:  # a version of the edited checkpoint: a delta upload
            return payload_name("edit", cfg["edit_size"], cfg["round"], n)
        return payload_name("unique", rng.choice(cfg["unique_sizes"]), cfg["round"], n)

    # Sources for the uploads a round usually gets to are written before "ready", so that the
    # kill lands in uploading (or in Optuna's bookkeeping), not in making test files.
    plan = [pick(n) for n in range(min(limit, 8))]
    for name in plan:
        write_payload(sources, name)
    if ready is not None:
        ready.set()
    done = 0
    while done < limit:
        trial = study.ask()
        for _ in range(2):
            if done >= limit:
                break
            name = plan[done] if done < len(plan) else pick(done)
            path = write_payload(sources, name)
            step = {"round": cfg["round"], "seq": done, "filename": name}
            journal.log("begin", **step)
            artifact_id = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial
            )
            journal.log("returned", id=artifact_id, trial=trial.number, **step)
            done += 1
        study.tell(trial, float(done))
    journal.close()


def crash_downloader(cfg: dict[str, Any], ready: Any = None) -> None:
    """Download known artifacts to new files until killed (or ``cfg["downloads"]`` are done).

    Alternates a plain store and a cached one (so kills also hit cache fills). The journal
    gets ``begin`` with the destination before each download and ``done`` after it.
    """
    from optuna_cas import download_artifact

    rng = random.Random(f"downloader-{cfg['round']}")
    journal = Journal(Path(cfg["journal"]))
    stores = [crash_store(cfg), crash_store(cfg, cached=True)]
    artifacts: list[list[str]] = cfg["artifacts"]
    destination = Path(cfg["destination"])
    if ready is not None:
        ready.set()
    for k in range(cfg.get("downloads", 10_000)):
        artifact_id, filename = rng.choice(artifacts)
        target = destination / f"r{cfg['round']}-{k}-{filename}"
        journal.log("begin", target=str(target), filename=filename)
        download_artifact(
            artifact_store=stores[k % 2], file_path=str(target), artifact_id=artifact_id
        )
        journal.log("done", target=str(target))
    journal.close()


# -- scenario 5: processes sharing one small cache -------------------------------------------


def cache_reader(cfg: dict[str, Any], start: Any = None) -> None:
    """Read overlapping artifacts through a cache directory shared with other processes."""
    counts: Counter[str] = Counter()
    try:
        from optuna_cas import Backoff, CachedArtifactStore, download_artifact

        rng = random.Random(f"cache-reader-{cfg['worker']}")
        inner = Backoff(
            boto3_store(cfg["bucket"], cfg["endpoint"], prefix=cfg["prefix"], sdk_retries=True),
            min_delay=0.02,
            max_delay=0.2,
        )
        store = CachedArtifactStore(inner, directory=cfg["cache_dir"], size_limit=cfg["size_limit"])
        out = Path(cfg["out"])
        artifacts: list[list[str]] = cfg["artifacts"]
        # Zipf-like popularity: a few hot artifacts, a long tail (overlapping working sets).
        weights = [1.0 / (i + 1) for i in range(len(artifacts))]
        max_volume = 0
        if start is not None:
            start.wait(60)
        for k in range(cfg["reads"]):
            artifact_id, filename = rng.choices(artifacts, weights)[0]
            if k % 2:
                with store.open_reader(artifact_id) as reader:
                    data = reader.read()
                counts["open_reader"] += 1
            else:
                target = out / f"{k}-{filename}"
                download_artifact(
                    artifact_store=store, file_path=str(target), artifact_id=artifact_id
                )
                data = target.read_bytes()
                target.unlink()
                counts["download_artifact"] += 1
            counts["reads"] += 1
            counts["bytes_read"] += len(data)
            if not holds_payload(data, filename):
                counts["mismatches"] += 1
            max_volume = max(max_volume, store.cache.volume())
        _write_result(cfg, {**counts, "max_volume_seen": max_volume, "pid": os.getpid()})
    except BaseException:
        _write_result(cfg, {**counts, "error": traceback.format_exc()})
        raise
