"""S3 and GCS stores: prefixes, missing buckets, opening by URL, and their bad inputs.

Dedup checked out of band (one blob object, never rewritten) is StoreConformance's, run over
every stack in tests/stores/test_store_conformance.py.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import Backoff, Boto3ArtifactStore, GCSArtifactStore, open_store
from optuna_cas.exceptions import BackendError, StoreConfigError


@pytest.mark.s3
def test_s3_prefix_isolation(s3_client: Any, s3_bucket: str) -> None:
    a = Boto3ArtifactStore(s3_bucket, s3_client, prefix="team-a")
    b = Boto3ArtifactStore(s3_bucket, s3_client, prefix="team-b")
    a.write("x", io.BytesIO(b"from a"))
    b.write("y", io.BytesIO(b"from b"))
    assert list(a.content.iter_ref_ids()) == ["x"]
    assert list(b.content.iter_ref_ids()) == ["y"]
    with pytest.raises(FileNotFoundError):
        b.open_reader("x")


@pytest.mark.gcs
def test_gcs_prefix_isolation(gcs_client: Any, gcs_bucket: Any) -> None:
    a = GCSArtifactStore(gcs_bucket.name, gcs_client, prefix="team-a")
    b = GCSArtifactStore(gcs_bucket.name, gcs_client, prefix="team-b")
    a.write("x", io.BytesIO(b"from a"))
    b.write("y", io.BytesIO(b"from b"))
    assert list(a.content.iter_ref_ids()) == ["x"]
    assert list(b.content.iter_ref_ids()) == ["y"]


@pytest.mark.s3
def test_s3_unknown_bucket_fails_clearly_without_retries(s3_client: Any) -> None:
    sleeps: list[float] = []
    store = Backoff(Boto3ArtifactStore("no-such-bucket-xyz", s3_client), sleep=sleeps.append)
    with pytest.raises(BackendError, match="no-such-bucket-xyz"):
        store.write("a", io.BytesIO(b"x"))
    assert sleeps == []


@pytest.mark.gcs
def test_gcs_unknown_bucket_fails_clearly_without_retries(gcs_client: Any) -> None:
    sleeps: list[float] = []
    store = Backoff(GCSArtifactStore("no-such-bucket-xyz", gcs_client), sleep=sleeps.append)
    with pytest.raises(BackendError, match="no-such-bucket-xyz"):
        store.write("a", io.BytesIO(b"x"))
    assert sleeps == []


@pytest.mark.s3
def test_open_store_s3_with_endpoint(s3_server: Any, s3_bucket: str) -> None:
    import os

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    store = open_store(f"s3://{s3_bucket}/some/prefix", endpoint_url=s3_server.endpoint_url)
    store.write("a", io.BytesIO(b"via url"))
    assert store.content.describe() == f"s3://{s3_bucket}/some/prefix"
    with store.open_reader("a") as r:
        assert r.read() == b"via url"


@pytest.mark.gcs
def test_open_store_gs_with_client(gcs_client: Any, gcs_bucket: Any) -> None:
    store = open_store(f"gs://{gcs_bucket.name}/pre", client=gcs_client)
    store.write("a", io.BytesIO(b"via url"))
    assert store.content.describe() == f"gs://{gcs_bucket.name}/pre"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x/y", "scheme 'ftp' is not one of"),
        ("s3://", "names no bucket"),
        ("gs:///prefix", "names no bucket"),
        ("s3://b/p?x=1", "query strings"),
        ("file://remote-host/x", "must not name a host"),
    ],
)
def test_open_store_bad_urls(url: str, message: str) -> None:
    with pytest.raises(StoreConfigError, match=message):
        open_store(url)


def test_open_store_endpoint_only_for_s3(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError, match="endpoint_url applies to s3"):
        open_store("gs://bucket/x", endpoint_url="http://127.0.0.1:1")
    with pytest.raises(StoreConfigError, match="apply to s3:// and gs://"):
        open_store(f"file://{tmp_path}", endpoint_url="http://127.0.0.1:1")


def test_open_store_file_url_and_path(tmp_path: Path) -> None:
    for url in (f"file://{tmp_path}/a", str(tmp_path / "b"), "memory://"):
        store = open_store(url)
        store.write("x", io.BytesIO(b"1"))
        assert store.get_ref("x").size == 1


def test_local_store_path_is_a_file(tmp_path: Path) -> None:
    from optuna_cas import FileSystemArtifactStore

    (tmp_path / "f").write_text("not a dir")
    with pytest.raises(StoreConfigError, match="exists and is not a directory"):
        FileSystemArtifactStore(tmp_path / "f")


def test_missing_sdks_give_install_hints(tmp_path: Path) -> None:
    """With boto3, google-cloud-storage and optuna hidden, the core still works."""
    script = textwrap.dedent(
        f"""
        import io, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("boto3", "botocore", "optuna") or name.startswith("google.cloud"):
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
                return None
        sys.meta_path.insert(0, Block())
        import optuna_cas
        from optuna_cas.exceptions import StoreConfigError
        store = optuna_cas.FileSystemArtifactStore({str(tmp_path / "s")!r})
        store.write("a", io.BytesIO(b"works"))
        assert store.open_reader("a").read() == b"works"
        for url, extra in (("s3://b/p", "s3"), ("gs://b/p", "gcs")):
            try:
                optuna_cas.open_store(url)
            except StoreConfigError as e:
                assert f"optuna-cas[{{extra}}]" in str(e), e
            else:
                raise AssertionError(url)
        try:
            optuna_cas.Boto3ArtifactStore("b")
        except StoreConfigError as e:
            assert "optuna-cas[s3]" in str(e), e
        try:
            optuna_cas.GCSArtifactStore("b")
        except StoreConfigError as e:
            assert "optuna-cas[gcs]" in str(e), e
        try:
            optuna_cas.get_all_artifact_meta(None)
        except StoreConfigError as e:
            assert "optuna-cas[optuna]" in str(e), e
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.s3
def test_s3_store_exposes_optunas_public_attributes(s3_client: Any, s3_bucket: str) -> None:
    # Optuna's Boto3ArtifactStore has public .bucket and .client; code written against it
    # (store.client.list_objects_v2(Bucket=store.bucket)) must keep working after the switch.
    store = Boto3ArtifactStore(s3_bucket, s3_client, prefix="p")
    store.write("x", io.BytesIO(b"data"))
    assert store.bucket == s3_bucket
    assert store.client is s3_client
    keys = [o["Key"] for o in store.client.list_objects_v2(Bucket=store.bucket)["Contents"]]
    assert "p/refs/x" in keys
    with pytest.raises(AttributeError):
        store.bucket = "other"  # type: ignore[misc]


@pytest.mark.s3
def test_s3_store_client_is_the_one_it_built(
    s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = Boto3ArtifactStore(s3_bucket, endpoint_url=s3_server.endpoint_url)
    store.write("x", io.BytesIO(b"data"))
    head = store.client.head_object(Bucket=store.bucket, Key="refs/x")
    assert head["ContentLength"] > 0


@pytest.mark.gcs
def test_gcs_store_exposes_optunas_public_attributes(gcs_client: Any, gcs_bucket: Any) -> None:
    # Optuna's GCSArtifactStore has public .bucket_name, .client and .bucket_obj.
    store = GCSArtifactStore(gcs_bucket.name, gcs_client)
    store.write("x", io.BytesIO(b"data"))
    assert store.bucket_name == gcs_bucket.name
    assert store.client is gcs_client
    assert store.bucket_obj.name == gcs_bucket.name
    assert store.bucket_obj.client is gcs_client
    assert store.bucket_obj.get_blob("refs/x") is not None
    with pytest.raises(AttributeError):
        store.client = None  # type: ignore[misc]
