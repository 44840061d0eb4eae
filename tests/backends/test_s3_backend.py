"""S3-specific behaviour of S3Backend, beyond the shared conformance suite.

Everything runs against a real moto_server (tests/support/s3.py); faults come from the
fault-injecting proxy in tests/support/fault_proxy.py, never from patching botocore.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from optuna_cas.backends.s3 import S3Backend
from optuna_cas.exceptions import (
    ArtifactNotFound,
    BackendError,
    InvalidKeyError,
    StoreConfigError,
    TransientBackendError,
)
from optuna_cas.middleware.retry import Retrier, RetryPolicy
from tests.support.fault_proxy import FaultProxy
from tests.support.s3 import TEST_PART_SIZE, S3Server, make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.s3

MiB = 1024 * 1024
T = TypeVar("T")


def _raw_read(client: S3Client, bucket: str, key: str) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def _count_calls(client: S3Client, operation: str) -> list[int]:
    """Count ``operation`` calls made through ``client`` (an observer, not a patch)."""
    calls: list[int] = []
    client.meta.events.register(f"before-call.s3.{operation}", lambda **_: calls.append(1))
    return calls


def _pending_uploads(client: S3Client, bucket: str) -> list[Any]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


class _Unseekable(io.RawIOBase):
    """``size`` bytes of a repeating random block; not seekable, like a pipe or socket."""

    def __init__(self, size: int, block: bytes) -> None:
        self._left = size
        self._block = block
        self._offset = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise AssertionError("the backend must not read an unbounded amount at once")
        pieces = []
        n = min(n, self._left)
        self._left -= n
        while n:
            piece = self._block[self._offset : self._offset + n]
            self._offset = (self._offset + len(piece)) % len(self._block)
            pieces.append(piece)
            n -= len(piece)
        return b"".join(pieces)


class _OnEof(io.BytesIO):
    """A BytesIO that runs ``action`` once, the first time it is read to EOF."""

    def __init__(self, data: bytes, action: Callable[[], None]) -> None:
        super().__init__(data)
        self._action: Callable[[], None] | None = action

    def read(self, n: int | None = -1) -> bytes:
        chunk = super().read(n)
        if not chunk and self._action is not None:
            action, self._action = self._action, None
            action()
        return chunk


class _FailsAfter(io.RawIOBase):
    """Yields ``good`` bytes of zeros, then raises: a caller's stream breaking mid-upload."""

    def __init__(self, good: int) -> None:
        self._left = good

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._left == 0:
            raise OSError("caller's disk went away")
        n = min(n, self._left)
        self._left -= n
        return bytes(n)


# ---- multipart and streams --------------------------------------------------------------------


def test_multipart_round_trip_20mib(
    s3_backend: S3Backend, s3_client: S3Client, s3_bucket: str
) -> None:
    data = os.urandom(20 * MiB)
    s3_backend.write("blobs/big", io.BytesIO(data))

    head = s3_client.head_object(Bucket=s3_bucket, Key="blobs/big")
    assert head["ETag"].strip('"').endswith("-4")  # 5 MiB + 1, 5 MiB, 5 MiB, 5 MiB - 1
    assert s3_backend.stat("blobs/big").size == len(data)
    with s3_backend.open_reader("blobs/big") as reader:
        assert reader.read() == data
    with s3_backend.open_reader("blobs/big", offset=7 * MiB + 3) as reader:
        assert reader.read(1000) == data[7 * MiB + 3 : 7 * MiB + 1003]
    assert _pending_uploads(s3_client, s3_bucket) == []


def test_readinto_streams_in_chunks(s3_backend: S3Backend) -> None:
    data = os.urandom(3 * MiB + 17)
    s3_backend.write("k", io.BytesIO(data))
    out = bytearray()
    buffer = bytearray(MiB)
    with s3_backend.open_reader("k") as reader:
        assert isinstance(reader, io.BufferedReader)
        while count := reader.readinto(buffer):
            out += buffer[:count]
    assert out == data


@pytest.mark.parametrize("size", [0, 10, TEST_PART_SIZE, TEST_PART_SIZE + 1, 12 * MiB])
def test_write_leaves_caller_stream_open_and_reads_from_its_position(
    s3_backend: S3Backend, s3_client: S3Client, s3_bucket: str, size: int
) -> None:
    data = b"skip" + os.urandom(size)
    stream = io.BytesIO(data)
    stream.seek(4)
    s3_backend.write("k", stream)
    assert not stream.closed
    assert stream.tell() == len(data)
    assert _raw_read(s3_client, s3_bucket, "k") == data[4:]


@pytest.mark.parametrize("size", [0, 100, TEST_PART_SIZE + 1])
def test_offset_at_or_past_end_reads_nothing(s3_backend: S3Backend, size: int) -> None:
    s3_backend.write("k", io.BytesIO(b"x" * size))
    for offset in (size, size + 1, size + MiB):
        with s3_backend.open_reader("k", offset=offset) as reader:
            assert reader.read() == b""
    with pytest.raises(ValueError, match="negative"):
        s3_backend.open_reader("k", offset=-1)


def test_write_64mib_unseekable_stream_keeps_memory_bounded(s3_backend: S3Backend) -> None:
    size = 64 * MiB
    block = os.urandom(MiB + 7)  # odd length so parts are not all identical
    source = _Unseekable(size, block)
    tracemalloc.start()
    try:
        s3_backend.write("blobs/huge", source)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Parts of 5 MiB: at most 4 held by the backend, plus the one being read and what the
    # workers and botocore have not yet released; measured ~29 MiB. Buffering the whole
    # stream, or parts without a bound, would pass 64 MiB.
    assert peak < 40 * MiB, f"peak {peak / MiB:.1f} MiB"

    expected = hashlib.sha256()
    check = _Unseekable(size, block)
    while chunk := check.read(MiB):
        expected.update(chunk)
    actual = hashlib.sha256()
    with s3_backend.open_reader("blobs/huge") as reader:
        while chunk := reader.read(4 * MiB):
            actual.update(chunk)
    assert actual.hexdigest() == expected.hexdigest()


def test_caller_stream_error_propagates_and_aborts_upload(
    s3_backend: S3Backend, s3_client: S3Client, s3_bucket: str
) -> None:
    with pytest.raises(OSError, match="caller's disk went away") as info:
        s3_backend.write("k", _FailsAfter(12 * MiB))  # type: ignore[arg-type]
    assert not isinstance(info.value, BackendError)
    assert _pending_uploads(s3_client, s3_bucket) == []
    assert not s3_backend.exists("k")


# ---- create-if-absent -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 100, 12 * MiB])
def test_if_absent_never_overwrites(
    s3_backend: S3Backend, s3_client: S3Client, s3_bucket: str, size: int
) -> None:
    first = os.urandom(size)
    s3_backend.write("k", io.BytesIO(first), if_absent=True)
    etag = s3_client.head_object(Bucket=s3_bucket, Key="k")["ETag"]

    s3_backend.write("k", io.BytesIO(os.urandom(size) + b"!"), if_absent=True)
    assert s3_client.head_object(Bucket=s3_bucket, Key="k")["ETag"] == etag
    assert _raw_read(s3_client, s3_bucket, "k") == first
    assert _pending_uploads(s3_client, s3_bucket) == []

    s3_backend.write("k", io.BytesIO(b"new"))  # without if_absent: overwrite
    assert _raw_read(s3_client, s3_bucket, "k") == b"new"


def test_if_absent_multipart_leaves_an_existing_object_to_the_server_check(
    s3_backend: S3Backend, s3_client: S3Client, s3_bucket: str
) -> None:
    # No HEAD before the upload (callers check presence themselves, and a HEAD cannot close
    # the race anyway): the conditional complete answers 412, which means "already present".
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"there")
    heads = _count_calls(s3_client, "HeadObject")
    completes = _count_calls(s3_client, "CompleteMultipartUpload")
    s3_backend.write("k", io.BytesIO(bytes(12 * MiB)), if_absent=True)
    assert heads == [] and completes == [1]
    assert _raw_read(s3_client, s3_bucket, "k") == b"there"
    assert _pending_uploads(s3_client, s3_bucket) == []


def test_if_absent_multipart_race_keeps_the_first_object(
    s3_backend: S3Backend, s3_client: S3Client, s3_bucket: str
) -> None:
    # Another writer stores the key after our HEAD but before our complete: the conditional
    # complete answers 412, which means "already present"; our parts are aborted.
    def competitor() -> None:
        s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"theirs")

    s3_backend.write("k", _OnEof(bytes(12 * MiB), competitor), if_absent=True)
    assert _raw_read(s3_client, s3_bucket, "k") == b"theirs"
    assert _pending_uploads(s3_client, s3_bucket) == []


def test_if_absent_small_race_is_silent(
    s3_backend: S3Backend, s3_client: S3Client, s3_bucket: str
) -> None:
    def competitor() -> None:
        s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"theirs")

    s3_backend.write("k", _OnEof(b"ours", competitor), if_absent=True)
    assert _raw_read(s3_client, s3_bucket, "k") == b"theirs"


# ---- keys, prefixes, listing ------------------------------------------------------------------


def test_prefix_isolation(s3_client: S3Client, s3_bucket: str) -> None:
    a = S3Backend(s3_bucket, client=s3_client, prefix="a")
    ab = S3Backend(s3_bucket, client=s3_client, prefix="/ab/")
    a.write("refs/x", io.BytesIO(b"from a"))
    ab.write("refs/y", io.BytesIO(b"from ab"))

    assert _raw_read(s3_client, s3_bucket, "a/refs/x") == b"from a"
    assert _raw_read(s3_client, s3_bucket, "ab/refs/y") == b"from ab"
    assert [i.key for i in a.list()] == ["refs/x"]
    assert [i.key for i in ab.list("refs/")] == ["refs/y"]
    assert a.exists("refs/x") and not a.exists("refs/y")
    assert ab.exists("refs/y") and not ab.exists("refs/x")
    with pytest.raises(ArtifactNotFound):
        a.remove("refs/y")
    assert a.describe() == f"s3://{s3_bucket}/a"
    assert ab.describe() == f"s3://{s3_bucket}/ab"


def test_list_paginates(s3_backend: S3Backend, s3_client: S3Client, s3_bucket: str) -> None:
    keys = {f"refs/{i:03d}" for i in range(25)}
    for key in keys:
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    s3_client.put_object(Bucket=s3_bucket, Key="other/1", Body=b"")

    # Pages of 7 instead of S3's 1,000, set on the test's client through botocore's public
    # event hooks: the backend has no knob for it, and must follow every continuation token.
    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params["MaxKeys"] = 7

    s3_client.meta.events.register("provide-client-params.s3.ListObjectsV2", small_pages)
    calls = _count_calls(s3_client, "ListObjectsV2")

    infos = list(s3_backend.list("refs/"))
    assert {i.key for i in infos} == keys
    assert len(calls) == 4  # 7 + 7 + 7 + 4
    assert all(i.size == len(i.key) and i.modified > 0 for i in infos)
    assert len(list(s3_backend.list())) == 26
    assert len(calls) == 4 + 4  # 26 objects: 7 + 7 + 7 + 5


def test_list_skips_names_that_are_not_valid_keys(
    s3_backend: S3Backend, s3_client: S3Client, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="refs/", Body=b"")  # console "folder"
    s3_client.put_object(Bucket=s3_bucket, Key="refs/ok", Body=b"")
    assert [i.key for i in s3_backend.list()] == ["refs/ok"]


def test_keys_are_validated_before_any_request(s3_backend: S3Backend, s3_client: S3Client) -> None:
    calls: list[str] = []
    s3_client.meta.events.register("before-call.s3.*", lambda **kw: calls.append(kw["model"].name))
    for bad in ("../x", "/abs", "a//b", "a/./b", "nul\0", ""):
        with pytest.raises(InvalidKeyError):
            s3_backend.write(bad, io.BytesIO(b"x"))
        with pytest.raises(InvalidKeyError):
            s3_backend.open_reader(bad)
        with pytest.raises(InvalidKeyError):
            s3_backend.exists(bad)
        with pytest.raises(InvalidKeyError):
            s3_backend.remove(bad)
    assert calls == []


# ---- error translation ------------------------------------------------------------------------


def test_missing_key_raises_artifact_not_found(s3_backend: S3Backend) -> None:
    where = s3_backend.describe()
    for call in (
        lambda: s3_backend.open_reader("refs/nope"),
        lambda: s3_backend.open_reader("refs/nope", offset=5),
        lambda: s3_backend.stat("refs/nope"),
        lambda: s3_backend.remove("refs/nope"),
    ):
        with pytest.raises(ArtifactNotFound) as info:
            call()
        assert "refs/nope" in str(info.value) and where in str(info.value)
        assert not type(info.value).__module__.startswith("botocore")
    assert s3_backend.exists("refs/nope") is False


def test_unknown_bucket_is_a_backend_error_naming_it(s3_client: S3Client) -> None:
    backend = S3Backend("no-such-bucket-for-optuna-cas", client=s3_client)
    for call in (
        lambda: backend.exists("k"),
        lambda: backend.stat("k"),
        lambda: backend.remove("k"),
        lambda: backend.open_reader("k"),
        lambda: backend.write("k", io.BytesIO(b"x")),
        lambda: backend.write("k", io.BytesIO(bytes(6 * MiB))),
        lambda: list(backend.list()),
    ):
        with pytest.raises(BackendError, match=r"no-such-bucket-for-optuna-cas.*does not exist"):
            call()


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.host, s3_server.port) as p:
        yield p


@pytest.fixture
def faulty_backend(proxy: FaultProxy, s3_bucket: str) -> S3Backend:
    """The test bucket seen through the fault proxy, with botocore's retries off."""
    return S3Backend(
        s3_bucket,
        client=make_s3_client(proxy.endpoint_url, retries=False),
        part_size=TEST_PART_SIZE,
        multipart_threshold=TEST_PART_SIZE,
    )


@pytest.mark.parametrize("mode", ["503", "reset", "drop_response"])
def test_faults_on_requests_are_transient(
    faulty_backend: S3Backend, proxy: FaultProxy, s3_client: S3Client, s3_bucket: str, mode: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"hello")
    for call in (
        lambda: faulty_backend.exists("k"),
        lambda: faulty_backend.stat("k"),
        lambda: faulty_backend.open_reader("k"),
        lambda: faulty_backend.write("k2", io.BytesIO(b"x")),
        lambda: list(faulty_backend.list()),
    ):
        proxy.fail_next(mode)
        with pytest.raises(TransientBackendError):
            call()
    assert faulty_backend.open_reader("k").read() == b"hello"  # faults were one-offs


def test_truncated_body_is_transient_not_eof(
    faulty_backend: S3Backend, proxy: FaultProxy, s3_client: S3Client, s3_bucket: str
) -> None:
    data = os.urandom(MiB)
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=data)
    for offset in (0, 1000):
        proxy.fail_next("truncate", methods=["GET"])
        with (
            pytest.raises(TransientBackendError),
            faulty_backend.open_reader("k", offset=offset) as reader,
        ):
            reader.read()
        proxy.fail_next("truncate", methods=["GET"])
        with faulty_backend.open_reader("k", offset=offset) as reader:
            got = bytearray()
            with pytest.raises(TransientBackendError):
                while chunk := reader.read(64 * 1024):
                    got += chunk
            assert data[offset:].startswith(bytes(got))


def test_failed_part_aborts_multipart_upload(
    faulty_backend: S3Backend, proxy: FaultProxy, s3_client: S3Client, s3_bucket: str
) -> None:
    proxy.fail_next("503", methods=["PUT"])  # the first UploadPart
    with pytest.raises(TransientBackendError):
        faulty_backend.write("k", io.BytesIO(os.urandom(12 * MiB)))
    assert _pending_uploads(s3_client, s3_bucket) == []
    assert not faulty_backend.exists("k")


@pytest.mark.parametrize("if_absent", [False, True])
def test_lost_answer_to_the_completion_is_a_success(
    faulty_backend: S3Backend,
    proxy: FaultProxy,
    s3_client: S3Client,
    s3_bucket: str,
    if_absent: bool,
) -> None:
    # The upload completes but its answer is lost; the retried completion finds the upload gone
    # (NoSuchUpload) or, created-if-absent, the object there (412): both mean it is stored.
    retrier = Retrier(RetryPolicy(min_delay=0.01, max_delay=0.05))
    completion = f"complete upload of {faulty_backend.describe()}/k"
    attempts: list[int] = []

    def runner(description: str, request: Callable[[], T]) -> T:
        def attempt() -> T:
            if description == completion:
                attempts.append(1)
                if len(attempts) == 1:
                    proxy.fail_next("drop_response", methods={"POST"})
            return request()

        return retrier.call(description, attempt)

    data = os.urandom(12 * MiB)
    faulty_backend.with_request_runner(runner).write("k", io.BytesIO(data), if_absent=if_absent)
    assert len(attempts) == 2
    assert [r.fault for r in proxy.requests if r.fault] == ["drop_response"]
    assert _raw_read(s3_client, s3_bucket, "k") == data
    assert _pending_uploads(s3_client, s3_bucket) == []


def test_read_timeout_is_transient(
    proxy: FaultProxy, s3_server: S3Server, s3_client: S3Client, s3_bucket: str
) -> None:
    import boto3
    from botocore.config import Config

    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=proxy.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=0.3),
    )
    backend = S3Backend(s3_bucket, client=client)
    proxy.fail_next("stall", stall_seconds=2.0)
    with pytest.raises(TransientBackendError):
        backend.exists("k")


def test_connection_refused_is_transient(s3_bucket: str) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = S3Backend(s3_bucket, client=make_s3_client(f"http://127.0.0.1:{port}", retries=False))
    with pytest.raises(TransientBackendError, match="connection"):
        backend.exists("k")
    with pytest.raises(TransientBackendError):
        backend.write("k", io.BytesIO(b"x"))


# ---- construction -----------------------------------------------------------------------------


def test_constructor_validates(s3_client: S3Client) -> None:
    with pytest.raises(StoreConfigError, match="part_size"):
        S3Backend("b", client=s3_client, part_size=MiB)
    with pytest.raises(StoreConfigError, match="max_concurrency"):
        S3Backend("b", client=s3_client, max_concurrency=0)
    with pytest.raises(StoreConfigError, match="endpoint_url or client"):
        S3Backend("b", client=s3_client, endpoint_url="http://x")
    with pytest.raises(InvalidKeyError, match="prefix"):
        S3Backend("b", client=s3_client, prefix="a/../b")


def test_missing_boto3_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes "import boto3" raise ImportError
    with pytest.raises(StoreConfigError, match=r"pip install 'optuna-cas\[s3\]'"):
        S3Backend("b")


def test_builds_its_own_client(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    backend = S3Backend(s3_bucket, endpoint_url=s3_server.endpoint_url, prefix="p")
    backend.write("k", io.BytesIO(b"v"))
    assert backend.open_reader("k").read() == b"v"
