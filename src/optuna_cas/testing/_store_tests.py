"""The tests of ``StoreConformance`` (see ``store.py``)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

import optuna_cas
from optuna_cas.chunks.layout import MANIFEST_PREFIX, PACK_PREFIX
from optuna_cas.content import blob_key
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.refs import INLINE_LIMIT, ArtifactRef
from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.raw import RawView
from optuna_cas.testing.streams import random_bytes

MiB = 1024 * 1024


def _read(store: ContentAddressedArtifactStore, artifact_id: str) -> bytes:
    with store.open_reader(artifact_id) as reader:
        data: bytes = reader.read()
    return data


class StoreTests:
    """Round trips, dedup checked out of band, removal, bad IDs, corruption, Optuna, stats."""

    #: Out-of-band access to the storage below the store's root.
    raw: RawView
    #: The store re-publishes a blob it already holds: a local store renames its verified temp
    #: copy over it (which also repairs a corrupt copy). Then a dedup hit must keep the blob's
    #: bytes, but not the stored object's identity.
    rewrites_duplicates: bool = False

    @pytest.fixture
    def store(self) -> ContentAddressedArtifactStore:
        """A fresh, empty store; it must also set :attr:`raw`."""
        raise NotImplementedError(f"{type(self).__name__} must provide a 'store' fixture")

    def raw_ref(self, artifact_id: str) -> ArtifactRef | None:
        """The ref really stored for ``artifact_id``, parsed (``None``: no ref)."""
        data = self.raw.read(f"refs/{artifact_id}")
        return None if data is None else ArtifactRef.from_json(data, artifact_id)

    # ---- round trips ------------------------------------------------------------------------

    @pytest.mark.parametrize("size", [0, 1, INLINE_LIMIT, INLINE_LIMIT + 1, 5 * MiB + 1])
    def test_write_open_round_trip(self, store: ContentAddressedArtifactStore, size: int) -> None:
        data = random_bytes(size, seed=size)
        store.write("art-1", io.BytesIO(data))
        assert _read(store, "art-1") == data
        ref = store.get_ref("art-1")
        assert ref.size == size
        # Out of band: the ref names the digest, and holds the bytes (small files) or the
        # blob under its key does; never both.
        assert self.raw_ref("art-1") == ref
        if size <= INLINE_LIMIT:
            assert ref.inline == data and self.raw.keys("blobs/") == []
        else:
            assert ref.inline is None and self.raw.read(blob_key(ref.digest)) == data

    def test_twenty_mib_artifact(
        self, store: ContentAddressedArtifactStore, tmp_path: Path
    ) -> None:
        data = random_bytes(20 * MiB, seed=1)
        path = tmp_path / "big.bin"
        path.write_bytes(data)
        ref = store.put("big", path, filename="big.bin")
        assert ref.size == len(data)
        assert _read(store, "big") == data
        assert self.raw.unfinished() == []

    @pytest.mark.parametrize("size", [INLINE_LIMIT + 1, 9 * MiB])  # one blob; chunked
    def test_a_reader_seeks_as_a_file_does(
        self, store: ContentAddressedArtifactStore, size: int
    ) -> None:
        # Optuna's local store returns a plain file: np.load, zipfile and torch.load seek it.
        data = random_bytes(size, seed=size + 7)
        store.write("s", io.BytesIO(data))
        with store.open_reader("s") as reader:
            assert reader.seekable() and reader.read(6) == data[:6]
            assert reader.seek(-2, io.SEEK_CUR) == 4  # np.load's step back after the magic
            assert reader.read(10) == data[4:14]
            assert reader.seek(-100, io.SEEK_END) == size - 100
            assert reader.read() == data[-100:]
            assert reader.seek(0) == 0 and reader.read() == data

    def test_a_zip_reads_member_by_member(self, store: ContentAddressedArtifactStore) -> None:
        # torch.save writes a zip of stored members; torch.load reads it with seeks.
        members = {f"archive/data/{i}": random_bytes(700_000 + i, seed=i) for i in range(14)}
        packed = io.BytesIO()
        with zipfile.ZipFile(packed, "w", zipfile.ZIP_STORED) as archive:
            for name, content in members.items():
                archive.writestr(name, content)
        store.write("z", io.BytesIO(packed.getvalue()))
        with store.open_reader("z") as reader, zipfile.ZipFile(reader) as archive:
            for name in reversed(list(members)):
                assert archive.read(name) == members[name]

    def test_a_seek_never_hands_out_unchecked_bytes(
        self, store: ContentAddressedArtifactStore
    ) -> None:
        data = random_bytes(INLINE_LIMIT + 5000, seed=17)
        ref = store.put("t", io.BytesIO(data))
        evil = bytearray(data)
        evil[-1] ^= 1
        self.raw.write(blob_key(ref.digest), bytes(evil))  # around the store: bit rot
        cache = store.content.blob_cache
        if cache is not None:
            cache.discard(ref.digest)
        # A cache checks a blob as it fills, before open_reader returns; others on the seek.
        with pytest.raises(IntegrityError), store.open_reader("t") as reader:
            reader.seek(-10, io.SEEK_END)
            reader.read()

    # ---- chunked artifacts (files of 8 MiB or more) -------------------------------------------

    def _pack_bytes(self) -> int:
        return sum(len(self.raw.read(key) or b"") for key in self.raw.keys(PACK_PREFIX))

    def test_chunked_versions_store_only_what_changed(
        self, store: ContentAddressedArtifactStore, tmp_path: Path
    ) -> None:
        base = random_bytes(12 * MiB, seed=11)
        first = tmp_path / "v1.safetensors"
        first.write_bytes(b'{"step": 1}' + base)
        v1 = store.put("v1", first)
        assert self.raw.keys(MANIFEST_PREFIX) and self.raw.read(blob_key(v1.digest)) is None
        stored = self._pack_bytes()
        # A longer header shifts every byte; 256 KiB in the middle change.
        second = tmp_path / "v2.safetensors"
        changed = random_bytes(256 * 1024, seed=12)
        second.write_bytes(
            b'{"step": 100, "lr": 0.5}' + base[: 6 * MiB] + changed + base[6 * MiB + len(changed) :]
        )
        v2 = store.put("v2", second)
        assert v2.digest == Digest.of_bytes(second.read_bytes())
        assert self._pack_bytes() - stored <= len(changed) + 1024 * 1024
        assert _read(store, "v1") == first.read_bytes()
        assert _read(store, "v2") == second.read_bytes()
        target = tmp_path / "out.bin"
        optuna_cas.download_artifact(artifact_store=store, file_path=str(target), artifact_id="v2")
        assert target.read_bytes() == second.read_bytes()
        assert self.raw.unfinished() == []

    def test_a_pack_cut_short_is_mended_by_the_next_upload(
        self, store: ContentAddressedArtifactStore
    ) -> None:
        # On S3 the copy of the pack the re-upload wrote was refused (the key was taken), the
        # upload was acknowledged, and it did not read back (found by a probe).
        data = random_bytes(9 * MiB, seed=19)
        store.write("first", io.BytesIO(data))
        (key,) = self.raw.keys(PACK_PREFIX)
        whole = self.raw.read(key) or b""
        self.raw.write(key, whole[: 4 * MiB])  # around the store: a truncated object
        cache = store.content.blob_cache
        if cache is not None:  # it may hold the whole pack: the store's copy is the point
            cache.discard(Digest("".join(key.split("/")[-2:]), len(whole)))
        store.write("again", io.BytesIO(data))
        assert _read(store, "again") == data and _read(store, "first") == data
        assert optuna_cas.verify(store, deep=False).ok

    def test_corrupt_pack_is_never_returned(
        self, store: ContentAddressedArtifactStore, tmp_path: Path
    ) -> None:
        data = random_bytes(9 * MiB, seed=13)
        ref = store.put("victim", io.BytesIO(data))
        (key,) = self.raw.keys(PACK_PREFIX)
        evil = bytearray(self.raw.read(key) or b"")
        evil[len(evil) // 2] ^= 1
        self.raw.write(key, bytes(evil))  # around the store: bit rot
        cache = store.content.blob_cache
        if cache is not None:  # it may hold the verified pack: make reads go to the bad copy
            cache.discard(Digest("".join(key.split("/")[-2:]), len(evil)))
        target = tmp_path / "out.bin"
        with pytest.raises(IntegrityError):
            optuna_cas.download_artifact(
                artifact_store=store, file_path=str(target), artifact_id="victim"
            )
        assert not target.exists() and list(tmp_path.glob(".out.bin*")) == []
        assert ref.size == len(data)

    # ---- dedup ------------------------------------------------------------------------------

    # One request; multipart / resumable. (Files of at most INLINE_LIMIT bytes have no blob.)
    @pytest.mark.parametrize("size", [INLINE_LIMIT + 1000, 6 * MiB])
    def test_repeated_writes_store_one_blob_never_rewritten(
        self, store: ContentAddressedArtifactStore, tmp_path: Path, size: int
    ) -> None:
        data = random_bytes(size, seed=2)
        path = tmp_path / "same.bin"
        path.write_bytes(data)
        ref = store.put("copy-0", path)
        key = blob_key(ref.digest)
        version = self.raw.version(key)
        for i in range(1, 5):
            store.write(f"copy-{i}", io.BytesIO(data))
        store.put("copy-5", path)
        assert self.raw.keys("blobs/") == [key]
        assert self.raw.read(key) == data
        if not self.rewrites_duplicates:
            assert self.raw.version(key) == version  # re-uploads wrote no blob bytes
        assert self.raw.keys("refs/") == [f"refs/copy-{i}" for i in range(6)]
        blobs = list(store.content.iter_blobs())
        assert len(blobs) == 1 and blobs[0].stored_size == len(data)
        assert sorted(store.content.iter_ref_ids()) == [f"copy-{i}" for i in range(6)]

    # ---- remove, bad IDs, corruption ----------------------------------------------------------

    def test_remove_then_missing(self, store: ContentAddressedArtifactStore) -> None:
        data = b"bye" * INLINE_LIMIT
        store.write("gone", io.BytesIO(data))
        store.write("small", io.BytesIO(b"bye"))  # inside its ref
        digest = store.get_ref("gone").digest
        store.remove("gone")
        store.remove("small")
        for artifact_id in ("gone", "small"):
            with pytest.raises(ArtifactNotFound, match=artifact_id):
                store.open_reader(artifact_id)
            with pytest.raises(FileNotFoundError):  # what Optuna's callers catch
                store.remove(artifact_id)
            assert self.raw_ref(artifact_id) is None
        assert self.raw.read(blob_key(digest)) == data  # the blob waits for gc
        assert self.raw.keys("blobs/") == [blob_key(digest)]  # the small file left none

    def test_remove_raises_optunas_artifact_not_found(
        self, store: ContentAddressedArtifactStore
    ) -> None:
        artifacts = pytest.importorskip("optuna.artifacts")
        store.write("gone", io.BytesIO(b"bye"))
        store.remove("gone")
        with pytest.raises(artifacts.exceptions.ArtifactNotFound):  # Optuna's class catches ours
            store.remove("gone")

    @pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/b", "", "nul\x00id", ".."])
    def test_invalid_ids_rejected_and_nothing_written(
        self, store: ContentAddressedArtifactStore, bad: str
    ) -> None:
        for call in (
            lambda: store.write(bad, io.BytesIO(b"x")),
            lambda: store.open_reader(bad),
            lambda: store.remove(bad),
        ):
            with pytest.raises(ValueError, match=r"^Invalid artifact_id"):
                call()
        assert self.raw.keys() == [] and self.raw.unfinished() == []

    def test_corrupt_blob_is_never_returned(
        self, store: ContentAddressedArtifactStore, tmp_path: Path
    ) -> None:
        data = random_bytes(100_000, seed=3)
        ref = store.put("victim", io.BytesIO(data))
        evil = bytearray(data)
        evil[500] ^= 1
        self.raw.write(blob_key(ref.digest), bytes(evil))  # around the store: bit rot
        cache = store.content.blob_cache
        if cache is not None:  # it holds the verified upload: make reads go to the bad copy
            cache.discard(ref.digest)
        with pytest.raises(IntegrityError):
            _read(store, "victim")
        target = tmp_path / "out.bin"
        with pytest.raises(IntegrityError):
            optuna_cas.download_artifact(
                artifact_store=store, file_path=str(target), artifact_id="victim"
            )
        assert not target.exists() and list(tmp_path.glob(".out.bin*")) == []

    # ---- through Optuna -----------------------------------------------------------------------

    def test_optuna_api_round_trip(
        self, store: ContentAddressedArtifactStore, tmp_path: Path
    ) -> None:
        optuna = pytest.importorskip("optuna")
        import optuna.artifacts as oa

        data = random_bytes(1_234_567, seed=4)
        inputs = tmp_path / "inputs"
        inputs.mkdir()
        (inputs / "w.pt").write_bytes(data)
        (inputs / "w2.pt").write_bytes(data)
        trial = optuna.create_study().ask()
        ours = optuna_cas.upload_artifact(
            artifact_store=store, file_path=str(inputs / "w.pt"), study_or_trial=trial
        )
        theirs = oa.upload_artifact(
            artifact_store=store, file_path=str(inputs / "w2.pt"), study_or_trial=trial
        )
        for i, artifact_id in enumerate([ours, theirs]):
            optuna_cas.download_artifact(
                artifact_store=store, file_path=str(tmp_path / f"a{i}"), artifact_id=artifact_id
            )
            oa.download_artifact(
                artifact_store=store, file_path=str(tmp_path / f"b{i}"), artifact_id=artifact_id
            )
            assert (tmp_path / f"a{i}").read_bytes() == data
            assert (tmp_path / f"b{i}").read_bytes() == data
        assert len(self.raw.keys("blobs/")) == 1
        metas = optuna_cas.get_all_artifact_meta(trial)
        assert sorted(m.filename or "" for m in metas) == ["w.pt", "w2.pt"]

    def test_stats(self, store: ContentAddressedArtifactStore) -> None:
        for i in range(4):
            store.write(f"s{i}", io.BytesIO(b"x" * 10_000 if i % 2 else b"y" * 5000))
        store.write("small", io.BytesIO(b"z" * 100))  # inside its ref: counted once per ref
        figures = optuna_cas.stats(store)
        assert (figures.artifacts, figures.unique_blobs) == (5, 2)
        assert (figures.logical_bytes, figures.stored_bytes) == (30_100, 15_100)
        assert (figures.blob_bytes, figures.inline_bytes) == (15_000, 100)
        assert figures.dedup_ratio == 30_100 / 15_100
