"""One bad record never fails a whole-store operation, and never hides the good ones.

Bad refs (malformed, deeply nested, huge, naming another ID, a FIFO at the key), special
files at blob keys and corrupt source blobs: gc, stats, verify and sync report each by name
and handle every good artifact as usual. Also: sync never overwrites a destination ref that
names other content, and download_artifact checks the digest Optuna's metadata recorded.
"""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path
from typing import Any

import optuna
import pytest

import optuna_cas
from optuna_cas import download_artifact, gc, stats, sync, upload_artifact, verify
from optuna_cas.content import blob_key
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, MalformedRecordWarning
from optuna_cas.refs import INLINE_LIMIT, ArtifactRef
from optuna_cas.stores.base import ContentAddressedArtifactStore
from tests.conftest import random_bytes
from tests.support.stores import STORE_BUILDERS


def blob_sized(text: bytes) -> bytes:
    """``text`` repeated past INLINE_LIMIT: content stored as a blob, not inside its ref."""
    return text * (INLINE_LIMIT // len(text) + 1)


# Blob-sized: these tests are about blobs that bad records must not hide or lose.
GOOD = {"good-1": blob_sized(b"first good artifact"), "good-2": blob_sized(b"second good artifact")}
BAD_REF_KINDS = ["malformed", "deep", "huge", "other-id", "fifo", "socket", "directory"]


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
    return STORE_BUILDERS[request.param](request)


def local_root(store: ContentAddressedArtifactStore) -> Path | None:
    root = getattr(store.content.backend, "root", None)
    return root if isinstance(root, Path) else None


def with_good_artifacts(store: ContentAddressedArtifactStore) -> None:
    for artifact_id, data in GOOD.items():
        store.write(artifact_id, io.BytesIO(data))


def plant_bad_ref(store: ContentAddressedArtifactStore, kind: str, artifact_id: str) -> None:
    backend = store.content.backend
    if kind in ("fifo", "socket"):
        root = local_root(store)
        if root is None:
            pytest.skip(f"a {kind} can only be planted in a local store")
        if kind == "fifo":
            os.mkfifo(root / "refs" / artifact_id)
        else:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(str(root / "refs" / artifact_id))
        return
    if kind == "directory":  # keys below refs/<id>/: a directory where the ref should be
        backend.write(f"refs/{artifact_id}/inside", io.BytesIO(store.get_ref("good-1").to_json()))
        return
    data = {
        "malformed": b'{"artifact_id": "' + artifact_id.encode(),  # truncated JSON
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "huge": b" " * (2 * 1024 * 1024),
        "other-id": store.get_ref("good-1").to_json(),  # a copy of another artifact's ref
    }[kind]
    backend.write(f"refs/{artifact_id}", io.BytesIO(data))


def assert_good_artifacts_intact(store: ContentAddressedArtifactStore, tmp_path: Path) -> None:
    for artifact_id, data in GOOD.items():
        target = tmp_path / f"check-{artifact_id}-{os.urandom(4).hex()}"
        download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact_id)
        assert target.read_bytes() == data


def blob_keys(store: ContentAddressedArtifactStore) -> set[str]:
    return {info.key for info in store.content.iter_blobs()}


def gc_now(store: ContentAddressedArtifactStore) -> optuna_cas.GcReport:
    return gc(store, grace_period=0, allow_short_grace=True)


# -- bad refs: gc, stats, verify, sync -------------------------------------------------------


@pytest.mark.parametrize("kind", BAD_REF_KINDS)
def test_gc_reports_a_bad_ref_and_still_collects(
    store: ContentAddressedArtifactStore, kind: str, tmp_path: Path
) -> None:
    with_good_artifacts(store)
    store.write("dropped", io.BytesIO(blob_sized(b"garbage to collect")))
    garbage = blob_key(store.get_ref("dropped").digest)
    store.remove("dropped")
    plant_bad_ref(store, kind, "bad")
    kept = {blob_key(store.get_ref(artifact_id).digest) for artifact_id in GOOD}

    with pytest.warns(MalformedRecordWarning, match="'bad'"):
        report = gc_now(store)

    assert report.bad_refs == ["bad"]
    assert report.refs_scanned == len(GOOD)
    assert report.deleted == [garbage]
    assert blob_keys(store) == kept  # every referenced blob survives
    assert_good_artifacts_intact(store, tmp_path)


def test_gc_keeps_the_blob_a_damaged_ref_still_names(tmp_path: Path) -> None:
    store = optuna_cas.FileSystemArtifactStore(tmp_path / "store")
    with_good_artifacts(store)
    store.write("damaged", io.BytesIO(blob_sized(b"only the damaged ref names me")))
    key = blob_key(store.get_ref("damaged").digest)
    record = (tmp_path / "store" / "refs" / "damaged").read_bytes()
    # Cut the record short right after its digest, as a crashed disk might.
    cut = record.index(b'"encoding"')
    (tmp_path / "store" / "refs" / "damaged").write_bytes(record[:cut])

    with pytest.warns(MalformedRecordWarning, match="'damaged'"):
        report = gc_now(store)
    assert report.bad_refs == ["damaged"] and report.deleted == []
    assert key in blob_keys(store)  # still there for whoever repairs the ref


@pytest.mark.parametrize("kind", BAD_REF_KINDS)
def test_stats_counts_a_bad_ref_instead_of_failing(
    store: ContentAddressedArtifactStore, kind: str
) -> None:
    with_good_artifacts(store)
    plant_bad_ref(store, kind, "bad")
    with pytest.warns(MalformedRecordWarning, match="'bad'"):
        figures = stats(store)
    assert figures.bad_refs == 1
    assert figures.artifacts == len(GOOD)
    assert figures.logical_bytes == sum(len(data) for data in GOOD.values())
    assert figures.referenced_blobs == figures.unique_blobs == len(GOOD)


@pytest.mark.parametrize("kind", BAD_REF_KINDS)
def test_verify_names_a_bad_ref_and_why(store: ContentAddressedArtifactStore, kind: str) -> None:
    with_good_artifacts(store)
    plant_bad_ref(store, kind, "bad")
    report = verify(store)
    assert not report.ok
    assert report.malformed_refs == ["bad"]
    expected = {
        "malformed": "malformed",
        "deep": "malformed",
        "huge": "larger than",
        "other-id": "names artifact 'good-1'",
        "fifo": "FIFO",
        "socket": "socket",
        "directory": "is a directory",
    }[kind]
    assert expected in report.reasons["bad"]
    assert report.refs_checked == len(GOOD)
    assert report.missing == [] and report.corrupt == [] and report.orphans == []


@pytest.mark.parametrize("kind", BAD_REF_KINDS)
def test_sync_skips_and_reports_a_bad_source_ref(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
) -> None:
    src = STORE_BUILDERS["filesystem"](request)
    dst = optuna_cas.FileSystemArtifactStore(tmp_path / "dst")
    with_good_artifacts(src)
    plant_bad_ref(src, kind, "bad")

    for _ in range(2):  # and again: still reported, nothing else to do
        with pytest.warns(MalformedRecordWarning, match="'bad'"):
            report = sync(src, dst)
        assert not report.ok
        assert [artifact_id for artifact_id, _ in report.failed] == ["bad"]
    assert report.refs_copied == [] and report.bytes_copied == 0
    assert sorted(dst.content.iter_ref_ids()) == sorted(GOOD)
    assert verify(dst).ok
    assert_good_artifacts_intact(dst, tmp_path)


def test_iter_refs_skips_bad_refs_with_a_warning_by_default(tmp_path: Path) -> None:
    # What 'optuna-cas ls' relies on: listing a store with a bad ref still lists the rest.
    store = optuna_cas.FileSystemArtifactStore(tmp_path / "store")
    with_good_artifacts(store)
    plant_bad_ref(store, "malformed", "bad")
    os.mkfifo(tmp_path / "store" / "refs" / "fifo")
    with pytest.warns(MalformedRecordWarning) as caught:
        ids = sorted(ref.artifact_id for ref in store.content.iter_refs())
    assert ids == sorted(GOOD)
    assert {"'bad'", "'fifo'"} <= {word for w in caught for word in str(w.message).split()}


# -- special files at blob keys --------------------------------------------------------------


def test_fifo_at_a_blob_key_is_reported_by_verify_and_stops_nothing(tmp_path: Path) -> None:
    store = optuna_cas.FileSystemArtifactStore(tmp_path / "store")
    with_good_artifacts(store)
    store.write("victim", io.BytesIO(blob_sized(b"its blob becomes a FIFO")))
    victim_key = blob_key(store.get_ref("victim").digest)
    stray_key = blob_key(Digest.of_bytes(b"never stored"))
    for key in (victim_key, stray_key):
        path = tmp_path / "store" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        os.mkfifo(path)

    report = verify(store)
    assert report.corrupt == sorted([victim_key, stray_key])
    assert "FIFO" in report.reasons[victim_key] and "FIFO" in report.reasons[stray_key]
    assert [m.artifact_id for m in report.missing] == ["victim"]  # it holds 0 bytes

    dst = optuna_cas.FileSystemArtifactStore(tmp_path / "dst")
    with pytest.warns(MalformedRecordWarning, match="'victim'"):
        synced = sync(store, dst)
    assert [artifact_id for artifact_id, _ in synced.failed] == ["victim"]
    assert "FIFO" in synced.failed[0][1]
    assert sorted(synced.refs_copied) == sorted(GOOD)
    assert verify(dst).ok

    kept = {blob_key(store.get_ref(artifact_id).digest) for artifact_id in GOOD}
    assert gc_now(store).deleted == []
    assert kept <= blob_keys(store)
    assert_good_artifacts_intact(store, tmp_path)

    quarantined = verify(store, quarantine=True)
    assert sorted(quarantined.quarantined) == sorted([victim_key, stray_key])
    store.write("again", io.BytesIO(blob_sized(b"its blob becomes a FIFO")))  # re-upload repairs it
    assert verify(store).ok


# -- sync: corrupt source blobs, conflicts, repairs ------------------------------------------


@pytest.mark.parametrize("dst_kind", ["filesystem", "s3"])
def test_sync_reports_corrupt_source_blobs_and_copies_the_rest(
    request: pytest.FixtureRequest, dst_kind: str, tmp_path: Path, s3_client: Any
) -> None:
    src = optuna_cas.FileSystemArtifactStore(tmp_path / "src")
    dst = STORE_BUILDERS[dst_kind](request)
    with_good_artifacts(src)
    src.write("also-good", io.BytesIO(GOOD["good-1"]))  # shares a blob with good-1
    corrupt = {
        "corrupt-small": blob_sized(b"small and then corrupted"),
        # Above the S3 multipart threshold: the bad byte arrives after parts were uploaded.
        "corrupt-large": random_bytes(6 * 1024 * 1024, seed=7),
    }
    for artifact_id, data in corrupt.items():
        src.write(artifact_id, io.BytesIO(data))
        path = tmp_path / "src" / blob_key(src.get_ref(artifact_id).digest)
        damaged = bytearray(data)
        damaged[-1] ^= 0xFF  # same size, last byte wrong: caught only at the very end
        path.write_bytes(bytes(damaged))
    good_ids = [*GOOD, "also-good"]

    with pytest.warns(MalformedRecordWarning):
        first = sync(src, dst)
    assert not first.ok
    assert sorted(artifact_id for artifact_id, _ in first.failed) == sorted(corrupt)
    assert all("does not match" in reason for _, reason in first.failed)
    assert sorted(first.refs_copied) == sorted(good_ids)
    assert first.blobs_copied == len(GOOD)
    good_blobs = {blob_key(src.get_ref(artifact_id).digest) for artifact_id in GOOD}
    assert blob_keys(dst) == good_blobs  # no orphan for the failed blobs
    assert sorted(dst.content.iter_ref_ids()) == sorted(good_ids)
    if dst_kind == "s3":
        bucket: str = request.getfixturevalue("s3_bucket")
        assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert verify(dst).ok

    with pytest.warns(MalformedRecordWarning):
        second = sync(src, dst)
    assert (second.refs_copied, second.blobs_copied, second.bytes_copied) == ([], 0, 0)
    assert second.refs_skipped == len(good_ids)
    assert sorted(artifact_id for artifact_id, _ in second.failed) == sorted(corrupt)
    assert blob_keys(dst) == good_blobs


def test_sync_never_overwrites_a_conflicting_destination_ref(tmp_path: Path) -> None:
    src = optuna_cas.FileSystemArtifactStore(tmp_path / "src")
    dst = optuna_cas.FileSystemArtifactStore(tmp_path / "dst")
    # Blob-sized, so there is a source blob that must not be copied.
    src.write("shared-id", io.BytesIO(blob_sized(b"the source's content")))
    src.write("other", io.BytesIO(b"copied as usual"))
    dst.write("shared-id", io.BytesIO(b"the destination's own"))

    report = sync(src, dst)
    assert not report.ok and report.failed == []
    assert [artifact_id for artifact_id, _ in report.conflicts] == ["shared-id"]
    assert str(src.get_ref("shared-id").digest) in report.conflicts[0][1]
    assert report.refs_copied == ["other"]
    with dst.open_reader("shared-id") as reader:
        assert reader.read() == b"the destination's own"
    # The conflicting source blob was not copied either: it would only be an orphan there.
    assert not dst.content.has_blob(src.get_ref("shared-id").digest)
    assert verify(dst).ok


@pytest.mark.parametrize("kind", ["malformed", "fifo"])
def test_sync_repairs_a_malformed_destination_ref(tmp_path: Path, kind: str) -> None:
    src = optuna_cas.FileSystemArtifactStore(tmp_path / "src")
    dst = optuna_cas.FileSystemArtifactStore(tmp_path / "dst")
    src.write("x", io.BytesIO(b"good content"))
    (tmp_path / "dst" / "refs").mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(tmp_path / "dst" / "refs" / "x")
    else:
        (tmp_path / "dst" / "refs" / "x").write_bytes(b"\x00garbage")

    report = sync(src, dst)
    assert report.ok
    assert report.refs_copied == ["x"] and report.refs_repaired == ["x"]
    assert dst.get_ref("x").digest == src.get_ref("x").digest
    assert verify(dst).ok


# -- download_artifact checks the digest in Optuna's metadata --------------------------------


@pytest.fixture
def study() -> optuna.Study:
    return optuna.create_study()


def upload(store: Any, study_or_trial: Any, path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study_or_trial)


# A ref naming a blob, and a small file's ref carrying the other content inside it.
@pytest.mark.parametrize("size", [INLINE_LIMIT + 1, 64], ids=["blob", "inline"])
def test_download_refuses_a_ref_swapped_to_other_content_of_the_same_size(
    study: optuna.Study, tmp_path: Path, size: int
) -> None:
    store = optuna_cas.FileSystemArtifactStore(tmp_path / "store")
    trial = study.ask()
    mine = upload(store, trial, tmp_path / "mine.bin", b"A" * size)
    theirs = upload(store, study, tmp_path / "theirs.bin", b"B" * size)
    swapped = store.get_ref(theirs)
    swapped_to = swapped.digest
    original = store.get_ref(mine).digest
    # Same size, and a sound ref in itself: only the metadata's digest tells.
    store.content.put_ref(ArtifactRef(artifact_id=mine, digest=swapped_to, inline=swapped.inline))

    target = tmp_path / "out.bin"
    with pytest.raises(IntegrityError) as error:
        download_artifact(
            artifact_store=store, file_path=str(target), artifact_id=mine, study_or_trial=trial
        )
    assert mine in str(error.value)
    assert str(original) in str(error.value) and str(swapped_to) in str(error.value)
    assert not target.exists() and sorted(os.listdir(tmp_path)) == [
        "mine.bin",
        "store",
        "theirs.bin",
    ]
    # A FrozenTrial with its storage is checked the same way.
    frozen = study.trials[0]
    with pytest.raises(IntegrityError, match=mine):
        download_artifact(
            artifact_store=store,
            file_path=str(target),
            artifact_id=mine,
            study_or_trial=frozen,
            storage=study._storage,
        )
    # The artifact it was swapped to still downloads, checked against its own record.
    download_artifact(
        artifact_store=store, file_path=str(target), artifact_id=theirs, study_or_trial=study
    )
    assert target.read_bytes() == b"B" * size
    # Without a study, the Optuna-compatible call behaves as before (nothing to compare to).
    plain = tmp_path / "plain.bin"
    download_artifact(artifact_store=store, file_path=str(plain), artifact_id=mine)
    assert plain.read_bytes() == b"B" * size


def test_download_with_study_checks_what_it_can_and_refuses_what_it_cannot(
    study: optuna.Study, tmp_path: Path
) -> None:
    store = optuna_cas.FileSystemArtifactStore(tmp_path / "store")
    good = upload(store, study, tmp_path / "good.txt", b"good")
    target = tmp_path / "out"

    # An entry Optuna itself wrote has no digest: the store's own check is all there is.
    (tmp_path / "optuna.txt").write_bytes(b"written by optuna")
    by_optuna = optuna.artifacts.upload_artifact(
        artifact_store=store, file_path=str(tmp_path / "optuna.txt"), study_or_trial=study
    )
    download_artifact(
        artifact_store=store, file_path=str(target), artifact_id=by_optuna, study_or_trial=study
    )
    assert target.read_bytes() == b"written by optuna"
    target.unlink()

    # Not an artifact of this trial: refused before anything is created.
    trial = study.ask()
    with pytest.raises(ArtifactNotFound, match=good):
        download_artifact(
            artifact_store=store, file_path=str(target), artifact_id=good, study_or_trial=trial
        )

    # A malformed metadata entry (deeply nested JSON, wrong types) is refused, bounded.
    for value in ["[" * 50_000, '{"digest": 5}', '{"digest": "blake3:zz", "size": 1}', "x" * 10**6]:
        study._storage.set_study_system_attr(study._study_id, f"artifacts:{good}", value)
        with pytest.raises(IntegrityError, match="metadata"):
            download_artifact(
                artifact_store=store, file_path=str(target), artifact_id=good, study_or_trial=study
            )
    assert not target.exists()


def test_download_checks_an_optuna_object_without_ref_against_the_metadata(
    study: optuna.Study, tmp_path: Path
) -> None:
    # An object written by Optuna's own store (no ref) whose bytes changed since upload.
    store = optuna_cas.FileSystemArtifactStore(tmp_path / "store")
    artifact_id = upload(store, study, tmp_path / "f.bin", b"recorded bytes")
    (tmp_path / "store" / artifact_id).write_bytes(b"RECORDED BYTES")  # a legacy object
    store.content.remove_ref(artifact_id)
    target = tmp_path / "out"
    with pytest.raises(IntegrityError, match=artifact_id):
        download_artifact(
            artifact_store=store,
            file_path=str(target),
            artifact_id=artifact_id,
            study_or_trial=study,
        )
    assert not target.exists()
    (tmp_path / "store" / artifact_id).write_bytes(b"recorded bytes")
    download_artifact(
        artifact_store=store, file_path=str(target), artifact_id=artifact_id, study_or_trial=study
    )
    assert target.read_bytes() == b"recorded bytes"
