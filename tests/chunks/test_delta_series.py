"""A long series of versions that each change a few bytes: what one more version costs.

A chunk changed in one version is stored as a delta: its whole digest is never stored, so
every later upload found it missing and compared its old bytes again, and each version's
changed bytes went to a pack of their own that later manifests kept naming. Measured on a
12 MiB file saved 300 times, 64 bytes changed each time: upload CPU rose from 60 to 133 ms
and the manifest named 288 packs. These tests pin the two cures: a delta already stored is
named again without a read, and gc merges small packs.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import FileSystemArtifactStore, gc, verify
from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.chunks import index
from optuna_cas.chunks import store as chunk_store
from optuna_cas.chunks.index import KnownChunks
from optuna_cas.chunks.layout import PACK_PREFIX, pack_key
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.operations import _gc_chunks
from tests.chunks.test_delta_chunks import _CountingLocal

KiB = 1024
MiB = 1024 * KiB
THRESHOLD = 256 * KiB


def _changed(data: bytes, seed: int, size: int = 64) -> bytes:
    """``data`` with ``size`` bytes at a random place rewritten in place."""
    rng = random.Random(seed)
    at = rng.randrange(len(data) - size)
    return data[:at] + rng.randbytes(size) + data[at + size :]


def test_a_chunk_unchanged_since_its_delta_is_named_again_without_a_read(
    tmp_path: Path,
) -> None:
    backend = _CountingLocal(tmp_path / "store")
    store = ContentStore(backend, chunk_threshold=THRESHOLD)
    v0 = random.Random(1).randbytes(4 * MiB)
    v1 = v0[: 1 * MiB] + b"x" * 64 + v0[1 * MiB + 64 :]  # one chunk changed: a delta
    v2 = v1[: 3 * MiB] + b"y" * 64 + v1[3 * MiB + 64 :]  # another one, far from the first
    v3 = v2[: 2 * MiB] + b"z" * 64 + v2[2 * MiB + 64 :]
    versions = {"v0": v0, "v1": v1, "v2": v2, "v3": v3}
    reads = {}
    for name, data in versions.items():
        backend.pack_reads = 0
        store.put_artifact(name, io.BytesIO(data))
        reads[name] = backend.pack_reads
    # An upload compares its own changed chunk and the one the version before changed (whose
    # bytes that upload stored; found stored now, its delta is learnt). Older ones are named
    # from memory: v3 no longer compares v1's chunk (3 reads before).
    assert reads == {"v0": 0, "v1": 1, "v2": 2, "v3": 2}
    assert store.chunks.last_new_bytes <= 1024  # v3's changed bytes only
    for name, data in versions.items():
        assert store.open_artifact(name).read() == data
    assert verify(FileSystemArtifactStore(tmp_path / "store"), deep=True).ok


def test_a_remembered_delta_whose_pack_is_gone_is_compared_and_stored_again(
    tmp_path: Path,
) -> None:
    store = ContentStore(_CountingLocal(tmp_path / "store"), chunk_threshold=THRESHOLD)
    v0 = random.Random(2).randbytes(4 * MiB)
    v1 = v0[: 1 * MiB] + b"x" * 64 + v0[1 * MiB + 64 :]
    v2 = v1[: 3 * MiB] + b"y" * 64 + v1[3 * MiB + 64 :]
    for name, data in (("v0", v0), ("v1", v1), ("v2", v2)):
        store.put_artifact(name, io.BytesIO(data))
    # The pack holding v1's changed bytes goes (a gc elsewhere, a hand): the next upload must
    # not name it from memory.
    v1_packs = set(store.chunks.manifest(store.get_ref("v1").digest).packs)
    v0_packs = set(store.chunks.manifest(store.get_ref("v0").digest).packs)
    (gone,) = v1_packs - v0_packs
    store.backend.remove(pack_key(gone))
    v3 = v2[: 2 * MiB] + b"z" * 64 + v2[2 * MiB + 64 :]
    store.put_artifact("v3", io.BytesIO(v3))
    assert gone not in store.chunks.manifest(store.get_ref("v3").digest).packs
    assert store.open_artifact("v3").read() == v3


def test_the_memory_of_deltas_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "_DELTA_ENTRIES", 5)
    known = KnownChunks(MemoryBackend())
    pack = Digest.of_bytes(b"pack")
    pieces = [(Digest.of_bytes(bytes([i])), pack, i) for i in range(2)]
    chunks = [Digest.of_bytes(b"chunk %d" % i) for i in range(4)]
    for chunk in chunks:
        known.remember_delta(chunk, pieces, (pack, 0))
    # Two entries each, at most five in all: the two newest are kept.
    assert [known.find_delta(c) is not None for c in chunks] == [False, False, True, True]


def test_gc_merges_the_small_packs_a_long_series_leaves(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path / "s", chunk_threshold=THRESHOLD)
    data = random.Random(3).randbytes(4 * MiB)
    versions = {}
    for v in range(_gc_chunks.MERGE_SMALL_AT + 4):
        data = _changed(data, v) if v else data
        versions[f"v{v}"] = data
        store.write(f"v{v}", io.BytesIO(data))
    last = store.content.get_ref(f"v{len(versions) - 1}").digest
    named_before = len(store.content.chunks.manifest(last).packs)
    assert named_before > _gc_chunks.MERGE_SMALL_AT  # a pack per version
    stored_before = sum(i.size for i in store.content.backend.list(PACK_PREFIX))
    first = gc(store, grace_period=0, allow_short_grace=True)
    assert len(first.packs_repacked) >= _gc_chunks.MERGE_SMALL_AT
    # The same long-lived store saves another version: it must name the chunks where gc put
    # them. Naming the packs gc left behind (what its index said before) kept them alive,
    # and every gc merged them again.
    data = _changed(data, 1000)
    versions["after gc"] = data
    store.write("after gc", io.BytesIO(data))
    second = gc(store, grace_period=0, allow_short_grace=True)  # deletes the merged packs
    assert set(second.packs_deleted) >= set(first.packs_repacked)
    assert not set(second.packs_repacked) & set(first.packs_repacked)
    # The big first pack stays (it is not small); the changes now share one pack.
    assert len(store.content.chunks.manifest(last).packs) <= 2
    assert sum(i.size for i in store.content.backend.list(PACK_PREFIX)) <= stored_before
    for name, content in versions.items():
        with store.open_reader(name) as reader:
            assert reader.read() == content
    assert verify(store, deep=True).ok
    # A few small packs are left alone: merging them would rewrite bytes for little gain.
    # (The last upload's own pack is repacked, being mostly the zeros that page-align its
    # first chunk: less than half live.)
    small = {p.key for p in store.content.chunks.iter_packs() if p.size < _gc_chunks.SMALL_PACK}
    assert 0 < len(small) < _gc_chunks.MERGE_SMALL_AT
    store.write("one more", io.BytesIO(_changed(data, 99)))
    third = gc(store, grace_period=0, allow_short_grace=True)
    assert not set(third.packs_repacked) & small


def test_remembered_manifests_are_bounded_in_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bounded by count alone, 64 manifests of 10 GiB files would hold some 400 MB.
    store = ContentStore(LocalBackend(tmp_path / "s"), chunk_threshold=THRESHOLD)
    digests = []
    for seed in range(3):
        store.put_artifact(f"a{seed}", io.BytesIO(random.Random(seed).randbytes(4 * MiB)))
        digests.append(store.get_ref(f"a{seed}").digest)
    sizes = [len(store.chunks.manifest(d).entries) for d in digests]
    monkeypatch.setattr(chunk_store, "_MANIFEST_MEMO_BYTES", max(sizes))  # one fits, not two
    store.chunks._manifests.clear()
    for digest in digests:
        store.chunks.manifest(digest)
    assert list(store.chunks._manifests) == [digests[-1].hexdigest]


def test_a_merge_leaves_a_small_pack_larger_than_the_others_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Merged again at every run, what the last merge wrote was copied, and every manifest
    # naming it rewritten, over and over (helper-88: 24x the new bytes copied in 80 runs).
    monkeypatch.setattr(_gc_chunks, "MERGE_SMALL_AT", 2)
    monkeypatch.setattr(_gc_chunks, "SMALL_PACK", 64 * MiB)
    store = FileSystemArtifactStore(tmp_path / "s", chunk_threshold=THRESHOLD)
    data = random.Random(4).randbytes(2 * MiB)
    store.write("v0", io.BytesIO(data))
    (big,) = [p.key for p in store.content.chunks.iter_packs()]
    for v in (1, 2, 3):
        data = _changed(data, v)
        store.write(f"v{v}", io.BytesIO(data))
    report = gc(store, grace_period=0, allow_short_grace=True)
    assert len(report.packs_repacked) == 3 and big not in report.packs_repacked


def _every_chunk_changed(data: bytes, seed: int) -> bytes:
    """``data`` with 8 bytes rewritten in the middle of each of its chunks, the first too."""
    from optuna_cas.chunks.chunker import Chunker

    rng, out, at = random.Random(seed), bytearray(data), 0
    for chunk, _ in Chunker(io.BytesIO(data)):
        middle = at + chunk.size // 2
        out[middle : middle + 8] = rng.randbytes(8)
        at += chunk.size
    return bytes(out)


def test_a_version_that_changed_every_chunk_first_included_stores_its_changes(
    tmp_path: Path,
) -> None:
    # A delta follows the chunk before it; with the first chunk changed too there was none
    # to follow, and the whole file was stored again: 4 MiB for 440 changed bytes (found by
    # helper-86's probe). The first chunk is now compared with where the files this process
    # stored last began, so another file saved in between does not stop it.
    store = FileSystemArtifactStore(tmp_path / "s", chunk_threshold=THRESHOLD)
    model = random.Random(5).randbytes(4 * MiB)
    store.write("model v0", io.BytesIO(model))
    store.write("optimizer v0", io.BytesIO(random.Random(6).randbytes(1 * MiB)))
    changed = _every_chunk_changed(model, 7)
    store.write("model v1", io.BytesIO(changed))
    assert store.content.chunks.last_new_bytes < 64 * KiB
    with store.open_reader("model v1") as reader:
        assert reader.read() == changed
    assert verify(store, deep=True).ok


def test_a_planted_index_object_cannot_move_a_chunk_a_process_knows(tmp_path: Path) -> None:
    # Index objects are hints anyone with write access can plant (hash-named, well formed).
    # Letting the latest one move known chunks made an upload name bytes one off from its
    # chunks: acknowledged, then unreadable (review of 3f960a7).
    import blake3

    from optuna_cas.chunks.layout import INDEX_PREFIX
    from optuna_cas.chunks.table import INDEX_MAGIC, TableBuilder

    store = ContentStore(LocalBackend(tmp_path / "s"), chunk_threshold=THRESHOLD)
    v0 = random.Random(8).randbytes(4 * MiB)
    store.put_artifact("v0", io.BytesIO(v0))
    table = store.chunks.manifest(store.get_ref("v0").digest)
    lie = TableBuilder(INDEX_MAGIC)
    for entry in table:
        if entry.offset > 0:
            pack = lie.pack_number(table.packs[entry.pack])
            lie.add_raw(entry.chunk, entry.length, pack, entry.offset - 1)
    planted = lie.to_bytes()
    name = blake3.blake3(planted).hexdigest()
    store.backend.write(INDEX_PREFIX + name, io.BytesIO(planted))
    v1 = v0[:-100] + b"tail" * 25
    store.put_artifact("v1", io.BytesIO(v1))
    assert store.open_artifact("v1").read() == v1


class _SlowIndexListing(LocalBackend):
    """A LIST of the index that takes a round trip, as on S3: threads overlap inside it."""

    def list(self, prefix: str = "") -> Iterator[Any]:
        from optuna_cas.chunks.layout import INDEX_PREFIX

        items = list(super().list(prefix))
        if prefix == INDEX_PREFIX:
            time.sleep(0.03)
        return iter(items)


def test_threads_sharing_a_store_learn_the_index_afresh_only_when_gc_merged_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name another thread added while this one listed looked "gone": 45 uploads on 3
    # threads rebuilt the index 22 times and read index objects 382 times (review of
    # 6e93533), with no index object deleted.
    built = []
    original = KnownChunks.__init__
    monkeypatch.setattr(
        KnownChunks, "__init__", lambda self, *a: (built.append(1), original(self, *a))[1]
    )
    store = ContentStore(_SlowIndexListing(tmp_path / "s"), chunk_threshold=THRESHOLD)
    acked: list[tuple[str, bytes]] = []

    def uploader(seed: int) -> None:
        rng = random.Random(seed)
        for v in range(10):
            data = rng.randbytes(400_000)
            store.put_artifact(f"{seed}-{v}", io.BytesIO(data))
            acked.append((f"{seed}-{v}", data))

    threads = [threading.Thread(target=uploader, args=(seed,)) for seed in range(3)]
    built.clear()  # the store's own
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert built == [] and len(acked) == 30
    assert all(store.open_artifact(name).read() == data for name, data in acked)


def test_after_gc_a_worker_does_not_start_files_where_gc_left_a_pack_behind(
    tmp_path: Path,
) -> None:
    # Where the last files began was kept across learning the index afresh: a first chunk
    # stored as a delta of a pack gc had repacked kept naming (and touching) that pack, and
    # gc repacked it again at every run (review of 6e93533).
    store = FileSystemArtifactStore(tmp_path / "s", chunk_threshold=THRESHOLD)
    model = random.Random(1).randbytes(2 * MiB)
    store.write("v0", io.BytesIO(model + random.Random(2).randbytes(3 * MiB)))
    repacked: dict[str, int] = {}
    for v in range(1, 7):
        model = _every_chunk_changed(model, v)
        store.write(f"v{v}", io.BytesIO(model))
        store.remove("v0" if v == 1 else f"v{v - 1}")
        for key in gc(store, grace_period=0, allow_short_grace=True).packs_repacked:
            repacked[key] = repacked.get(key, 0) + 1
    assert max(repacked.values(), default=0) == 1
    with store.open_reader("v6") as reader:
        assert reader.read() == model


def test_a_copy_keeps_its_chunks_when_another_put_learns_the_index_meanwhile(
    tmp_path: Path,
) -> None:
    # copy_from published its chunks into the store's KnownChunks, then looked them up in
    # whatever object the store held by then: one another thread's put had just built from
    # an older listing failed the copy, "chunk ... was not stored" (review of 6e93533).
    from optuna_cas.chunks.store import ChunkStore

    source = ChunkStore(LocalBackend(tmp_path / "a"))
    destination = ChunkStore(LocalBackend(tmp_path / "b"))
    data = random.Random(1).randbytes(1 * MiB)
    digest = source.put(io.BytesIO(data))
    older = KnownChunks(destination.backend).refreshed()  # listed before the copy's index
    publish = destination.publish_index

    def publish_then_swapped(table: Any, *rest: Any) -> str | None:
        name = publish(table, *rest)
        destination.known = older  # another thread: self.known = self.known.refreshed()
        return name

    destination.publish_index = publish_then_swapped  # type: ignore[method-assign]
    assert destination.copy_from(source, digest) == digest.size
    assert destination.open(digest).read() == data
