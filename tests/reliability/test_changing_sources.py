"""Changing sources: a checkpoint rewritten and truncated while threads and processes upload it.

Beside them, other processes upload unchanging copies of the same versions (the same blobs,
so the uploads race on every key) and a gc loops with a short grace. The first release lost
2-11 of 60-210 acknowledged uploads this way (a failed upload deleted the blob a concurrent
uploader had published) and died of SIGBUS when a truncation hit its memory map.

Checked afterwards, with a fresh store: every acknowledged upload downloads byte-exact, and
its bytes are one version the training loop wrote, whole or as far as it had been written when
the upload read it (a file caught mid-write is what the file held), never a mix of two.
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import _sources
from tests.reliability._common import read_journal, record, scale

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SECONDS = scale(6.0, 60.0)
GRACE = 3.0
FRESHEN_AFTER = 0.5  # well under GRACE: the safety argument of gc holds (operations/gc.py)


def _spec(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if kind == "local":
        return {"kind": "local", "root": str(tmp_path / "store"), "freshen_after": FRESHEN_AFTER}
    server = request.getfixturevalue(f"{kind}_server")
    bucket = request.getfixturevalue(f"{kind}_bucket")
    return {
        "kind": kind,
        "endpoint": server.endpoint_url,
        "bucket": bucket if kind == "s3" else bucket.name,
        "freshen_after": FRESHEN_AFTER,
    }


@pytest.mark.timeout(scale(300, 1200))  # the soak checks hundreds of acks of up to 12 MiB
@pytest.mark.parametrize(
    "kind",
    ["local", pytest.param("s3", marks=pytest.mark.s3), pytest.param("gcs", marks=pytest.mark.gcs)],
)
def test_no_acknowledged_upload_is_lost_while_its_source_changes(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    spec = _spec(kind, tmp_path, request)
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(_sources.version_bytes(0))
    journals = tmp_path / "journals"
    journals.mkdir()
    stable_dir = tmp_path / "stable"
    stable_dir.mkdir()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_sources.upload_loop,
            args=(spec, checkpoint, SECONDS, journals / f"proc-upload-{i}.jsonl"),
        )
        for i in range(2)
    ]
    processes.append(
        context.Process(
            target=_sources.stable_uploads,
            args=(spec, stable_dir, SECONDS, journals / "stable.jsonl"),
        )
    )
    processes.append(
        context.Process(
            target=_sources.gc_loop, args=(spec, SECONDS + 1, GRACE, journals / "gc.jsonl")
        )
    )
    for process in processes:
        process.start()
    threads = [
        threading.Thread(
            target=_sources.upload_loop,
            args=(spec, checkpoint, SECONDS, journals / f"thread-upload-{i}.jsonl"),
        )
        for i in range(2)
    ]
    trainer = threading.Thread(
        target=_sources.train, args=(checkpoint, SECONDS, 11, journals / "train.jsonl")
    )
    for thread in [trainer, *threads]:
        thread.start()
    for thread in [trainer, *threads]:
        thread.join(timeout=SECONDS + 120)
        assert not thread.is_alive(), "an uploader thread hung"
    for process in processes:
        process.join(timeout=SECONDS + 120)
        assert process.exitcode == 0, f"a worker died with exit code {process.exitcode}"

    events = {p.stem: list(read_journal(p)) for p in journals.glob("*.jsonl")}
    acks = [
        e
        for name, es in events.items()
        if "upload" in name or name == "stable"
        for e in es
        if e["event"] == "ack"
    ]
    changing_acks = [
        e for name, es in events.items() if "upload" in name for e in es if e["event"] == "ack"
    ]
    refused = [e for es in events.values() for e in es if e["event"] == "refused"]
    errors = [e for es in events.values() for e in es if e["event"] == "error"]

    from optuna_cas import Digest
    from optuna_cas.chunks.layout import CHUNK_THRESHOLD

    store = _sources.open_store(spec)  # a fresh process view of the store
    lost, torn = [], []
    for ack in acks:
        try:
            with store.open_reader(ack["id"]) as reader:
                data = reader.read()
        except Exception as e:  # an acknowledged upload that cannot be read back is lost
            lost.append((ack["id"], repr(e)))
            continue
        if str(Digest.of_bytes(data)) != ack["digest"] or not _sources.holds_one_version(data):
            torn.append(ack["id"])
    gc_runs = [e for e in events.get("gc", []) if e["event"] == "gc"]
    record(
        f"changing_sources_{kind}",
        {
            "seconds": SECONDS,
            "checkpoint_rewrites": len(events.get("train", [])),
            "acknowledged": len(acks),
            "acknowledged_from_changing_file": len(changing_acks),
            "acknowledged_chunked": sum(a["size"] >= CHUNK_THRESHOLD for a in acks),
            "refused_changed_source": len(refused),
            "gc_runs": len(gc_runs),
            "gc_deleted_blobs": sum(e["deleted"] for e in gc_runs),
            "failed_after_retries": len(errors),
            "lost": len(lost),
            "torn": len(torn),
        },
    )
    assert lost == [] and torn == []
    assert len(changing_acks) >= 5 and len(refused) >= 1  # the scenario really raced
    assert len(gc_runs) >= 3
