"""Backoff over the real S3 and GCS servers with a fault-injecting proxy in between.

SDK-level retries are off, so whatever survives the faults survives through our Backoff.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from optuna_cas import (
    Backoff,
    Boto3ArtifactStore,
    FileSystemArtifactStore,
    GCSArtifactStore,
    download_artifact,
    gc,
    sync,
    verify,
)
from optuna_cas.content import ContentStore
from optuna_cas.exceptions import TransientBackendError
from optuna_cas.middleware.cache import CachedArtifactStore
from optuna_cas.refs import INLINE_LIMIT
from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.faults import FaultProxy
from optuna_cas.testing.servers import make_s3_client
from tests.support.gcs import GCS_TEST_CHUNK_SIZE, make_gcs_client
from tests.support.gcs_resumable import ResumableSessions
from tests.support.s3 import TEST_PART_SIZE

# Modes that break a request before, during or after the server handled it.
MODES = ("reset", "503", "truncate", "stall", "drop_response")
STALL_SECONDS = 0.6
CLIENT_TIMEOUT = 0.3


def _patient(inner: Any) -> Backoff:
    """The store behind retries, for the test's own set-up and checks with no faults planted.

    With a 0.3 s client timeout, a busy machine (the whole suite on 2 cores) can time out a
    request that nothing broke; the checks must not fail for that (CI met one in verify).
    """
    return Backoff(inner, min_delay=0.01, max_delay=0.1, seed=0)


def _proxy(endpoint_url: str, **kwargs: Any) -> FaultProxy:
    parts = urlsplit(endpoint_url)
    assert parts.hostname and parts.port
    return FaultProxy(parts.hostname, parts.port, **kwargs)


@pytest.fixture
def s3_through_proxy(s3_server: Any, s3_bucket: str) -> Iterator[tuple[FaultProxy, Any]]:
    with _proxy(s3_server.endpoint_url, seed=1, keep_client_alive=True) as proxy:
        client = make_s3_client(
            proxy.endpoint_url,
            retries=False,
            read_timeout=CLIENT_TIMEOUT,
            connect_timeout=CLIENT_TIMEOUT,
        )
        yield (
            proxy,
            Boto3ArtifactStore(s3_bucket, client, prefix="faults", part_size=TEST_PART_SIZE),
        )


@pytest.fixture
def gcs_through_proxy(gcs_server: Any, gcs_bucket: Any) -> Iterator[tuple[FaultProxy, Any]]:
    # fake-gcs-server cannot recover resumable sessions; ResumableSessions does, as GCS does.
    with (
        ResumableSessions(gcs_server) as sessions,
        FaultProxy("127.0.0.1", sessions.port, seed=2) as proxy,
    ):
        client = make_gcs_client(proxy.endpoint_url)
        store = GCSArtifactStore(
            gcs_bucket.name,
            client,
            prefix="faults",
            chunk_size=GCS_TEST_CHUNK_SIZE,
            sdk_retries=False,
            timeout=CLIENT_TIMEOUT,
        )
        yield proxy, store


@pytest.fixture(params=["s3", "gcs"])
def remote(request: pytest.FixtureRequest) -> tuple[FaultProxy, Any]:
    fixture: tuple[FaultProxy, Any] = request.getfixturevalue(f"{request.param}_through_proxy")
    return fixture


def test_hundred_round_trips_survive_30_percent_faults(
    remote: tuple[FaultProxy, Any], tmp_path: Path
) -> None:
    proxy, inner = remote
    store = Backoff(inner, min_delay=0.01, max_delay=0.1, seed=0)
    rng = random.Random(42)
    # Mostly small files: some kept inside their ref, some blobs just over INLINE_LIMIT; some
    # repeats (dedup path), a few large ones (multipart/resumable).
    sizes = [0, 1, INLINE_LIMIT, INLINE_LIMIT + 1, 200_000]
    payloads = [rng.randbytes(rng.choice(sizes)) for _ in range(20)]
    payloads += [rng.randbytes(6 * 1024 * 1024 + 17) for _ in range(2)]
    proxy.set_faults(0.3, MODES, stall_seconds=STALL_SECONDS)
    written: dict[str, bytes] = {}
    for i in range(100):
        data = payloads[i % len(payloads)] if i % 7 else payloads[0]
        artifact_id = f"art-{i}"
        store.write(artifact_id, io.BytesIO(data))
        written[artifact_id] = data
    for artifact_id, data in written.items():
        target = tmp_path / f"{artifact_id}.bin"
        download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact_id)
        assert target.read_bytes() == data, artifact_id
    faults = [r for r in proxy.requests if r.fault]
    proxy.clear_faults()
    assert len(faults) > 50  # the faults really happened
    assert {f.fault for f in faults} == set(MODES)
    # One blob per distinct content above INLINE_LIMIT, nothing else in the blob space; the
    # smaller content lives in its refs only.
    distinct = {bytes(d) for d in written.values()}
    blobbed = {d for d in distinct if len(d) > INLINE_LIMIT}
    assert blobbed and len(blobbed) < len(distinct)  # both kinds were written
    assert len(list(_patient(inner).content.iter_blobs())) == len(blobbed)


def test_gives_up_after_max_retries_with_the_original_error(remote: tuple[FaultProxy, Any]) -> None:
    proxy, inner = remote
    _patient(inner).write("present", io.BytesIO(b"x"))
    proxy.reset_log()
    proxy.set_faults(1.0, ("503",))
    sleeps: list[float] = []
    store = Backoff(inner, max_retries=4, sleep=sleeps.append)
    with (
        pytest.raises(TransientBackendError, match=r"503|navailable"),
        store.open_reader("present") as r,
    ):
        r.read()
    # The object's requests: once the full suite ran a fifth request through the proxy
    # meanwhile, to another path (a background request of an earlier test, most likely).
    assert len([r for r in proxy.requests if "present" in r.path]) == 4
    assert len(sleeps) == 3


def test_remove_is_sent_exactly_once_on_success(remote: tuple[FaultProxy, Any]) -> None:
    proxy, inner = remote
    store = Backoff(inner)
    store.write("doomed", io.BytesIO(b"x"))
    proxy.reset_log()
    store.remove("doomed")
    assert [r.method for r in proxy.requests].count("DELETE") == 1


def test_remove_whose_response_is_lost_is_still_a_success(remote: tuple[FaultProxy, Any]) -> None:
    proxy, inner = remote
    store = Backoff(inner, min_delay=0.01)
    store.write("doomed", io.BytesIO(b"x"))
    proxy.fail_next("drop_response", methods={"DELETE"})
    store.remove("doomed")  # first DELETE applied but its answer lost; the retry finds it gone
    assert not _patient(inner).content.has_ref("doomed")


def test_blob_create_whose_response_is_lost_is_not_an_error(remote: tuple[FaultProxy, Any]) -> None:
    # The create-if-absent PUT is applied, its answer lost; the retry gets 412/exists.
    proxy, inner = remote
    store = Backoff(inner, min_delay=0.01)
    proxy.fail_next("drop_response", methods={"PUT", "POST"})
    payload = b"payload" * 1000  # > INLINE_LIMIT: the first PUT creates the blob
    store.write("a", io.BytesIO(payload))
    with store.open_reader("a") as reader:
        assert reader.read() == payload


@pytest.mark.parametrize("mode", ["reset", "drop_response"])
def test_gc_retries_its_conditional_delete(remote: tuple[FaultProxy, Any], mode: str) -> None:
    """On GCS gc deletes on condition of the generation it saw; Backoff passed that delete
    through unretried, so one lost connection stopped gc (found by the test below)."""
    proxy, inner = remote
    store = Backoff(inner, min_delay=0.01)
    store.write("doomed", io.BytesIO(b"payload" * 1000))  # > INLINE_LIMIT: a blob
    store.remove("doomed")
    proxy.fail_next(mode, methods={"DELETE"})
    report = gc(store, grace_period=0, allow_short_grace=True)
    assert list(_patient(inner).content.iter_blobs()) == []
    # After a lost answer the retry finds the blob gone: deleted by the first attempt.
    assert report.deleted_count == 1


def test_a_gc_delete_retried_after_an_upload_reused_the_blob_leaves_it(
    s3_through_proxy: tuple[FaultProxy, Any],
) -> None:
    """S3 deletes unconditionally, so gc looks at a blob just before deleting it. Backoff
    resent the DELETE after its sleep without a new look; an upload that re-used (touched)
    the blob during the sleep was acknowledged, then lost its blob (found by a probe)."""
    proxy, inner = s3_through_proxy
    inner.content.freshen_after = 1.0  # a re-use touches the blob
    patient = _patient(inner)  # keeps freshen_after
    data = random.Random(5).randbytes(200_000)
    patient.write("old", io.BytesIO(data))
    patient.remove("old")
    time.sleep(2.1)  # S3 times are whole seconds: the touch must land in a later one

    def upload_meanwhile(seconds: float) -> None:
        if not patient.content.has_ref("new"):
            patient.write("new", io.BytesIO(data))  # a dedup hit: touch, ref, check
        time.sleep(seconds)

    store = Backoff(inner, min_delay=0.01, sleep=upload_meanwhile)
    proxy.fail_next("503", methods={"DELETE"}, matching=lambda _m, path: "/blobs/" in path)
    report = gc(store, grace_period=1.5, allow_short_grace=True)
    assert patient.content.has_ref("new") and report.deleted_count == 0
    with patient.open_reader("new") as reader:
        assert reader.read() == data


def test_chunked_versions_survive_30_percent_faults_through_gc_sync_verify_and_reads(
    remote: tuple[FaultProxy, Any], tmp_path: Path
) -> None:
    """Every step of a chunked file's life under faults: uploads of versions sharing most
    chunks (packs, index objects, manifests), removes, gc with its repack, deep verify, a sync
    to a local store, and reads plain and through a cache. Nothing above chunks these."""
    proxy, inner = remote
    chunked = ContentAddressedArtifactStore(
        ContentStore(inner.content.backend, chunk_threshold=256 * 1024)
    )
    store = Backoff(chunked, min_delay=0.01, max_delay=0.1, max_retries=30, seed=0)
    rng = random.Random(13)
    base = bytearray(rng.randbytes(1_500_000))
    versions: dict[str, bytes] = {}
    proxy.set_faults(0.3, MODES, stall_seconds=STALL_SECONDS)
    for i in range(8):
        at = rng.randrange(len(base) - 600_000)
        size = 600_000 if i % 3 == 2 else 40_000  # some versions leave old packs mostly dead
        base[at : at + size] = rng.randbytes(size)
        versions[f"v{i}"] = rng.randbytes(rng.randrange(200)) + bytes(base)  # header moves
        store.write(f"v{i}", io.BytesIO(versions[f"v{i}"]))
    for name in ("v0", "v1", "v3"):
        store.remove(name)
        del versions[name]
    collected = gc(store, grace_period=0, allow_short_grace=True)
    assert collected.manifests_deleted and not collected.bad_manifests
    checked = verify(store, workers=2)
    assert checked.ok, checked

    cached = CachedArtifactStore(store, directory=tmp_path / "cache")
    for reader_store in (store, cached, cached):  # a fill, then hits
        for name, data in versions.items():
            target = tmp_path / f"{name}.bin"
            target.unlink(missing_ok=True)
            download_artifact(artifact_store=reader_store, file_path=str(target), artifact_id=name)
            assert target.read_bytes() == data, name
    cached.cache.close()

    local = FileSystemArtifactStore(tmp_path / "local", chunk_threshold=256 * 1024)
    synced = sync(store, local, workers=2)
    assert synced.ok and sorted(synced.refs_copied) == sorted(versions)
    faults = [r for r in proxy.requests if r.fault]
    proxy.clear_faults()
    assert len(faults) > 20 and {f.fault for f in faults} == set(MODES)
    for name, data in versions.items():
        with local.open_reader(name) as reader:
            assert reader.read() == data
    assert verify(local).ok and verify(_patient(inner)).ok
