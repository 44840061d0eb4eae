"""Running out of space while storing names the disk that filled, and records nothing.

The kernel names no file in ``[Errno 28] No space left on device``: a user whose download
directory had room was left to guess which disk was full (found by a probe). The disks are
filled for real here: each case runs in a child process whose file size limit
(``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored) makes any write past 1 MiB fail with ``EFBIG``,
one of the errors ``naming_full_disk`` treats as out of space.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_CHILD = textwrap.dedent(
    """
    import io, json, os, random, resource, signal, sys, tempfile
    from optuna_cas.backends.local import LocalBackend
    from optuna_cas.backends.memory import MemoryBackend
    from optuna_cas.content import ContentStore
    from optuna_cas.operations.sync import sync
    from optuna_cas.stores.base import ContentAddressedArtifactStore

    case, root, size, threshold = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    data = random.Random(size).randbytes(size)
    source = os.path.join(root, "source.bin")
    with open(source, "wb") as f:
        f.write(data)
    if case == "sync":
        here = ContentAddressedArtifactStore(ContentStore(MemoryBackend(), chunk_threshold=threshold))
        here.write("a", io.BytesIO(data))
    if case == "read":
        stored = ContentStore(LocalBackend(os.path.join(root, "read")), chunk_threshold=threshold)
        stored.put_artifact("a", io.BytesIO(data))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, resource.RLIM_INFINITY))
    local = ContentStore(LocalBackend(os.path.join(root, "store")), chunk_threshold=threshold)
    remote = ContentStore(MemoryBackend(), chunk_threshold=threshold)
    try:
        if case == "local":
            local.put_artifact("a", source)
        elif case == "remote":
            remote.put_artifact("a", source)
        elif case == "pipe":
            r, w = os.pipe()
            if os.fork() == 0:
                os.close(r)
                try:
                    os.write(w, data)
                except BrokenPipeError:
                    pass
                os._exit(0)
            os.close(w)
            local.put_artifact("a", os.fdopen(r, "rb"))
        elif case == "sync":
            sync(here, ContentAddressedArtifactStore(local))
        elif case == "read":
            with stored.open_artifact("a") as reader:
                assert reader.read(100) == data[:100] and reader.read() == data[100:]
        print(json.dumps({"raised": None}))
    except OSError as e:
        target = remote if case == "remote" else local
        print(json.dumps({
            "raised": type(e).__name__, "filename": e.filename, "message": str(e),
            "refs": list(target.iter_ref_ids()), "tmpdir": tempfile.gettempdir(),
        }))
    """
)


def _run(case: str, root: Path, size: int, threshold: int = 256 * 1024) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, case, str(root), str(size), str(threshold)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "TMPDIR": str(root)},
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("threshold", [2**62, 256 * 1024], ids=["whole", "chunked"])
def test_a_full_store_disk_names_the_store(tmp_path: Path, threshold: int) -> None:
    outcome = _run("local", tmp_path, 3 * 1024 * 1024, threshold)
    assert outcome["raised"] == "OSError", outcome
    assert outcome["filename"] == f"file://{tmp_path}/store", outcome
    assert "writing to the artifact store" in str(outcome["message"])
    assert outcome["refs"] == []  # nothing recorded


def test_a_remote_upload_names_tmpdir_where_its_packs_spool(tmp_path: Path) -> None:
    outcome = _run("remote", tmp_path, 3 * 1024 * 1024)
    assert outcome["raised"] == "OSError", outcome
    assert outcome["filename"] == str(tmp_path) == outcome["tmpdir"], outcome
    assert "spool their packs" in str(outcome["message"])
    assert outcome["refs"] == []


def test_a_pipe_that_fills_tmpdir_names_tmpdir(tmp_path: Path) -> None:
    outcome = _run("pipe", tmp_path, 2 * 1024 * 1024)
    assert outcome["raised"] == "OSError", outcome
    assert outcome["filename"] == str(tmp_path), outcome
    assert "where a pipe is spooled" in str(outcome["message"])
    assert outcome["refs"] == []


def test_a_sync_into_a_full_disk_names_the_destination(tmp_path: Path) -> None:
    outcome = _run("sync", tmp_path, 3 * 1024 * 1024)
    assert outcome["raised"] == "OSError", outcome
    assert outcome["filename"] == f"file://{tmp_path}/store", outcome
    assert outcome["refs"] == []


def test_a_read_needs_no_room_in_tmpdir(tmp_path: Path) -> None:
    # open_reader copies a whole file of 1 to 8 MiB, checked, into $TMPDIR before handing
    # out a byte; with no room there it streams it instead, checked at its end (review).
    outcome = _run("read", tmp_path, 3 * 1024 * 1024, 2**62)
    assert outcome == {"raised": None}, outcome
