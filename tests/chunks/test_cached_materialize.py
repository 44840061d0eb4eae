"""Downloads of chunked files through the cache: packs copied in the kernel, the whole checked."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import optuna_cas.chunks.store as chunk_store
from optuna_cas.backends.local import LocalBackend
from optuna_cas.chunks.assemble import assemble_from_cache, contiguous_runs
from optuna_cas.chunks.layout import PACK_PREFIX, pack_key
from optuna_cas.chunks.packer import PackWriter
from optuna_cas.chunks.reader import ChunkedReader
from optuna_cas.chunks.table import MANIFEST_MAGIC, TableBuilder, parse_table
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound
from optuna_cas.middleware.blob_cache import DiskBlobCache
from tests.support.fds import new_fds, open_fds

THRESHOLD = 256 * 1024
SIZE = 3 * 1024 * 1024 + 5


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _worker(tmp_path: Path, size_limit: int = 2**30) -> ContentStore:
    cache = DiskBlobCache(tmp_path / "cache", size_limit=size_limit)
    return ContentStore(
        LocalBackend(tmp_path / "store"), blob_cache=cache, chunk_threshold=THRESHOLD
    )


def _no_chunk_by_chunk_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("read chunk by chunk")

    monkeypatch.setattr(chunk_store, "ChunkedReader", refuse)


def _cached_pack_files(tmp_path: Path, store: ContentStore) -> list[Path]:
    sizes = {info.size for info in store.backend.list(PACK_PREFIX)}
    found = [
        p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.stat().st_size in sizes
    ]
    assert found
    return found


@pytest.fixture
def uploaded(tmp_path: Path) -> tuple[ContentStore, bytes, object]:
    data = _rand(SIZE, 1)
    store = _worker(tmp_path)
    ref = store.put_artifact("a", io.BytesIO(data))
    return store, data, ref.digest


def test_a_cached_chunked_file_is_assembled_from_packs_not_read_chunk_by_chunk(
    tmp_path: Path, uploaded: tuple[ContentStore, bytes, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    _store, data, digest = uploaded
    _no_chunk_by_chunk_reads(monkeypatch)
    for i in range(2):  # the first fills the cache; a new worker finds the packs there
        target = tmp_path / f"out{i}"
        _worker(tmp_path).materialize_blob(digest, target)  # type: ignore[arg-type]
        assert target.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["cache", "out0", "out1", "store"]


def test_a_first_read_fills_the_cache_then_assembles(tmp_path: Path) -> None:
    data = _rand(SIZE, 2)
    ref = ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD).put_artifact(
        "a", io.BytesIO(data)
    )
    worker = _worker(tmp_path)
    worker.materialize_blob(ref.digest, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    assert _cached_pack_files(tmp_path, worker)


def _damage_cached_packs(tmp_path: Path, store: ContentStore, digest: object, damage: str) -> None:
    """Fill the cache with ``digest``'s packs, then damage each cached pack file."""
    store.materialize_blob(digest, tmp_path / "fill")  # type: ignore[arg-type]
    for path in _cached_pack_files(tmp_path, store):
        path.chmod(0o600)
        with open(path, "r+b") as f:
            if damage == "flip":
                f.seek(SIZE // 2)
                f.write(bytes(b ^ 0xFF for b in f.read(16)))
                f.seek(SIZE // 2)
            else:
                f.truncate(SIZE // 2)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_stream_through_the_cache_reads_past_a_damaged_cached_pack(
    tmp_path: Path, uploaded: tuple[ContentStore, bytes, object], damage: str
) -> None:
    # open_reader through the cache checks each cached chunk: from the first bad one on, the
    # pack is dropped and the rest of its entries come from the store in one range.
    store, data, digest = uploaded
    _damage_cached_packs(tmp_path, store, digest, damage)
    backend = _CountingBackend(tmp_path / "store")
    worker = ContentStore(
        backend,  # type: ignore[arg-type]
        blob_cache=DiskBlobCache(tmp_path / "cache", size_limit=2**30),
        chunk_threshold=THRESHOLD,
    )
    with worker.open_blob(digest) as reader:  # type: ignore[arg-type]
        assert reader.read() == data
    packs = len(list(store.backend.list(PACK_PREFIX)))
    assert backend.calls.count("open_reader") <= 1 + packs, backend.calls


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_cached_pack_is_dropped_and_the_download_is_still_right(
    tmp_path: Path,
    uploaded: tuple[ContentStore, bytes, object],
    damage: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, data, digest = uploaded
    _damage_cached_packs(tmp_path, store, digest, damage)
    _worker(tmp_path).materialize_blob(digest, tmp_path / "out")  # type: ignore[arg-type]
    assert (tmp_path / "out").read_bytes() == data
    # The bad entry was replaced by a good one: the next download is assembled again.
    _no_chunk_by_chunk_reads(monkeypatch)
    _worker(tmp_path).materialize_blob(digest, tmp_path / "again")  # type: ignore[arg-type]
    assert (tmp_path / "again").read_bytes() == data
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".partial")]


def test_packs_too_large_for_the_cache_are_read_a_range_per_pack(
    tmp_path: Path, uploaded: tuple[ContentStore, bytes, object]
) -> None:
    # Not chunk by chunk through the cache: ~50 chunks would have cost a request each.
    store, data, digest = uploaded
    packs = len(list(store.backend.list(PACK_PREFIX)))
    small = _worker(tmp_path / "other", size_limit=1024)
    backend = _CountingBackend(tmp_path / "store")
    small_store = ContentStore(
        backend,  # type: ignore[arg-type]
        blob_cache=small.blob_cache,
        chunk_threshold=THRESHOLD,
    )
    small_store.materialize_blob(digest, tmp_path / "out")  # type: ignore[arg-type]
    assert (tmp_path / "out").read_bytes() == data
    # The manifest, each pack for the cache that refused it, each pack's range.
    assert backend.calls.count("open_reader") <= 1 + 2 * packs, backend.calls


def test_a_stream_through_a_cache_too_small_for_its_packs_reads_a_range_per_pack(
    tmp_path: Path, uploaded: tuple[ContentStore, bytes, object]
) -> None:
    # open_reader through the cache (what Optuna's own download_artifact calls): ~50 chunks
    # once cost a request each when their pack could not be cached.
    store, data, digest = uploaded
    packs = len(list(store.backend.list(PACK_PREFIX)))
    backend = _CountingBackend(tmp_path / "store")
    small = ContentStore(
        backend,  # type: ignore[arg-type]
        blob_cache=DiskBlobCache(tmp_path / "small-cache", size_limit=1024),
        chunk_threshold=THRESHOLD,
    )
    with small.open_blob(digest) as reader:  # type: ignore[arg-type]
        assert reader.read() == data
    # The manifest, each pack for the cache that refused it, each pack's range.
    assert backend.calls.count("open_reader") <= 1 + 2 * packs, backend.calls


def test_a_pack_missing_from_the_store_is_named(
    tmp_path: Path, uploaded: tuple[ContentStore, bytes, object]
) -> None:
    store, _data, digest = uploaded
    for info in list(store.backend.list(PACK_PREFIX)):
        store.backend.remove(info.key)
    fresh = ContentStore(
        LocalBackend(tmp_path / "store"),
        blob_cache=DiskBlobCache(tmp_path / "empty-cache"),
        chunk_threshold=THRESHOLD,
    )
    with pytest.raises(ArtifactNotFound, match=r"its pack blake3:\w+ is missing from"):
        fresh.materialize_blob(digest, tmp_path / "out")  # type: ignore[arg-type]
    assert sorted(os.listdir(tmp_path)) == ["cache", "empty-cache", "store"]


def test_an_existing_target_is_never_overwritten(
    tmp_path: Path, uploaded: tuple[ContentStore, bytes, object]
) -> None:
    store, _data, digest = uploaded
    target = tmp_path / "exists"
    target.write_bytes(b"mine")
    table = store.chunks.manifest(digest)  # type: ignore[arg-type]

    def fetch(pack: object) -> io.BufferedReader:
        return store.backend.open_reader(pack_key(pack))  # type: ignore[arg-type, return-value]

    with pytest.raises(FileExistsError):
        assemble_from_cache(table, digest, target, store.blob_cache, fetch)  # type: ignore[arg-type]
    assert target.read_bytes() == b"mine"


class _CountingBackend:
    """A local backend that counts the calls made to it, by method name."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalBackend(root)
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: object, **kwargs: object) -> object:
            if name != "describe":  # names for messages, no request
                self.calls.append(name)
            return attr(*args, **kwargs)

        return counted


def test_a_cached_download_asks_the_store_for_nothing(
    tmp_path: Path, uploaded: tuple[ContentStore, bytes, object]
) -> None:
    _store, data, digest = uploaded
    _worker(tmp_path).materialize_blob(digest, tmp_path / "fill")  # type: ignore[arg-type]
    backend = _CountingBackend(tmp_path / "store")
    cache = DiskBlobCache(tmp_path / "cache", size_limit=2**30)
    worker = ContentStore(backend, blob_cache=cache, chunk_threshold=THRESHOLD)  # type: ignore[arg-type]
    backend.calls.clear()
    worker.materialize_blob(digest, tmp_path / "out")  # type: ignore[arg-type]
    assert (tmp_path / "out").read_bytes() == data
    # The manifest was kept in the cache by the fill: no manifest, no existence check, no pack.
    assert backend.calls == []


def test_chunked_uploads_that_offer_packs_to_the_cache_leak_no_descriptor(tmp_path: Path) -> None:
    from optuna_cas.backends.memory import MemoryBackend

    cache = DiskBlobCache(tmp_path / "cache", size_limit=2**30)
    store = ContentStore(MemoryBackend(), blob_cache=cache, chunk_threshold=THRESHOLD)
    store.put_artifact("warm-up", io.BytesIO(_rand(SIZE, 50)))  # this thread's own connection
    before = open_fds()
    for i in range(5):  # each sends its packs from a new thread, which offers them to the cache
        store.put_artifact(f"a{i}", io.BytesIO(_rand(SIZE, 51 + i)))
    assert new_fds(before) == set()


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 40), st.integers(1, 9)),
        min_size=3,  # a table lists no more packs than it has entries
        max_size=30,
    )
)
def test_contiguous_runs_cover_the_entries_in_order(
    entries: list[tuple[int, int, int]],
) -> None:
    """Each run joins entries that lie back to back in one pack, and only those."""
    builder = TableBuilder(MANIFEST_MAGIC)
    for pack in range(3):
        builder.pack_number(Digest.of_bytes(bytes([pack]) * 64))
    for pack, offset, length in entries:
        builder.add(Digest.of_bytes(bytes(length)), pack, offset)
    size = sum(length for _, _, length in entries)
    table = parse_table(builder.to_bytes(Digest.of_bytes(bytes(size))), "m", MANIFEST_MAGIC)

    expected: list[list[int]] = []
    for pack, offset, length in entries:
        if expected and expected[-1][0] == pack and sum(expected[-1][1:]) == offset:
            expected[-1][2] += length
        else:
            expected.append([pack, offset, length])
    assert list(contiguous_runs(table)) == [tuple(run) for run in expected]


def test_each_pack_starts_at_its_first_chunks_file_offset_modulo_a_page(tmp_path: Path) -> None:
    """Runs then copy page for page (see PackWriter._open_pack); the lead is zeros no entry names."""
    backend = LocalBackend(tmp_path)
    writer = PackWriter(backend, TableBuilder(MANIFEST_MAGIC), pack_target=10_000)
    chunks = [_rand(size, seed) for seed, size in enumerate([3000, 5001, 4097, 2500, 7000, 1234])]
    for data in chunks:
        writer.add_new(Digest.of_bytes(data), memoryview(data))
    writer.finish()
    whole = b"".join(chunks)
    table = parse_table(writer.manifest.to_bytes(Digest.of_bytes(whole)), "m", MANIFEST_MAGIC)

    firsts, position, seen = 0, 0, set()
    for entry, data in zip(table, chunks, strict=True):
        with backend.open_reader(pack_key(table.packs[entry.pack])) as reader:
            pack = reader.read()
        assert pack[entry.offset : entry.offset + entry.length] == data
        if entry.pack not in seen:
            seen.add(entry.pack)
            firsts += 1
            assert entry.offset == position % 4096
            assert pack[: entry.offset] == bytes(entry.offset)
        position += entry.length
    assert firsts == len(table.packs) >= 3

    # A reader asks for each pack from its start, lead included: a range from byte 0 is what
    # moto serves fastest, and a few bytes cost nothing elsewhere.
    ranges: list[tuple[int, int | None]] = []

    class Recording(LocalBackend):
        def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> Any:
            ranges.append((offset, length))
            return super().open_reader(key, offset=offset, length=length)

    assert ChunkedReader(Recording(tmp_path), table, "x").read() == whole
    assert [offset for offset, _ in ranges] == [0] * len(table.packs)
