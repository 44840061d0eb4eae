"""Changed chunks stored as deltas: ranges of the old pack plus only the bytes that changed.

A checkpoint that rewrites a few scattered rows changes most of its 64 KiB chunks a little;
without deltas each is stored again whole. These tests pin the saving, and that everything
around chunked content (reads, gc and repack, verify, sync, tampered packs) treats a manifest
entry as what it is: a range of a pack with the digest of its bytes, which may lie inside
another chunk and overlap other entries.
"""

from __future__ import annotations

import io
import itertools
import os
import random
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optuna_cas import FileSystemArtifactStore, gc, sync, verify
from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.chunks import assemble, delta
from optuna_cas.chunks.assemble import assemble_from_cache, assemble_from_store, contiguous_runs
from optuna_cas.chunks.delta import Piece, diff, store_delta
from optuna_cas.chunks.layout import PACK_PREFIX, manifest_key, pack_key
from optuna_cas.chunks.packer import PackWriter
from optuna_cas.chunks.reader import ChunkedReader
from optuna_cas.chunks.table import MANIFEST_MAGIC, TableBuilder, parse_table
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest, hash_file
from optuna_cas.exceptions import IntegrityError
from optuna_cas.middleware.blob_cache import DiskBlobCache
from optuna_cas.operations._gc_chunks import LiveChunks
from optuna_cas.stores.memory import MemoryArtifactStore

KiB = 1024
MiB = 1024 * KiB
THRESHOLD = 256 * KiB
ROW = 2 * KiB  # an embedding row of 512 float32


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _rewrite_rows(data: bytes, rows: int, seed: int) -> bytes:
    """``data`` with ``rows`` rows of :data:`ROW` bytes, picked at random, rewritten in place."""
    rng = random.Random(seed)
    out = bytearray(data)
    for row in rng.sample(range(len(data) // ROW), rows):
        out[row * ROW : (row + 1) * ROW] = rng.randbytes(ROW)
    return bytes(out)


def _local(tmp_path: Path) -> ContentStore:
    return ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)


def _put(store: ContentStore, name: str, data: bytes, tmp_path: Path) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    store.put_artifact(name, path)
    return path


def test_scattered_row_rewrites_store_about_the_rewritten_bytes(tmp_path: Path) -> None:
    store = _local(tmp_path)
    v0 = _rand(8 * MiB, 1)
    _put(store, "v0", v0, tmp_path)
    # 40 rows in 8 MiB: about 40 of the file's 128 chunks change, a row each.
    v1 = _rewrite_rows(v0, 40, 2)
    path = _put(store, "v1", v1, tmp_path)
    rewritten = 40 * ROW
    # Whole chunks would be about 40 x 64 KiB = 2.5 MiB.
    assert store.chunks.last_new_bytes <= 1.5 * rewritten
    assert store.open_artifact("v1").read() == v1
    assert store.get_ref("v1").digest == hash_file(path)
    # The next version's deltas are against v0's bytes again (the chunks v1 changed are not
    # stored whole anywhere): v1's rows come back, are found, and are not stored twice.
    v2 = _rewrite_rows(v1, 40, 3)
    _put(store, "v2", v2, tmp_path)
    assert store.chunks.last_new_bytes <= 1.5 * rewritten
    assert store.open_artifact("v2").read() == v2
    assert store.open_artifact("v0").read() == v0


def test_a_store_without_local_packs_keeps_changed_chunks_whole(tmp_path: Path) -> None:
    # Reading the old bytes would be a request per changed chunk on S3 or GCS.
    store = ContentStore(MemoryBackend(), chunk_threshold=THRESHOLD)
    v0 = _rand(4 * MiB, 4)
    store.put_artifact("v0", io.BytesIO(v0))
    store.put_artifact("v1", io.BytesIO(_rewrite_rows(v0, 20, 5)))
    assert store.chunks.last_new_bytes > 10 * 16 * KiB  # at least the chunks' minimum size


class _CountingLocal(LocalBackend):
    """Counts ranged reads of packs (what a delta's look at the old bytes is), and opens."""

    pack_reads = 0
    pack_opens = 0

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        if key.startswith(PACK_PREFIX):
            self.pack_opens += 1
            self.pack_reads += length is not None
        return super().open_reader(key, offset=offset, length=length)


def test_a_delta_file_is_read_with_one_open_per_pack(tmp_path: Path) -> None:
    # Its entries switch between the old pack and the new one for every changed chunk: an
    # open per run (a safe open, on a thread) made such reads 11 times slower than a plain
    # file's.
    backend = _CountingLocal(tmp_path / "store")
    store = ContentStore(backend, chunk_threshold=THRESHOLD)
    v0 = _rand(8 * MiB, 20)
    v1 = _rewrite_rows(v0, 60, 21)
    store.put_artifact("v0", io.BytesIO(v0))
    store.put_artifact("v1", io.BytesIO(v1))
    table = store.chunks.manifest(store.get_ref("v1").digest)
    assert len(table) > 150  # deltas: about three entries per changed chunk
    backend.pack_opens = 0
    assert store.open_artifact("v1").read() == v1
    assert backend.pack_opens == len(table.packs)


def test_all_new_bytes_after_a_known_chunk_cost_two_looks(tmp_path: Path) -> None:
    backend = _CountingLocal(tmp_path / "store")
    store = ContentStore(backend, chunk_threshold=THRESHOLD)
    v0 = _rand(4 * MiB, 6)
    store.put_artifact("v0", io.BytesIO(v0))
    backend.pack_reads = 0
    # Same first 512 KiB (known chunks), then 4 MiB of fully retrained weights.
    v1 = v0[: 512 * KiB] + _rand(4 * MiB, 7)
    store.put_artifact("v1", io.BytesIO(v1))
    assert backend.pack_reads <= 2
    assert store.chunks.last_new_bytes >= 4 * MiB - 256 * KiB
    assert store.open_artifact("v1").read() == v1


def test_deltas_stop_at_their_manifest_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real budget (65,536 extra entries) keeps a manifest far within what readers accept;
    # a small one shows the same rule on a small file.
    monkeypatch.setattr(delta, "_EXTRA_ENTRIES", 4)
    store = _local(tmp_path)
    v0 = _rand(8 * MiB, 8)
    _put(store, "v0", v0, tmp_path)
    v1 = _rewrite_rows(v0, 40, 9)
    _put(store, "v1", v1, tmp_path)
    table = store.chunks.manifest(store.get_ref("v1").digest)
    chunks_of_v0 = len(store.chunks.manifest(store.get_ref("v0").digest))
    # One delta may cross the budget by its own pieces (at most 33), no more.
    assert len(table) <= chunks_of_v0 + 4 + 33
    assert store.chunks.last_new_bytes > 10 * 16 * KiB  # most changed chunks stored whole
    assert store.open_artifact("v1").read() == v1


def test_a_delta_survives_gc_and_repack_after_its_base_is_removed(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path / "s", chunk_threshold=THRESHOLD)
    v0 = _rand(8 * MiB, 10)
    store.write("v0", io.BytesIO(v0))
    # v1 keeps a third of v0 (rewritten in places) and adds new bytes: once v0 is removed,
    # v0's pack is mostly dead and gc repacks the ranges v1's deltas name.
    v1 = _rewrite_rows(v0[: 3 * MiB], 20, 11) + _rand(2 * MiB, 12)
    store.write("v1", io.BytesIO(v1))
    store.remove("v0")
    first = gc(store, grace_period=0, allow_short_grace=True)
    assert first.packs_repacked  # the path under test ran
    gc(store, grace_period=0, allow_short_grace=True)  # deletes the repacked pack
    with store.open_reader("v1") as reader:
        assert reader.read() == v1
    report = verify(store, deep=True)
    assert report.ok, report


def _pack_bytes(store: FileSystemArtifactStore | MemoryArtifactStore) -> int:
    return sum(info.size for info in store.content.backend.list(PACK_PREFIX))


def test_repacking_ranges_that_overlap_stores_their_bytes_once(tmp_path: Path) -> None:
    # v1..v4 each rewrite other rows of v0's first half and retrain the rest: once v0 goes,
    # its pack is mostly dead, and the ranges the four versions name inside its chunks overlap.
    store = FileSystemArtifactStore(tmp_path / "s", chunk_threshold=THRESHOLD)
    kept = _rand(3 * MiB, 30)
    store.write("v0", io.BytesIO(kept + _rand(5 * MiB, 31)))
    versions = {
        f"v{k}": _rewrite_rows(kept, 30, 31 + k) + _rand(5 * MiB, 40 + k) for k in range(1, 5)
    }
    for name, data in versions.items():
        store.write(name, io.BytesIO(data))
    store.remove("v0")
    before = _pack_bytes(store)
    first = gc(store, grace_period=0, allow_short_grace=True)
    gc(store, grace_period=0, allow_short_grace=True)
    assert first.packs_repacked
    # Copied range by range, the 3 MiB kept were stored once per version (4 x 3 MiB).
    assert first.bytes_repacked <= 3.5 * MiB
    assert _pack_bytes(store) < before
    for name, data in versions.items():
        with store.open_reader(name) as reader:
            assert reader.read() == data


def test_sync_of_delta_files_costs_what_uploading_them_there_would(tmp_path: Path) -> None:
    src = FileSystemArtifactStore(tmp_path / "src", chunk_threshold=THRESHOLD)
    v0 = _rand(8 * MiB, 50)
    versions = {"v0": v0, **{f"v{k}": _rewrite_rows(v0, 40, 50 + k) for k in range(1, 6)}}
    direct = MemoryArtifactStore(chunk_threshold=THRESHOLD)  # no local packs: no deltas
    for name, data in versions.items():
        src.write(name, io.BytesIO(data))
        direct.write(name, io.BytesIO(data))
    dst = MemoryArtifactStore(chunk_threshold=THRESHOLD)
    assert sync(src, dst).ok
    # The ranges a delta'd file names are copied as chunks (each run of overlapping ones
    # once; chunked files one at a time, so versions do not each store what they share):
    # about the changed chunks whole, as a direct upload there stores them. Range by range
    # and four files at a time, it was 1.7 times that.
    assert _pack_bytes(dst) <= 1.2 * _pack_bytes(direct)
    for name, data in versions.items():
        with dst.open_reader(name) as reader:
            assert reader.read() == data


def test_overlapping_live_ranges_count_once() -> None:
    # A delta names ranges inside a chunk another manifest names whole.
    pack = Digest.of_bytes(b"p" * 100)
    builder = TableBuilder(MANIFEST_MAGIC)
    number = builder.pack_number(pack)
    for offset, length in ((0, 100), (0, 40), (60, 40)):
        builder.add(Digest(Digest.of_bytes(bytes(length)).hexdigest, length), number, offset)
    file = Digest.of_bytes(bytes(180))
    table = parse_table(builder.to_bytes(file), "m", MANIFEST_MAGIC)
    live = LiveChunks()
    live.add(object(), table)  # type: ignore[arg-type]
    assert live.live_bytes(pack.hexdigest) == 100
    assert len(live.by_pack[pack.hexdigest]) == 3


def test_sync_and_deep_verify_take_delta_files(tmp_path: Path) -> None:
    src = FileSystemArtifactStore(tmp_path / "src", chunk_threshold=THRESHOLD)
    v0 = _rand(4 * MiB, 13)
    v1 = _rewrite_rows(v0, 20, 14)
    src.write("v0", io.BytesIO(v0))
    src.write("v1", io.BytesIO(v1))
    assert verify(src, deep=True).ok
    remote = MemoryArtifactStore(chunk_threshold=THRESHOLD)
    assert sync(src, remote).ok
    back = FileSystemArtifactStore(tmp_path / "back", chunk_threshold=THRESHOLD)
    assert sync(remote, back).ok
    for store in (remote, back):
        for name, data in (("v0", v0), ("v1", v1)):
            with store.open_reader(name) as reader:
                assert reader.read() == data


def test_a_base_pack_changed_on_disk_never_leaks_into_a_delta(tmp_path: Path) -> None:
    # Hostile local state: bytes of the old pack differ from what its index says. The delta
    # compares what is on disk now, so the new file is stored right all the same.
    store = _local(tmp_path)
    v0 = _rand(4 * MiB, 15)
    _put(store, "v0", v0, tmp_path)
    (pack,) = [p for p in (tmp_path / "store" / "packs").rglob("*") if p.is_file()]
    pack.chmod(0o644)
    damaged = bytearray(pack.read_bytes())
    damaged[2 * MiB : 2 * MiB + 4096] = bytes(4096)
    pack.write_bytes(damaged)
    v1 = _rewrite_rows(v0, 20, 16)
    _put(store, "v1", v1, tmp_path)
    assert store.open_artifact("v1").read() == v1
    with pytest.raises(IntegrityError):
        store.open_artifact("v0").read()


@settings(max_examples=200, deadline=None)
@given(
    old=st.binary(min_size=1, max_size=20_000),
    edits=st.lists(st.tuples(st.integers(0, 20_000), st.binary(min_size=1, max_size=3000))),
)
def test_pieces_rebuild_the_new_chunk_exactly(old: bytes, edits: list[tuple[int, bytes]]) -> None:
    new = bytearray(old)
    for at, data in edits:
        at %= len(new)
        new[at : at + len(data)] = data[: len(new) - at]
    new_bytes = bytes(new)
    pieces = diff(old, new_bytes)
    if pieces is None:
        return
    assert pieces[0].start == 0 and pieces[-1].end == len(new_bytes)
    assert all(0 <= p.start < p.end <= len(new_bytes) for p in pieces)
    assert all(a.end == b.start for a, b in itertools.pairwise(pieces))
    rebuilt = b"".join(
        old[p.start : p.end] if p.same else new_bytes[p.start : p.end] for p in pieces
    )
    assert rebuilt == new_bytes
    assert sum(p.end - p.start for p in pieces if not p.same) <= len(new_bytes) / 2
    assert len(pieces) <= 33


def test_a_short_chunk_changed_in_its_first_bytes_gets_right_pieces() -> None:
    # A file's last chunk can be shorter than the 1 KiB blocks; narrowing a run from its end
    # once stepped below zero and called the changed bytes equal (a probe found it).
    for length in range(100, 1300, 7):
        for position in range(0, 64, 5):
            old = bytes(length)
            new = bytearray(old)
            new[position] = 1
            pieces = diff(old, bytes(new))
            if pieces is None:  # short: more than half the chunk would be new bytes
                assert length < 600
                continue
            assert pieces[0].start == 0 and pieces[-1].end == length
            assert all(0 <= p.start < p.end <= length for p in pieces)
            assert all(a.end == b.start for a, b in itertools.pairwise(pieces))
            rebuilt = b"".join(
                old[p.start : p.end] if p.same else new[p.start : p.end] for p in pieces
            )
            assert rebuilt == new


def test_pieces_that_do_not_tile_the_chunk_are_refused(tmp_path: Path) -> None:
    writer = PackWriter(MemoryBackend(), TableBuilder(MANIFEST_MAGIC))
    old = new = bytes(1000)
    pack = Digest.of_bytes(old)
    bad = [Piece(0, -984, False), Piece(-984, 1000, True)]
    with pytest.raises(ValueError, match="do not cover"):
        store_delta(writer, (pack, 0, bad, old), new, lambda digest: None)
    writer.abort()


def test_chunks_of_other_lengths_are_never_deltas() -> None:
    assert diff(b"a" * 5000, b"a" * 5001) is None
    assert diff(b"", b"") is None


def _file_of_many_packs(
    tmp_path: Path, order: list[int]
) -> tuple[LocalBackend, Any, Digest, bytes]:
    """A manifest naming small packs in ``order`` (a pack may come back after others)."""
    backend = LocalBackend(tmp_path / "packs-store")
    builder = TableBuilder(MANIFEST_MAGIC)
    packs = []
    for i in range(max(order) + 1):
        data = _rand(64, 100 + i)
        pack = Digest.of_bytes(data)
        backend.write(pack_key(pack), io.BytesIO(data))
        packs.append((pack, data))
    whole = b""
    for i in order:
        pack, data = packs[i]
        builder.add(Digest.of_bytes(data), builder.pack_number(pack), 0)
        whole += data
    digest = Digest.of_bytes(whole)
    return backend, parse_table(builder.to_bytes(digest), "m", MANIFEST_MAGIC), digest, whole


def test_a_local_read_keeps_few_packs_open_at_once(tmp_path: Path) -> None:
    # One open handle per pack for the whole read ran out of descriptors (a probe: 300 packs
    # under a limit of 200); the reader keeps at most 16 and reopens a pack that comes back.
    import resource

    # The download (runs copied out of the pack files) kept them all open too.
    order = [*range(40), 0, 1, 2]
    backend, table, digest, whole = _file_of_many_packs(tmp_path, order)
    target = tmp_path / "out"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 30, hard))
    try:
        assert ChunkedReader(backend, table, "x").read() == whole
        assert assemble_from_store(table, digest, target, backend)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert target.read_bytes() == whole


def test_a_cached_copy_reuses_a_descriptor_only_while_its_pack_is_open(tmp_path: Path) -> None:
    # The cache keeps 16 packs open; a pack that comes back after 20 others is a new handle,
    # and copying from the old descriptor number failed (EBADF) or read another file.
    backend, table, digest, whole = _file_of_many_packs(tmp_path, [*range(20), 0, 1, 2])
    cache = DiskBlobCache(tmp_path / "cache")
    target = tmp_path / "out" / "file"
    target.parent.mkdir()
    fetch = lambda pack: backend.open_reader(pack_key(pack))  # noqa: E731
    assert assemble_from_cache(table, digest, target, cache, fetch)
    assert target.read_bytes() == whole


class _NoFileno(LocalBackend):
    """A local backend whose readers are not plain files (as when reads are counted)."""

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        data = super().open_reader(key, offset=offset, length=length).read()
        return io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]


def test_a_local_store_whose_packs_are_not_plain_files_reads_them_per_run(
    tmp_path: Path,
) -> None:
    _backend, table, _digest, whole = _file_of_many_packs(tmp_path, [0, 1, 0, 2])
    wrapped = _NoFileno(tmp_path / "packs-store")
    assert ChunkedReader(wrapped, table, "x").read() == whole


def test_a_delta_file_is_read_out_of_its_packs_exactly_and_a_short_pack_fails_it(
    tmp_path: Path,
) -> None:
    # A delta'd file is thousands of short runs, gathered into one buffer before each write
    # (one kernel copy each was 30 us): positions must come out right, and a pack that ends
    # early must fail the copy, not leave a file.
    store = _local(tmp_path)
    v0 = _rand(4 * MiB, 21)
    _put(store, "v0", v0, tmp_path)
    v1 = _rewrite_rows(v0, 60, 22)
    digest = store.put_artifact("v1", io.BytesIO(v1)).digest
    table = store.chunks.manifest(digest)
    runs = list(contiguous_runs(table))
    assert sum(length < assemble._SMALL_RUN for _, _, length in runs) > 60
    backend = LocalBackend(tmp_path / "store")
    out = tmp_path / "out"
    out.mkdir()
    assert assemble_from_store(table, digest, out / "v1", backend)
    assert (out / "v1").read_bytes() == v1
    (base,) = {table.packs[number] for number, _, _ in runs} - {table.packs[runs[-1][0]]}
    path = tmp_path / "store" / pack_key(base)
    path.chmod(0o644)
    os.truncate(path, path.stat().st_size // 2)
    assert not assemble_from_store(table, digest, out / "again", backend)
    assert sorted(os.listdir(out)) == ["v1"]
    # The streaming read (each run read straight from its pack file) names the short pack.
    with pytest.raises(IntegrityError, match=f"{pack_key(base)}.* bytes early"):
        for _ in ChunkedReader(backend, table, name="v1").chunks():
            pass


def test_sync_from_a_long_lived_store_follows_a_repack_made_elsewhere(tmp_path: Path) -> None:
    # The store object remembered v1's manifest; a gc in another process then repacked its
    # chunks (a one-byte delta's pack is mostly lead, so gc always repacks it) and sync
    # failed with "source blob ... is missing".
    src = FileSystemArtifactStore(tmp_path / "src", chunk_threshold=THRESHOLD)
    v0 = _rand(2 * MiB, 31)
    v1 = v0[:-1] + bytes([v0[-1] ^ 1])
    src.write("v0", io.BytesIO(v0))
    src.write("v1", io.BytesIO(v1))
    assert src.open_reader("v1").read() == v1
    elsewhere = FileSystemArtifactStore(tmp_path / "src", chunk_threshold=THRESHOLD)
    assert gc(elsewhere, grace_period=0, allow_short_grace=True).packs_repacked
    gc(elsewhere, grace_period=0, allow_short_grace=True)
    dst = FileSystemArtifactStore(tmp_path / "dst", chunk_threshold=THRESHOLD)
    report = sync(src, dst)
    assert report.ok, report.failed
    assert dst.open_reader("v1").read() == v1


def test_quarantine_copies_a_damaged_base_pack_out_from_under_later_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One flipped byte that only v0 uses: v1, a delta of v0, read back byte-exact. Quarantine
    # first moved the whole pack aside, taking v1 with it; then it kept the pack, and deep
    # verify reported it corrupt ever after; then it moved it once v1's ranges were copied
    # out, taking an upload made meanwhile with it (found by probes and review). Now v1's
    # ranges are copied out, verified, and gc deletes the pack once nothing uses it.
    from optuna_cas.operations import _verify_chunks

    store = FileSystemArtifactStore(tmp_path / "s", chunk_threshold=THRESHOLD)
    v0 = _rand(2 * MiB, 41)
    v1 = _rewrite_rows(v0, 10, 42)
    chunks = store.content.chunks
    store.write("v0", io.BytesIO(v0))
    store.write("v1", io.BytesIO(v1))
    (pack,) = chunks.manifest(store.content.get_ref("v0").digest).packs
    t1 = chunks.manifest(store.content.get_ref("v1").digest)
    used_by_v1 = {
        offset
        for e in t1
        if t1.packs[e.pack] == pack
        for offset in range(e.offset, e.offset + e.length)
    }
    spot = next(o for o in range(pack.size) if o not in used_by_v1 and o > 8192)
    path = tmp_path / "s" / pack_key(pack)
    path.chmod(0o644)
    damaged = bytearray(path.read_bytes())
    damaged[spot] ^= 0xFF
    path.write_bytes(damaged)
    # Another worker uploads a file sharing v1's chunks while verify runs.
    v2 = v1[: MiB + MiB // 2] + _rand(MiB // 2, 43)
    quarantine = _verify_chunks.quarantine_chunked

    def during_verify(*args: Any, **kwargs: Any) -> None:
        FileSystemArtifactStore(tmp_path / "s", chunk_threshold=THRESHOLD).write(
            "v2", io.BytesIO(v2)
        )
        quarantine(*args, **kwargs)

    monkeypatch.setattr(_verify_chunks, "quarantine_chunked", during_verify)
    report = verify(store, deep=True, quarantine=True)
    monkeypatch.undo()
    assert pack_key(pack) in report.corrupt and pack_key(pack) not in report.quarantined
    assert "copied to a new pack" in report.reasons[pack_key(pack)]
    assert manifest_key(store.content.get_ref("v0").digest) in report.quarantined
    fresh = FileSystemArtifactStore(tmp_path / "s", chunk_threshold=THRESHOLD)
    assert fresh.open_reader("v1").read() == v1 and fresh.open_reader("v2").read() == v2
    assert pack not in chunks.manifest(store.content.get_ref("v1").digest).packs
    # v2 leans on the pack's sound ranges: the next quarantine copies those out too, and
    # then gc takes the pack, which nothing uses any more.
    assert (
        "copied to a new pack" in verify(fresh, deep=True, quarantine=True).reasons[pack_key(pack)]
    )
    assert pack_key(pack) in gc(fresh, grace_period=0, allow_short_grace=True).packs_deleted
    after = verify(fresh, deep=True)
    assert not after.corrupt and not after.bad_files
    assert [m.artifact_id for m in after.missing] == ["v0"]  # until its bytes come again
    fresh.write("v0-again", io.BytesIO(v0))
    again = FileSystemArtifactStore(tmp_path / "s", chunk_threshold=THRESHOLD)
    assert again.open_reader("v0").read() == v0
    assert again.open_reader("v1").read() == v1 and again.open_reader("v2").read() == v2
    assert verify(again, deep=True).ok
