"""gc over chunked artifacts: manifests, packs and index objects (memory and local backends)."""

from __future__ import annotations

import io
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import gc, verify
from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.chunks.chunker import Chunker
from optuna_cas.chunks.layout import manifest_key
from optuna_cas.chunks.reader import ChunkedReader
from optuna_cas.chunks.store import ChunkStore, StoredObject
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.ingest import FileDigestMemo
from optuna_cas.stores.base import ContentAddressedArtifactStore

THRESHOLD = 256 * 1024


def _rand(n: int, seed: object) -> bytes:
    return random.Random(seed).randbytes(n)


def _store(backend: Any, **kwargs: Any) -> ContentAddressedArtifactStore:
    return ContentAddressedArtifactStore(ContentStore(backend, chunk_threshold=THRESHOLD, **kwargs))


@pytest.fixture(params=["memory", "local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return MemoryBackend() if request.param == "memory" else LocalBackend(tmp_path / "store")


def gc_now(store: ContentAddressedArtifactStore, **kwargs: Any) -> Any:
    return gc(store, grace_period=0, allow_short_grace=True, **kwargs)


def chunk_objects(store: ContentAddressedArtifactStore) -> list[StoredObject]:
    chunks = store.content.chunks
    return [*chunks.iter_packs(), *chunks.iter_manifests(), *chunks.iter_indexes()]


def stored_chunk_bytes(store: ContentAddressedArtifactStore) -> int:
    return sum(obj.size for obj in chunk_objects(store))


def unique_chunk_bytes(contents: list[bytes]) -> int:
    """What the live files need at least: their distinct chunks, found by chunking them here."""
    sizes = {}
    for data in contents:
        for digest, _ in Chunker(io.BytesIO(data)):
            sizes[digest.hexdigest] = digest.size
    return sum(sizes.values())


def series() -> dict[str, bytes]:
    """Checkpoints sharing a frozen backbone; v0's own part is large, so once v0 is deleted
    its pack is mostly dead and must be repacked, not kept whole."""
    backbone = _rand(1024 * 1024, "backbone")
    versions = {}
    for i in range(8):
        head = _rand((2048 if i == 0 else 256) * 1024, f"head-{i}")
        versions[f"v{i}"] = f'{{"step": {i * 1000}}}'.encode() + backbone + head
    return versions


def test_gc_after_deleting_half_a_series_keeps_the_rest_and_reclaims_the_space(
    backend: Any,
) -> None:
    store = _store(backend)
    versions = series()
    for name, data in versions.items():
        store.write(name, io.BytesIO(data))
    before = stored_chunk_bytes(store)
    dropped = [f"v{i}" for i in range(0, 8, 2)]
    for name in dropped:
        store.remove(name)
    live = {name: data for name, data in versions.items() if name not in dropped}
    v1 = store.get_ref("v1").digest
    loaded = store.content.chunks.manifest(v1)  # a reader that loaded v1's manifest earlier
    worker = _store(backend)  # a long-lived process that read v1 before gc
    with worker.open_reader("v1") as reader:
        assert reader.read() == versions["v1"]

    first = gc_now(store)
    assert len(first.manifests_deleted) == len(dropped)
    assert first.packs_deleted and first.packs_repacked and first.manifests_rewritten
    for name, data in live.items():
        with store.open_reader(name) as reader:
            assert reader.read() == data
    # The old manifest still reads: the repacked pack stays until a later run.
    with ChunkedReader(store.content.backend, loaded, "old view of v1") as old:
        assert old.read() == live["v1"]

    second = gc_now(store)
    assert set(second.packs_deleted) == set(first.packs_repacked)
    for name, data in live.items():
        for reading in (store, worker):
            with reading.open_reader(name) as reader:
                assert reader.read() == data
    stored = stored_chunk_bytes(store)
    assert stored <= 1.2 * unique_chunk_bytes(list(live.values())) < before
    assert verify(store).ok
    assert len(list(store.content.chunks.iter_indexes())) == 1  # consolidated
    third = gc_now(store)  # nothing left to do
    assert not (third.manifests_deleted or third.packs_deleted or third.packs_repacked)
    assert third.index_objects_deleted == 0  # the same index again, kept


def test_dry_run_changes_nothing_and_lists_what_a_real_run_does(backend: Any) -> None:
    store = _store(backend)
    versions = series()
    for name, data in versions.items():
        store.write(name, io.BytesIO(data))
    for name in ["v0", "v2", "v4"]:
        store.remove(name)
    snapshot = sorted((i.key, i.size, i.modified) for i in store.content.backend.list())

    dry = gc_now(store, dry_run=True)
    assert dry.manifests_deleted and dry.packs_deleted and dry.packs_repacked
    assert dry.bytes_freed > 0 and dry.index_objects_deleted > 0
    assert sorted((i.key, i.size, i.modified) for i in store.content.backend.list()) == snapshot

    real = gc_now(store)
    assert real.manifests_deleted == dry.manifests_deleted
    assert real.packs_deleted == dry.packs_deleted
    assert real.packs_repacked == dry.packs_repacked
    assert real.bytes_repacked == dry.bytes_repacked


def _age(store: ContentAddressedArtifactStore, keys: list[str], seconds: float) -> None:
    root = Path(store.content.backend.root)  # type: ignore[attr-defined]
    when = time.time() - seconds
    for key in keys:
        os.utime(root / key, (when, when))


def test_young_unreferenced_manifests_and_the_packs_they_use_are_kept(tmp_path: Path) -> None:
    store = _store(LocalBackend(tmp_path / "s"))
    old_bytes = _rand(1024 * 1024, "old")
    store.write("old", io.BytesIO(old_bytes))
    old_objects = [obj.key for obj in chunk_objects(store)]
    _age(store, old_objects, 7200)
    # A young file that reuses half of the old one's chunks (from the old pack), and one that
    # shares nothing; neither is referenced (say, their refs are still being written).
    young_bytes = old_bytes[: 512 * 1024] + _rand(512 * 1024, "young")
    store.write("young", io.BytesIO(young_bytes))
    other_bytes = _rand(512 * 1024, "other")
    store.write("other", io.BytesIO(other_bytes))
    digests = {name: store.get_ref(name).digest for name in ["old", "young", "other"]}
    for name in digests:
        store.remove(name)

    report = gc(store, grace_period=3600)
    assert report.manifests_deleted == [manifest_key(digests["old"])]
    assert report.packs_deleted == []  # the old pack holds chunks the young manifest uses
    for name, data in [("young", young_bytes), ("other", other_bytes)]:
        with store.content.open_blob(digests[name]) as reader:
            assert reader.read() == data
    assert not store.content.backend.exists(manifest_key(digests["old"]))


def test_a_pack_reused_after_gcs_last_look_is_not_deleted(
    backend: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # freshen_after=0: every reuse touches (the default waits 30 minutes).
    store = _store(backend, freshen_after=0.0)
    path = tmp_path / "ckpt.bin"
    path.write_bytes(_rand(1024 * 1024, "ckpt"))
    store.put("old", path)
    store.remove("old")  # its manifest and pack are gc's candidates
    digest = Digest.of_bytes(path.read_bytes())
    other_process = _store(backend, freshen_after=0.0)
    real_restat = ChunkStore.restat
    raced = []

    def restat_then_race(self: ChunkStore, obj: StoredObject) -> StoredObject | None:
        seen = real_restat(self, obj)
        if obj.kind == "packs" and not raced:
            # Another process reuses the pack right after gc's last look at it, and returns.
            raced.append(obj.key)
            other_process.put("new", path)
        return seen

    monkeypatch.setattr(ChunkStore, "restat", restat_then_race)
    report = gc_now(store)
    assert raced and report.manifests_deleted == [manifest_key(digest)]
    assert report.packs_deleted == []
    with store.open_reader("new") as reader:
        assert reader.read() == path.read_bytes()


@pytest.mark.parametrize("remembered", [False, True], ids=["hashed", "digest-remembered"])
def test_a_reupload_repairs_a_file_whose_pack_is_gone(tmp_path: Path, remembered: bool) -> None:
    memo = FileDigestMemo(settled_ns=0 if remembered else 2**62)
    store = _store(LocalBackend(tmp_path / "s"), file_digests=memo)
    data = _rand(1024 * 1024, "repair")
    # The file's chunks first arrive in a pack that holds more (another file's), so that a
    # re-upload cannot write a pack of the same name again by chance.
    store.write("bigger", io.BytesIO(data + _rand(512 * 1024, "more")))
    path = tmp_path / "ckpt.bin"
    path.write_bytes(data)
    store.put("a", path)
    first_packs = list(store.content.chunks.iter_packs())
    for pack in first_packs:
        store.content.backend.remove(pack.key)  # lost (say, to gc on S3 in its last window)
    store.put("b", path)  # the same file again
    assert {p.key for p in store.content.chunks.iter_packs()}.isdisjoint(p.key for p in first_packs)
    with store.open_reader("a") as reader:
        assert reader.read() == data


def test_a_bad_kept_manifest_leaves_packs_alone(backend: Any) -> None:
    store = _store(backend)
    for name, data in series().items():
        store.write(name, io.BytesIO(data))
    for name in ["v0", "v2"]:
        store.remove(name)
    key = manifest_key(store.get_ref("v1").digest)
    store.content.backend.write(key, io.BytesIO(b"not a manifest"))
    packs = sorted(p.key for p in store.content.chunks.iter_packs())
    with pytest.warns(UserWarning, match="manifests"):
        report = gc_now(store)
    assert report.bad_manifests == [key]
    assert len(report.manifests_deleted) == 2  # unreferenced manifests still go
    assert sorted(p.key for p in store.content.chunks.iter_packs()) == packs


def test_a_repack_candidate_whose_chunks_all_stay_elsewhere_does_not_stop_gc(backend: Any) -> None:
    # After a repack the old pack stays one grace period; a writer whose index still points
    # there reuses it, so its live chunks are in a pack that stays as well. gc once built an
    # empty repack plan for it, which did not parse: every later gc failed (a probe found it).
    store = _store(backend)
    shared = _rand(1024 * 1024, "shared")
    store.write("a", io.BytesIO(shared + _rand(4 * 1024 * 1024, "a")))
    store.write("c", io.BytesIO(shared + _rand(1024 * 1024, "c")))
    store.remove("a")
    assert gc(store, grace_period=0, allow_short_grace=True).packs_repacked
    d = shared + _rand(1024 * 1024, "d")
    store.write("d", io.BytesIO(d))  # the same process: reuses the repacked pack
    for _ in range(2):
        gc(store, grace_period=0, allow_short_grace=True)
    with store.open_reader("d") as reader:
        assert reader.read() == d
    assert verify(store, deep=True).ok


def test_repack_points_a_file_only_at_a_copy_of_its_chunks_that_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two uploads running at once each store the chunks they share. When gc repacked the
    # first copy's pack, it pointed its files at the other copy without reading it: with
    # that copy damaged, a file that read back before gc failed after it, and the next gc
    # deleted the only good copy (found by a probe).
    a = _store(LocalBackend(tmp_path / "store"))
    b = _store(LocalBackend(tmp_path / "store"))
    known = b.content.chunks.known
    monkeypatch.setattr(known, "refreshed", lambda: known)  # has not seen a's
    shared, rest, own, other = (
        _rand(n, i) for i, n in enumerate([768 << 10, 2 << 20, 1 << 20, 1 << 20])
    )
    a.write("F0", io.BytesIO(shared + rest))  # pack P
    a.write("F1", io.BytesIO(shared + own))  # shares P's chunks
    b.write("F2", io.BytesIO(shared + other))  # pack Q: a second copy of the shared chunks
    table = b.content.chunks.manifest(b.content.get_ref("F2").digest)
    q = table.packs[table.entry(0).pack]
    path = tmp_path / "store" / "packs" / "blake3" / q.hexdigest[:2] / q.hexdigest[2:]
    path.chmod(0o644)
    damaged = bytearray(path.read_bytes())
    damaged[table.entry(3).offset + 10] ^= 1  # bit rot in Q's copy
    path.write_bytes(damaged)
    a.remove("F0")  # P is now mostly dead: gc repacks its live part
    assert gc_now(a).packs_repacked
    gc_now(a)  # deletes P
    assert _store(LocalBackend(tmp_path / "store")).open_reader("F1").read() == shared + own
