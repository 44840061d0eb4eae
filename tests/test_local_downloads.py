"""Downloads from a local store: its files copied in the kernel and checked as the copy lands.

Whole blobs and chunked files alike; a damaged store file fails the download (through the
verifying stream, which names the problem) and leaves nothing behind.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

import optuna_cas.blobstore as blobstore
import optuna_cas.chunks.store as chunk_store
from optuna_cas.backends.local import LocalBackend
from optuna_cas.content import ContentStore
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.middleware.backoff import RetryingBackend
from optuna_cas.middleware.retry import Retrier, RetryPolicy
from optuna_cas.refs import ArtifactRef

THRESHOLD = 256 * 1024
WHOLE = 100_000  # below the threshold: one blob
CHUNKED = 3 * 1024 * 1024 + 5  # above it: chunks in a pack


def _upload(tmp_path: Path, size: int) -> tuple[ContentStore, ArtifactRef, bytes]:
    store = ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
    data = random.Random(size).randbytes(size)
    return store, store.put_artifact("a", io.BytesIO(data)), data


def _stored_file(tmp_path: Path, size: int) -> Path:
    """The blob of a whole file, or the pack holding a chunked one."""
    top = "blobs" if size == WHOLE else "packs"
    (found,) = [p for p in (tmp_path / "store" / top).rglob("*") if p.is_file()]
    found.chmod(0o644)
    return found


def _out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


@pytest.mark.parametrize("retried", [False, True], ids=["plain", "behind-retries"])
@pytest.mark.parametrize("size", [WHOLE, CHUNKED])
def test_a_local_download_copies_in_the_kernel(
    tmp_path: Path, size: int, retried: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Behind Backoff's retries too: its readers are not files, so the store reads the files
    # through the local layer underneath.
    store, ref, data = _upload(tmp_path, size)
    if retried:
        backend = RetryingBackend(store.backend, Retrier(RetryPolicy()))
        store = ContentStore(backend, chunk_threshold=THRESHOLD)

    def streamed(*args: object) -> None:
        raise AssertionError("read through this process instead of copied in the kernel")

    for module in (blobstore, chunk_store):
        for name in ("materialize", "materialize_buffers"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, streamed)
    out = _out_dir(tmp_path)
    store.materialize_artifact(ref, out / "model.pt")
    assert (out / "model.pt").read_bytes() == data
    assert os.listdir(out) == ["model.pt"]  # no temp file left


@pytest.mark.parametrize("size", [WHOLE, CHUNKED])
@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_damaged_store_file_fails_the_download_and_leaves_nothing(
    tmp_path: Path, size: int, damage: str
) -> None:
    store, ref, _data = _upload(tmp_path, size)
    victim = _stored_file(tmp_path, size)
    content = bytearray(victim.read_bytes())
    if damage == "truncated":
        del content[len(content) // 2 :]
    else:
        content[len(content) // 2] ^= 0xFF
    victim.write_bytes(content)
    out = _out_dir(tmp_path)
    with pytest.raises(IntegrityError):
        store.materialize_artifact(ref, out / "model.pt")
    assert os.listdir(out) == []


def test_a_longer_blob_fails_but_bytes_past_a_packs_chunks_do_not_matter(tmp_path: Path) -> None:
    """A pack's bytes no entry names are never copied; a blob must be exactly its digest."""
    whole = tmp_path / "whole"
    store, ref, _ = _upload(whole, WHOLE)
    with _stored_file(whole, WHOLE).open("ab") as f:
        f.write(b"x")
    with pytest.raises(IntegrityError):
        store.materialize_artifact(ref, _out_dir(whole) / "model.pt")

    chunked = tmp_path / "chunked"
    store, ref, data = _upload(chunked, CHUNKED)
    with _stored_file(chunked, CHUNKED).open("ab") as f:
        f.write(b"x")
    store.materialize_artifact(ref, _out_dir(chunked) / "model.pt")
    assert (chunked / "out" / "model.pt").read_bytes() == data


@pytest.mark.parametrize("size", [WHOLE, CHUNKED])
def test_a_missing_store_file_is_not_found(tmp_path: Path, size: int) -> None:
    store, ref, _ = _upload(tmp_path, size)
    _stored_file(tmp_path, size).unlink()
    out = _out_dir(tmp_path)
    with pytest.raises(ArtifactNotFound, match="verify"):
        store.materialize_artifact(ref, out / "model.pt")
    assert os.listdir(out) == []


@pytest.mark.parametrize("size", [WHOLE, CHUNKED])
def test_an_existing_target_is_never_overwritten(tmp_path: Path, size: int) -> None:
    store, ref, _ = _upload(tmp_path, size)
    out = _out_dir(tmp_path)
    (out / "model.pt").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        store.materialize_artifact(ref, out / "model.pt")
    assert (out / "model.pt").read_bytes() == b"mine"
    assert os.listdir(out) == ["model.pt"]


def test_a_full_disk_during_a_download_names_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel names no file in ENOSPC: the bare "[Errno 28] No space left on device" left
    # a user whose store had room guessing which disk was full (found by a probe).
    import errno

    from optuna_cas import FileSystemArtifactStore, download_artifact

    store = FileSystemArtifactStore(tmp_path / "store")
    store.write("a", io.BytesIO(b"x" * 10_000))

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ContentStore, "materialize_artifact", full)
    target = tmp_path / "out" / "a.bin"
    with pytest.raises(OSError, match="No space left on device") as caught:
        download_artifact(artifact_store=store, file_path=str(target), artifact_id="a")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
