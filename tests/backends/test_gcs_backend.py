"""GCS-specific behaviour beyond the shared backend conformance suite (fake-gcs-server)."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from optuna_cas.backends.base import Backend
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
from tests.support.fault_proxy import FaultProxy
from tests.support.gcs import (
    GCS_TEST_CHUNK_SIZE,
    GCSServer,
    _free_port,
    make_gcs_client,
    start_fake_gcs_server,
    stop_fake_gcs_server,
)
from tests.support.gcs_resumable import ResumableSessions

pytestmark = pytest.mark.gcs

MiB = 1024 * 1024
CHUNK = GCS_TEST_CHUNK_SIZE
T = TypeVar("T")


class NonSeekable(io.RawIOBase):
    """A pipe-like source: no seek/tell, short reads, bytes produced on demand."""

    def __init__(self, size: int, *, block: int = 64 * 1024, fail_at: int | None = None):
        self._left = size
        self._block = os.urandom(block)
        self._fail_at = fail_at
        self._sent = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._fail_at is not None and self._sent >= self._fail_at:
            raise ConnectionResetError("source pipe broke")
        n = min(len(buffer), self._left, len(self._block))
        buffer[:n] = self._block[:n]
        self.sha256.update(self._block[:n])
        self._left -= n
        self._sent += n
        return n


def record_requests(client: Any) -> list[str]:
    """Observe (not mock) the HTTP traffic of ``client``: 'METHOD url' per response."""
    seen: list[str] = []

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(f"{response.request.method} {response.request.url}")

    client._http.hooks["response"].append(hook)
    return seen


def read_all(backend: Backend, key: str, *, offset: int = 0, piece: int = 100_000) -> bytes:
    out = bytearray()
    with backend.open_reader(key, offset=offset) as f:
        while data := f.read(piece):
            out += data
    return bytes(out)


def generation(bucket: Any, key: str) -> int:
    blob = bucket.get_blob(key)
    assert blob is not None
    return int(blob.generation)


def test_is_a_backend(gcs_backend: GCSBackend, gcs_bucket: Any) -> None:
    assert isinstance(gcs_backend, Backend)
    assert gcs_backend.describe() == f"gs://{gcs_bucket.name}"


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


@pytest.mark.parametrize("size", [10, 3 * CHUNK + 5], ids=["small", "resumable"])
def test_callers_stream_stays_open_and_is_read_from_its_position(
    gcs_backend: GCSBackend, size: int
) -> None:
    data = os.urandom(size)
    stream = io.BytesIO(data)
    stream.seek(3)
    gcs_backend.write("k", stream)
    assert not stream.closed
    assert stream.tell() == size
    assert read_all(gcs_backend, "k") == data[3:]


@pytest.mark.parametrize("size", [10, 3 * CHUNK + 5], ids=["small", "resumable"])
def test_if_absent_never_overwrites(gcs_backend: GCSBackend, gcs_bucket: Any, size: int) -> None:
    first = os.urandom(size)
    gcs_backend.write("blobs/x", io.BytesIO(first), if_absent=True)
    before = generation(gcs_bucket, "blobs/x")
    gcs_backend.write("blobs/x", io.BytesIO(os.urandom(size)), if_absent=True)
    assert generation(gcs_bucket, "blobs/x") == before
    assert read_all(gcs_backend, "blobs/x") == first


def test_plain_write_replaces(gcs_backend: GCSBackend) -> None:
    gcs_backend.write("refs/a", io.BytesIO(b"one"))
    gcs_backend.write("refs/a", io.BytesIO(b"two"))
    assert read_all(gcs_backend, "refs/a") == b"two"


def test_prefix_isolation(gcs_client: Any, gcs_bucket: Any) -> None:
    a = GCSBackend(gcs_bucket.name, client=gcs_client, prefix="a", chunk_size=CHUNK)
    b = GCSBackend(gcs_bucket.name, client=gcs_client, prefix="/b/", chunk_size=CHUNK)
    gcs_bucket.blob("ab/decoy").upload_from_string(b"not under a/")
    a.write("refs/1", io.BytesIO(b"from a"))
    b.write("refs/1", io.BytesIO(b"from b"))
    b.write("refs/2", io.BytesIO(b"only b"))

    assert a.describe() == f"gs://{gcs_bucket.name}/a"
    assert b.describe() == f"gs://{gcs_bucket.name}/b"
    assert read_all(a, "refs/1") == b"from a"
    assert read_all(b, "refs/1") == b"from b"
    assert not a.exists("refs/2")
    assert sorted(i.key for i in a.list()) == ["refs/1"]
    assert sorted(i.key for i in b.list("refs/")) == ["refs/1", "refs/2"]
    assert sorted(blob.name for blob in gcs_bucket.list_blobs()) == [
        "a/refs/1",
        "ab/decoy",
        "b/refs/1",
        "b/refs/2",
    ]
    a.remove("refs/1")
    assert read_all(b, "refs/1") == b"from b"


def test_list_reports_sizes_and_times(gcs_backend: GCSBackend) -> None:
    gcs_backend.write("blobs/aa/1", io.BytesIO(b"abc"))
    gcs_backend.write("blobs/ab/2", io.BytesIO(b""))
    gcs_backend.write("refs/r", io.BytesIO(b"r"))
    infos = {i.key: i for i in gcs_backend.list("blobs/a")}
    assert set(infos) == {"blobs/aa/1", "blobs/ab/2"}
    assert infos["blobs/aa/1"].size == 3 and infos["blobs/ab/2"].size == 0
    assert infos["blobs/aa/1"].modified > 1e9
    assert gcs_backend.stat("blobs/aa/1") == infos["blobs/aa/1"]


def test_list_skips_names_that_are_not_valid_keys(gcs_backend: GCSBackend, gcs_bucket: Any) -> None:
    # Objects made by other tools: a console "folder", relative segments, a control character.
    for name in ("refs/", "refs/./a", "refs/../b", "refs/c\x07d", "refs/ok"):
        gcs_bucket.blob(name).upload_from_string(b"x")
    assert [i.key for i in gcs_backend.list()] == ["refs/ok"]


def test_missing_key(gcs_backend: GCSBackend, gcs_bucket: Any) -> None:
    for call in (
        lambda: gcs_backend.open_reader("refs/nope"),  # at open time, not at first read
        lambda: gcs_backend.stat("refs/nope"),
        lambda: gcs_backend.remove("refs/nope"),
    ):
        with pytest.raises(ArtifactNotFound, match=r"'refs/nope'.*gs://") as info:
            call()
        assert isinstance(info.value, FileNotFoundError)
        assert gcs_bucket.name in str(info.value)
    assert not gcs_backend.exists("refs/nope")


def test_unknown_bucket_is_a_backend_error_naming_it(gcs_client: Any) -> None:
    backend = GCSBackend("no-such-bucket-xyz", client=gcs_client, chunk_size=CHUNK)
    calls: list[Callable[[], object]] = [
        lambda: backend.open_reader("k"),
        lambda: backend.stat("k"),
        lambda: backend.exists("k"),
        lambda: backend.remove("k"),
        lambda: backend.write("k", io.BytesIO(b"small")),
        lambda: backend.write("k", io.BytesIO(b"x" * (2 * CHUNK))),
        lambda: list(backend.list()),
    ]
    for call in calls:
        with pytest.raises(BackendError, match="no-such-bucket-xyz") as info:
            call()
        assert not isinstance(info.value, ArtifactNotFound)


def test_open_reader_with_offset(gcs_backend: GCSBackend) -> None:
    data = os.urandom(2 * CHUNK + 1000)
    gcs_backend.write("k", io.BytesIO(data))
    for offset in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, len(data) - 1, len(data), len(data) + 5):
        assert read_all(gcs_backend, "k", offset=offset, piece=77_777) == data[offset:]
    with gcs_backend.open_reader("k", offset=10) as f:
        buf = bytearray(5)
        assert f.readinto(buf) == 5 and bytes(buf) == data[10:15]
        f.seek(-3, io.SEEK_END)
        assert f.read() == data[-3:]
    with pytest.raises(ValueError):
        gcs_backend.open_reader("k", offset=-1)


def test_reader_is_closed_by_context_manager(gcs_backend: GCSBackend) -> None:
    gcs_backend.write("k", io.BytesIO(b"abc"))
    with gcs_backend.open_reader("k") as f:
        assert f.read(1) == b"a"
    assert f.closed
    with pytest.raises(ValueError):
        f.read()


@pytest.mark.parametrize("size", [100, 3 * CHUNK + 5], ids=["small", "resumable"])
def test_non_seekable_source(gcs_backend: GCSBackend, size: int) -> None:
    source = NonSeekable(size)
    assert not source.seekable()
    gcs_backend.write("k", source)  # type: ignore[arg-type]
    assert not source.closed
    assert hashlib.sha256(read_all(gcs_backend, "k")).digest() == source.sha256.digest()


def test_source_error_propagates_unchanged_and_publishes_nothing(gcs_backend: GCSBackend) -> None:
    source = NonSeekable(5 * CHUNK, fail_at=2 * CHUNK)
    with pytest.raises(ConnectionResetError, match="source pipe broke"):
        gcs_backend.write("k", source)  # type: ignore[arg-type]
    assert not gcs_backend.exists("k")


def test_memory_bounded_both_ways(gcs_client: Any, gcs_bucket: Any) -> None:
    # Straight to fake-gcs-server: the protocol shim runs in this process, and tracemalloc
    # would count the object it assembles.
    gcs_backend = GCSBackend(gcs_bucket.name, client=gcs_client, chunk_size=CHUNK)
    size = 64 * MiB
    source = NonSeekable(size, block=CHUNK)
    tracemalloc.start()
    try:
        gcs_backend.write("blobs/huge", source)  # type: ignore[arg-type]
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        buf = bytearray(256 * 1024)
        with gcs_backend.open_reader("blobs/huge") as f:
            while n := f.readinto(buf):
                digest.update(memoryview(buf)[:n])
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gcs_backend.stat("blobs/huge").size == size
    assert digest.digest() == source.sha256.digest()
    assert write_peak < 16 * MiB, f"write peak {write_peak / MiB:.1f} MiB"
    assert read_peak < 16 * MiB, f"read peak {read_peak / MiB:.1f} MiB"


def test_unreachable_server_is_transient() -> None:
    client = make_gcs_client(f"http://127.0.0.1:{_free_port()}")
    backend = GCSBackend("bucket", client=client, chunk_size=CHUNK, sdk_retries=False)
    calls: list[Callable[[], object]] = [
        lambda: backend.exists("k"),
        lambda: backend.open_reader("k"),
        lambda: backend.write("k", io.BytesIO(b"small"), if_absent=True),
        lambda: backend.write("k", io.BytesIO(b"x" * (2 * CHUNK))),
        lambda: backend.remove("k"),
        lambda: list(backend.list()),
    ]
    for call in calls:
        with pytest.raises(TransientBackendError, match=r"gs://bucket"):
            call()


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


def test_keys_and_arguments_are_validated_before_io(gcs_client: Any) -> None:
    requests = record_requests(gcs_client)
    backend = GCSBackend("bucket", client=gcs_client, chunk_size=CHUNK)
    for bad in ("../x", "/abs", "a//b", "a\x00b", ""):
        with pytest.raises(InvalidKeyError):
            backend.open_reader(bad)
        with pytest.raises(InvalidKeyError):
            backend.write(bad, io.BytesIO(b"x"))
        with pytest.raises(InvalidKeyError):
            backend.exists(bad)
    assert requests == []
    with pytest.raises(InvalidKeyError):
        GCSBackend("bucket", client=gcs_client, prefix="a/../b")
    with pytest.raises(StoreConfigError):
        GCSBackend("bucket", client=gcs_client, chunk_size=1000)
    with pytest.raises(StoreConfigError):
        GCSBackend("gs://bucket", client=gcs_client)


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
def test_a_failed_chunk_is_resent_alone(
    faulty_gcs: FaultyGCS, gcs_bucket: Any, mode: str, part: int, size: int
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
    source = NonSeekable(size, block=CHUNK // 2 + 3)
    backend.write("blobs/x", source, if_absent=True)  # type: ignore[arg-type]

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


def test_sdk_retries_recover_a_failed_chunk_without_a_runner(
    faulty_gcs: FaultyGCS, gcs_bucket: Any
) -> None:
    # The default (no Backoff): each chunk is retried on google-cloud-storage's DEFAULT_RETRY
    # schedule, after asking the session what it holds.
    backend = GCSBackend(
        gcs_bucket.name,
        client=make_gcs_client(faulty_gcs.proxy.endpoint_url),
        chunk_size=CHUNK,
        timeout=0.3,
    )
    data = os.urandom(3 * CHUNK + 5)
    faulty_gcs.proxy.fail_next("drop_response", methods={"PUT"})  # the first chunk
    backend.write("blobs/x", io.BytesIO(data), if_absent=True)
    assert session_starts(faulty_gcs.proxy) == 1
    assert faulty_gcs.sessions.status_queries == 1
    assert gcs_bucket.blob("blobs/x").download_as_bytes() == data


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
