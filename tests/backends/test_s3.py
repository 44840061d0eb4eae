"""S3Backend: the backend contract (BackendConformance) and what only S3 has.

Everything runs against a real moto_server (tests/support/s3.py), checked out of band with a
boto3 client of its own; faults come from optuna_cas.testing.faults.FaultProxy, never from
patching botocore.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from optuna_cas.backends.base import Backend, SealedFile
from optuna_cas.backends.s3 import S3Backend
from optuna_cas.exceptions import (
    BackendError,
    InvalidKeyError,
    StoreConfigError,
    TransientBackendError,
)
from optuna_cas.middleware.backoff import RetryingBackend
from optuna_cas.middleware.retry import Retrier, RetryPolicy
from optuna_cas.testing.backend import BackendConformance
from optuna_cas.testing.faults import FaultProxy
from optuna_cas.testing.raw import S3View
from tests.support.s3 import TEST_PART_SIZE, S3Server, make_s3_client
from tests.support.unanswering import Answering503, SilentServer

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


def _s3_backend(client: S3Client, bucket: str, prefix: str = "") -> S3Backend:
    return S3Backend(
        bucket,
        client=client,
        prefix=prefix,
        part_size=TEST_PART_SIZE,
        multipart_threshold=TEST_PART_SIZE,
    )


def _retrying(backend: Backend) -> RetryingBackend:
    return RetryingBackend(backend, Retrier(RetryPolicy(min_delay=0.01, max_delay=0.05)))


# ---- the contract ------------------------------------------------------------------------------


class TestS3Backend(BackendConformance):
    """The contract, on a prefix of a fresh bucket, seen out of band by another client."""

    PREFIX = "conformance"
    # Parts of 5 MiB read into at most 4 reused buffers (max_concurrency), sent as they are:
    # issue 11's bound of part size x concurrency, plus a little (measured 21.2 MiB writing;
    # 32.2 MiB when each part was a new bytes object and the head lived on).
    memory_bound = 4 * TEST_PART_SIZE + 3 * MiB
    # A console's "folder" marker and names other tools can create (not a control character:
    # S3's XML listings and bulk deletes cannot carry one).
    invalid_raw_names = ("refs/", "refs/./a", "refs/../b")

    def s3(self, server: S3Server, raw_client: S3Client, bucket: str) -> S3Backend:
        self.server, self.bucket = server, bucket
        self.raw = S3View(raw_client, bucket, prefix=self.PREFIX)
        # The backend's own client, so that the count below sees only the backend's requests.
        self.client = make_s3_client(server.endpoint_url)
        self.calls = _count_calls(self.client, "*")
        return _s3_backend(self.client, bucket, self.PREFIX)

    @pytest.fixture
    def backend(self, s3_server: S3Server, s3_client: S3Client, s3_bucket: str) -> Backend:
        return self.s3(s3_server, s3_client, s3_bucket)

    def requests_sent(self) -> int:
        return len(self.calls)

    def backend_at(self, sub: str) -> Backend:
        return _s3_backend(self.client, self.bucket, f"{self.PREFIX}/{sub}")

    def missing_container(self) -> tuple[Backend, str]:
        name = "no-such-bucket-for-optuna-cas"
        return _s3_backend(self.client, name), name

    def upstream(self) -> tuple[str, int] | None:
        return self.server.host, self.server.port

    def backend_via(self, endpoint_url: str) -> Backend:
        client = make_s3_client(endpoint_url, retries=False)
        return _s3_backend(client, self.bucket, self.PREFIX)


class TestRetryingS3Backend(TestS3Backend):
    """The same contract through RetryingBackend (each request of a multipart upload retried)."""

    readers_seek = False  # ResumingReader streams forward only

    @pytest.fixture
    def backend(self, s3_server: S3Server, s3_client: S3Client, s3_bucket: str) -> Backend:
        return _retrying(self.s3(s3_server, s3_client, s3_bucket))

    def backend_at(self, sub: str) -> Backend:
        return _retrying(super().backend_at(sub))

    def missing_container(self) -> tuple[Backend, str]:
        backend, name = super().missing_container()
        return _retrying(backend), name

    def upstream(self) -> None:
        return None  # retries absorb the injected faults: tests/stores/test_faults.py


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


class _PartsInFlight:
    """A request runner that holds each upload request a while and notes the most at once."""

    def __init__(self, kind: str = "upload part") -> None:
        self._kind = kind
        self._lock = threading.Lock()
        self._now = 0
        self.most = 0

    def __call__(self, description: str, request: Callable[[], T]) -> T:
        if not description.startswith(self._kind):
            return request()
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
        try:
            time.sleep(0.2)  # long enough for every part submitted meanwhile to start
            return request()
        finally:
            with self._lock:
                self._now -= 1


def _small_parts(client: S3Client, bucket: str, max_concurrency: int) -> S3Backend:
    return S3Backend(
        bucket,
        client=client,
        part_size=TEST_PART_SIZE,
        max_concurrency=max_concurrency,
        multipart_threshold=TEST_PART_SIZE,
    )


def test_last_part_goes_out_beside_the_others(s3_client: S3Client, s3_bucket: str) -> None:
    # Only the completion publishes an S3 upload: the last part need not wait for the rest.
    backend = _small_parts(s3_client, s3_bucket, 3)
    parts = _PartsInFlight()
    data = os.urandom(2 * TEST_PART_SIZE + TEST_PART_SIZE // 2)
    backend.with_request_runner(parts).write("k", io.BytesIO(data))
    assert parts.most == 3
    assert _raw_read(s3_client, s3_bucket, "k") == data


def test_uploads_at_once_share_the_backends_part_threads(
    s3_client: S3Client, s3_bucket: str
) -> None:
    # Two uploads at once must not double the threads (each keeps memory for its requests).
    backend = _small_parts(s3_client, s3_bucket, 2)
    parts = _PartsInFlight()
    sending = backend.with_request_runner(parts)
    datas = [os.urandom(3 * TEST_PART_SIZE) for _ in range(2)]
    start = threading.Barrier(2)

    def upload(n: int) -> None:
        start.wait()
        sending.write(f"k{n}", io.BytesIO(datas[n]))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(upload, range(2)))
    assert parts.most == 2
    assert [_raw_read(s3_client, s3_bucket, f"k{n}") for n in range(2)] == datas


def test_sealed_files_go_in_one_put_each_within_max_concurrency(
    s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    # A chunked upload's packs: one PutObject each, streamed from the spool file (no parts,
    # no completion), on the part threads, so they count against max_concurrency too.
    backend = _small_parts(s3_client, s3_bucket, 2)
    puts = _PartsInFlight("upload s3://")
    sending = backend.with_request_runner(puts)
    creates = _count_calls(s3_client, "CreateMultipartUpload")
    datas = [os.urandom(2 * TEST_PART_SIZE + n) for n in range(4)]
    start = threading.Barrier(4)

    def upload(n: int) -> None:
        with open(tmp_path / f"spool{n}", "w+b") as f:
            f.write(datas[n])
            f.seek(0)
            start.wait()
            sending.write(f"packs/{n}", SealedFile.of(f), if_absent=True)  # type: ignore[arg-type]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(upload, range(4)))
    assert puts.most == 2 and creates == []
    assert [_raw_read(s3_client, s3_bucket, f"packs/{n}") for n in range(4)] == datas


# ---- create-if-absent -------------------------------------------------------------------------


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


# ---- keys, prefixes, listing ------------------------------------------------------------------


def test_prefix_slashes_are_normalised(s3_client: S3Client, s3_bucket: str) -> None:
    # Isolation itself is BackendConformance.test_prefix_isolation; this is S3's spelling.
    ab = S3Backend(s3_bucket, client=s3_client, prefix="/ab/")
    ab.write("refs/y", io.BytesIO(b"from ab"))
    assert _raw_read(s3_client, s3_bucket, "ab/refs/y") == b"from ab"
    assert [i.key for i in ab.list("refs/")] == ["refs/y"]
    assert ab.describe() == f"s3://{s3_bucket}/ab"
    assert S3Backend(s3_bucket, client=s3_client).describe() == f"s3://{s3_bucket}"


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


# ---- error translation ------------------------------------------------------------------------


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
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    client = make_s3_client(proxy.endpoint_url, retries=False, read_timeout=0.3)
    backend = S3Backend(s3_bucket, client=client)
    proxy.fail_next("stall", stall_seconds=2.0)
    with pytest.raises(TransientBackendError):
        backend.exists("k")


def test_touch_copies_an_object_over_5_gib_onto_itself_in_parts(
    faulty_backend: S3Backend, proxy: FaultProxy, s3_client: S3Client, s3_bucket: str
) -> None:
    # S3 refuses CopyObject from a source over 5 GiB, so every re-upload of a whole blob that
    # large failed on touching it. moto copies any size: the proxy answers as S3 would.
    data = os.urandom(MiB)
    faulty_backend.write("big", io.BytesIO(data))
    before = s3_client.head_object(Bucket=s3_bucket, Key="big")["LastModified"]
    time.sleep(1.1)  # S3 stamps whole seconds
    proxy.reset_log()
    itself = f"/{s3_bucket}/big"  # with a query (?uploadId=..&partNumber=..) it is a part copy
    proxy.fail_next("copy_source_too_large", matching=lambda m, p: (m, p) == ("PUT", itself))

    faulty_backend.touch("big")

    sent = [(r.method, r.path.partition("?")[2], r.status, r.fault) for r in proxy.requests]
    assert [r for r in sent if r[:2] == ("PUT", "")] == [
        ("PUT", "", 400, "copy_source_too_large")  # CopyObject asked once, not again
    ], sent
    assert [r[2] for r in sent if r[0] == "PUT" and "uploadId=" in r[1]] == [200], sent
    assert _raw_read(s3_client, s3_bucket, "big") == data
    head = s3_client.head_object(Bucket=s3_bucket, Key="big", ChecksumMode="ENABLED")
    assert head["LastModified"] > before
    assert "ChecksumCRC32" in head  # the parts were copied with their CRC32
    assert _pending_uploads(s3_client, s3_bucket) == []


def test_a_touch_in_parts_that_finds_the_object_rewritten_meanwhile_is_done(
    faulty_backend: S3Backend, proxy: FaultProxy, s3_client: S3Client, s3_bucket: str
) -> None:
    # Two workers re-using the same large blob touch it at once: the first one's copy changes
    # its ETag, and the second one's part copy (under CopySourceIfMatch) gets 412. s3transfer
    # raised that as S3CopyFailedError, untranslated and never retried, and the upload failed
    # (found in review). The object was just rewritten, so it is fresh: the touch is done.
    data = os.urandom(MiB)
    faulty_backend.write("big", io.BytesIO(data))
    itself = f"/{s3_bucket}/big"
    proxy.fail_next("copy_source_too_large", matching=lambda m, p: (m, p) == ("PUT", itself))
    proxy.fail_next(
        "precondition_failed",
        matching=lambda m, p: m == "PUT" and p.startswith(itself + "?") and "uploadId=" in p,
    )

    faulty_backend.touch("big")

    assert [r.fault for r in proxy.requests if r.fault] == [
        "copy_source_too_large",
        "precondition_failed",
    ]
    assert _raw_read(s3_client, s3_bucket, "big") == data
    assert _pending_uploads(s3_client, s3_bucket) == []  # s3transfer aborted its upload


@pytest.mark.parametrize(
    ("code", "message", "refused_for_size"),
    [
        (
            "InvalidRequest",
            "The specified copy source is larger than the maximum allowable "
            "size for a copy source: 5368709120",
            True,
        ),
        (
            "InvalidRequest",
            "This copy request is illegal because it is trying to copy an "
            "object to itself without changing the object's metadata",
            False,
        ),
        ("EntityTooLarge", "copy source is larger than the maximum", False),
    ],
)
def test_only_a_copy_source_over_5_gib_is_touched_in_parts(
    code: str, message: str, refused_for_size: bool
) -> None:
    from botocore.exceptions import ClientError

    from optuna_cas.backends.s3 import _copy_source_too_large

    error = ClientError({"Error": {"Code": code, "Message": message}}, "CopyObject")
    assert _copy_source_too_large(error) is refused_for_size


# ---- construction -----------------------------------------------------------------------------


def test_constructor_validates(s3_client: S3Client) -> None:
    with pytest.raises(StoreConfigError, match="part_size"):
        S3Backend("b", client=s3_client, part_size=MiB)
    with pytest.raises(StoreConfigError, match="max_concurrency"):
        S3Backend("b", client=s3_client, max_concurrency=0)
    with pytest.raises(StoreConfigError, match="endpoint_url or client"):
        S3Backend("b", client=s3_client, endpoint_url="http://x")
    # A ready client has its own Config; these must not be dropped in silence.
    with pytest.raises(StoreConfigError, match="sdk_retries and timeout"):
        S3Backend("b", client=s3_client, sdk_retries=False)
    with pytest.raises(StoreConfigError, match="sdk_retries and timeout"):
        S3Backend("b", client=s3_client, timeout=5)
    with pytest.raises(InvalidKeyError, match="prefix"):
        S3Backend("b", client=s3_client, prefix="a/../b")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and no ~/.aws file of the machine's that could set retries."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("aws_env")
def test_a_timeout_bounds_a_silent_server_and_sdk_retries_off_tries_once() -> None:
    # botocore's defaults wait 60 s per read, three attempts: 3 minutes per request against
    # a server that accepts and never answers (found by a probe of the CLI).
    with SilentServer() as server:
        backend = S3Backend("b", endpoint_url=server.endpoint_url, sdk_retries=False, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(TransientBackendError):
            backend.exists("k")
        assert time.monotonic() - started < 3
        assert server.connections == 1


def test_a_body_that_stalls_is_reported_with_the_endpoint() -> None:
    # botocore's own message for a stalled body was 'Read timeout on endpoint URL: "None"',
    # the text of every retry warning of a stalled download.
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: binary/octet-stream\r\n\r\n"
    with SilentServer(start=head + b"0123456789") as server:
        client = make_s3_client(server.endpoint_url, retries=False, read_timeout=0.3)
        reader = S3Backend("b", client=client).open_reader("k")
        with pytest.raises(TransientBackendError) as caught:
            reader.read()
    message = str(caught.value)
    assert "None" not in message
    assert "stalled past the read timeout" in message and server.endpoint_url in message
    assert "'k'" in message


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize(("sdk_retries", "attempts"), [(False, 1), (True, 2)])
def test_sdk_retries_off_sends_each_request_once(
    monkeypatch: pytest.MonkeyPatch, sdk_retries: bool, attempts: int
) -> None:
    # botocore's attempts from the environment (2: one short retry, not its 5 by default);
    # sdk_retries=False wins over them, so Backoff alone decides how often to try.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with Answering503("s3") as server:
        backend = S3Backend("b", endpoint_url=server.endpoint_url, sdk_retries=sdk_retries)
        with pytest.raises(TransientBackendError, match="503"):
            backend.exists("k")
        assert server.requests == attempts


def test_a_missing_bucket_names_the_endpoint_that_answered(
    s3_server: S3Server, s3_bucket: str
) -> None:
    # The bucket is there, but the endpoint URL ends with it: the service was asked for
    # "/<bucket>/<bucket>" and said "no such bucket", a message that named no endpoint.
    wrong = f"{s3_server.endpoint_url}/{s3_bucket}"
    backend = S3Backend(s3_bucket, client=make_s3_client(wrong, retries=False))
    with pytest.raises(BackendError, match=f"bucket '{s3_bucket}' does not exist") as caught:
        list(backend.list("refs/"))
    assert f"at endpoint {wrong}: an endpoint URL names the service alone" in str(caught.value)
    nowhere = S3Backend("no-such-bucket", client=make_s3_client(s3_server.endpoint_url))
    with pytest.raises(BackendError, match="does not exist") as caught:
        nowhere.exists("refs/a")
    assert f"at endpoint {s3_server.endpoint_url}: check the bucket's name" in str(caught.value)


def test_no_credentials_says_what_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # botocore's "Unable to locate credentials" named nothing to set.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe
    backend = S3Backend("b", endpoint_url="http://127.0.0.1:1", sdk_retries=False)
    with pytest.raises(BackendError, match="no usable AWS credentials") as caught:
        backend.exists("k")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        assert name in str(caught.value)


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
    # An object sent in one PUT (a pack) carries a full-object CRC32, which botocore would
    # check again on every GET of the whole object: every read's BLAKE3 check covers it.
    bodies: list[str] = []
    backend.client.meta.events.register(
        "after-call.s3.GetObject",
        lambda parsed, **_: bodies.append(type(parsed["Body"]).__name__),
    )
    backend.write("k", io.BytesIO(b"v"))
    assert backend.open_reader("k").read() == b"v"
    assert bodies == ["StreamingBody"]  # not botocore's StreamingChecksumBody


def test_a_callers_client_checks_no_crc32_on_our_gets_only(
    s3_client: S3Client, s3_bucket: str
) -> None:
    # The caller's client keeps botocore's default (check a response's full-object CRC32):
    # the backend's GETs skip that check (BLAKE3 covers their bytes); the caller's own do not.
    backend = S3Backend(s3_bucket, client=s3_client, prefix="p")
    S3Backend(s3_bucket, client=s3_client, prefix="q")  # a second backend: one hook, not two
    bodies: list[str] = []
    s3_client.meta.events.register(
        "after-call.s3.GetObject",
        lambda parsed, **_: bodies.append(type(parsed["Body"]).__name__),
    )
    backend.write("k", io.BytesIO(b"v" * 1000))  # one PUT: S3 keeps its CRC32
    assert backend.open_reader("k").read() == b"v" * 1000
    assert backend.open_reader("k", offset=0, length=1000).read() == b"v" * 1000
    body = s3_client.get_object(Bucket=s3_bucket, Key="p/k")["Body"]
    assert body.read() == b"v" * 1000
    assert bodies == ["StreamingBody", "StreamingBody", "StreamingChecksumBody"]


def test_a_ranged_read_answered_from_the_start_is_refused_not_spliced(
    proxy: FaultProxy, s3_bucket: str
) -> None:
    # A proxy that dropped the Range header made open_reader(offset=1000) return the object's
    # first bytes, and Backoff's resume spliced the start back into a file (found by a probe).
    backend = S3Backend(
        s3_bucket, client=make_s3_client(proxy.endpoint_url, retries=False), prefix="runs"
    )
    data = os.urandom(64 * 1024)
    backend.write("k", io.BytesIO(data))
    proxy.fail_next("ignore_range", methods={"GET"})
    # The key as the caller knows it, not the bucket's name for it ('runs/k', found in review).
    with pytest.raises(TransientBackendError, match=r"key 'k' from byte 1000, got no Content-"):
        backend.open_reader("k", offset=1000, length=16).read()
    assert backend.open_reader("k", offset=1000, length=16).read() == data[1000:1016]
    with backend.open_reader("k", offset=5) as reader:  # to the end: bytes=5-
        assert reader.read() == data[5:]
