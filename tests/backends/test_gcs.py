"""GCSBackend: the backend contract (BackendConformance) and what only GCS has.

Against fake-gcs-server (tests/support/gcs.py), with GCS's resumable-upload protocol kept by
tests/support/gcs_resumable.py in front of it; checked out of band through the google client.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from optuna_cas.backends.base import Backend, ObjectInfo, SealedFile
from optuna_cas.backends.gcs import GCSBackend
from optuna_cas.exceptions import (
    ArtifactNotFound,
    BackendError,
    InvalidKeyError,
    StoreConfigError,
    TransientBackendError,
)
from optuna_cas.middleware.backoff import RetryingBackend
from optuna_cas.middleware.retry import Retrier, RetryPolicy
from optuna_cas.testing.backend import BackendConformance, read_all
from optuna_cas.testing.faults import FaultProxy
from optuna_cas.testing.raw import GCSView
from optuna_cas.testing.streams import PatternSource
from tests.support.gcs import (
    GCS_TEST_CHUNK_SIZE,
    GCSServer,
    make_gcs_client,
    start_fake_gcs_server,
    stop_fake_gcs_server,
)
from tests.support.gcs_resumable import ResumableSessions

pytestmark = pytest.mark.gcs

MiB = 1024 * 1024
CHUNK = GCS_TEST_CHUNK_SIZE
T = TypeVar("T")


def record_requests(client: Any) -> list[str]:
    """Observe (not mock) the HTTP traffic of ``client``: 'METHOD url' per response."""
    seen: list[str] = []

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(f"{response.request.method} {response.request.url}")

    client._http.hooks["response"].append(hook)
    return seen


def generation(bucket: Any, key: str) -> int:
    blob = bucket.get_blob(key)
    assert blob is not None
    return int(blob.generation)


def _retrying(backend: Backend) -> RetryingBackend:
    return RetryingBackend(backend, Retrier(RetryPolicy(min_delay=0.01, max_delay=0.05)))


# ---- the contract ------------------------------------------------------------------------------


class TestGCSBackend(BackendConformance):
    """The contract, on a prefix of a fresh bucket, seen out of band through another client."""

    PREFIX = "conformance"
    # Chunks of 1 MiB, a few in flight; a whole object would be 64 MiB.
    memory_bound = 16 * MiB
    # A console's "folder" marker, relative segments, a control character.
    invalid_raw_names = ("refs/", "refs/./a", "refs/../b", "refs/c\x07d")

    def gcs(self, server: GCSServer, sessions: ResumableSessions, bucket: Any) -> GCSBackend:
        self.server, self.sessions, self.bucket = server, sessions, bucket
        self.raw = GCSView(bucket, prefix=self.PREFIX)  # straight to fake-gcs-server
        # The backend's own client, through the resumable-session keeper, observed (not mocked).
        self.client = make_gcs_client(f"http://127.0.0.1:{sessions.port}")
        self.requests = record_requests(self.client)
        return self._gcs(self.client, bucket.name, self.PREFIX)

    @staticmethod
    def _gcs(client: Any, bucket: str, prefix: str = "", **options: Any) -> GCSBackend:
        return GCSBackend(bucket, client=client, prefix=prefix, chunk_size=CHUNK, **options)

    @pytest.fixture
    def backend(
        self, gcs_server: GCSServer, gcs_sessions: ResumableSessions, gcs_bucket: Any
    ) -> Backend:
        return self.gcs(gcs_server, gcs_sessions, gcs_bucket)

    def requests_sent(self) -> int:
        return len(self.requests)

    def is_download(self, method: str, path: str) -> bool:
        return method == "GET" and "alt=media" in path  # not the metadata GET before it

    def backend_at(self, sub: str) -> Backend:
        return self._gcs(self.client, self.bucket.name, f"{self.PREFIX}/{sub}")

    def missing_container(self) -> tuple[Backend, str]:
        # Straight to fake-gcs-server: the session keeper knows nothing of missing buckets.
        name = "no-such-bucket-xyz"
        return self._gcs(make_gcs_client(self.server.endpoint_url), name), name

    def upstream(self) -> tuple[str, int] | None:
        return "127.0.0.1", self.sessions.port

    def backend_via(self, endpoint_url: str) -> Backend:
        client = make_gcs_client(endpoint_url)
        return self._gcs(client, self.bucket.name, self.PREFIX, sdk_retries=False)

    def backend_for_memory_test(self, backend: Backend) -> Backend:
        # Straight to fake-gcs-server: the session keeper runs in this process, and
        # tracemalloc would count the object it assembles.
        client = make_gcs_client(self.server.endpoint_url)
        return self._gcs(client, self.bucket.name, self.PREFIX)


class TestRetryingGCSBackend(TestGCSBackend):
    """The same contract through RetryingBackend (each chunk request retried alone)."""

    readers_seek = False  # ResumingReader streams forward only

    @pytest.fixture
    def backend(
        self, gcs_server: GCSServer, gcs_sessions: ResumableSessions, gcs_bucket: Any
    ) -> Backend:
        return _retrying(self.gcs(gcs_server, gcs_sessions, gcs_bucket))

    def backend_at(self, sub: str) -> Backend:
        return _retrying(super().backend_at(sub))

    def missing_container(self) -> tuple[Backend, str]:
        backend, name = super().missing_container()
        return _retrying(backend), name

    def upstream(self) -> None:
        return None  # retries absorb the injected faults: tests/stores/test_faults.py

    def backend_for_memory_test(self, backend: Backend) -> Backend:
        return _retrying(super().backend_for_memory_test(backend))


# ---- what only GCS has -------------------------------------------------------------------------


def test_resumable_round_trip_20_mib(
    gcs_backend: GCSBackend, gcs_protocol_client: Any, gcs_bucket: Any
) -> None:
    data = os.urandom(20 * MiB)
    requests = record_requests(gcs_protocol_client)
    gcs_backend.write("blobs/big", io.BytesIO(data))
    assert any("uploadType=resumable" in r for r in requests), requests
    assert not any("uploadType=multipart" in r for r in requests)
    assert gcs_backend.stat("blobs/big").size == len(data)
    assert gcs_bucket.blob("blobs/big").download_as_bytes() == data  # out of band
    assert read_all(gcs_backend, "blobs/big", piece=3 * MiB + 7) == data


def test_small_raw_reads_cost_one_download_per_chunk_size(
    gcs_backend: GCSBackend, gcs_protocol_client: Any
) -> None:
    # A chunked read takes 2 MiB blocks from the raw reader, not through its buffer: GCS
    # still asks for a whole chunk_size per download and keeps the rest for the next reads.
    data = os.urandom(3 * CHUNK + 5)
    gcs_backend.write("packs/p", io.BytesIO(data))
    requests = record_requests(gcs_protocol_client)
    with gcs_backend.open_reader("packs/p") as f:
        assert isinstance(f, io.BufferedReader)
        raw = f.raw
        got = b"".join(iter(lambda: raw.read(CHUNK // 4 + 1), b""))
    assert got == data
    downloads = [r for r in requests if "alt=media" in r]
    assert len(downloads) == 4, requests


def test_small_body_is_one_request(gcs_backend: GCSBackend, gcs_protocol_client: Any) -> None:
    requests = record_requests(gcs_protocol_client)
    gcs_backend.write("refs/a", io.BytesIO(b"x" * 1000), if_absent=True)
    # Only uploads: google-cloud-storage may fetch bucket metadata in a thread of its own.
    uploads = [r for r in requests if "/upload/" in r]
    assert len(uploads) == 1 and "uploadType=multipart" in uploads[0], requests


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 12345])
def test_sizes_around_chunk_boundaries(gcs_backend: GCSBackend, size: int) -> None:
    data = os.urandom(size)
    gcs_backend.write("k", io.BytesIO(data))
    assert gcs_backend.stat("k").size == size
    assert read_all(gcs_backend, "k") == data
    with gcs_backend.open_reader("k") as f:
        assert f.read() == data


def test_prefix_slashes_are_normalised(gcs_client: Any, gcs_bucket: Any) -> None:
    # Isolation itself is BackendConformance.test_prefix_isolation; this is the spelling.
    b = GCSBackend(gcs_bucket.name, client=gcs_client, prefix="/b/", chunk_size=CHUNK)
    b.write("refs/1", io.BytesIO(b"from b"))
    assert gcs_bucket.blob("b/refs/1").download_as_bytes() == b"from b"  # out of band
    assert b.describe() == f"gs://{gcs_bucket.name}/b"
    assert GCSBackend(gcs_bucket.name, client=gcs_client).describe() == f"gs://{gcs_bucket.name}"


def test_gcs_delete_names_the_generation_and_metageneration_it_saw(
    gcs_backend: GCSBackend, gcs_protocol_client: Any, gcs_bucket: Any
) -> None:
    # gc looks at a blob last, then deletes it; an upload may touch (a metadata patch) or
    # re-publish it in between. The delete is conditional on the generation and metageneration
    # of that look, so GCS refuses it then (412). fake-gcs-server ignores both preconditions
    # on a DELETE and keeps ``updated`` and the metageneration through a patch (measured
    # 2026-11-29): what is checked here is what we ask for, and our own comparison.
    gcs_backend.write("blobs/b", io.BytesIO(b"x" * 100))
    seen = gcs_backend.stat("blobs/b")
    for stale in (
        ObjectInfo("blobs/b", seen.size, seen.modified - 1),  # touched since gc's look
        ObjectInfo("blobs/b", seen.size + 1, seen.modified),
    ):
        assert not gcs_backend.remove_if_unchanged("blobs/b", stale)
    assert gcs_backend.exists("blobs/b")
    stored = gcs_bucket.get_blob("blobs/b")
    requests = record_requests(gcs_protocol_client)
    assert gcs_backend.remove_if_unchanged("blobs/b", seen)
    deletes = [r for r in requests if r.startswith("DELETE ")]
    assert len(deletes) == 1, requests
    assert f"ifGenerationMatch={stored.generation}" in deletes[0]
    assert f"ifMetagenerationMatch={stored.metageneration}" in deletes[0]
    assert not gcs_backend.exists("blobs/b")
    assert not gcs_backend.remove_if_unchanged("blobs/b", seen)  # gone: nothing deleted


def test_constructor_validates(gcs_client: Any) -> None:
    with pytest.raises(InvalidKeyError):
        GCSBackend("bucket", client=gcs_client, prefix="a/../b")
    with pytest.raises(StoreConfigError):
        GCSBackend("bucket", client=gcs_client, chunk_size=1000)
    with pytest.raises(StoreConfigError):
        GCSBackend("gs://bucket", client=gcs_client)


@pytest.mark.parametrize("value", ["127.0.0.1:57517", "localhost:4443", "ftp://host:1"])
def test_an_emulator_host_the_client_cannot_use_is_named(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # Without a scheme every request failed with requests' InvalidSchema, naming no variable.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", value)
    with pytest.raises(StoreConfigError, match=f"STORAGE_EMULATOR_HOST '{value}' is not an http"):
        GCSBackend("b")


def test_a_missing_bucket_names_the_endpoint_that_answered(
    gcs_server: GCSServer, gcs_client: Any
) -> None:
    backend = GCSBackend("no-such-bucket-here", client=gcs_client, sdk_retries=False)
    with pytest.raises(BackendError, match="'no-such-bucket-here' does not exist") as caught:
        backend.exists("refs/a")
    assert f"at endpoint {gcs_server.endpoint_url}: check the bucket's name" in str(caught.value)


def test_read_failure_mid_body_is_transient() -> None:
    server = start_fake_gcs_server()
    try:
        client = make_gcs_client(server.endpoint_url)
        client.create_bucket("mid-read")
        backend = GCSBackend("mid-read", client=client, chunk_size=CHUNK, sdk_retries=False)
        data = os.urandom(3 * CHUNK)
        backend.write("k", io.BytesIO(data))
        with backend.open_reader("k") as f:
            assert f.read(CHUNK) == data[:CHUNK]
            stop_fake_gcs_server(server.process)
            with pytest.raises(TransientBackendError, match="'k'"):
                f.read(CHUNK)
    finally:
        stop_fake_gcs_server(server.process)


# -- per-request retries of resumable uploads ----------------------------------------------------
#
# fake-gcs-server (1.54) cannot check resumable-upload recovery: it appends every chunk it gets
# whatever its Content-Range says (a resent chunk is stored twice) and takes a status query
# (``Content-Range: bytes */*``, empty body) for "finish now", publishing what it has so far.
# ResumableSessions stands in front of it and keeps upload sessions the way GCS documents them.


@dataclass
class FaultyGCS:
    proxy: FaultProxy
    backend: GCSBackend  # SDK retries off: every fault surfaces to the request runner
    sessions: ResumableSessions
    retrier: Retrier


@pytest.fixture
def faulty_gcs(gcs_server: GCSServer, gcs_bucket: Any) -> Iterator[FaultyGCS]:
    """client -> fault proxy -> ResumableSessions -> fake-gcs-server."""
    with ResumableSessions(gcs_server) as sessions, FaultProxy("127.0.0.1", sessions.port) as proxy:
        backend = GCSBackend(
            gcs_bucket.name,
            client=make_gcs_client(proxy.endpoint_url),
            chunk_size=CHUNK,
            sdk_retries=False,
            timeout=0.3,
        )
        retrier = Retrier(RetryPolicy(min_delay=0.01, max_delay=0.05))
        yield FaultyGCS(proxy, backend, sessions, retrier)


def session_starts(proxy: FaultProxy) -> int:
    return sum(r.method == "POST" and "uploadType=resumable" in r.path for r in proxy.requests)


def retrying_with_hooks(
    retrier: Retrier, hooks: dict[str, Callable[[int], None]]
) -> Callable[[str, Callable[[], T]], T]:
    """A request runner like Backoff's that calls ``hooks[description](attempt)`` first."""

    def runner(description: str, request: Callable[[], T]) -> T:
        hook = hooks.get(description)
        if hook is None:
            return retrier.call(description, request)
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            hook(attempts)
            return request()

        return retrier.call(description, attempt)

    return runner


def test_every_request_of_a_write_goes_through_the_runner(
    gcs_backend: GCSBackend, gcs_bucket: Any
) -> None:
    calls: list[str] = []

    def runner(description: str, request: Callable[[], T]) -> T:
        calls.append(description)
        return request()

    routed = gcs_backend.with_request_runner(runner)
    data = os.urandom(3 * CHUNK + 5)
    routed.write("blobs/r", io.BytesIO(data), if_absent=True)
    routed.write("refs/r", io.BytesIO(b"small"), if_absent=True)
    assert read_all(gcs_backend, "blobs/r") == data
    where = f"{gcs_backend.describe()}/blobs/r"
    upload = [f"start upload of {where}", *(f"upload part {n} of {where}" for n in (1, 2, 3, 4))]
    assert calls == [*upload, f"upload {gcs_backend.describe()}/refs/r"]
    # Present already: no look first; the session's precondition refuses the last chunk.
    before = generation(gcs_bucket, "blobs/r")
    calls.clear()
    routed.write("blobs/r", io.BytesIO(os.urandom(3 * CHUNK + 5)), if_absent=True)
    assert calls == upload
    assert generation(gcs_bucket, "blobs/r") == before
    assert read_all(gcs_backend, "blobs/r") == data


@pytest.mark.parametrize(
    ("mode", "part", "size"),
    [
        ("503", 4, 6 * MiB),  # refused before GCS saw it: resent from the same byte
        ("drop_response", 3, 6 * MiB),  # stored, answer lost: the status query says so
        ("truncate", 2, 6 * MiB + 12345),
        ("drop_response", 7, 6 * MiB + 12345),  # the last chunk: the object is already there
        ("drop_response", 7, 6 * MiB),  # the last request is an empty "that was all"
    ],
)
@pytest.mark.parametrize("sealed", [False, True], ids=["stream", "sealed-file"])
def test_a_failed_chunk_is_resent_alone(
    faulty_gcs: FaultyGCS,
    gcs_bucket: Any,
    mode: str,
    part: int,
    size: int,
    sealed: bool,
    tmp_path: Path,
) -> None:
    proxy = faulty_gcs.proxy

    def break_first_attempt(attempt: int) -> None:
        if attempt == 1:
            proxy.fail_next(mode, methods={"PUT"})

    where = f"{faulty_gcs.backend.describe()}/blobs/x"
    backend = faulty_gcs.backend.with_request_runner(
        retrying_with_hooks(
            faulty_gcs.retrier, {f"upload part {part} of {where}": break_first_attempt}
        )
    )
    source = PatternSource(size, os.urandom(CHUNK // 2 + 3))
    with open(tmp_path / "spool", "w+b") as spool:
        if sealed:  # each chunk is sent (and resent) straight from the file
            shutil.copyfileobj(source, spool, MiB)
            spool.seek(0)
        body = SealedFile.of(spool) if sealed else source
        backend.write("blobs/x", body, if_absent=True)  # type: ignore[arg-type]

    assert [r.fault for r in proxy.requests if r.fault] == [mode]
    assert session_starts(proxy) == 1
    assert faulty_gcs.sessions.status_queries == 1
    # 7 chunk requests, one status query, and a resend only if GCS never got the chunk
    resent = mode == "503"
    assert sum(r.method == "PUT" for r in proxy.requests) == 7 + 1 + resent
    stored = gcs_bucket.blob("blobs/x").download_as_bytes()  # out of band, not via the proxy
    assert len(stored) == size
    assert hashlib.sha256(stored).digest() == source.sha256.digest()


def test_lost_answer_to_the_last_chunk_with_the_object_missing_is_an_error(
    faulty_gcs: FaultyGCS, gcs_bucket: Any
) -> None:
    # The session says "finished", but the object is not there: never call that done.
    def lose_answer_then_object(attempt: int) -> None:
        if attempt == 1:
            faulty_gcs.proxy.fail_next("drop_response", methods={"PUT"})
        else:
            gcs_bucket.blob("blobs/x").delete()  # as if deleted right after it was made

    where = f"{faulty_gcs.backend.describe()}/blobs/x"
    backend = faulty_gcs.backend.with_request_runner(
        retrying_with_hooks(
            faulty_gcs.retrier, {f"upload part 4 of {where}": lose_answer_then_object}
        )
    )
    with pytest.raises(BackendError, match="session ended before the upload was complete"):
        backend.write("blobs/x", io.BytesIO(os.urandom(3 * CHUNK + 1)))


def _sdk_retrying(faulty_gcs: FaultyGCS, gcs_bucket: Any) -> GCSBackend:
    """A backend through the fault proxy, with the SDK's own retries and no runner."""
    return GCSBackend(
        gcs_bucket.name,
        client=make_gcs_client(faulty_gcs.proxy.endpoint_url),
        chunk_size=CHUNK,
        timeout=0.3,
    )


def test_sdk_retries_recover_a_failed_chunk_without_a_runner(
    faulty_gcs: FaultyGCS, gcs_bucket: Any
) -> None:
    # The default (no Backoff): each chunk is retried on google-cloud-storage's DEFAULT_RETRY
    # schedule, after asking the session what it holds.
    backend = _sdk_retrying(faulty_gcs, gcs_bucket)
    data = os.urandom(3 * CHUNK + 5)
    faulty_gcs.proxy.fail_next("drop_response", methods={"PUT"})  # the first chunk
    backend.write("blobs/x", io.BytesIO(data), if_absent=True)
    assert session_starts(faulty_gcs.proxy) == 1
    assert faulty_gcs.sessions.status_queries == 1
    assert gcs_bucket.blob("blobs/x").download_as_bytes() == data


def test_a_delete_whose_answer_was_lost_is_done_with_sdk_retries(
    faulty_gcs: FaultyGCS, gcs_bucket: Any
) -> None:
    # GCS deleted the object, the answer was lost, and the SDK's own retry met 404: that is
    # the earlier attempt's success, not a missing key (remove) or a blob kept (gc's delete).
    backend = _sdk_retrying(faulty_gcs, gcs_bucket)
    backend.write("refs/a", io.BytesIO(b"a"))
    backend.write("blobs/b", io.BytesIO(b"b"))
    seen = backend.stat("blobs/b")
    faulty_gcs.proxy.fail_next("drop_response", methods={"DELETE"})
    backend.remove("refs/a")
    faulty_gcs.proxy.fail_next("drop_response", methods={"DELETE"})
    assert backend.remove_if_unchanged("blobs/b", seen)
    assert not backend.exists("refs/a") and not backend.exists("blobs/b")
    deletes = [r for r in faulty_gcs.proxy.requests if r.method == "DELETE"]
    assert [r.fault for r in deletes] == ["drop_response", None, "drop_response", None]
    with pytest.raises(ArtifactNotFound):  # a plain 404, with no failure before it
        backend.remove("refs/a")
    assert not backend.remove_if_unchanged("blobs/b", seen)


def test_resumable_uploads_survive_30_percent_faults(
    faulty_gcs: FaultyGCS, gcs_bucket: Any
) -> None:
    proxy = faulty_gcs.proxy
    backend = RetryingBackend(faulty_gcs.backend, faulty_gcs.retrier)  # as Backoff builds it
    payloads = {f"blobs/{i}": os.urandom(3 * MiB + i * 1000) for i in range(20)}
    proxy.set_faults(0.3, ("reset", "503", "truncate", "drop_response", "stall"), stall_seconds=0.6)
    for key, data in payloads.items():
        backend.write(key, io.BytesIO(data), if_absent=True)
    proxy.clear_faults()
    faults = {r.fault for r in proxy.requests if r.fault}
    assert faults == {"reset", "503", "truncate", "drop_response", "stall"}
    # A session is started again only when starting it failed: chunks are retried alone.
    failed_starts = sum(
        r.method == "POST" and "uploadType=resumable" in r.path and r.fault is not None
        for r in proxy.requests
    )
    assert session_starts(proxy) == len(payloads) + failed_starts
    assert faulty_gcs.sessions.status_queries > 5
    for key, data in payloads.items():
        assert gcs_bucket.blob(key).download_as_bytes() == data, key
    assert sorted(b.name for b in gcs_bucket.list_blobs()) == sorted(payloads)


# -- answers a misbehaving server or proxy gives -------------------------------------------------


def is_media(method: str, path: str) -> bool:
    return method == "GET" and "alt=media" in path  # a download, not the metadata GET


def test_a_ranged_read_answered_from_the_start_is_refused_then_resumed(
    faulty_gcs: FaultyGCS,
) -> None:
    # A proxy that drops the Range header sends the whole object. Refused for good, that
    # stopped Backoff's resume of a cut download and verify --deep (found by a probe).
    data = os.urandom(3 * CHUNK)
    faulty_gcs.backend.write("k", io.BytesIO(data))
    proxy = faulty_gcs.proxy
    proxy.fail_next("ignore_range", methods={"GET"}, matching=is_media)
    store = faulty_gcs.backend.describe()
    with pytest.raises(TransientBackendError, match=rf"^{store}: asked for key 'k' from byte 1000"):
        faulty_gcs.backend.open_reader("k", offset=1000, length=16).read()
    assert faulty_gcs.backend.open_reader("k", offset=1000, length=16).read() == data[1000:1016]
    with RetryingBackend(faulty_gcs.backend, faulty_gcs.retrier).open_reader("k") as reader:
        head = reader.read(1000)
        proxy.fail_next("ignore_range", methods={"GET"}, matching=is_media)
        assert head + reader.read() == data
    assert [r.fault for r in proxy.requests if r.fault] == ["ignore_range"] * 2


@pytest.fixture
def plain_gcs(gcs_client: Any, gcs_bucket: Any) -> GCSBackend:
    """Straight to fake-gcs-server, under a prefix, SDK retries off: every fault surfaces."""
    return GCSBackend(
        gcs_bucket.name, client=gcs_client, prefix="p", chunk_size=CHUNK, sdk_retries=False
    )


@pytest.mark.parametrize("same", [True, False], ids=["same-bytes", "other-bytes"])
def test_an_object_replaced_mid_read_is_transient_not_missing(
    plain_gcs: GCSBackend, gcs_bucket: Any, same: bool
) -> None:
    # The reader pins the generation it opened; a re-upload (a repair writing the same bytes)
    # makes the next range a 404. That read as "no object" and sent users to verify.
    data = os.urandom(3 * CHUNK)
    plain_gcs.write("k", io.BytesIO(data))
    with plain_gcs.open_reader("k") as reader:
        assert reader.read(1000) == data[:1000]
        gcs_bucket.blob("p/k").upload_from_string(data if same else os.urandom(len(data)))
        with pytest.raises(
            TransientBackendError,
            match=rf"^{plain_gcs.describe()}: key 'k' was replaced while it was read",
        ):
            reader.read()


def test_backoff_reads_on_through_an_identical_reupload(
    plain_gcs: GCSBackend, gcs_bucket: Any
) -> None:
    data = os.urandom(3 * CHUNK)
    plain_gcs.write("k", io.BytesIO(data))
    with _retrying(plain_gcs).open_reader("k") as reader:
        head = reader.read(1000)
        gcs_bucket.blob("p/k").upload_from_string(data)  # a new generation, the same bytes
        assert head + reader.read() == data


def test_an_object_deleted_mid_read_is_missing(plain_gcs: GCSBackend, gcs_bucket: Any) -> None:
    plain_gcs.write("k", io.BytesIO(os.urandom(3 * CHUNK)))
    with plain_gcs.open_reader("k") as reader:
        reader.read(1000)
        gcs_bucket.blob("p/k").delete()
        with pytest.raises(ArtifactNotFound, match=r"no object 'k'"):
            reader.read()


def test_a_rewrite_whose_session_expired_is_not_taken_for_the_old_object(
    faulty_gcs: FaultyGCS, gcs_bucket: Any
) -> None:
    # A rewrite over an object of the same size (gc's manifest rewrite, a repair): the last
    # chunk finds the session gone and nothing was published. The old object has the right
    # size, but it is not ours: that write was acknowledged while the old bytes stayed.
    old = os.urandom(3 * CHUNK + 1)
    faulty_gcs.backend.write("m", io.BytesIO(old))
    faulty_gcs.sessions.expire_at_last_chunk()
    with pytest.raises(BackendError, match="session ended before the upload was complete"):
        faulty_gcs.backend.write("m", io.BytesIO(os.urandom(len(old))))
    assert gcs_bucket.blob("m").download_as_bytes() == old


def test_a_rewrite_whose_last_answer_was_lost_is_a_success(
    faulty_gcs: FaultyGCS, gcs_bucket: Any
) -> None:
    # The same rewrite, published but its answer lost: the object that is there now is not
    # the one there before, so it is ours.
    old = os.urandom(3 * CHUNK + 1)
    faulty_gcs.backend.write("m", io.BytesIO(old))
    new = os.urandom(len(old))

    def lose_first_answer(attempt: int) -> None:
        if attempt == 1:
            faulty_gcs.proxy.fail_next("drop_response", methods={"PUT"})

    where = f"{faulty_gcs.backend.describe()}/m"
    backend = faulty_gcs.backend.with_request_runner(
        retrying_with_hooks(faulty_gcs.retrier, {f"upload part 4 of {where}": lose_first_answer})
    )
    backend.write("m", io.BytesIO(new))
    assert [r.fault for r in faulty_gcs.proxy.requests if r.fault] == ["drop_response"]
    assert gcs_bucket.blob("m").download_as_bytes() == new


def always_another_page(method: str, path: str, body: bytes) -> bytes:
    """A hostile server's listing: every page says another one follows, under one token."""
    if method != "GET" or not urlsplit(path).path.endswith("/o"):
        return body
    listing = json.loads(body)
    listing["nextPageToken"] = "again"
    return json.dumps(listing).encode()


@pytest.mark.parametrize("retrying", [False, True], ids=["plain", "retrying"])
def test_a_listing_whose_page_token_repeats_stops(
    gcs_sessions: ResumableSessions, gcs_bucket: Any, retrying: bool
) -> None:
    # google-api-core follows any token it is given: a server answering the same one forever
    # made list() run forever, and RetryingBackend.list, which collects, grow without bound.
    client = make_gcs_client(f"http://127.0.0.1:{gcs_sessions.port}")
    plain = GCSBackend(gcs_bucket.name, client=client, prefix="p", chunk_size=CHUNK)
    plain.write("refs/a", io.BytesIO(b"a"))
    gcs_sessions.rewrite = always_another_page
    backend = _retrying(plain) if retrying else plain
    listed: list[str] = []
    with pytest.raises(
        BackendError, match=rf"bucket '{gcs_bucket.name}'.*prefix 'p/refs/'.*'again'"
    ):
        for info in backend.list("refs/"):
            listed.append(info.key)
            if len(listed) > 20:
                pytest.fail("the listing never ended")
    # Two pages, each with the one object (the server ignores the token), then the refusal.
    assert listed == ([] if retrying else ["refs/a", "refs/a"])
