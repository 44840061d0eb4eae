"""The artifact-store contract, run unchanged over every store and middleware stack."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import optuna
import optuna.artifacts as oa
import pytest

import optuna_cas
from optuna_cas.content import blob_key
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.stores.base import ContentAddressedArtifactStore
from tests.conftest import random_bytes


def read(store: ContentAddressedArtifactStore, artifact_id: str) -> bytes:
    with store.open_reader(artifact_id) as reader:
        return reader.read()


@pytest.mark.parametrize("size", [0, 1, 5 * 1024 * 1024 + 1])
def test_write_open_round_trip(any_store: ContentAddressedArtifactStore, size: int) -> None:
    data = random_bytes(size, seed=size)
    any_store.write("art-1", io.BytesIO(data))
    assert read(any_store, "art-1") == data
    assert any_store.get_ref("art-1").size == size


def test_twenty_mib_artifact(
    any_store: ContentAddressedArtifactStore, make_file: Callable[..., Path]
) -> None:
    data = random_bytes(20 * 1024 * 1024, seed=1)
    path = make_file(data)
    ref = any_store.put("big", path, filename="big.bin")
    assert ref.size == len(data)
    assert read(any_store, "big") == data


def test_repeated_writes_store_one_blob(any_store: ContentAddressedArtifactStore) -> None:
    data = random_bytes(300_000, seed=2)
    for i in range(5):
        any_store.write(f"copy-{i}", io.BytesIO(data))
    blobs = list(any_store.content.iter_blobs())
    assert len(blobs) == 1 and blobs[0].stored_size == len(data)
    assert sorted(any_store.content.iter_ref_ids()) == [f"copy-{i}" for i in range(5)]


def test_remove_then_missing(any_store: ContentAddressedArtifactStore) -> None:
    any_store.write("gone", io.BytesIO(b"bye"))
    any_store.remove("gone")
    with pytest.raises(ArtifactNotFound, match="gone"):
        any_store.open_reader("gone")
    with pytest.raises(oa.exceptions.ArtifactNotFound):  # Optuna's class catches ours
        any_store.remove("gone")


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/b", "", "nul\x00id", ".."])
def test_invalid_ids_rejected_and_nothing_written(
    any_store: ContentAddressedArtifactStore, bad: str
) -> None:
    for call in (
        lambda: any_store.write(bad, io.BytesIO(b"x")),
        lambda: any_store.open_reader(bad),
        lambda: any_store.remove(bad),
    ):
        with pytest.raises(ValueError, match=r"^Invalid artifact_id"):
            call()
    assert list(any_store.content.backend.list()) == []


def test_corrupt_blob_is_never_returned(
    any_store: ContentAddressedArtifactStore, tmp_path: Path
) -> None:
    data = random_bytes(100_000, seed=3)
    ref = any_store.put("victim", io.BytesIO(data))
    evil = bytearray(data)
    evil[500] ^= 1
    any_store.content.backend.write(blob_key(ref.digest), io.BytesIO(bytes(evil)))
    cache = any_store.content.blob_cache
    if cache is not None:  # it holds the verified upload: make reads go to the bad backend copy
        cache.discard(ref.digest)
    with pytest.raises(IntegrityError):
        read(any_store, "victim")
    target = tmp_path / "out.bin"
    with pytest.raises(IntegrityError):
        optuna_cas.download_artifact(
            artifact_store=any_store, file_path=str(target), artifact_id="victim"
        )
    assert not target.exists() and list(tmp_path.glob(".out.bin*")) == []


def test_optuna_api_round_trip(
    any_store: ContentAddressedArtifactStore, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    data = random_bytes(1_234_567, seed=4)
    trial = optuna.create_study().ask()
    ours = optuna_cas.upload_artifact(
        artifact_store=any_store, file_path=str(make_file(data, name="w.pt")), study_or_trial=trial
    )
    theirs = oa.upload_artifact(
        artifact_store=any_store, file_path=str(make_file(data, name="w2.pt")), study_or_trial=trial
    )
    for i, artifact_id in enumerate([ours, theirs]):
        optuna_cas.download_artifact(
            artifact_store=any_store, file_path=str(tmp_path / f"a{i}"), artifact_id=artifact_id
        )
        oa.download_artifact(
            artifact_store=any_store, file_path=str(tmp_path / f"b{i}"), artifact_id=artifact_id
        )
        assert (tmp_path / f"a{i}").read_bytes() == data
        assert (tmp_path / f"b{i}").read_bytes() == data
    assert len(list(any_store.content.iter_blobs())) == 1
    metas = optuna_cas.get_all_artifact_meta(trial)
    assert sorted(m.filename for m in metas) == ["w.pt", "w2.pt"]


def test_stats(any_store: ContentAddressedArtifactStore) -> None:
    for i in range(4):
        any_store.write(f"s{i}", io.BytesIO(b"x" * 1000 if i % 2 else b"y" * 500))
    figures = optuna_cas.stats(any_store)
    assert (figures.artifacts, figures.unique_blobs) == (4, 2)
    assert (figures.logical_bytes, figures.stored_bytes) == (3000, 1500)
    assert figures.dedup_ratio == 2.0
