"""Hostile sources, process models and local state (DESIGN.md invariants 10-13).

Each test reproduces a way the first release lost or corrupted data, crashed or hung, and
fails on that release.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from optuna_cas import FileSystemArtifactStore, MemoryArtifactStore, download_artifact
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.content import ContentStore, blob_key
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, UnsupportedSourceError
from optuna_cas.refs import INLINE_LIMIT
from tests.conftest import random_bytes

MiB = 1024 * 1024


# -- 1. the upload path never deletes a published blob --------------------------------------


class _RacingBackend(MemoryBackend):
    """Another uploader publishes the same bytes right after our existence check, and the
    training loop touches our source file while we upload it."""

    def __init__(self, data: bytes, source: Path) -> None:
        super().__init__()
        self._data = data
        self._source = source
        self.raced = False

    def stat(self, key: str):  # type: ignore[no-untyped-def]
        info = super().stat(key) if self.exists(key) else None
        if key.startswith("blobs/") and not self.raced:
            self.raced = True
            # The concurrent uploader: its blob and ref land, and it returns to its caller.
            super().write(key, io.BytesIO(self._data))
            super().write("refs/theirs", io.BytesIO(_ref_json("theirs", self._data)))
        if info is None:
            raise ArtifactNotFound(f"no object {key!r}")
        return info

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        super().write(key, content_body, if_absent=if_absent)
        if key.startswith("blobs/"):
            os.chmod(self._source, 0o600)  # a chmod moves ctime: our upload must fail...


def _ref_json(artifact_id: str, data: bytes) -> bytes:
    from optuna_cas.refs import ArtifactRef

    return ArtifactRef(artifact_id, Digest.of_bytes(data)).to_json()


def test_a_failed_upload_never_deletes_a_blob_someone_else_published(tmp_path: Path) -> None:
    data = b"checkpoint bytes" * 1000
    source = tmp_path / "model.pt"
    source.write_bytes(data)
    backend = _RacingBackend(data, source)
    store = ContentStore(backend)
    with pytest.raises(IntegrityError, match=r"model\.pt.*changed while it was being uploaded"):
        store.put_artifact("ours", source)
    assert backend.raced
    assert not store.has_ref("ours")  # ...and record nothing for it,
    with store.open_artifact("theirs") as reader:  # ...but never break the other upload.
        assert reader.read() == data


def test_changed_source_records_nothing_on_local_store(tmp_path: Path) -> None:
    import optuna_cas.blobstore as content_module

    store = FileSystemArtifactStore(tmp_path / "s")
    path = tmp_path / "model.pt"
    path.write_bytes(random_bytes(3 * MiB))
    store.put("first", path)  # the same bytes, acknowledged earlier
    real = content_module.copy_hashing

    def copy_then_touch(*args: Any) -> Digest:
        digest = real(*args)
        os.utime(path)  # even a touch means "not the bytes the caller meant"
        return digest

    content_module.copy_hashing = copy_then_touch  # type: ignore[assignment]
    try:
        with pytest.raises(IntegrityError, match="changed while it was being uploaded"):
            store.put("second", path)
    finally:
        content_module.copy_hashing = real  # type: ignore[assignment]
    with store.open_reader("first") as reader:
        assert reader.read() == path.read_bytes()


# -- 2. truncated sources: never SIGBUS ------------------------------------------------------

_TRUNCATE_DURING_UPLOAD = """
import os, sys, threading, time
from optuna_cas import FileSystemArtifactStore, MemoryArtifactStore
from optuna_cas.exceptions import IntegrityError

kind, path, store_dir = sys.argv[1], sys.argv[2], sys.argv[3]
store = FileSystemArtifactStore(store_dir) if kind == "local" else MemoryArtifactStore()
outcomes = []
for attempt in range(6):
    with open(path, "wb") as f:
        f.write(os.urandom(48 * 1024 * 1024))
    def truncate():
        time.sleep(0.002 * attempt)
        with open(path, "wb") as f:  # torch.save: truncate, then rewrite
            f.write(b"short")
    t = threading.Thread(target=truncate)
    t.start()
    try:
        store.put(f"a{attempt}", path)
        outcomes.append("ok")
    except IntegrityError:
        outcomes.append("refused")
    t.join()
print(" ".join(outcomes))
"""


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_source_truncated_mid_upload_never_kills_the_process(tmp_path: Path, kind: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _TRUNCATE_DURING_UPLOAD,
            kind,
            str(tmp_path / "m.pt"),
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])  # -7 is SIGBUS
    assert len(result.stdout.split()) == 6


def test_files_that_cannot_be_memory_mapped_upload(tmp_path: Path) -> None:
    sysfs = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not sysfs.exists():  # pragma: no cover - every Linux we run on has it
        pytest.skip("no sysfs file to try")
    for store in (FileSystemArtifactStore(tmp_path / "s"), MemoryArtifactStore()):
        ref = store.put("sysfs", sysfs)
        with store.open_reader("sysfs") as reader:
            assert reader.read() == sysfs.read_bytes() and ref.size > 0


# -- 3. forked, forkserver and spawned workers after the parent hashed -----------------------


def _upload_in_child(store_dir: str, path: str, queue: Any) -> None:
    store = FileSystemArtifactStore(store_dir)
    ref = store.put("child", path)
    queue.put(str(ref.digest))


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_workers_hash_after_the_parent_did(tmp_path: Path, method: str) -> None:
    data = random_bytes(24 * MiB, seed=5)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    parent = FileSystemArtifactStore(tmp_path / "s")
    parent.put("parent", path)  # multi-threaded BLAKE3 has run in this process now
    memo_path = tmp_path / "other.bin"
    memo_path.write_bytes(random_bytes(24 * MiB, seed=6))  # a file the parent never hashed
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(
        target=_upload_in_child, args=(str(tmp_path / "s"), str(memo_path), queue)
    )
    child.start()
    child.join(timeout=120)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, f"a {method} child hung on its first large hash"
    assert child.exitcode == 0
    assert queue.get(timeout=5) == str(Digest.of_bytes(memo_path.read_bytes()))


# -- 4. special files as sources and at keys ---------------------------------------------------


def test_size_zero_pseudo_file_is_read_to_its_end(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path / "s")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    store.put("empty", empty)
    ref = store.put("proc", "/proc/version")
    expected = Path("/proc/version").read_bytes()
    assert ref.size == len(expected) > 0 and ref.digest == Digest.of_bytes(expected)
    with store.open_reader("proc") as reader:
        assert reader.read() == expected
    with store.open_reader("empty") as reader:  # the empty-content blob is still empty
        assert reader.read() == b""


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "socket"])
def test_special_files_are_refused_as_sources(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "source"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")  # would grow the store without bound
    elif kind == "directory":
        path.mkdir()
    else:
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    store = FileSystemArtifactStore(tmp_path / "s")
    outcome: list[BaseException] = []

    def put() -> None:
        try:
            store.put("x", path)
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=put, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), f"uploading a {kind} hangs"
    assert outcome and isinstance(outcome[0], UnsupportedSourceError), outcome
    assert str(path) in str(outcome[0])
    assert not store.content.has_ref("x")
    assert list(store.content.iter_blobs()) == []


def _run_with_timeout(fn: Any, seconds: float = 20) -> BaseException | None:
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), "blocked"
    return outcome[0]


@pytest.mark.parametrize("where", ["blob", "ref", "legacy"])
def test_fifo_at_a_key_never_blocks_reads(tmp_path: Path, where: str) -> None:
    store = FileSystemArtifactStore(tmp_path / "s")
    root = tmp_path / "s"
    store.write("a", io.BytesIO(b"payload" * 1000))  # > INLINE_LIMIT: a blob to replace
    ref = store.get_ref("a")
    target = {
        "blob": root / blob_key(ref.digest),
        "ref": root / "refs" / "a",
        "legacy": root / "legacy-id",
    }[where]
    if target.exists():
        target.unlink()
    os.mkfifo(target)
    artifact_id = "legacy-id" if where == "legacy" else "a"
    error = _run_with_timeout(
        lambda: download_artifact(
            artifact_store=store, file_path=str(tmp_path / "out"), artifact_id=artifact_id
        )
    )
    assert isinstance(error, IntegrityError | ArtifactNotFound), error
    assert "FIFO" in str(error) or "missing" in str(error)
    assert not (tmp_path / "out").exists()
    error = _run_with_timeout(lambda: store.open_reader(artifact_id).read())
    assert error is not None


def test_directory_at_a_key_leaks_no_descriptor(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path / "s")
    store.write("a", io.BytesIO(b"p" * (INLINE_LIMIT + 1)))  # a blob, not inline content
    blob = tmp_path / "s" / blob_key(store.get_ref("a").digest)
    blob.unlink()
    blob.mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with pytest.raises(ArtifactNotFound) as info:
            store.open_reader("a")
        assert "blob" in str(info.value) and "Errno" not in str(info.value)
    assert len(os.listdir("/proc/self/fd")) <= before + 2


# -- 8. smaller ones ----------------------------------------------------------------------------


def test_corrupt_blob_of_the_right_size_is_repaired_by_uploading_the_same_bytes(
    tmp_path: Path,
) -> None:
    store = FileSystemArtifactStore(tmp_path / "s")
    data = random_bytes(100_000, seed=2)
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    store.put("a", path)
    blob = tmp_path / "s" / blob_key(store.get_ref("a").digest)
    corrupt = bytearray(blob.read_bytes())
    corrupt[500] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(corrupt))
    with pytest.raises(IntegrityError):
        store.open_reader("a").read()
    store.put("b", path)  # the same bytes again
    for artifact_id in ("a", "b"):
        with store.open_reader(artifact_id) as reader:
            assert reader.read() == data


def test_download_errors_name_the_destination_not_a_temp_file(tmp_path: Path) -> None:
    store = MemoryArtifactStore()
    store.write("a", io.BytesIO(b"x"))
    target = tmp_path / "no-such-dir" / "model.pt"
    with pytest.raises(FileNotFoundError) as info:
        download_artifact(artifact_store=store, file_path=str(target), artifact_id="a")
    assert str(target) in str(info.value) and ".partial" not in str(info.value)


def test_upload_errors_name_the_file(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        store.put("a", tmp_path / "missing.pt")


def test_stream_sources_are_not_closed_or_moved_wrongly() -> None:
    store = MemoryArtifactStore()
    stream = io.BytesIO(b"header" + b"x" * 100)
    stream.seek(6)
    ref = store.put("a", stream)
    assert ref.size == 100 and not stream.closed and stream.tell() == 106
    del ref
    import gc as garbage

    garbage.collect()
    assert not stream.closed


class _SeeksToItsEndOnly(io.BytesIO):
    """A stream that can seek to its end but not back: measuring it leaves it at its end."""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET and self.tell() == len(self.getbuffer()):
            raise OSError(29, "Illegal seek")
        return super().seek(offset, whence)


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_stream_that_cannot_seek_back_is_never_stored_as_empty(tmp_path: Path, kind: str) -> None:
    # Measuring a stream seeks to its end and back; a failed seek back, swallowed, left it at
    # its end, and a local store stored an empty artifact (found in review).
    store = MemoryArtifactStore() if kind == "memory" else FileSystemArtifactStore(tmp_path)
    with pytest.raises(OSError, match="Illegal seek"):
        store.write("a", _SeeksToItsEndOnly(b"x" * (1 << 20)))
    with pytest.raises(ArtifactNotFound):
        store.open_reader("a")


# -- gc's last look and its delete ------------------------------------------------------------


@pytest.mark.parametrize("reuse", ["touch", "republish"])
def test_gc_never_deletes_a_blob_reused_between_its_last_look_and_the_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reuse: str
) -> None:
    from optuna_cas import gc
    from optuna_cas.blobstore import BlobStore

    store = FileSystemArtifactStore(tmp_path / "s")
    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"old checkpoint" * 1000)
    store.put("old", path)
    store.remove("old")  # unreferenced: gc's candidate
    blob = tmp_path / "s" / blob_key(Digest.of_bytes(path.read_bytes()))
    os.utime(blob, (1, 1))  # and old
    real_restat = BlobStore.restat_blob

    def restat_then_race(self: Any, info: Any) -> Any:
        seen = real_restat(self, info)
        # An upload re-uses the blob right after gc's last look, and returns.
        if reuse == "touch":
            os.utime(blob)
            store.content.put_ref(_ref("new", path))
        else:
            store.put("new", path)
        return seen

    monkeypatch.setattr(BlobStore, "restat_blob", restat_then_race)
    gc(store, grace_period=0, allow_short_grace=True)
    with store.open_reader("new") as reader:
        assert reader.read() == path.read_bytes()


def _ref(artifact_id: str, path: Path) -> Any:
    from optuna_cas.refs import ArtifactRef

    return ArtifactRef(artifact_id, Digest.of_bytes(path.read_bytes()))
