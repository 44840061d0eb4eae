"""Shared by the reliability tests and their worker processes: size knob, payloads, journals.

Everything here is importable in a fresh (spawned) interpreter and cheap to import.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: ``OPTUNA_CAS_SOAK=1`` selects the long run (``make soak``); default is the short one.
SOAK = os.environ.get("OPTUNA_CAS_SOAK", "").strip().lower() not in ("", "0", "false", "no")
RESULTS_DIR = Path(__file__).resolve().parents[2] / ".bench-data" / "reliability"
MiB = 1024 * 1024
# 5 MiB is the smallest multipart part S3 accepts: a 6 MiB payload takes the multipart path.
S3_PART_SIZE = 5 * MiB
# GCS's counterpart (a multiple of 256 KiB): bodies up to 4 MiB go in one request, a 6 MiB
# payload or a 9 MiB pack by a resumable upload of several chunks.
GCS_CHUNK_SIZE = 4 * MiB


def scale(short: Any, soak: Any) -> Any:
    """``soak`` in the long run, else ``short``."""
    return soak if SOAK else short


def record(scenario: str, data: dict[str, Any]) -> Path:
    """Write a scenario's figures to ``.bench-data/reliability/<scenario>.<mode>.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    mode = "soak" if SOAK else "short"
    payload = {
        "scenario": scenario,
        "mode": mode,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **data,
    }
    path = RESULTS_DIR / f"{scenario}.{mode}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


# -- payloads: every file name says which bytes it must hold ----------------------------------


def payload_bytes(name: str) -> bytes:
    """The exact bytes of the payload file called ``name`` (deterministic, incompressible).

    Names: ``pool-<size>-<i>.bin`` (shared, uploaded many times),
    ``<tag>-<size>-<a>-<b>.bin`` (unique per worker and step), sizes in bytes, and
    ``edit-<size>-<a>-<b>.bin`` (unique, but sharing all but 20 rows with every other edit).
    """
    import blake3

    stem = name.rsplit(".", 1)[0]
    size = int(stem.split("-")[1])
    if stem.startswith("edit-"):
        # One base file of that size with 20 rows of 2 KiB rewritten in place: versions of a
        # checkpoint whose embedding rows changed, which a local store keeps as deltas
        # against each other (optuna_cas.chunks.delta).
        data = bytearray(blake3.blake3(f"edit-base-{size}".encode()).digest(length=size))
        for row in random.Random(stem).sample(range(size // 2048), 20):
            data[row * 2048 : (row + 1) * 2048] = blake3.blake3(f"{stem}-{row}".encode()).digest(
                length=2048
            )
        return bytes(data)
    # BLAKE3 in extendable-output mode: ~1 GB/s, four times random.randbytes.
    return bytes(blake3.blake3(stem.encode()).digest(length=size))


@functools.cache
def payload_sha256(name: str) -> str:
    """SHA-256 of :func:`payload_bytes` (remembered: regenerating 9 MiB costs ~20 ms)."""
    return hashlib.sha256(payload_bytes(name)).hexdigest()


def holds_payload(data_or_path: bytes | Path, name: str) -> bool:
    """Whether bytes (or a file) are exactly the payload ``name`` (SHA-256, independent of
    the BLAKE3 the code under test uses)."""
    if isinstance(data_or_path, Path):
        hasher = hashlib.sha256()
        with data_or_path.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                hasher.update(chunk)
        return hasher.hexdigest() == payload_sha256(name)
    return hashlib.sha256(data_or_path).hexdigest() == payload_sha256(name)


def payload_name(tag: str, size: int, *parts: object) -> str:
    return "-".join([tag, str(size), *map(str, parts)]) + ".bin"


def write_payload(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.exists():
        temp = directory / f".{name}.writing"
        temp.write_bytes(payload_bytes(name))
        os.replace(temp, path)
    return path


# -- journals: one JSON object per line, appended with a single write() ------------------------


class Journal:
    """Append-only event log that survives SIGKILL of its writer (one ``write`` per line)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "t": time.time(), **fields}) + "\n"
        os.write(self._fd, line.encode())

    def close(self) -> None:
        os.close(self._fd)


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Events of a journal; a torn last line (writer killed mid-write) is skipped."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


# -- clients and stores ------------------------------------------------------------------------

_boto_session: Any = None


def s3_client(
    endpoint_url: str,
    *,
    timeout: float | None = None,
    sdk_retries: bool = False,
    sdk_checksums: bool = True,
) -> Any:
    """A boto3 client; SDK retries off by default, optional short timeouts (for stalls).

    ``sdk_checksums=False`` stops botocore from checking the CRC32 moto sends with a GET on
    every call of the client (optuna-cas's own GETs skip it anyway: it checks BLAKE3): the
    work-around for the touch bug shown in ``test_known_bugs.py``.
    """
    global _boto_session
    import boto3
    from botocore.config import Config

    if _boto_session is None:
        _boto_session = boto3.session.Session()
    options: dict[str, Any] = {"max_pool_connections": 16}
    if not sdk_retries:
        options["retries"] = {"total_max_attempts": 1}
    if not sdk_checksums:
        options["response_checksum_validation"] = "when_required"
    if timeout is not None:
        options["read_timeout"] = timeout
        options["connect_timeout"] = timeout
    return _boto_session.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(**options),
    )


def boto3_store(
    bucket: str,
    endpoint_url: str,
    *,
    prefix: str,
    timeout: float | None = None,
    freshen_after: float | None = None,
    sdk_retries: bool = False,
    sdk_checksums: bool = True,
) -> Any:
    """A ``Boto3ArtifactStore``; ``freshen_after`` lowered so a short-grace gc may run beside it."""
    from optuna_cas import Boto3ArtifactStore

    client = s3_client(
        endpoint_url, timeout=timeout, sdk_retries=sdk_retries, sdk_checksums=sdk_checksums
    )
    store = Boto3ArtifactStore(bucket, client, prefix=prefix, part_size=S3_PART_SIZE)
    if freshen_after is not None:
        store.content.freshen_after = freshen_after
    return store


def gcs_store(
    bucket: str,
    endpoint_url: str,
    *,
    prefix: str,
    timeout: float = 60.0,
    freshen_after: float | None = None,
    sdk_retries: bool = False,
) -> Any:
    """A ``GCSArtifactStore`` on fake-gcs-server (anonymous client, SDK retries off by default);
    ``freshen_after`` lowered so a short-grace gc may run beside it.

    fake-gcs-server keeps an object's ``updated`` time through a metadata patch (GCS renews
    it; measured 2026-11-29), so there the store's touch would not renew a re-used blob, and a
    gc racing the uploads would judge it old: such a store touches by rewriting the object
    onto itself, which the emulator does date anew.
    """
    from optuna_cas import GCSArtifactStore
    from optuna_cas.content import ContentStore
    from optuna_cas.stores.base import ContentAddressedArtifactStore
    from optuna_cas.testing.servers import make_gcs_client

    client = make_gcs_client(endpoint_url)
    options: dict[str, Any] = {
        "prefix": prefix,
        "chunk_size": GCS_CHUNK_SIZE,
        "sdk_retries": sdk_retries,
    }
    if freshen_after is None:
        return GCSArtifactStore(bucket, client, timeout=timeout, **options)
    backend = _emulator_touch_backend()(bucket, client=client, timeout=timeout, **options)
    return ContentAddressedArtifactStore(ContentStore(backend, freshen_after=freshen_after))


@functools.cache
def _emulator_touch_backend() -> type:
    from optuna_cas.backends.gcs import GCSBackend

    class EmulatorTouchGCSBackend(GCSBackend):
        """Touches by a rewrite onto itself: a new generation, dated now (see gcs_store)."""

        def _touch(self, name: str) -> None:
            blob = self.bucket.blob(name)
            token, _, _ = blob.rewrite(blob, timeout=self._timeout)
            while token is not None:
                token, _, _ = blob.rewrite(blob, token=token, timeout=self._timeout)

    return EmulatorTouchGCSBackend


def rdb_storage(url: str) -> Any:
    """Optuna's RDB storage shared by processes: a SQLite file or a PostgreSQL database.

    SQLite gets a long lock timeout (writers wait for each other); PostgreSQL a connect
    timeout, so that a server gone away fails the worker instead of hanging it.
    """
    import optuna

    if url.startswith("sqlite"):
        connect_args: dict[str, Any] = {"timeout": 60}
    else:
        connect_args = {"connect_timeout": 10}
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect_args})


class CountingHandler(logging.Handler):
    """Counts log records (e.g. Backoff's one WARNING per retry) without printing them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def count_logs(name: str) -> CountingHandler:
    handler = CountingHandler()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
    return handler


def fault_summary(records: list[Any]) -> dict[str, Any]:
    """Requests seen by a FaultProxy and the faults it injected, by mode and by method."""
    faults: dict[str, int] = {}
    methods: dict[str, int] = {}
    for r in records:
        methods[r.method] = methods.get(r.method, 0) + 1
        if r.fault:
            faults[r.fault] = faults.get(r.fault, 0) + 1
    total = len(records)
    injected = sum(faults.values())
    return {
        "requests": total,
        "faults_injected": injected,
        "fault_rate": round(injected / total, 4) if total else 0.0,
        "faults_by_mode": dict(sorted(faults.items())),
        "requests_by_method": dict(sorted(methods.items())),
    }
