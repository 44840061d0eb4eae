"""Regression tests: minimal reproductions of bugs the reliability scenarios found in ``src/``.

Each was first committed as ``xfail(strict=True)`` and turned into a plain test with its fix.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import gc, verify
from optuna_cas.backends.local import LocalBackend
from optuna_cas.content import ContentStore, blob_key
from optuna_cas.refs import INLINE_LIMIT
from optuna_cas.stores.base import ContentAddressedArtifactStore
from tests.reliability._common import S3_PART_SIZE, boto3_store

pytestmark = pytest.mark.reliability


def test_slow_gc_sweep_spares_a_blob_reused_after_the_ref_listing(tmp_path: Path) -> None:
    store = ContentAddressedArtifactStore(
        ContentStore(LocalBackend(tmp_path / "store"), freshen_after=0.2)
    )
    content = b"B" * (INLINE_LIMIT + 1)  # B: a blob (content up to the limit has none)
    store.write("old", io.BytesIO(content))
    store.remove("old")  # B is garbage ...
    time.sleep(0.6)  # ... and older than the grace period (0.5 s)

    def slow_sweep(task: str, done: int, total: int | None) -> None:
        # gc has listed blobs and refs, and is about to look at B again. Its sweep is slow
        # (a large store, a slow network): meanwhile an upload re-uses B and returns.
        if done == 0:
            store.write("kept", io.BytesIO(content))  # dedup hit: touches B, writes its ref
            assert store.content.has_blob(store.get_ref("kept").digest)
            time.sleep(0.6)  # the sweep reaches B more than grace_period after the touch

    gc(store, grace_period=0.5, progress=slow_sweep)
    assert verify(store).missing == []  # fails: 'kept' points at a deleted blob


@pytest.mark.s3
def test_touched_multipart_blob_stays_readable(s3_server: Any, s3_bucket: str) -> None:
    store = boto3_store(s3_bucket, s3_server.endpoint_url, prefix="touch", sdk_retries=True)
    data = b"x" * (S3_PART_SIZE + 1)  # one byte over a part: a multipart upload
    ref = store.put("a", io.BytesIO(data))
    with store.open_reader("a") as reader:
        assert reader.read() == data
    backend = store.content.backend
    backend.touch(blob_key(ref.digest))  # what a dedup hit after 30 min does
    with store.open_reader("a") as reader:
        assert reader.read() == data
    # optuna-cas's own GETs skip botocore's CRC32 check (BLAKE3 covers them); the client's
    # other users do not: a GET of theirs fails with "checksum mismatch" on a broken touch.
    client = backend.client
    body = client.get_object(Bucket=s3_bucket, Key=f"touch/{blob_key(ref.digest)}")["Body"]
    assert type(body).__name__ == "StreamingChecksumBody"
    assert body.read() == data


def test_local_store_accepts_every_id_the_validator_accepts(tmp_path: Path) -> None:
    from optuna_cas import FileSystemArtifactStore
    from optuna_cas._validation import validate_artifact_id

    store = FileSystemArtifactStore(tmp_path / "store")
    artifact_id = validate_artifact_id("é" * 127)  # 254 bytes: a legal ID and file name
    store.write(artifact_id, io.BytesIO(b"x"))
    with store.open_reader(artifact_id) as reader:
        assert reader.read() == b"x"


def test_download_to_every_legal_file_name(tmp_path: Path) -> None:
    from optuna_cas import FileSystemArtifactStore, download_artifact

    store = FileSystemArtifactStore(tmp_path / "store")
    store.write("a", io.BytesIO(b"x"))
    target = tmp_path / ("😀" * 60)  # 240 bytes: a legal file name
    target.write_bytes(b"")  # proof that the file system accepts the name
    target.unlink()
    download_artifact(artifact_store=store, file_path=str(target), artifact_id="a")
    assert target.read_bytes() == b"x"


@pytest.mark.parametrize("area", ["blobs", "packs"])  # a whole blob; a chunked file's packs
def test_large_upload_writes_nothing_through_a_symlinked_blobs_dir(
    tmp_path: Path, area: str
) -> None:
    import os

    from optuna_cas import FileSystemArtifactStore
    from optuna_cas.exceptions import InvalidKeyError

    outside = tmp_path / "outside"
    outside.mkdir()
    store = FileSystemArtifactStore(tmp_path / "store")
    if area == "blobs":
        store.content.chunk_threshold = 2**62
    os.symlink(outside, tmp_path / "store" / area)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\1" * (9 * 1024 * 1024))  # takes the staged-copy path
    time.sleep(0.05)
    before = os.stat(outside).st_mtime_ns
    with pytest.raises(InvalidKeyError):
        store.put("big", big)
    assert os.stat(outside).st_mtime_ns == before  # fails: a temp file came and went


def test_upload_repairs_a_blob_that_is_a_symlink(tmp_path: Path) -> None:
    import os
    import shutil

    from optuna_cas import FileSystemArtifactStore

    store = FileSystemArtifactStore(tmp_path / "store")
    content = b"content" * 1000  # > INLINE_LIMIT: a blob
    store.write("a", io.BytesIO(content))
    digest = store.get_ref("a").digest
    blob = tmp_path / "store" / blob_key(digest)
    shutil.copy(blob, tmp_path / "copy")
    os.unlink(blob)
    os.symlink(tmp_path / "copy", blob)
    store.write("b", io.BytesIO(content))  # returns ...
    with store.open_reader("b") as reader:  # ... but fails: ArtifactNotFound
        assert reader.read() == content


def test_open_store_reports_an_impossible_path_as_store_config_error(tmp_path: Path) -> None:
    from optuna_cas import open_store
    from optuna_cas.exceptions import StoreConfigError

    with pytest.raises(StoreConfigError):
        open_store(str(tmp_path / ("x" * 300)))


def test_upload_a_file_whose_name_is_not_utf8(tmp_path: Path) -> None:
    import os

    import optuna

    from optuna_cas import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

    path = os.path.join(os.fsencode(tmp_path), b"model-\xe9.bin")  # latin-1 e-acute
    with open(path, "wb") as f:
        f.write(b"weights")
    study = optuna.create_study()
    store = FileSystemArtifactStore(tmp_path / "store")
    upload_artifact(artifact_store=store, file_path=os.fsdecode(path), study_or_trial=study)
    assert len(get_all_artifact_meta(study)) == 1


def test_open_store_of_an_unknown_users_home(tmp_path: Path, monkeypatch: Any) -> None:
    from optuna_cas import open_store
    from optuna_cas.exceptions import StoreConfigError

    monkeypatch.chdir(tmp_path)
    try:
        open_store("~no-such-user-here/artifacts")
    except StoreConfigError:
        pass
