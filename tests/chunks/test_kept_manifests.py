"""Manifests kept in the cache: a cached read asks the store for nothing, and a kept
manifest that is stale (gc repacked), forged or broken never changes what a download holds."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from optuna_cas.backends.local import LocalBackend
from optuna_cas.chunks.layout import pack_key
from optuna_cas.chunks.table import MANIFEST_MAGIC, TableBuilder, parse_table
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.middleware.blob_cache import DiskBlobCache

THRESHOLD = 256 * 1024
SIZE = 3 * 1024 * 1024 + 5


class _CountingBackend(LocalBackend):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def open_reader(self, key: str, **kwargs: object) -> io.BufferedIOBase:  # type: ignore[override]
        self.reads.append(key.split("/")[0])
        return super().open_reader(key, **kwargs)  # type: ignore[arg-type,return-value]


@pytest.fixture
def stored(tmp_path: Path) -> tuple[bytes, Digest]:
    data = random.Random(7).randbytes(SIZE)
    writer = ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
    return data, writer.put_artifact("a", io.BytesIO(data)).digest


def _worker(tmp_path: Path) -> tuple[ContentStore, _CountingBackend, DiskBlobCache]:
    backend = _CountingBackend(tmp_path / "store")
    cache = DiskBlobCache(tmp_path / "cache", size_limit=2**30)
    return ContentStore(backend, blob_cache=cache, chunk_threshold=THRESHOLD), backend, cache


def _download(worker: ContentStore, digest: Digest, target: Path) -> bytes:
    worker.materialize_blob(digest, target)
    data = target.read_bytes()
    target.unlink()
    return data


def _stored_manifest(tmp_path: Path, digest: Digest) -> bytes:
    return ContentStore(LocalBackend(tmp_path / "store")).chunks._read_manifest(digest)[1]


def test_a_fill_keeps_the_manifest_and_the_next_read_asks_the_store_for_nothing(
    tmp_path: Path, stored: tuple[bytes, Digest]
) -> None:
    data, digest = stored
    worker, backend, cache = _worker(tmp_path)
    assert _download(worker, digest, tmp_path / "out") == data
    assert backend.reads.count("manifests") == 1
    assert cache.manifests.get(digest, 2**20) == _stored_manifest(tmp_path, digest)
    backend.reads.clear()
    assert _download(worker, digest, tmp_path / "out") == data
    assert backend.reads == []


def test_a_manifest_made_stale_by_a_repack_is_replaced(
    tmp_path: Path, stored: tuple[bytes, Digest]
) -> None:
    data, digest = stored
    worker, backend, cache = _worker(tmp_path)
    _download(worker, digest, tmp_path / "out")  # keeps the manifest and the packs
    # A repack, by hand: each pack's bytes move to a new pack (same offsets), the manifest
    # is replaced, the old packs are deleted; this worker's cache loses them too.
    store = ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
    old = store.chunks.manifest(digest)
    moved = TableBuilder(MANIFEST_MAGIC)
    for pack in old.packs:
        with store.backend.open_reader(pack_key(pack)) as f:
            new_bytes = f.read() + b"repacked"
        store.backend.write(pack_key(Digest.of_bytes(new_bytes)), io.BytesIO(new_bytes))
        moved.pack_number(Digest.of_bytes(new_bytes))
    for entry in old:
        moved.add_raw(entry.chunk, entry.length, entry.pack, entry.offset)
    store.chunks.replace_manifest(moved, digest)
    for pack in old.packs:
        store.backend.remove(pack_key(pack))
        cache.discard(pack)
    backend.reads.clear()
    assert _download(worker, digest, tmp_path / "out") == data
    assert backend.reads.count("manifests") == 1
    assert cache.manifests.get(digest, 2**20) == moved.to_bytes(digest)


def _swapped(manifest: bytes, digest: Digest) -> bytes:
    """A manifest of the right file whose first two chunks trade places: it parses."""
    parsed = parse_table(manifest, "m", MANIFEST_MAGIC)
    forged = TableBuilder(MANIFEST_MAGIC)
    for pack in parsed.packs:
        forged.pack_number(pack)
    entries = list(parsed)
    entries[0], entries[1] = entries[1], entries[0]
    for entry in entries:
        forged.add_raw(entry.chunk, entry.length, entry.pack, entry.offset)
    return forged.to_bytes(digest)


@pytest.mark.parametrize("forgery", ["garbage", "another-file", "chunks-swapped", "empty"])
def test_a_forged_kept_manifest_never_changes_a_download(
    tmp_path: Path, stored: tuple[bytes, Digest], forgery: str
) -> None:
    data, digest = stored
    worker, backend, cache = _worker(tmp_path)
    _download(worker, digest, tmp_path / "out")
    real = _stored_manifest(tmp_path, digest)
    other = ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
    other_digest = other.put_artifact("b", io.BytesIO(random.Random(8).randbytes(SIZE))).digest
    forged = {
        "garbage": random.Random(9).randbytes(len(real)),
        "another-file": _stored_manifest(tmp_path, other_digest),
        "chunks-swapped": _swapped(real, digest),
        "empty": b"",
    }[forgery]
    cache.manifests.discard(digest)
    cache.manifests.add(digest, forged)
    assert _download(worker, digest, tmp_path / "out") == data
    assert cache.manifests.get(digest, 2**20) == real  # the forgery was replaced
    backend.reads.clear()
    assert _download(worker, digest, tmp_path / "out") == data
    assert backend.reads == []  # and the cache works again


def test_a_kept_manifest_larger_than_the_bound_is_dropped(tmp_path: Path) -> None:
    cache = DiskBlobCache(tmp_path / "cache")
    digest = Digest.of_bytes(b"file")
    cache.manifests.add(digest, b"x" * 101)
    assert cache.manifests.get(digest, 100) is None
    assert cache.manifests.get(digest, 10**6) is None  # dropped, not only refused
