"""The end-to-end demo behind ``make demo``: a real Optuna study saving checkpoints.

Each trial "trains" a toy model for a few epochs and saves a checkpoint every epoch, as real
training loops do: the initial weights (shared by trials with the same init seed), a new
snapshot when the loss improves, and a re-save of the best-so-far weights when it does not.
Many of those files are byte-identical, which is where a content-addressed store pays off.

Run it with ``python -m optuna_cas.demo [--output DIR] [--trials N]``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from optuna_cas import (
    CachedArtifactStore,
    FileSystemArtifactStore,
    download_artifact,
    upload_artifact,
    verify,
)
from optuna_cas._list_artifact_meta import get_all_artifact_meta
from optuna_cas._optuna import import_optuna
from optuna_cas._terminal import human_bytes as _human
from optuna_cas.digest import hash_file
from optuna_cas.operations.stats import stats

__all__ = ["main", "run_demo"]

CHECKPOINT_BYTES = 2 * 1024 * 1024
EPOCHS = 6


def _weights(seed: str, size: int) -> bytes:
    # Incompressible like real float weights; deterministic so repeats really are repeats.
    return random.Random(seed).randbytes(size)


def run_demo(
    output: Path, *, trials: int = 16, checkpoint_bytes: int = CHECKPOINT_BYTES
) -> dict[str, Any]:
    """Run the study, print a report, and return its figures.

    Args:
        output: Directory for the SQLite study, the artifact store and downloads (recreated).
        trials: Number of trials.
        checkpoint_bytes: Size of each checkpoint.

    Returns:
        The report's figures (artifacts, logical and stored bytes, dedup ratio, ...).

    Example:
        >>> import tempfile, pathlib
        >>> report = run_demo(pathlib.Path(tempfile.mkdtemp()), trials=2, checkpoint_bytes=8192)  # doctest: +ELLIPSIS
        optuna-cas demo...
        >>> report["dedup_ratio"] > 1
        True
    """
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    store = FileSystemArtifactStore(output / "artifacts")
    storage = f"sqlite:///{output / 'study.db'}"
    study = optuna.create_study(
        study_name="demo",
        storage=storage,
        direction="minimize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    workdir = Path(tempfile.mkdtemp(prefix="optuna-cas-demo-"))
    print(
        f"optuna-cas demo: {trials} trials x {EPOCHS} epochs, checkpoints of {_human(checkpoint_bytes)}"
    )
    print(f"  study   : {storage}")
    print(f"  store   : {store.content.describe()}")

    def objective(trial: Any) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        init = trial.suggest_categorical("init_seed", [0, 1, 2])
        weights = _weights(f"init-{init}", checkpoint_bytes)
        best = float("inf")
        loss = 10.0
        checkpoint = workdir / f"trial-{trial.number}.ckpt"
        rng = random.Random(trial.number)
        # Learning rates near 1e-2 improve most often; elsewhere the loss mostly plateaus.
        p_improve = 0.6 if 3e-3 < lr < 3e-2 else 0.25
        for epoch in range(EPOCHS):
            # An epoch that does not beat the best re-saves the best-so-far snapshot.
            improves = epoch == 0 or rng.random() < p_improve
            loss = loss * (0.7 if improves else 1.05) + abs(lr - 0.01)
            if loss < best:
                best = loss
                if epoch > 0:
                    weights = _weights(f"{trial.number}-{epoch}", checkpoint_bytes)
            checkpoint.write_bytes(weights)
            upload_artifact(artifact_store=store, file_path=str(checkpoint), study_or_trial=trial)
            trial.report(best, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    started = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    elapsed = time.perf_counter() - started
    shutil.rmtree(workdir, ignore_errors=True)

    figures = stats(store)
    best_trial = study.best_trial
    best_meta = get_all_artifact_meta(best_trial, storage=study._storage)[-1]
    downloads = output / "downloads"
    downloads.mkdir()
    # A worker's view: the store read through a local disk cache (on a remote store this is
    # what turns a repeat download into a local copy).
    cached = CachedArtifactStore(store, directory=output / "cache")
    timings = []
    for label in ("cold", "warm"):
        target = downloads / f"best-{label}-{best_meta.filename}"
        t0 = time.perf_counter()
        download_artifact(
            artifact_store=cached, file_path=str(target), artifact_id=best_meta.artifact_id
        )
        timings.append((label, time.perf_counter() - t0, target))
    cache_info = cached.cache.info()
    cached.close()
    verified = all(str(hash_file(path)) == best_meta.digest for _, _, path in timings)
    t0 = time.perf_counter()
    check = verify(store)
    verify_seconds = time.perf_counter() - t0

    pruned = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.PRUNED)
    print(f"\nStudy finished in {elapsed:.1f}s: {len(study.trials)} trials ({pruned} pruned)")
    print(f"  artifacts uploaded     : {figures.artifacts}")
    print(f"  unique blobs stored    : {figures.unique_blobs}")
    print(
        f"  logical bytes          : {_human(figures.logical_bytes)}  (what optuna.artifacts would store)"
    )
    print(f"  stored bytes           : {_human(figures.stored_bytes)}")
    print(f"  dedup ratio            : {figures.dedup_ratio:.2f}x")
    print(f"\nBest trial #{best_trial.number}: checkpoint {best_meta.artifact_id}")
    for label, seconds, path in timings:
        print(f"  {label} download through the cache: {seconds * 1000:7.1f} ms -> {path}")
    print(
        f"  cache: {cache_info.entries} entries, {cache_info.hits} hits, {cache_info.misses} misses"
    )
    print(f"  digests of the downloads verified: {verified}")
    print(
        f"\nverify: {check.refs_checked} refs, {check.blobs_checked} blobs, "
        f"{_human(check.bytes_hashed)} re-hashed in {verify_seconds:.2f}s: "
        f"{'OK' if check.ok else 'PROBLEMS FOUND'}"
    )
    return {
        "artifacts": figures.artifacts,
        "unique_blobs": figures.unique_blobs,
        "logical_bytes": figures.logical_bytes,
        "stored_bytes": figures.stored_bytes,
        "dedup_ratio": figures.dedup_ratio,
        "verified": verified and check.ok,
        "cold_seconds": timings[0][1],
        "warm_seconds": timings[1][1],
        "cache_hits": cache_info.hits,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m optuna_cas.demo``.

    Example:
        >>> import tempfile
        >>> main(["--output", tempfile.mkdtemp(), "--trials", "2", "--checkpoint-kib", "1"])  # doctest: +ELLIPSIS
        optuna-cas demo...
        0
    """
    parser = argparse.ArgumentParser(prog="python -m optuna_cas.demo", description=__doc__)
    parser.add_argument("--output", default=os.environ.get("OPTUNA_CAS_DEMO_DIR", "demo-output"))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--checkpoint-kib", type=int, default=CHECKPOINT_BYTES // 1024)
    args = parser.parse_args(argv)
    report = run_demo(
        Path(args.output), trials=args.trials, checkpoint_bytes=args.checkpoint_kib * 1024
    )
    return 0 if report["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
