"""verify over chunked artifacts: manifests, packs, index objects; shallow, deep, quarantine."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import blake3
import pytest

from optuna_cas import gc, verify
from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.chunks.layout import index_key, manifest_key, pack_key
from optuna_cas.chunks.table import MANIFEST_MAGIC, TableBuilder
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.stores.base import ContentAddressedArtifactStore

THRESHOLD = 256 * 1024


def _rand(n: int, seed: object) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ContentAddressedArtifactStore:
    backend: Any = (
        MemoryBackend() if request.param == "memory" else LocalBackend(tmp_path / "store")
    )
    return ContentAddressedArtifactStore(ContentStore(backend, chunk_threshold=THRESHOLD))


BACKBONE = _rand(1024 * 1024, "backbone")
FILES = {
    "a": BACKBONE + _rand(300 * 1024, "a"),
    "b": b"header" + BACKBONE + _rand(200 * 1024, "b"),
    "small": b"a whole blob" * 400,  # below chunking, above INLINE_LIMIT: a blob
}


def _fill(store: ContentAddressedArtifactStore) -> None:
    for name, data in FILES.items():
        store.write(name, io.BytesIO(data))


def _packs(store: ContentAddressedArtifactStore) -> list[Any]:
    return sorted(store.content.chunks.iter_packs(), key=lambda p: p.key)


def _flip_a_byte(store: ContentAddressedArtifactStore, key: str, at: int) -> None:
    backend = store.content.backend
    with backend.open_reader(key) as reader:
        data = bytearray(reader.read())
    data[at] ^= 1
    backend.write(key, io.BytesIO(bytes(data)))  # out of band: same size, other bytes


def test_a_sound_chunked_store_verifies_and_counts_what_it_read(
    store: ContentAddressedArtifactStore,
) -> None:
    _fill(store)
    report = verify(store)
    assert report.ok and report.orphans == []
    assert (report.manifests_checked, report.packs_checked) == (2, 2)
    assert report.index_objects_checked == 2 and report.bad_index_objects == []
    pack_bytes = sum(p.size for p in _packs(store))
    file_bytes = len(FILES["a"]) + len(FILES["b"])
    assert report.bytes_hashed == pack_bytes + file_bytes + len(FILES["small"])


def test_a_missing_pack_is_named_with_its_manifest(store: ContentAddressedArtifactStore) -> None:
    _fill(store)
    first = _packs(store)
    pack_of_a = next(
        p for p in first if p.hexdigest in {d.hexdigest for d in _manifest(store, "a").packs}
    )
    store.content.backend.remove(pack_of_a.key)
    report = verify(store, deep=False)
    assert not report.ok
    assert {(m.manifest, m.pack, m.problem) for m in report.missing_packs} >= {
        (manifest_key(store.get_ref("a").digest), f"blake3:{pack_of_a.hexdigest}", "missing")
    }
    assert report.missing == []  # the refs' manifests are there


def _manifest(store: ContentAddressedArtifactStore, name: str) -> Any:
    return store.content.chunks.manifest(store.get_ref(name).digest)


def test_a_corrupt_pack_is_found_deep_and_quarantined_then_a_reupload_repairs(
    store: ContentAddressedArtifactStore,
) -> None:
    _fill(store)
    pack = next(p for p in _packs(store) if p.size > len(BACKBONE))  # a's: holds the backbone
    _flip_a_byte(store, pack.key, 600_000)  # in the backbone, past the first cuts
    assert verify(store, deep=False).ok  # same size: only a deep check can tell
    report = verify(store, quarantine=True)
    assert report.corrupt == [pack.key]
    assert "hashes to" in report.reasons[pack.key]
    # Both files use the backbone's chunks in that pack: both fail to read back.
    users = sorted(manifest_key(store.get_ref(n).digest) for n in ["a", "b"])
    assert report.bad_files == users
    assert "does not match" in report.reasons[users[0]]
    assert report.quarantined == [pack.key]  # the manifests are fine: they stay
    assert store.content.backend.exists("quarantine/" + pack.key)

    store.write("again", io.BytesIO(FILES["a"]))  # the same bytes: good chunks again
    for name in ["a", "b"]:
        with store.open_reader(name) as reader:
            assert reader.read() == FILES[name]
    assert verify(store).ok


def test_a_malformed_manifest_is_corrupt_and_quarantined(
    store: ContentAddressedArtifactStore,
) -> None:
    _fill(store)
    key = manifest_key(store.get_ref("a").digest)
    store.content.backend.write(key, io.BytesIO(b"OCASMFT1 and then nonsense"))
    report = verify(store, deep=False, quarantine=True)
    assert report.corrupt == [key] and "malformed" in report.reasons[key]
    assert report.missing == [] and report.quarantined == [key]
    store.write("again", io.BytesIO(FILES["a"]))
    with store.open_reader("a") as reader:
        assert reader.read() == FILES["a"]


def test_a_manifest_of_another_file_is_corrupt(store: ContentAddressedArtifactStore) -> None:
    _fill(store)
    backend = store.content.backend
    with backend.open_reader(manifest_key(store.get_ref("b").digest)) as reader:
        b_manifest = reader.read()
    key = manifest_key(store.get_ref("a").digest)
    backend.write(key, io.BytesIO(b_manifest))
    report = verify(store, deep=False)
    assert report.corrupt == [key] and "describes" in report.reasons[key]


def test_chunks_in_the_wrong_order_fail_the_whole_file_check(
    store: ContentAddressedArtifactStore,
) -> None:
    _fill(store)
    digest = store.get_ref("a").digest
    table = store.content.chunks.manifest(digest)
    entries = list(table)
    entries[0], entries[1] = entries[1], entries[0]  # every chunk still matches its digest
    swapped = TableBuilder(MANIFEST_MAGIC)
    for chunk, pack, length, offset in entries:
        swapped.add_raw(chunk, length, swapped.pack_number(table.packs[pack]), offset)
    store.content.chunks.replace_manifest(swapped, digest)
    assert verify(store, deep=False).ok
    report = verify(store, quarantine=True)
    key = manifest_key(digest)
    assert report.bad_files == [key] and report.corrupt == []
    assert str(digest.hexdigest) in report.reasons[key] or "digest" in report.reasons[key]
    assert report.quarantined == [key]  # its packs are sound: the manifest is what is wrong


def test_a_bad_index_object_is_reported_but_harmless(
    store: ContentAddressedArtifactStore,
) -> None:
    _fill(store)
    backend = store.content.backend
    garbage = b"not an index"
    backend.write(index_key(blake3.blake3(garbage).hexdigest()), io.BytesIO(garbage))
    misnamed = index_key("ab" * 32)
    backend.write(misnamed, io.BytesIO(b"whatever"))
    report = verify(store, deep=False)
    assert report.ok
    assert report.bad_index_objects == sorted(
        [index_key(blake3.blake3(garbage).hexdigest()), misnamed]
    )
    assert "does not hash to its name" in report.reasons[misnamed]


def test_unreferenced_manifests_and_unused_packs_are_orphans(
    store: ContentAddressedArtifactStore,
) -> None:
    _fill(store)
    lone = _rand(400 * 1024, "lone")
    store.write("lone", io.BytesIO(lone))
    digest = Digest.of_bytes(lone)
    (lone_pack,) = store.content.chunks.manifest(digest).packs
    store.remove("lone")
    report = verify(store, deep=False)
    assert report.ok and report.orphans == [manifest_key(digest)]  # its manifest uses the pack
    store.content.backend.remove(manifest_key(digest))
    report = verify(store, deep=False)
    assert report.ok and report.orphans == [pack_key(lone_pack)]


def test_deep_verify_does_not_read_a_pack_of_the_wrong_size(tmp_path: Path) -> None:
    """A pack grown into a huge sparse file is reported from its size, never read through."""
    store = ContentAddressedArtifactStore(
        ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
    )
    _fill(store)
    named, orphan = _packs(store)[0], tmp_path / "store" / pack_key(Digest("ab" * 32, 1))
    os.truncate(tmp_path / "store" / named.key, 64 * 2**30)  # the same bytes, then holes
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"")
    os.truncate(orphan, 64 * 2**30)  # a pack no manifest names, larger than any written
    report = verify(store, deep=True)
    assert not report.ok
    assert named.key in report.corrupt and orphan.name in str(report.corrupt)
    assert "more than any pack written" in report.reasons[named.key]
    assert report.bytes_hashed < 16 * 2**20  # the files and the sound packs, not 128 GiB


def test_an_index_object_naming_chunks_where_other_bytes_are(tmp_path: Path) -> None:
    """A forged (or wrong) index object: deep verify names it, quarantine moves it, and the
    next upload of the file it misled is readable."""
    from optuna_cas.chunks.chunker import Chunker
    from optuna_cas.chunks.table import INDEX_MAGIC

    def fresh() -> ContentAddressedArtifactStore:  # a new process's view of the store
        return ContentAddressedArtifactStore(
            ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
        )

    store = fresh()
    _fill(store)
    pack = Digest(_packs(store)[0].hexdigest, _packs(store)[0].size)
    misled = _rand(600 * 1024, "misled")
    forged = TableBuilder(INDEX_MAGIC)
    number = forged.pack_number(pack)
    for chunk, _data in Chunker(io.BytesIO(misled)):
        forged.add(chunk, number, 0)  # every chunk "at offset 0" of a pack that holds others
    data = forged.to_bytes()
    name = blake3.blake3(data).hexdigest()
    store.content.backend.write(index_key(name), io.BytesIO(data))

    fresh().write("misled", io.BytesIO(misled))  # acknowledged, built from the forged entries
    report = verify(fresh(), deep=True)
    assert report.bad_files == [manifest_key(Digest.of_bytes(misled))]
    assert report.bad_index_objects == [index_key(name)]
    assert "holds other bytes there" in report.reasons[index_key(name)]
    quarantined = verify(fresh(), deep=True, quarantine=True).quarantined
    assert set(quarantined) == {manifest_key(Digest.of_bytes(misled)), index_key(name)}

    fresh().write("again", io.BytesIO(misled))
    with fresh().open_reader("again") as reader:
        assert reader.read() == misled
    assert verify(fresh(), deep=True).bad_files == []


def test_a_manifest_naming_a_wrong_pack_size_does_not_condemn_a_sound_pack(
    tmp_path: Path,
) -> None:
    """Deep verify once trusted a manifest's pack sizes enough to skip hashing the pack:
    quarantine then moved sound packs away, and every file using them was lost."""
    import struct

    store = ContentAddressedArtifactStore(
        ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
    )
    _fill(store)
    for path in (tmp_path / "store" / "manifests").rglob("*"):
        if not path.is_file():
            continue
        data = bytearray(path.read_bytes())
        # Pack records follow magic (8), the file's digest and size (40) and the two counts.
        (pack_count,) = struct.unpack_from("<I", data, 48)
        for number in range(pack_count):
            at = 56 + number * 40 + 32  # each record: digest (32), size (8)
            (size,) = struct.unpack_from("<Q", data, at)
            struct.pack_into("<Q", data, at, size + 1)  # entries still fit: it parses
        path.write_bytes(bytes(data))
    report = verify(store, deep=True, quarantine=True)
    assert not any(k.startswith("packs/") for k in report.quarantined + report.corrupt)
    assert report.missing_packs and not report.ok  # the manifests are what is wrong


def _grow(store: ContentAddressedArtifactStore, key: str, how: str, tmp_path: Path) -> None:
    """Extra bytes at a pack's end: one appended byte, or holes up to 1 GiB (sparse)."""
    if how == "sparse":
        os.truncate(tmp_path / "store" / key, 2**30)  # more than any pack: never read whole
        return
    backend = store.content.backend
    with backend.open_reader(key) as reader:
        data = reader.read()
    backend.write(key, io.BytesIO(data + b"\0"))  # out of band: every named range as it was


@pytest.mark.parametrize("how", ["append", "sparse"])
def test_a_pack_with_extra_bytes_at_its_end_keeps_serving_the_files_that_read_back(
    store: ContentAddressedArtifactStore, tmp_path: Path, how: str
) -> None:
    """Its users were excluded as "missing pack (size n)": quarantine moved the only copy of
    files that read back byte-exact, and all of them became ArtifactNotFound (found by a
    probe)."""
    if how == "sparse" and not isinstance(store.content.backend, LocalBackend):
        pytest.skip("a sparse file needs a local store")
    _fill(store)
    pack = next(p for p in _packs(store) if p.size > len(BACKBONE))  # a's: b uses it too
    _grow(store, pack.key, how, tmp_path)
    grown = store.content.backend.stat(pack.key).size
    report = verify(store, quarantine=True)
    assert report.corrupt == [pack.key] and report.bad_files == []
    assert {m.problem for m in report.missing_packs} == {f"size {grown}"}  # still reported
    assert pack.key not in report.quarantined and report.quarantined == []
    assert "copied to a new pack" in report.reasons[pack.key]
    for name, data in FILES.items():
        with store.open_reader(name) as reader:
            assert reader.read() == data
    gc(store, grace_period=0, allow_short_grace=True)
    assert verify(store).ok
    for name, data in FILES.items():
        with store.open_reader(name) as reader:
            assert reader.read() == data


def test_a_grown_pack_whose_named_ranges_are_damaged_is_still_quarantined(
    store: ContentAddressedArtifactStore, tmp_path: Path
) -> None:
    _fill(store)
    pack = next(p for p in _packs(store) if p.size > len(BACKBONE))
    _flip_a_byte(store, pack.key, 600_000)  # in the backbone: neither a nor b reads back
    _grow(store, pack.key, "append", tmp_path)
    report = verify(store, quarantine=True)
    assert report.corrupt == [pack.key] and len(report.bad_files) == 2
    assert report.quarantined == [pack.key]


def test_quarantine_of_a_sparse_pack_takes_no_more_disk_than_it_did(tmp_path: Path) -> None:
    """It was copied, holes written out: 2 GiB of disk for a file holding 9 MiB (a probe)."""
    store = ContentAddressedArtifactStore(
        ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
    )
    _fill(store)
    planted = tmp_path / "store" / pack_key(Digest("ab" * 32, 1))
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"not a pack")
    os.truncate(planted, 2**30)  # more than any pack; nothing names it
    report = verify(store, quarantine=True)
    key = pack_key(Digest("ab" * 32, 1))
    assert report.quarantined == [key]
    moved = tmp_path / "store" / "quarantine" / key
    assert moved.stat().st_size == 2**30 and moved.stat().st_blocks * 512 < 2**20
    for name, data in FILES.items():
        with store.open_reader(name) as reader:
            assert reader.read() == data


def test_a_store_that_must_copy_keeps_no_more_of_a_pack_than_any_pack_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from optuna_cas.chunks import maintenance

    store = ContentAddressedArtifactStore(ContentStore(MemoryBackend(), chunk_threshold=THRESHOLD))
    _fill(store)
    pack = next(p for p in _packs(store) if p.size > len(BACKBONE))
    _flip_a_byte(store, pack.key, 600_000)
    monkeypatch.setattr(maintenance, "PACK_MAX", 1000)  # stands in for a 40 GiB object
    report = verify(store, quarantine=True)
    assert report.quarantined == [pack.key]
    assert f"the {pack.size - 1000} B past the most" in report.reasons[pack.key]
    assert store.content.backend.stat("quarantine/" + pack.key).size == 1000


def test_a_quarantine_directory_leading_out_of_the_store_is_reported_not_raised(
    tmp_path: Path,
) -> None:
    """verify raised the private _OutsideTheStore and the whole report was lost (a probe)."""
    store = ContentAddressedArtifactStore(
        ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
    )
    _fill(store)
    pack = next(p for p in _packs(store) if p.size > len(BACKBONE))
    _flip_a_byte(store, pack.key, 600_000)  # neither a nor b reads back: the pack must go
    (blob,) = store.content.iter_blobs()  # "small"
    _flip_a_byte(store, blob.key, 10)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "store" / "quarantine").symlink_to(elsewhere)
    report = verify(store, quarantine=True)
    assert report.corrupt == sorted([pack.key, blob.key]) and len(report.bad_files) == 2
    assert report.quarantined == [] and report.quarantine_failed == sorted([pack.key, blob.key])
    for key in report.quarantine_failed:
        assert "could not quarantine: quarantine/ is refused" in report.reasons[key]
        assert store.content.backend.exists(key)  # left where it was
    assert "hashes to" in report.reasons[pack.key]  # the finding is kept too
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("deep", [False, True])
def test_a_gc_repacking_while_verify_runs_is_no_missing_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deep: bool
) -> None:
    # verify lists the packs, then reads the manifests: a gc that repacked in between made the
    # manifests name a pack the listing never saw, reported missing on a sound store (found
    # by a probe: 3 of 20 rounds of gc and verify started together).
    from optuna_cas.operations import _chunk_listing

    store = ContentAddressedArtifactStore(
        ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD)
    )
    a = _rand(3 * 1024 * 1024, "repack a")
    b = a[: 512 * 1024] + _rand(256 * 1024, "repack b")  # a's pack is mostly dead once a goes
    store.write("a", io.BytesIO(a))
    store.write("b", io.BytesIO(b))
    store.remove("a")
    listed = _chunk_listing.ChunkListing.of
    repacked: list[int] = []

    def listing_then_a_gc(chunks: Any) -> Any:
        listing = listed(chunks)
        if not repacked:  # gc lists too: once
            repacked.append(0)
            report = gc(store, grace_period=0, allow_short_grace=True)  # "another process"
            repacked[0] = len(report.packs_repacked)
        return listing

    monkeypatch.setattr(_chunk_listing.ChunkListing, "of", staticmethod(listing_then_a_gc))
    report = verify(store, deep=deep)
    assert repacked and repacked[0] >= 1  # the race happened
    assert report.missing_packs == [] and report.ok
    assert store.open_reader("b").read() == b
