"""Content store invariants: dedup, blob before ref, verify on read, bad input."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from optuna_cas.backends.base import Backend
from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.chunks.layout import manifest_key
from optuna_cas.content import ContentStore, blob_key
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, InvalidKeyError
from optuna_cas.ingest import (
    FINGERPRINT_MIN_BYTES,
    FileDigestMemo,
    FileSource,
    copy_hashing,
    fingerprint,
)
from optuna_cas.refs import ArtifactRef
from optuna_cas.testing.streams import NonSeekable
from tests.conftest import random_bytes
from tests.support.stores import HandsOverBackend

# Payloads for blob mechanics: files of at most INLINE_LIMIT (4 KiB) live inside their ref.
SAME = b"same bytes" * 500
GOOD = b"good bytes" * 500
EVIL = b"evil bytes" * 500


class RecordingBackend(MemoryBackend):
    """Memory backend that logs every write, to check order and dedup."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, key: str, content_body, *, if_absent: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.writes.append(key)
        super().write(key, content_body, if_absent=if_absent)


def test_blob_key_has_algorithm_and_fanout() -> None:
    digest = Digest.of_bytes(b"abc")
    key = blob_key(digest)
    assert key == f"blobs/blake3/{digest.hexdigest[:2]}/{digest.hexdigest[2:]}"


def test_repeated_put_writes_blob_once_and_ref_each_time() -> None:
    backend = RecordingBackend()
    store = ContentStore(backend)
    for i in range(5):
        store.put_artifact(f"id{i}", io.BytesIO(SAME))
    blob_writes = [k for k in backend.writes if k.startswith("blobs/")]
    assert len(blob_writes) == 1
    assert sorted(k for k in backend.writes if k.startswith("refs/")) == [
        f"refs/id{i}" for i in range(5)
    ]


def test_blob_written_before_ref() -> None:
    backend = RecordingBackend()
    ContentStore(backend).put_artifact("a", io.BytesIO(SAME))
    # (then the check of the blob after the ref reads the store's clock: an empty clock/ probe)
    assert [k.split("/")[0] for k in backend.writes] == ["blobs", "refs", "clock"]
    ContentStore(backend).put_artifact("small", io.BytesIO(b"x"))  # inside its ref: one write
    assert [k.split("/")[0] for k in backend.writes] == ["blobs", "refs", "clock", "refs"]


class FailingBlobBackend(MemoryBackend):
    def write(self, key: str, content_body, *, if_absent: bool = False) -> None:  # type: ignore[no-untyped-def]
        if key.startswith("blobs/"):
            raise OSError("disk full")
        super().write(key, content_body, if_absent=if_absent)


def test_failed_blob_write_leaves_no_ref() -> None:
    store = ContentStore(FailingBlobBackend())
    with pytest.raises(OSError, match="disk full"):
        store.put_artifact("a", io.BytesIO(SAME))
    assert not store.has_ref("a")


@pytest.mark.parametrize("kind", ["bytesio", "nonseekable", "file", "path"])
def test_put_from_every_source_kind(kind: str, tmp_path: Path) -> None:
    data = random_bytes(3 * 1024 * 1024 + 1, seed=7)
    store = ContentStore(LocalBackend(tmp_path / "s"))
    source_path = tmp_path / "src"
    source_path.write_bytes(data)
    if kind == "bytesio":
        digest = store.put_blob(io.BytesIO(data))
    elif kind == "nonseekable":
        digest = store.put_blob(NonSeekable(data))  # type: ignore[arg-type]
    elif kind == "file":
        with open(source_path, "rb") as f:
            digest = store.put_blob(f)
            assert f.tell() == len(data)
    else:
        digest = store.put_blob(source_path)
    assert digest == Digest.of_bytes(data)
    with store.open_blob(digest) as reader:
        assert reader.read() == data


def corrupt(backend: LocalBackend, key: str, data: bytes) -> None:
    (backend.root / key).write_bytes(data)


def test_corrupt_blob_raises_integrity_error_on_read(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    store = ContentStore(backend)
    ref = store.put_artifact("a", io.BytesIO(GOOD))
    corrupt(backend, blob_key(ref.digest), EVIL)  # same size, other content
    with pytest.raises(IntegrityError, match="does not match"), store.open_artifact("a") as r:
        r.read()
    corrupt(backend, blob_key(ref.digest), b"short")
    with (
        pytest.raises(IntegrityError, match="got 5 bytes, expected 5000"),
        store.open_artifact("a") as r,
    ):
        r.read()
    corrupt(backend, blob_key(ref.digest), GOOD + b" and more")
    with pytest.raises(IntegrityError, match="more than"), store.open_artifact("a") as r:
        r.read()


def test_a_download_writes_a_blob_as_the_backend_hands_it_over(tmp_path: Path) -> None:
    # A whole blob from a remote store is written from the bytes objects its raw stream
    # returns (botocore's: the bytes the socket was read into), not copied through a buffer
    # by readinto. Checked all the same: a wrong blob leaves nothing behind.
    backend = HandsOverBackend()
    store = ContentStore(backend, chunk_threshold=None)
    data = random_bytes(3 * 1024 * 1024 + 7)
    ref = store.put_artifact("a", io.BytesIO(data))
    store.materialize_artifact(ref, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    backend.write(blob_key(ref.digest), io.BytesIO(data[:-1] + b"!"))
    with pytest.raises(IntegrityError, match="does not match"):
        store.materialize_artifact(ref, tmp_path / "bad")
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_blob_of_wrong_size_is_repaired_by_next_upload(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    store = ContentStore(backend)
    ref = store.put_artifact("a", io.BytesIO(GOOD))
    corrupt(backend, blob_key(ref.digest), b"trunc")
    assert not store.has_blob(ref.digest)
    store.put_artifact("b", io.BytesIO(GOOD))
    with store.open_artifact("a") as r:
        assert r.read() == GOOD


def test_blob_corrupted_at_the_same_size_is_repaired_by_next_upload(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    store = ContentStore(backend)
    ref = store.put_artifact("a", io.BytesIO(GOOD))
    corrupt(backend, blob_key(ref.digest), EVIL)  # a size check cannot see it
    store.put_artifact("b", io.BytesIO(GOOD))
    with store.open_artifact("a") as r:
        assert r.read() == GOOD


def test_reupload_to_a_local_store_keeps_the_stored_blob_and_leaves_no_temp(
    tmp_path: Path,
) -> None:
    backend = LocalBackend(tmp_path / "s")
    store = ContentStore(backend)
    ref = store.put_artifact("a", io.BytesIO(SAME))
    blob = backend.root / blob_key(ref.digest)
    before = blob.stat()
    store.put_artifact("b", io.BytesIO(SAME))
    after = blob.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in (backend.root / "blobs").iterdir()] == ["blake3"]


@pytest.mark.parametrize("source", ["fresh path", "dedup path", "fresh stream"])
def test_blob_collected_right_after_the_ref_is_written_is_stored_again(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A concurrent gc judged the blob unreferenced before the ref existed, and deletes it
    # right after the ref is written: the re-check after the ref must see it gone, whether
    # this upload published the blob itself (one lstat) or found it stored (full check).
    store = ContentStore(LocalBackend(tmp_path / "s"))
    data = b"collected by a concurrent gc" * 200
    if source == "dedup path":
        store.put_artifact("earlier", io.BytesIO(data))
        store.remove_ref("earlier")
    put_ref = store.put_ref

    def put_ref_then_gc_runs(ref: ArtifactRef) -> None:
        put_ref(ref)
        store.remove_blob(ref.digest)

    monkeypatch.setattr(store, "put_ref", put_ref_then_gc_runs)
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as stream:
        ref = store.put_artifact("a", stream if source == "fresh stream" else tmp_path / "f")
    assert store.has_blob(ref.digest)
    with store.open_artifact("a") as r:
        assert r.read() == data


def test_missing_blob_behind_ref_names_both(tmp_path: Path) -> None:
    store = ContentStore(LocalBackend(tmp_path / "s"))
    ref = store.put_artifact("a", io.BytesIO(SAME))
    store.remove_blob(ref.digest)
    with pytest.raises(ArtifactNotFound, match=r"Artifact 'a': its content blake3:"):
        store.open_artifact("a")


def test_a_missing_manifest_behind_a_ref_is_not_called_a_blob(tmp_path: Path) -> None:
    store = ContentStore(LocalBackend(tmp_path / "s"), chunk_threshold=256_000)
    ref = store.put_artifact("a", io.BytesIO(random_bytes(1_000_000, seed=5)))
    store.backend.remove(manifest_key(ref.digest))
    with pytest.raises(ArtifactNotFound, match=r"a chunked file's manifest\) is missing"):
        store.open_artifact("a")


@pytest.mark.parametrize("cached", [False, True])
def test_a_missing_pack_behind_a_ref_is_named_by_a_download(tmp_path: Path, cached: bool) -> None:
    # A download of a chunked file missing a pack said "its blob blake3:<file digest> is
    # missing": there is no such blob, and the pack to restore went unnamed (found by a
    # probe; open_reader named it).
    import pickle

    from optuna_cas.chunks.layout import pack_key
    from optuna_cas.exceptions import MissingPackError
    from optuna_cas.middleware.blob_cache import DiskBlobCache

    cache = DiskBlobCache(tmp_path / "cache") if cached else None
    store = ContentStore(LocalBackend(tmp_path / "s"), blob_cache=cache, chunk_threshold=256_000)
    ref = store.put_artifact("a", io.BytesIO(random_bytes(1_000_000, seed=4)))
    (pack,) = store.chunks.manifest(ref.digest).packs
    store.backend.remove(pack_key(pack))
    with pytest.raises(
        ArtifactNotFound, match=rf"Artifact 'a': its pack {pack} is missing from"
    ) as e:
        store.materialize_artifact(store.get_ref("a"), tmp_path / "out")
    assert "blob" not in str(e.value) and "optuna-cas verify" in str(e.value)
    assert not (tmp_path / "out").exists()
    again = pickle.loads(pickle.dumps(e.value))  # errors cross process pools
    assert isinstance(again, MissingPackError) and (str(again), again.pack) == (
        str(e.value),
        str(pack),
    )


def test_malformed_ref_is_an_integrity_error(memory_backend: Backend) -> None:
    memory_backend.write("refs/a", io.BytesIO(b"not json"))
    with pytest.raises(IntegrityError, match="ref 'a' is malformed"):
        ContentStore(memory_backend).get_ref("a")


def test_file_changed_during_upload_is_refused(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import optuna_cas.blobstore as content_module

    path = tmp_path / "f"
    path.write_bytes(b"version 1" * 1000)
    real_copy = content_module.copy_hashing

    def copy_then_modify(*args):  # type: ignore[no-untyped-def]
        digest = real_copy(*args)
        with open(path, "ab") as g:  # the user's training loop appends meanwhile
            g.write(b" and more")
        return digest

    monkeypatch.setattr(content_module, "copy_hashing", copy_then_modify)
    store = ContentStore(LocalBackend(tmp_path / "s"))
    with pytest.raises(IntegrityError, match="changed while it was being uploaded"):
        store.put_artifact("a", path)
    assert list(store.iter_blobs()) == []
    assert not store.has_ref("a")


def test_small_file_changed_while_read_is_refused(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import optuna_cas.content as content_module

    path = tmp_path / "f"
    path.write_bytes(b"version 1")
    real_preadv = os.preadv
    appended = []

    def preadv_then_append(fd: int, buffers: list[memoryview], offset: int) -> int:
        n = real_preadv(fd, buffers, offset)
        if not appended:  # the training loop appends once meanwhile
            with open(path, "ab") as g:
                g.write(b" and more")
            appended.append(True)
        return n

    monkeypatch.setattr(content_module.os, "preadv", preadv_then_append)
    store = ContentStore(LocalBackend(tmp_path / "s"))
    with pytest.raises(IntegrityError, match="changed while it was being uploaded"):
        store.put_artifact("a", path)
    monkeypatch.undo()
    assert not store.has_ref("a")
    assert [p for p in (tmp_path / "s").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "bad", ["", "..", ".", "../x", "/abs", "a/b", "a\\b", "nul\x00", "x" * 300]
)
def test_bad_artifact_ids_rejected_before_io(bad: str) -> None:
    backend = RecordingBackend()
    store = ContentStore(backend)
    with pytest.raises(InvalidKeyError, match=r"^Invalid artifact_id"):
        store.put_artifact(bad, io.BytesIO(b"x"))
    for call in (store.get_ref, store.open_artifact, store.remove_ref):
        with pytest.raises(ValueError, match=r"^Invalid artifact_id"):
            call(bad)
    assert backend.writes == []


# -- a large file saved again (new inode and mtime, as torch.save leaves it) ------------------

RESAVED_SIZE = FINGERPRINT_MIN_BYTES + 12_345


def whole_blob_store(path: Path) -> ContentStore:
    """A store that keeps files of RESAVED_SIZE whole (below its chunk threshold)."""
    return ContentStore(
        LocalBackend(path), file_digests=FileDigestMemo(), chunk_threshold=4 * RESAVED_SIZE
    )


def resave(path: Path, data: bytes) -> None:
    """Write ``data`` as ``torch.save`` does: a new file (new inode and mtime) over the old."""
    temp = path.with_name(path.name + ".new")
    temp.write_bytes(data)
    os.replace(temp, path)


def count_stages(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    staged: list[str] = []
    real_stage = backend.stage

    def stage(area: str):  # type: ignore[no-untyped-def]
        staged.append(area)
        return real_stage(area)

    monkeypatch.setattr(backend, "stage", stage)
    return staged


def fingerprint_of(path: Path) -> bytes | None:
    with FileSource.open(path) as src:
        return fingerprint(src)


def test_a_resaved_file_repairs_a_blob_whose_corruption_put_its_mtime_back(
    tmp_path: Path,
) -> None:
    """A same-size write into the stored blob, its mtime restored (``touch -r``): the
    fingerprint path judged the blob unchanged by size and mtime, trusted it, and the store
    kept bytes that no longer read back (found by a probe). The ctime gives it away."""
    store = whole_blob_store(tmp_path / "s")
    data = random_bytes(RESAVED_SIZE, seed=11)
    path = tmp_path / "model.pt"
    resave(path, data)
    digest = store.put_blob(path)
    blob = tmp_path / "s" / blob_key(digest)
    before = blob.stat()
    with open(blob, "r+b") as f:
        f.seek(4 << 20)
        f.write(bytes(16))
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
    resave(path, data)
    assert store.put_blob(path) == digest
    with store.open_blob(digest) as reader:
        assert reader.read() == data  # repaired by the upload


def test_resaved_identical_file_is_hashed_in_place_not_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = whole_blob_store(tmp_path / "s")
    backend = store.backend
    assert isinstance(backend, LocalBackend)
    data = random_bytes(RESAVED_SIZE, seed=5)
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    first = store.put_artifact("a", path)
    resave(path, data)
    store.clock.now_to_freshen()  # read once per store (an empty temp file, staged, dropped)
    staged = count_stages(backend, monkeypatch)
    assert store.put_artifact("b", path).digest == first.digest
    assert staged == []  # no temp copy of the 8 MiB: the dedup hit stores no bytes
    assert len(list(store.iter_blobs())) == 1
    with store.open_artifact("b") as reader:
        assert reader.read() == data


def test_resaved_file_with_other_bytes_behind_the_same_fingerprint_is_stored(
    tmp_path: Path,
) -> None:
    store = whole_blob_store(tmp_path / "s")
    data = random_bytes(RESAVED_SIZE, seed=6)
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    store.put_artifact("a", path)
    changed = bytearray(data)
    changed[RESAVED_SIZE // 2 + 50_000] ^= 0xFF  # between two of the fingerprint's windows
    resave(path, bytes(changed))
    original = tmp_path / "original.bin"
    original.write_bytes(data)
    assert fingerprint_of(path) == fingerprint_of(original)  # the case this test is about
    ref = store.put_artifact("b", path)
    assert ref.digest == Digest.of_bytes(bytes(changed))
    for artifact_id, expected in (("a", data), ("b", bytes(changed))):
        with store.open_artifact(artifact_id) as reader:
            assert reader.read() == expected


def test_resaved_file_repairs_a_large_blob_corrupted_at_the_same_size(tmp_path: Path) -> None:
    store = whole_blob_store(tmp_path / "s")
    backend = store.backend
    assert isinstance(backend, LocalBackend)
    data = random_bytes(RESAVED_SIZE, seed=7)
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    digest = store.put_artifact("a", path).digest
    blob = backend.root / blob_key(digest)
    published = blob.stat().st_mtime_ns
    corrupt = bytearray(data)
    corrupt[RESAVED_SIZE // 3] ^= 0xFF
    blob.write_bytes(bytes(corrupt))
    if blob.stat().st_mtime_ns == published:  # the same clock tick: the write's mtime is later
        os.utime(blob, ns=(published, published + 1_000_000))
    resave(path, data)
    store.put_artifact("b", path)
    assert blob.read_bytes() == data


def test_resaved_identical_chunked_file_is_hashed_in_place_not_chunked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ContentStore(LocalBackend(tmp_path / "s"), file_digests=FileDigestMemo())
    assert store.chunk_threshold <= RESAVED_SIZE
    data = random_bytes(RESAVED_SIZE, seed=9)
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    first = store.put_artifact("a", path)
    resave(path, data)
    puts: list[int] = []
    real_put = store.chunks.put
    monkeypatch.setattr(store.chunks, "put", lambda *a, **k: puts.append(1) or real_put(*a, **k))
    assert store.put_artifact("b", path).digest == first.digest
    assert puts == []  # no second chunking pass over the 8 MiB
    with store.open_artifact("b") as reader:
        assert reader.read() == data


def test_resaved_file_changed_while_hashed_in_place_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna_cas.blobstore as blobstore_module

    store = ContentStore(LocalBackend(tmp_path / "s"), file_digests=FileDigestMemo())
    data = random_bytes(RESAVED_SIZE, seed=8)
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    store.put_artifact("a", path)
    resave(path, data)
    real_hash = blobstore_module.hash_in_place

    def hash_then_modify(src: FileSource) -> Digest:
        digest = real_hash(src)
        with open(path, "r+b") as f:  # the training loop rewrites the file meanwhile
            f.write(b"new weights")
        return digest

    monkeypatch.setattr(blobstore_module, "hash_in_place", hash_then_modify)
    with pytest.raises(IntegrityError, match=r"model\.pt.*changed while it was being uploaded"):
        store.put_artifact("b", path)
    assert not store.has_ref("b")


@pytest.mark.parametrize("size_hint", [0, 1, 4096])
def test_copy_hashing_reads_to_eof_past_a_size_hint_that_is_too_small(
    size_hint: int, tmp_path: Path
) -> None:
    data = random_bytes(300 * 1024)  # larger than any first buffer: it must grow
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        assert copy_hashing(src, 0, out, size_hint) == Digest.of_bytes(data)
    finally:
        os.close(src)
        os.close(out)
    assert (tmp_path / "out").read_bytes() == data


def test_a_seek_whose_spool_fails_still_stands() -> None:
    # The seek was forgotten when spooling failed: the next read went on from the stream,
    # handing out bytes from the wrong place, unverified ones among them (found in review).
    from optuna_cas._seekable import SpoolOnSeek

    data = bytes(range(256)) * 4096
    opens = []

    def reopen() -> io.BytesIO:
        opens.append(1)
        if len(opens) == 1:
            raise ConnectionResetError("dropped")
        return io.BytesIO(data)

    reader = io.BufferedReader(SpoolOnSeek(io.BytesIO(data), reopen, len(data)))
    assert reader.read(10) == data[:10]
    assert reader.seek(500_000) == 500_000
    with pytest.raises(ConnectionResetError):
        reader.read(100)
    assert reader.tell() == 500_000
    assert reader.read(100) == data[500_000:500_100]


def _damaged_store(tmp_path: Path, size: int, chunk_threshold: int | None) -> ContentStore:
    """A store holding artifact "a" of ``size`` bytes whose stored byte 10 is flipped."""
    store = ContentStore(LocalBackend(tmp_path / "s"), chunk_threshold=chunk_threshold)
    data = random_bytes(size, seed=size)
    store.put_artifact("a", io.BytesIO(data))
    for path in (tmp_path / "s").rglob("*"):
        if path.is_file() and not path.is_relative_to(tmp_path / "s" / "refs"):
            raw = bytearray(path.read_bytes())
            at = raw.find(data[:64])
            if at >= 0:
                raw[at + 10] ^= 0xFF
                path.chmod(0o644)
                path.write_bytes(raw)
                return store
    raise AssertionError("content not found in the store")


@pytest.mark.parametrize(
    ("size", "chunk_threshold"),
    [
        (100_000, None),
        (5 * 1024 * 1024, None),
        (3 * 1024 * 1024, 256 * 1024),
        (12 * 1024 * 1024, 256 * 1024),
    ],
    ids=["small-whole", "whole-up-to-8-MiB", "small-chunked", "large-chunked"],
)
def test_open_reader_hands_out_no_damaged_byte_to_a_reader_that_stops_early(
    tmp_path: Path, size: int, chunk_threshold: int | None
) -> None:
    # A header parser reads a few bytes and stops: it got damaged bytes with no error, as
    # the digest was checked only at the end (found by a probe). A whole file up to the
    # chunking threshold is now checked whole before its first byte (in memory up to 1 MiB,
    # else in a temp file), a chunked one chunk by chunk.
    store = _damaged_store(tmp_path, size, chunk_threshold)
    with pytest.raises(IntegrityError), store.open_artifact("a") as reader:
        reader.read(16)


def test_a_seek_back_into_the_buffer_is_served_from_the_checked_spool(tmp_path: Path) -> None:
    # A large whole blob streams, checked at its end. Reading a header and seeking back was
    # served from the reader's buffer (BufferedReader keeps in-buffer seeks to itself):
    # damaged bytes came back with no error (found by a probe). The move now spools.
    store = _damaged_store(tmp_path, 12 * 1024 * 1024, None)
    reader = store.open_artifact("a")
    reader.read(16)
    reader.seek(0)
    with pytest.raises(IntegrityError):
        reader.read(16)
    # After a failed spool no seek makes the stream readable again.
    reader.seek(0)
    with pytest.raises(IntegrityError):
        reader.read(16)
    reader.close()


def test_in_buffer_seeks_that_move_reach_the_spool_and_others_do_not() -> None:
    from optuna_cas._seekable import seekable_reader

    data = bytes(range(256)) * (40 * 1024)  # 10 MiB: streamed, checked at its end
    opens: list[int] = []

    def reopen() -> io.BufferedReader:
        opens.append(1)
        return io.BufferedReader(io.BytesIO(data))

    reader = seekable_reader(
        io.BufferedReader(io.BytesIO(data)), reopen, len(data), checked_as_read=False
    )
    assert reader.read(100) == data[:100]
    assert reader.seek(100) == 100 and reader.seek(0, io.SEEK_CUR) == 100  # no move
    assert reader.read(10) == data[100:110] and opens == []
    assert reader.seek(-50, io.SEEK_CUR) == 60 and reader.read(10) == data[60:70]
    assert opens == [1]  # the move spooled once
    assert reader.seek(5) == 5 and reader.read(5) == data[5:10] and opens == [1]


def test_a_file_whose_bytes_differ_on_the_second_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store without staging hashes a file, then reads it again to send it. A pseudo-file
    # (/proc/self/maps) changes between the two reads with stat unchanged; the error named
    # no file and said a digest did not match itself (found by a probe).
    import optuna_cas.blobstore as blobstore_module

    path = tmp_path / "maps"
    path.write_bytes(random_bytes(50_000))
    first_read = Digest.of_bytes(random_bytes(50_000, seed=2))  # what the first read saw
    monkeypatch.setattr(blobstore_module, "hash_fd", lambda fd, start=0: first_read)
    store = ContentStore(MemoryBackend())
    with pytest.raises(IntegrityError, match=r"File '.*maps' changed while it was being uploaded"):
        store.put_artifact("a", path)
    assert not store.has_ref("a") and list(store.iter_blobs()) == []


def test_a_chunked_file_seeks_back_within_its_checked_buffer_without_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # np.load reads the magic string and seeks back 6 bytes. For a chunked file those bytes
    # were checked chunk by chunk before they were buffered; forcing the seek through the
    # spool copied the whole artifact to $TMPDIR (and failed where it had no room: review).
    import optuna_cas._seekable as seekable_module

    copies: list[int] = []
    real = seekable_module.checked_copy
    monkeypatch.setattr(
        seekable_module, "checked_copy", lambda *a, **k: copies.append(1) or real(*a, **k)
    )
    store = ContentStore(LocalBackend(tmp_path / "s"), chunk_threshold=256 * 1024)
    data = random_bytes(12 * 1024 * 1024, seed=4)
    store.put_artifact("a", io.BytesIO(data))
    with store.open_artifact("a") as reader:
        assert reader.read(6) == data[:6]
        assert reader.seek(-6, io.SEEK_CUR) == 0 and reader.read(10) == data[:10]
        assert copies == []
        assert reader.seek(9 * 1024 * 1024) and reader.read(5) == data[9 * 1024 * 1024 :][:5]
        assert copies == [1]  # a seek outside the buffer still spools


def test_a_whole_file_up_to_8_mib_is_checked_in_a_temp_file_not_in_memory(
    tmp_path: Path,
) -> None:
    # Read whole into memory, each open reader held up to 8 MiB (review): now one buffer at
    # most, the rest in a private temp file.
    store = ContentStore(LocalBackend(tmp_path / "s"), chunk_threshold=None)
    data = random_bytes(5 * 1024 * 1024, seed=6)
    store.put_artifact("a", io.BytesIO(data))
    with store.open_artifact("a") as reader:
        assert not isinstance(reader, io.BytesIO)
        os.fstat(reader.fileno())  # a real (unlinked) file
        assert reader.read(3) == data[:3] and reader.seek(-5, io.SEEK_END)
        assert reader.read() == data[-5:]


def test_freshen_after_set_on_the_store_is_the_chunk_stores_too() -> None:
    # A harness set content.freshen_after after the store was built; chunked uploads went on
    # touching after the old 1800 s while gc's short-grace check trusted the new value (probe).
    from optuna_cas.backends.memory import MemoryBackend

    content = ContentStore(MemoryBackend(), freshen_after=60.0)
    assert content.chunks.freshen_after == 60.0
    content.freshen_after = 2.0
    assert content.chunks.freshen_after == 2.0 == content.freshen_after


@pytest.mark.parametrize("bad", [True, 0, -1, 8.0, "8"])
def test_a_chunk_threshold_that_is_no_number_of_bytes_is_refused(bad: object) -> None:
    from optuna_cas.backends.memory import MemoryBackend
    from optuna_cas.exceptions import StoreConfigError

    with pytest.raises(StoreConfigError, match="chunk_threshold must be a positive number"):
        ContentStore(MemoryBackend(), chunk_threshold=bad)  # type: ignore[arg-type]
