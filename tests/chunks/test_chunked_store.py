"""Chunked artifacts through the content store: identity, dedup, order, verification."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.blobstore import blob_key
from optuna_cas.chunks.layout import INDEX_PREFIX, MANIFEST_PREFIX, PACK_PREFIX, manifest_key
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest, hash_file
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.middleware.blob_cache import DiskBlobCache

THRESHOLD = 256 * 1024


class CountingBackend:
    """A memory backend that counts reads and the bytes they return."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()
        self.reads: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        reader = self.inner.open_reader(key, offset=offset, length=length)
        data = reader.read()
        self.reads.append((key, len(data)))
        return io.BytesIO(data)


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ContentStore:
    backend = MemoryBackend() if request.param == "memory" else LocalBackend(tmp_path / "store")
    return ContentStore(backend, chunk_threshold=THRESHOLD)


def _keys(store: ContentStore, prefix: str) -> list[str]:
    return [info.key for info in store.backend.list(prefix)]


def test_a_large_file_is_stored_as_chunks_under_its_whole_digest(
    store: ContentStore, tmp_path: Path
) -> None:
    data = _rand(3 * 1024 * 1024 + 17, 1)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    ref = store.put_artifact("a1", path, filename="model.safetensors")
    assert ref.digest == hash_file(path)
    assert _keys(store, MANIFEST_PREFIX) == [manifest_key(ref.digest)]
    assert _keys(store, PACK_PREFIX) and _keys(store, INDEX_PREFIX)
    assert not store.backend.exists(blob_key(ref.digest))
    assert store.open_artifact("a1").read() == data
    target = tmp_path / "out.bin"
    store.materialize_blob(ref.digest, target)
    assert target.read_bytes() == data


def test_small_files_stay_whole_blobs(store: ContentStore) -> None:
    ref = store.put_artifact("s", io.BytesIO(b"x" * (THRESHOLD - 1)))
    assert store.backend.exists(blob_key(ref.digest))
    assert not _keys(store, MANIFEST_PREFIX)


def test_a_shifted_version_stores_only_what_changed(store: ContentStore, tmp_path: Path) -> None:
    base = _rand(4 * 1024 * 1024, 2)
    first = tmp_path / "v1"
    first.write_bytes(b'{"step": 1}' + base)
    store.put_artifact("v1", first)
    # A longer header shifts every later byte; one 64 KiB region in the middle changes.
    changed = base[:2_000_000] + _rand(65536, 3) + base[2_065_536:]
    second = tmp_path / "v2"
    second.write_bytes(b'{"step": 10000, "lr": 0.1}' + changed)
    ref = store.put_artifact("v2", second)
    assert store.chunks.last_new_bytes <= 65536 + 4 * 256 * 1024
    assert store.open_artifact("v2").read() == second.read_bytes()
    assert ref.digest == hash_file(second)


def test_the_same_file_again_writes_nothing(store: ContentStore, tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(_rand(1024 * 1024, 4))
    store.put_artifact("a", path)
    before = sorted(_keys(store, ""))
    copy = tmp_path / "copy"
    copy.write_bytes(path.read_bytes())  # re-saved: a new inode, so no memo shortcut
    store.put_artifact("b", copy)
    assert store.chunks.last_new_bytes == 0
    assert sorted(k for k in _keys(store, "") if not k.startswith("refs/")) == sorted(
        k for k in before if not k.startswith("refs/")
    )


def test_a_stream_source_is_chunked_too(store: ContentStore) -> None:
    data = _rand(1024 * 1024, 5)
    ref = store.put_artifact("a", io.BytesIO(data))
    assert store.backend.exists(manifest_key(ref.digest))
    assert store.open_artifact("a").read() == data


def test_a_corrupt_pack_raises_and_leaves_no_file(tmp_path: Path) -> None:
    store = ContentStore(LocalBackend(tmp_path / "s"), chunk_threshold=THRESHOLD)
    data = _rand(1024 * 1024, 6)
    ref = store.put_artifact("a", io.BytesIO(data))
    (pack,) = _keys(store, PACK_PREFIX)
    path = tmp_path / "s" / pack
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[500_000] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="does not match"):
        store.open_artifact("a").read()
    target = tmp_path / "out"
    with pytest.raises(IntegrityError):
        store.materialize_blob(ref.digest, target)
    assert not target.exists()


def test_a_missing_pack_names_itself(store: ContentStore) -> None:
    store.put_artifact("a", io.BytesIO(_rand(1024 * 1024, 7)))
    for key in _keys(store, PACK_PREFIX):
        store.backend.remove(key)
    with pytest.raises(ArtifactNotFound, match="pack"):
        store.open_artifact("a").read()


def test_a_store_written_whole_stays_readable_with_chunking_on(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    data = _rand(2 * 1024 * 1024, 8)
    old = ContentStore(backend, chunk_threshold=2**62)  # as before chunking existed
    ref = old.put_artifact("old", io.BytesIO(data))
    new = ContentStore(backend, chunk_threshold=THRESHOLD)
    assert new.has_blob(ref.digest)
    assert new.open_artifact("old").read() == data
    target = tmp_path / "out"
    new.materialize_blob(ref.digest, target)
    assert target.read_bytes() == data


def test_a_worker_with_version_k_cached_fetches_only_the_new_packs(tmp_path: Path) -> None:
    backend = CountingBackend()
    writer = ContentStore(backend, chunk_threshold=THRESHOLD)  # type: ignore[arg-type]
    base = _rand(6 * 1024 * 1024, 9)
    v1 = writer.put_artifact("v1", io.BytesIO(base))
    v2_bytes = base[:3_000_000] + _rand(200_000, 10) + base[3_200_000:]
    v2 = writer.put_artifact("v2", io.BytesIO(v2_bytes))
    cache = DiskBlobCache(tmp_path / "cache", size_limit=2**30)
    worker = ContentStore(backend, blob_cache=cache, chunk_threshold=THRESHOLD)  # type: ignore[arg-type]
    assert worker.open_blob(v1.digest).read() == base
    backend.reads.clear()
    assert worker.open_blob(v2.digest).read() == v2_bytes
    pack_bytes = sum(n for key, n in backend.reads if key.startswith(PACK_PREFIX))
    assert 0 < pack_bytes <= 200_000 + 4 * 256 * 1024
    backend.reads.clear()
    assert worker.open_blob(v2.digest).read() == v2_bytes  # all from the cache now
    assert not [key for key, _ in backend.reads if key.startswith(PACK_PREFIX)]


def test_copy_moves_only_missing_chunks(tmp_path: Path) -> None:
    source = ContentStore(MemoryBackend(), chunk_threshold=THRESHOLD)
    target = ContentStore(LocalBackend(tmp_path / "t"), chunk_threshold=THRESHOLD)
    base = _rand(3 * 1024 * 1024, 11)
    v1 = source.put_artifact("v1", io.BytesIO(base))
    v2_bytes = b"hdr" + base[:1_000_000] + _rand(100_000, 12) + base[1_100_000:]
    v2 = source.put_artifact("v2", io.BytesIO(v2_bytes))
    assert target.chunks.copy_from(source.chunks, v1.digest) == len(base)
    sent = target.chunks.copy_from(source.chunks, v2.digest)
    assert 0 < sent <= 100_000 + 4 * 256 * 1024
    assert target.open_blob(v2.digest).read() == v2_bytes
    assert target.chunks.copy_from(source.chunks, v2.digest) == 0


def _versions() -> Iterator[bytes]:
    base = _rand(2 * 1024 * 1024, 13)
    for step in range(3):
        yield f'{{"step": {step * 999}}}'.encode() + base + _rand(100_000, 100 + step)


def test_packs_are_shared_and_digests_keep_identity(store: ContentStore) -> None:
    digests = [store.put_artifact(f"v{i}", io.BytesIO(v)).digest for i, v in enumerate(_versions())]
    assert digests == [Digest.of_bytes(v) for v in _versions()]
    for i, v in enumerate(_versions()):
        assert store.open_artifact(f"v{i}").read() == v


def test_sync_moves_only_the_chunks_the_destination_lacks(tmp_path: Path) -> None:
    from optuna_cas import FileSystemArtifactStore, sync

    src = FileSystemArtifactStore(tmp_path / "src")
    dst = FileSystemArtifactStore(tmp_path / "dst")
    base = _rand(10 * 1024 * 1024, 14)  # above the default 8 MiB threshold
    src.write("v1", io.BytesIO(base))
    assert sync(src, dst).ok
    v2 = b'{"step": 2}' + base[:5_000_000] + _rand(300_000, 15) + base[5_300_000:]
    src.write("v2", io.BytesIO(v2))
    before = sum(i.size for i in dst.content.backend.list(PACK_PREFIX))
    report = sync(src, dst)
    assert report.ok and report.blobs_copied == 1
    added = sum(i.size for i in dst.content.backend.list(PACK_PREFIX)) - before
    assert 0 < added <= 300_000 + 4 * 256 * 1024
    with dst.open_reader("v2") as reader:
        assert reader.read() == v2
    assert sync(src, dst).blobs_copied == 0


def test_verify_counts_a_chunked_artifact_as_present(tmp_path: Path) -> None:
    from optuna_cas import FileSystemArtifactStore, verify

    store = FileSystemArtifactStore(tmp_path / "s")
    store.write("big", io.BytesIO(_rand(9 * 1024 * 1024, 16)))
    assert verify(store).ok and not verify(store).missing
    for info in list(store.content.backend.list(PACK_PREFIX)):
        store.content.backend.remove(info.key)
    report = verify(store)
    assert not report.ok and report.missing_packs


def test_an_uploading_worker_reads_its_upload_from_the_cache(tmp_path: Path) -> None:
    backend = CountingBackend()
    cache = DiskBlobCache(tmp_path / "cache", size_limit=2**30)
    worker = ContentStore(backend, blob_cache=cache, chunk_threshold=THRESHOLD)  # type: ignore[arg-type]
    data = _rand(3 * 1024 * 1024, 17)
    ref = worker.put_artifact("a", io.BytesIO(data))
    backend.reads.clear()
    assert worker.open_blob(ref.digest).read() == data
    assert not [key for key, _ in backend.reads if key.startswith(PACK_PREFIX)]


def test_stores_take_a_chunk_threshold_or_none(tmp_path: Path) -> None:
    from optuna_cas import FileSystemArtifactStore, MemoryArtifactStore
    from optuna_cas.exceptions import StoreConfigError

    whole = FileSystemArtifactStore(tmp_path / "w", chunk_threshold=None)
    whole.write("a", io.BytesIO(_rand(9 * 1024 * 1024, 18)))
    assert list(whole.content.iter_blobs()) and not _keys(whole.content, MANIFEST_PREFIX)
    small = MemoryArtifactStore(chunk_threshold=THRESHOLD)
    small.write("a", io.BytesIO(_rand(THRESHOLD, 19)))
    assert _keys(small.content, MANIFEST_PREFIX)
    for bad in (0, -1, True, 1.5, "8MiB"):
        with pytest.raises(StoreConfigError, match="chunk_threshold"):
            MemoryArtifactStore(chunk_threshold=bad)  # type: ignore[arg-type]


def test_reading_a_manifest_or_a_ref_allocates_about_its_size(tmp_path: Path) -> None:
    import tracemalloc

    store = ContentStore(LocalBackend(tmp_path / "s"), chunk_threshold=THRESHOLD)
    ref = store.put_artifact("a", io.BytesIO(_rand(2 * 1024 * 1024, 20)))
    fresh = ContentStore(LocalBackend(tmp_path / "s"), chunk_threshold=THRESHOLD)
    tracemalloc.start()
    try:
        fresh.chunks.manifest(ref.digest)
        fresh.get_ref("a")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A bounded read once allocated its whole bound (64 MiB for a manifest, 1 MiB for a ref).
    assert peak < 512 * 1024


def test_chunks_repeated_inside_one_file_are_stored_once(store: ContentStore) -> None:
    block = _rand(1024 * 1024, 21)
    data = block * 4 + b"tail"
    store.put_artifact("r", io.BytesIO(data))
    assert store.chunks.last_new_bytes < 1024 * 1024 + 4 * 256 * 1024
    assert store.open_artifact("r").read() == data


def test_a_file_is_present_only_while_every_pack_it_names_is(tmp_path: Path) -> None:
    # On a remote-like backend the packs are looked at in parallel: one missing must count.
    store = ContentStore(MemoryBackend(), chunk_threshold=THRESHOLD)
    base = _rand(2 * 1024 * 1024, 20)
    store.put_artifact("v1", io.BytesIO(base))
    v2 = base[:1_000_000] + _rand(300_000, 21) + base[1_300_000:]
    digest = store.put_artifact("v2", io.BytesIO(v2)).digest
    packs = _keys(store, PACK_PREFIX)
    assert len(store.chunks.manifest(digest).packs) == len(packs) == 2
    assert store.has_blob(digest)
    for key in packs:
        data = store.backend.open_reader(key).read()
        store.backend.remove(key)
        assert not store.has_blob(digest)
        store.backend.write(key, io.BytesIO(data))
        assert store.has_blob(digest)


class _FailsAfter(io.BytesIO):
    """A seekable stream of ``data`` whose reads raise ``OSError`` past ``limit`` bytes."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__(data)
        self._limit = limit

    def _room(self, wanted: int) -> int:
        if self.tell() >= self._limit:
            raise OSError("connection lost")
        left = self._limit - self.tell()
        return left if wanted < 0 else min(wanted, left)

    def read(self, size: int | None = -1) -> bytes:
        return super().read(self._room(-1 if size is None else size))

    def readinto(self, buffer: Any) -> int:
        with memoryview(buffer) as view:
            return super().readinto(view[: self._room(len(view))])


class _FailingPackWrites:
    """A remote-like (no staging) memory backend whose pack writes fail after ``allowed``."""

    def __init__(self, inner: MemoryBackend, allowed: int) -> None:
        self.inner, self.allowed = inner, allowed

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def write(self, key: str, data: BinaryIO, *, if_absent: bool = False) -> bool:
        if key.startswith(PACK_PREFIX):
            if self.allowed <= 0:
                raise OSError("connection lost")
            self.allowed -= 1
        return self.inner.write(key, data, if_absent=if_absent)


def test_a_failed_upload_leaves_its_sent_packs_to_the_retry(tmp_path: Path) -> None:
    # 80 MiB in 32 MiB packs: the first attempt publishes two packs, then its source fails.
    data = _rand(80 * 1024 * 1024, 21)
    store = ContentStore(LocalBackend(tmp_path / "store"))
    with pytest.raises(OSError, match="connection lost"):
        store.put_artifact("a", _FailsAfter(data, 72 * 1024 * 1024))
    assert len(_keys(store, PACK_PREFIX)) == 2 and _keys(store, INDEX_PREFIX)
    again = ContentStore(LocalBackend(tmp_path / "store"))  # another process: reads the index
    again.put_artifact("a", io.BytesIO(data))
    assert again.chunks.last_new_bytes <= 80 * 1024 * 1024 - 2 * 32 * 1024 * 1024 + 256 * 1024
    assert again.open_artifact("a").read() == data


def test_a_failed_copy_leaves_its_sent_packs_to_the_retry(tmp_path: Path) -> None:
    source = ContentStore(LocalBackend(tmp_path / "src"))
    data = _rand(100 * 1024 * 1024, 22)
    digest = source.put_artifact("a", io.BytesIO(data)).digest
    remote = MemoryBackend()
    flaky = ContentStore(_FailingPackWrites(remote, allowed=2))  # type: ignore[arg-type]
    with pytest.raises(OSError, match="connection lost"):
        flaky.chunks.copy_from(source.chunks, digest)
    sent_before = sum(i.size for i in remote.list(PACK_PREFIX))
    assert sent_before >= 2 * 32 * 1024 * 1024 and list(remote.list(INDEX_PREFIX))
    retry = ContentStore(remote)
    sent = retry.chunks.copy_from(source.chunks, digest)
    assert sent <= len(data) - sent_before + 256 * 1024
    assert retry.open_blob(digest).read() == data


def test_a_pack_cut_short_is_replaced_by_the_next_copy_sent() -> None:
    # A remote store takes a pack only if its key is free (S3: If-None-Match). A pack there
    # cut short was left as it was when an upload sent the same pack again, and the upload's
    # manifest named it (found by a probe): the copy sent now replaces one of another size.
    from optuna_cas.chunks.chunker import Chunker
    from optuna_cas.chunks.packer import PackWriter

    backend, data = MemoryBackend(), _rand(3 * 1024 * 1024, 23)

    def send_all() -> None:
        writer = PackWriter(backend)
        for chunk, piece in Chunker(io.BytesIO(data)):
            writer.add_new(chunk, piece)
        writer.finish()

    send_all()
    (info,) = backend.list(PACK_PREFIX)
    whole = backend.open_reader(info.key).read()
    backend.write(info.key, io.BytesIO(whole[:1000]))
    send_all()
    assert backend.open_reader(info.key).read() == whole


class _KeepsFirstPacks(_FailingPackWrites):
    """A remote-like backend that silently keeps the first object written at a pack key."""

    def write(self, key: str, data: BinaryIO, *, if_absent: bool = False) -> bool:
        if key.startswith(PACK_PREFIX) and self.inner.exists(key):
            data.read()
            return True
        return self.inner.write(key, data, if_absent=if_absent)


def test_an_upload_that_will_not_read_back_is_never_acknowledged() -> None:
    # The pack is cut short, and the backend will not replace it: the re-upload's manifest
    # names it, so the upload must fail rather than be acknowledged (found by a probe).
    inner, data = MemoryBackend(), _rand(2 * 1024 * 1024, 24)
    ContentStore(inner, chunk_threshold=THRESHOLD).put_artifact("a", io.BytesIO(data))
    (info,) = inner.list(PACK_PREFIX)
    inner.write(info.key, io.BytesIO(inner.open_reader(info.key).read()[:1000]))
    backend = _KeepsFirstPacks(inner, allowed=10**6)
    store = ContentStore(backend, chunk_threshold=THRESHOLD)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match="could not be stored whole"):
        store.put_artifact("b", io.BytesIO(data))
    with pytest.raises(ArtifactNotFound):
        store.get_ref("b")


class _GcDeletesDuringTheWrite(_FailingPackWrites):
    """A backend where gc deletes an old pack while an upload's copy of it is refused."""

    def write(self, key: str, data: BinaryIO, *, if_absent: bool = False) -> bool:
        if key.startswith(PACK_PREFIX) and if_absent and self.inner.exists(key):
            data.read()
            self.inner.remove(key)  # refused (the key was taken), then gone
            return False
        return self.inner.write(key, data, if_absent=if_absent)


def test_a_pack_gc_takes_while_its_copy_is_refused_is_put_back() -> None:
    # The look after sending raised ArtifactNotFound and failed the upload (found in review).
    from optuna_cas.chunks.chunker import Chunker
    from optuna_cas.chunks.packer import PackWriter

    inner, data = MemoryBackend(), _rand(3 * 1024 * 1024, 25)
    for backend in (inner, _GcDeletesDuringTheWrite(inner, allowed=10**6)):
        writer = PackWriter(backend)  # type: ignore[arg-type]
        for chunk, piece in Chunker(io.BytesIO(data)):
            writer.add_new(chunk, piece)
        writer.finish()
    (info,) = inner.list(PACK_PREFIX)
    assert info.size == len(data)  # whole again: one pack of every chunk
