"""Workers of the changing-sources scenario: a training loop rewriting its checkpoint while
threads and processes upload it, same-content uploaders, and gc.

Importable in a spawned interpreter; every worker journals what it saw (tests/reliability/
_common.Journal), and the test checks every acknowledged upload afterwards.
"""

from __future__ import annotations

import functools
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

from tests.reliability._common import Journal

MiB = 1024 * 1024
# The versions a checkpoint can hold: small ones take the read-write-hash loop, the large ones
# the overlapped kernel copy (>= 8 MiB); all differ in their first bytes (a header with the
# step, as real checkpoints have).
VERSION_SIZES = (192 * 1024, 3 * MiB, 9 * MiB, 12 * MiB)
VERSIONS = 8


def holds_one_version(data: bytes) -> bool:
    """Whether ``data`` is version v, or a prefix of it (a snapshot taken mid-write), for the
    v its header names: never a mix of two versions."""
    try:
        v = int(data[5:13])
    except ValueError:
        return data == b"" or b"step=".startswith(data[:5])
    return 0 <= v < VERSIONS and version_bytes(v)[: len(data)] == data


@functools.cache  # checked against every acknowledged upload: computed once per version
def version_bytes(v: int) -> bytes:
    """The exact bytes of checkpoint version ``v`` (deterministic, incompressible)."""
    import blake3

    size = VERSION_SIZES[v % len(VERSION_SIZES)]
    return f"step={v:08d}\n".encode() + blake3.blake3(f"version-{v}".encode()).digest(length=size)


def open_store(spec: dict[str, Any]) -> Any:
    """A store from a picklable description; freshen_after lowered for a short-grace gc."""
    from optuna_cas.backends.local import LocalBackend
    from optuna_cas.content import ContentStore
    from optuna_cas.stores.base import ContentAddressedArtifactStore

    if spec["kind"] == "local":
        return ContentAddressedArtifactStore(
            ContentStore(LocalBackend(spec["root"]), freshen_after=spec["freshen_after"])
        )
    from optuna_cas import Backoff
    from tests.reliability._common import boto3_store, gcs_store

    make = {"s3": boto3_store, "gcs": gcs_store}[spec["kind"]]
    store = make(
        spec["bucket"], spec["endpoint"], prefix="changing", freshen_after=spec["freshen_after"]
    )
    # Several processes hammer one server: moto drops connections now and then.
    return Backoff(store, min_delay=0.05, max_delay=1.0)


def train(path: Path, seconds: float, seed: int, journal_path: Path) -> None:
    """Rewrite ``path`` over and over, the ways training loops do."""
    rng = random.Random(seed)
    journal = Journal(journal_path)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        v = rng.randrange(VERSIONS)
        data = version_bytes(v)
        how = rng.choice(["truncate-write", "truncate-write", "replace", "touch", "chmod"])
        if how == "truncate-write":
            # torch.save: open(path, "wb") truncates, then writes piece by piece.
            with open(path, "wb") as f:
                for start in range(0, len(data), 1 * MiB):
                    f.write(data[start : start + MiB])
                    f.flush()
                    time.sleep(rng.random() * 0.002)
        elif how == "replace":
            temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            temp.write_bytes(data)
            os.replace(temp, path)
        elif how == "touch" and path.exists():
            os.utime(path)
        elif path.exists():
            os.chmod(path, rng.choice([0o600, 0o644]))
        journal.log("wrote", how=how, version=v)
        time.sleep(rng.random() * 0.01)
    journal.close()


def upload_loop(spec: dict[str, Any], path: Path, seconds: float, journal_path: Path) -> None:
    """Upload ``path`` again and again; journal every acknowledged digest and every refusal."""
    from optuna_cas.exceptions import IntegrityError

    store = open_store(spec)
    journal = Journal(journal_path)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        artifact_id = str(uuid.uuid4())
        try:
            ref = store.put(artifact_id, path)
        except IntegrityError as e:
            journal.log("refused", id=artifact_id, error=str(e)[:200])
            continue
        except FileNotFoundError:
            journal.log("missing", id=artifact_id)  # between a replace's unlink and rename
            continue
        except Exception as e:  # not acknowledged, so not counted as lost: but reported
            journal.log("error", id=artifact_id, error=repr(e)[:300])
            continue
        journal.log("ack", id=artifact_id, digest=str(ref.digest), size=ref.size)
    journal.close()


def stable_uploads(
    spec: dict[str, Any], directory: Path, seconds: float, journal_path: Path
) -> None:
    """Upload unchanging copies of the same versions: the same blobs, raced from elsewhere."""
    store = open_store(spec)
    journal = Journal(journal_path)
    paths = []
    for v in range(VERSIONS):
        path = directory / f"stable-{v}.pt"
        path.write_bytes(version_bytes(v))
        paths.append(path)
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        artifact_id = str(uuid.uuid4())
        try:
            ref = store.put(artifact_id, rng.choice(paths))
        except Exception as e:
            journal.log("error", id=artifact_id, error=repr(e)[:300])
            continue
        journal.log("ack", id=artifact_id, digest=str(ref.digest), size=ref.size)
        time.sleep(0.005)
    journal.close()


def gc_loop(spec: dict[str, Any], seconds: float, grace: float, journal_path: Path) -> None:
    """Collect garbage continuously with a short grace (uploaders freshen faster than that)."""
    from optuna_cas import gc

    store = open_store(spec)
    journal = Journal(journal_path)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            report = gc(store, grace_period=grace, allow_short_grace=True)
        except Exception as e:
            journal.log("error", error=repr(e)[:300])
            continue
        journal.log("gc", deleted=report.deleted_count)
        time.sleep(0.05)
    journal.close()
