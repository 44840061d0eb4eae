"""Digest values, windowed file hashing, the file-digest memo and the overlapped local copy."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import FileSystemArtifactStore
from optuna_cas.backends.local import TEMP_PREFIX
from optuna_cas.backends.remote_io import remaining_size
from optuna_cas.content import DEFAULT_FILE_DIGESTS
from optuna_cas.digest import (
    HASH_WINDOW,
    Digest,
    VerifyingReader,
    hash_fd,
    hash_private_range,
    new_blake3,
)
from optuna_cas.exceptions import IntegrityError
from optuna_cas.ingest import OVERLAP_MIN_BYTES as _STAGE_MIN_BYTES
from tests.conftest import random_bytes


@pytest.mark.parametrize(
    "size", [1, 4095, 4097, HASH_WINDOW - 1, HASH_WINDOW, HASH_WINDOW + 1, 2 * HASH_WINDOW + 17]
)
@pytest.mark.parametrize("start", [0, 1, 4096, 70_000])
def test_windowed_hash_matches_whole_hash(tmp_path: Path, size: int, start: int) -> None:
    data = random_bytes(size, seed=size)
    path = tmp_path / "f"
    path.write_bytes(data)
    expected = Digest.of_bytes(data[min(start, size) :])
    with open(path, "rb") as f:
        f.seek(min(start, size))
        assert hash_fd(f.fileno(), min(start, size)) == expected
        assert f.tell() == min(start, size)  # pread: the position is untouched
        hasher = new_blake3(size)
        hash_private_range(f.fileno(), hasher, min(start, size), size)
        assert hasher.hexdigest() == expected.hexdigest


def test_digest_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="hex digest"):
        Digest("xyz", 1)
    with pytest.raises(ValueError, match="size"):
        Digest("a" * 64, -1)
    with pytest.raises(ValueError, match="algorithm"):
        Digest("a" * 64, 1, algorithm="md5")
    with pytest.raises(ValueError, match="blake3:<hex>"):
        Digest.parse("nocolon", 1)


def test_verifying_reader_verifies_with_the_last_byte() -> None:
    good = Digest.of_bytes(b"abcdef")
    reader = VerifyingReader(io.BytesIO(b"abcdef"), good, name="x")
    assert reader.read(3) == b"abc" and not reader.verified
    assert reader.read(3) == b"def" and reader.verified  # before EOF was seen
    # The read that brings the last byte raises: its bytes never reach the caller.
    damaged = VerifyingReader(io.BytesIO(b"abcdeX"), good, name="x")
    assert damaged.read(3) == b"abc"
    with pytest.raises(IntegrityError, match="does not match"):
        damaged.read(3)
    with pytest.raises(IntegrityError, match="got 5 bytes, expected 6"):
        VerifyingReader(io.BytesIO(b"abcde"), good, name="x").read()
    extra = VerifyingReader(io.BytesIO(b"abcdefg"), good, name="x")
    assert extra.read(6) == b"abcdef"
    with pytest.raises(IntegrityError, match="more than the expected 6 bytes"):
        extra.read()


class _CountingBytesIO(io.BytesIO):
    """Counts the bytes read from it (an observer of our own stream, not a patch)."""

    read_bytes = 0

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        self.read_bytes += n
        return n


def test_asking_a_verifying_reader_its_size_reads_nothing() -> None:
    # An S3/GCS write asks how much is left (seek to the end and back) to send a large
    # stream in parts at once; before, a verifying reader refused SEEK_END, and every pack
    # was first read into a part-sized head (a part-sized allocation per pack).
    data = os.urandom(100_000)
    source = _CountingBytesIO(data)
    reader = io.BufferedReader(VerifyingReader(source, Digest.of_bytes(data), name="x"))
    assert remaining_size(reader) == len(data)
    assert source.read_bytes == 0
    assert reader.read() == data and source.read_bytes == len(data)


def test_a_verifying_reader_rewound_after_a_move_verifies_everything_again() -> None:
    data = os.urandom(10_000)
    reader = VerifyingReader(io.BytesIO(data), Digest.of_bytes(data), name="x")
    assert reader.seek(-10, io.SEEK_END) == len(data) - 10 == reader.tell()
    assert reader.read() == data[-10:] and reader.verified
    assert reader.seek(0) == 0 and reader.read() == data and reader.verified


def test_unchanged_file_is_not_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna_cas.blobstore as content_module

    store = FileSystemArtifactStore(tmp_path / "s")
    path = tmp_path / "ckpt.bin"
    path.write_bytes(random_bytes(100_000))
    monkeypatch.setattr(DEFAULT_FILE_DIGESTS, "_settled_ns", 0)  # no 2 s wait here
    calls = []
    real = content_module.copy_hashing
    monkeypatch.setattr(content_module, "copy_hashing", lambda *a: calls.append(1) or real(*a))
    first = store.put("a", path)
    second = store.put("b", path)
    assert first.digest == second.digest and len(calls) == 1
    path.write_bytes(random_bytes(100_000, seed=9))  # any write changes mtime/ctime
    third = store.put("c", path)
    assert len(calls) == 2 and third.digest != first.digest
    with store.open_reader("c") as reader:
        assert reader.read() == path.read_bytes()


def test_recently_changed_files_are_not_memoised(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path / "s")
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"just written")
    store.put("a", path)
    assert (
        DEFAULT_FILE_DIGESTS.get(os.stat(path)) is None
    )  # a write in the same tick would be invisible


@pytest.mark.parametrize("present", [False, True])
def test_large_file_copy_overlapped_with_hash(tmp_path: Path, present: bool) -> None:
    store = FileSystemArtifactStore(tmp_path / "s")
    data = random_bytes(_STAGE_MIN_BYTES + 12_345, seed=3)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    if present:
        (tmp_path / "copy.bin").write_bytes(data)
        store.put("first", tmp_path / "copy.bin")  # a different file with the same bytes
    blobs_before = (
        {p for p in (tmp_path / "s" / "blobs").rglob("*") if p.is_file()} if present else set()
    )
    ref = store.put("big", path)
    assert ref.digest == Digest.of_bytes(data)
    with store.open_reader("big") as reader:
        assert reader.read() == data
    files = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(TEMP_PREFIX)]  # aborted or published
    if present:
        after = {p for p in (tmp_path / "s" / "blobs").rglob("*") if p.is_file()}
        assert after == blobs_before  # dedup: the staged copy was dropped


def test_large_file_changed_during_overlapped_upload_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna_cas.blobstore as content_module

    store = FileSystemArtifactStore(tmp_path / "s")
    store.content.chunk_threshold = 2**62  # the whole-blob path (chunked: the test below)
    path = tmp_path / "big.bin"
    path.write_bytes(random_bytes(_STAGE_MIN_BYTES + 1))
    real = content_module.copy_hashing

    def copy_then_append(*args):  # type: ignore[no-untyped-def]
        digest = real(*args)
        with open(path, "ab") as g:
            g.write(b"more")
        return digest

    monkeypatch.setattr(content_module, "copy_hashing", copy_then_append)
    with pytest.raises(IntegrityError, match="changed while it was being uploaded"):
        store.put("a", path)
    assert list(store.content.iter_blobs()) == []


def test_large_file_changed_during_chunked_upload_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna_cas.chunks.store as chunk_store

    store = FileSystemArtifactStore(tmp_path / "s")
    path = tmp_path / "big.bin"
    path.write_bytes(random_bytes(9 * 1024 * 1024))

    class AppendAfterReading(chunk_store.Chunker):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from super().__iter__()
            with open(path, "ab") as g:
                g.write(b"more")

    monkeypatch.setattr(chunk_store, "Chunker", AppendAfterReading)
    with pytest.raises(IntegrityError, match="changed while it was being uploaded"):
        store.put("a", path)
    assert list(store.content.chunks.manifest_hexdigests()) == []
    assert list(store.content.iter_ref_ids()) == []


@pytest.mark.parametrize("size", [0, 1, 4096, 1024 * 1024 - 1, 1024 * 1024 + 1])
def test_hash_fd_of_files_around_its_buffer_sizes(size: int, tmp_path: Path) -> None:
    data = random_bytes(size, seed=size)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert hash_fd(fd) == Digest.of_bytes(data)
        assert size == 0 or hash_fd(fd, 1) == Digest.of_bytes(data[1:])
    finally:
        os.close(fd)


@pytest.mark.parametrize("claimed", [0, 10])
def test_hash_fd_reads_past_a_size_that_says_less(
    claimed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pseudo-file (or a file still growing) holds more than fstat says: read to EOF anyway.
    import types

    import optuna_cas.digest as digest_module

    data = random_bytes(300 * 1024, seed=5)  # more than any first buffer
    (tmp_path / "f").write_bytes(data)
    lying = types.SimpleNamespace(
        fstat=lambda fd: os.stat_result((0,) * 6 + (claimed,) + (0,) * 3), preadv=os.preadv
    )
    monkeypatch.setattr(digest_module, "os", lying)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert hash_fd(fd) == Digest.of_bytes(data)
    finally:
        os.close(fd)
