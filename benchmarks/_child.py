"""One operation per process, so the parent can read its peak RSS (see ``_util.run_child``).

Usage: ``python -m benchmarks._child OP ARGS...``
"""

from __future__ import annotations

import os
import sys
import warnings


def main(argv: list[str]) -> None:
    op, *args = argv
    warnings.simplefilter("ignore")
    if op == "import-optuna":
        import optuna

        return
    import optuna_cas

    if op == "import":
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    if op == "study":
        return
    if op in ("upload-ours", "upload-optuna"):
        store_dir, file_path = args
        os.makedirs(store_dir, exist_ok=True)  # Optuna's store does not create it
        if op == "upload-ours":
            optuna_cas.upload_artifact(
                artifact_store=optuna_cas.FileSystemArtifactStore(store_dir),
                file_path=file_path,
                study_or_trial=study,
            )
        else:
            optuna.artifacts.upload_artifact(
                artifact_store=optuna.artifacts.FileSystemArtifactStore(store_dir),
                file_path=file_path,
                study_or_trial=study,
            )
        return
    if op in ("download-ours", "download-optuna"):
        store_dir, artifact_id, file_path = args
        if op == "download-ours":
            optuna_cas.download_artifact(
                artifact_store=optuna_cas.FileSystemArtifactStore(store_dir),
                file_path=file_path,
                artifact_id=artifact_id,
            )
        else:
            optuna.artifacts.download_artifact(
                artifact_store=optuna.artifacts.FileSystemArtifactStore(store_dir),
                file_path=file_path,
                artifact_id=artifact_id,
            )
        return
    from benchmarks._moto import make_client

    endpoint, bucket, *rest = args
    client = make_client(endpoint)
    if op == "s3-client":
        return
    if op == "s3-upload-ours":
        prefix, file_path = rest
        optuna_cas.upload_artifact(
            artifact_store=optuna_cas.Boto3ArtifactStore(bucket, client, prefix=prefix),
            file_path=file_path,
            study_or_trial=study,
        )
        return
    if op == "s3-upload-optuna":
        (file_path,) = rest
        optuna.artifacts.upload_artifact(
            artifact_store=optuna.artifacts.Boto3ArtifactStore(bucket, client),
            file_path=file_path,
            study_or_trial=study,
        )
        return
    raise SystemExit(f"unknown operation {op!r}")


def _report_peak() -> None:
    """Write this process's VmHWM (peak RSS of its own address space) where the parent said."""
    with open("/proc/self/status") as f:
        peak = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as out:
        out.write(peak)


if __name__ == "__main__":
    main(sys.argv[1:])
    _report_peak()
