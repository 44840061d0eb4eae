"""An S3 (or S3-compatible) backend on boto3: the primitive requests and S3's error table.

Everything else (small/large writes, create-if-absent, error translation, readers, retries of
single parts) is :class:`~optuna_cas.backends.remote.RemoteBackend`'s. Large bodies go in a
multipart upload that becomes visible only when completed, created with ``If-None-Match: *``
on the completion when only an absent key may be written.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from optuna_cas.backends.per_process import PerProcess
from optuna_cas.backends.remote import Fault, RemoteBackend
from optuna_cas.backends.remote_io import Body, Download, FilePart, Part
from optuna_cas.exceptions import StoreConfigError, TransientBackendError

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["S3Backend", "classify_s3_error"]

MiB = 1024 * 1024
# S3's own limits: every part but the last is at least 5 MiB, at most 5 GiB (also the largest
# single PUT), and an upload has at most 10,000 parts.
_MIN_PART_SIZE = 5 * MiB
_MAX_PART_SIZE = 5 * 1024 * MiB
_MAX_PARTS = 10_000
_READ_BUFFER_SIZE = 256 * 1024
# A sealed file (a pack of a chunked upload, ~32 MiB) up to this size goes in one PutObject
# streamed from the file, as restic and Xet send their packs: one request instead of six
# (create, parts, complete), and no server-side concatenation of parts on completion. The
# packs of one upload go several at once, so the parallelism of parts is kept.
_SEALED_REQUEST_LIMIT = 64 * MiB
# Set while this thread makes one of our GetObject calls (see _without_response_checksum).
# The answer to a ranged GET: "bytes first-last/total" (total "*" when unknown).
_RANGE_ANSWER = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_OUR_GET = threading.local()
# CopyObject takes a source of at most 5 GiB; larger ones S3 refuses with InvalidRequest and
# this message ("... for a copy source: 5368709120"), other InvalidRequests with others.
_COPY_SOURCE_TOO_LARGE = re.compile(r"copy source is larger than the maximum", re.IGNORECASE)
# Parts of a touch by multipart copy: 10,000 of them reach 10 TiB (s3transfer raises the size,
# up to 5 GiB, for a larger object). Copied inside S3, several at once: no bytes travel.
_TOUCH_PART_SIZE = 1024 * MiB

# What to do when botocore finds no credentials: its own "Unable to locate credentials" named
# nothing to set (the GCS backend's message names its variables).
_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
    "keys), or AWS_PROFILE to a profile in ~/.aws/credentials or ~/.aws/config; from Python, "
    "client= also takes a ready client"
)

# ---- the error table ----------------------------------------------------------------------------
# The one list of what S3's error codes mean. Transient: codes AWS documents as retryable,
# botocore's throttling codes, integrity failures of a request body in transit, and the 409 S3
# answers while a competing conditional write is in flight (a retry then sees 412).
_CODES: dict[str, Fault] = {
    "NoSuchBucket": Fault.NO_BUCKET,
    "NoSuchKey": Fault.MISSING,
    "NotFound": Fault.MISSING,
    "404": Fault.MISSING,
    "NoSuchUpload": Fault.GONE,
    "PreconditionFailed": Fault.EXISTS,
    "412": Fault.EXISTS,
    **dict.fromkeys(
        (
            "AccessDenied",
            "AllAccessDisabled",
            "AccountProblem",
            "ExpiredToken",
            "InvalidAccessKeyId",
            "InvalidToken",
            "SignatureDoesNotMatch",
            "403",
        ),
        Fault.DENIED,
    ),
    # The machine's clock is off: no retry cures that (botocore does not retry it either).
    "RequestTimeTooSkewed": Fault.PERMANENT,
    **dict.fromkeys(
        (
            "BadDigest",
            "BandwidthLimitExceeded",
            "ConditionalRequestConflict",
            "IncompleteBody",
            "InternalError",
            "OperationAborted",
            "PriorRequestNotComplete",
            "RequestLimitExceeded",
            "RequestThrottled",
            "RequestTimeout",
            "RequestTimeoutException",
            "ServiceUnavailable",
            "SlowDown",
            "ThrottledException",
            "Throttling",
            "ThrottlingException",
            "TooManyRequestsException",
            "XAmzContentSHA256Mismatch",
        ),
        Fault.TRANSIENT,
    ),
}
_STATUSES: dict[int, Fault] = {
    401: Fault.DENIED,
    403: Fault.DENIED,
    404: Fault.MISSING,
    408: Fault.TRANSIENT,
    412: Fault.EXISTS,
    429: Fault.TRANSIENT,
}


@functools.cache
def _exception_table() -> tuple[tuple[type[BaseException], Fault, str], ...]:
    """Exception types (imported lazily, like boto3) in the order they are matched."""
    from botocore import exceptions as bc
    from urllib3.exceptions import HTTPError

    return (
        (bc.IncompleteReadError, Fault.TRANSIENT, "response body cut short"),
        # Bytes damaged in transit; the content store checks digests on top of this anyway.
        (bc.ChecksumError, Fault.TRANSIENT, "checksum mismatch in transit"),
        (bc.FlexibleChecksumError, Fault.TRANSIENT, "checksum mismatch in transit"),
        (bc.ConnectionError, Fault.TRANSIENT, "connection problem"),
        (bc.HTTPClientError, Fault.TRANSIENT, "connection problem"),
        (HTTPError, Fault.TRANSIENT, "connection problem"),
        (bc.BotoCoreError, Fault.PERMANENT, "botocore error"),
        # The socket's own errors, raised by urllib3 unwrapped.
        (ConnectionError, Fault.TRANSIENT, "connection problem"),
        (TimeoutError, Fault.TRANSIENT, "connection problem"),
    )


def _error_code(error: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status of a ``ClientError`` (``("", 0)`` for others)."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code, status if isinstance(status, int) else 0


def classify_s3_error(
    error: BaseException, endpoint: str | None = None
) -> tuple[Fault, str] | None:
    """What an error raised by boto3/botocore/urllib3 means; ``None`` if it is not theirs.

    The one S3 error table: :class:`S3Backend` translates with it, and
    :func:`optuna_cas.middleware.retry.is_transient` reads it for Optuna's own S3 store.
    ``endpoint``, the client's, names where a read timeout happened when botocore lost it.

    Example:
        >>> from botocore.exceptions import ClientError
        >>> error = ClientError({"Error": {"Code": "SlowDown", "Message": "easy"}}, "PutObject")
        >>> classify_s3_error(error)
        (<Fault.TRANSIENT: 'transient'>, 'SlowDown: easy')
        >>> classify_s3_error(ValueError("not an SDK error")) is None
        True
    """
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return Fault.PERMANENT, f"no usable AWS credentials: {error}; {_CREDENTIALS_HINT}"

    if isinstance(error, ReadTimeoutError):
        # botocore's own text names the request's URL, or says "None" when a response body
        # stalled (the retry warning then read 'Read timeout on endpoint URL: "None"').
        url = error.kwargs.get("endpoint_url") or endpoint
        source = f" from {url}" if url else ""
        # (A request body not sent within the timeout, on a slow uplink, ends the same way.)
        return Fault.TRANSIENT, (
            f"connection problem: stalled past the read timeout{source} (no answer, or a "
            "request body not sent in time)"
        )
    if isinstance(error, ClientError):
        code, status = _error_code(error)
        message = error.response.get("Error", {}).get("Message") or str(error)
        fault = _CODES.get(code) or _STATUSES.get(status)
        if fault is None:
            fault = Fault.TRANSIENT if status >= 500 else Fault.PERMANENT
        return fault, f"{code or status}: {message}"
    for cls, fault, what in _exception_table():
        if isinstance(error, cls):
            return fault, f"{what}: {error}" if str(error) else f"{what}: {error!r}"
    return None


class S3Backend(RemoteBackend):
    """Objects in an S3 bucket, optionally under a key prefix.

    Args:
        bucket: Bucket name (not a URL).
        client: A boto3 S3 client. When omitted, one is built from the usual AWS
            configuration (and ``endpoint_url``), and rebuilt in forked children.
        prefix: Key prefix inside the bucket, e.g. ``"studies/run-1"``; keys live below it.
        endpoint_url: For S3-compatible services (MinIO, R2, moto, ...); not with ``client``.
        part_size: Multipart part size in bytes (5 MiB .. 5 GiB). Raised automatically for a
            seekable stream that would otherwise need more than 10,000 parts.
        max_concurrency: Parts (or packs) uploaded at once, by all uploads through the
            backend together; also the most parts one upload holds in memory.
        multipart_threshold: Bodies up to this many bytes are sent in one ``PutObject``;
            so is a sealed file (a pack of a chunked upload) of up to 64 MiB, streamed from
            the file.
        sdk_retries: Keep botocore's own retries (the default, as boto3 clients have them).
            ``False`` makes every request one attempt (``total_max_attempts: 1``), so that
            :class:`~optuna_cas.Backoff` alone decides how often to try. Not with ``client``.
        timeout: Seconds the client waits to connect and then on each socket read: a number
            for both, or ``(connect, read)``. ``None`` keeps botocore's (60 s each). The read
            timeout also bounds sending one request body (a part, in one write), not only a
            silence. Not with ``client``.

    Raises:
        StoreConfigError: boto3 is not installed, an argument is out of range, or
            ``endpoint_url``, ``sdk_retries=False`` or ``timeout`` is given with ``client``.
        InvalidKeyError: ``prefix`` has an unsafe segment.

    Example:
        .. code-block:: python

            import io

            backend = S3Backend("my-bucket", prefix="studies/run-1")
            backend.write("refs/abc", io.BytesIO(b"{}"))
            backend.describe()  # 's3://my-bucket/studies/run-1'
    """

    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        client: S3Client | None = None,
        prefix: str = "",
        endpoint_url: str | None = None,
        part_size: int = 8 * MiB,
        max_concurrency: int = 4,
        multipart_threshold: int = 8 * MiB,
        sdk_retries: bool = True,
        timeout: float | tuple[float, float] | None = None,
    ) -> None:
        super().__init__(
            bucket,
            prefix=prefix,
            single_request_limit=multipart_threshold,
            part_size=part_size,
            max_parts=_MAX_PARTS,
            concurrency=max_concurrency,
            read_buffer=_READ_BUFFER_SIZE,
            sealed_request_limit=_SEALED_REQUEST_LIMIT,
        )
        if not _MIN_PART_SIZE <= part_size <= _MAX_PART_SIZE:
            raise StoreConfigError(
                f"S3Backend: part_size must be between 5 MiB and 5 GiB, got {part_size}"
            )
        if not 0 <= multipart_threshold < _MAX_PART_SIZE:
            raise StoreConfigError(
                f"S3Backend: multipart_threshold must be in [0, 5 GiB), got {multipart_threshold}"
            )
        if client is not None and endpoint_url is not None:
            raise StoreConfigError(
                "S3Backend: pass endpoint_url or client, not both (configure the client instead)"
            )
        if client is not None and (not sdk_retries or timeout is not None):
            # A ready client's retries and timeouts are in its own Config; ignoring these in
            # silence would leave a caller believing requests are bounded when they are not.
            raise StoreConfigError(
                "S3Backend: sdk_retries and timeout apply to the client the backend builds; "
                "a client passed in is configured with botocore.config.Config(retries=..., "
                "connect_timeout=..., read_timeout=...)"
            )
        build = functools.partial(
            _default_client, endpoint_url, max_concurrency, sdk_retries, timeout
        )
        self._clients = PerProcess.unless_given(client, build)
        if client is not None:
            # Idempotent (unique_id); the hook acts on this backend's GETs only. Registered
            # for every operation because botocore runs the handlers of a specific event
            # name before those of the generic one, which is where it sets ChecksumMode.
            client.meta.events.register_last(
                "before-parameter-build",
                _without_response_checksum,
                unique_id="optuna-cas-without-response-checksum",
            )

    @property
    def client(self) -> S3Client:
        """The boto3 S3 client this backend sends its requests with, in this process.

        The one passed in; else the one built from the environment (rebuilt in a forked child,
        whose connections must not be the parent's).

        Example:
            .. code-block:: python

                backend = S3Backend("my-bucket", client=boto3.client("s3"))
                backend.client.list_objects_v2(Bucket="my-bucket")
        """
        return self._clients.get()

    # ---- primitives ---------------------------------------------------------------------------

    def _head(self, name: str) -> tuple[int, float]:
        response = self.client.head_object(Bucket=self._bucket_name, Key=name)
        return int(response["ContentLength"]), response["LastModified"].timestamp()

    def _get(self, name: str, offset: int, stop: int | None) -> Download:
        from botocore.exceptions import ClientError

        if stop is not None and stop <= offset:
            # Nothing to fetch ("bytes=5-4" is no range: S3 would send the whole object).
            # The HEAD still tells a missing key.
            return Download(body=io.BytesIO(b""), size=self._head(name)[0])
        if offset == 0 and stop is None:
            # No "bytes=0-": S3 answers 416 to it on an empty object.
            with _our_get():
                response = self.client.get_object(Bucket=self._bucket_name, Key=name)
            return Download(body=_body(response["Body"]), size=int(response["ContentLength"]))
        last = "" if stop is None else str(stop - 1)  # HTTP ranges name their last byte
        try:
            with _our_get():
                response = self.client.get_object(
                    Bucket=self._bucket_name, Key=name, Range=f"bytes={offset}-{last}"
                )
        except ClientError as e:
            if _error_code(e)[0] != "InvalidRange":
                raise
            # The object is shorter than offset: like a file, it reads as empty there.
            return Download(body=io.BytesIO(b""), size=self._head(name)[0])
        content_range = str(response.get("ContentRange", ""))  # "bytes 5-99/100"
        answered = _RANGE_ANSWER.fullmatch(content_range)
        if answered is None or int(answered[1]) != offset:
            # A proxy or server that ignored the Range sent the object from its start: read
            # as if from offset, those bytes were spliced into a file (found by a probe).
            response["Body"].close()
            raise TransientBackendError(
                f"{self.describe()}: asked for key {self._key_of(name)!r} from byte {offset}, got "
                + (f"'{content_range}'" if content_range else "no Content-Range (a whole object)")
            )
        total = answered[3]
        size = int(total) if total.isdigit() else offset + int(response["ContentLength"])
        return Download(body=_body(response["Body"]), size=size)

    def _put(self, name: str, data: bytes | BinaryIO, *, if_absent: bool) -> None:
        self.client.put_object(
            Bucket=self._bucket_name, Key=name, Body=data, **_if_none_match(if_absent)
        )

    def _put_file(self, name: str, part: FilePart, *, if_absent: bool) -> None:
        self._put(name, part.body(), if_absent=if_absent)  # a new stream of it per attempt

    def _start_upload(self, name: str, *, if_absent: bool) -> _MultipartUpload:
        # Declaring per-part CRC32 (as boto3's transfer manager does) spares the server a
        # whole-object checksum pass on completion: ~30% faster uploads on moto.
        upload_id = self.client.create_multipart_upload(
            Bucket=self._bucket_name, Key=name, ChecksumAlgorithm="CRC32"
        )["UploadId"]
        return _MultipartUpload(self.client, self._bucket_name, name, upload_id, if_absent)

    def _delete(self, name: str) -> None:
        # S3 deletes silently whether or not the key exists: look first, so that a missing
        # key is reported like everywhere else.
        self.client.head_object(Bucket=self._bucket_name, Key=name)
        self.client.delete_object(Bucket=self._bucket_name, Key=name)

    def _touch(self, name: str) -> None:
        from botocore.exceptions import ClientError

        # S3 has no other way to change LastModified; the copy happens inside S3 (no bytes
        # travel) and the content store does it at most once per half gc grace period.
        try:
            self.client.copy_object(
                Bucket=self._bucket_name,
                Key=name,
                CopySource={"Bucket": self._bucket_name, "Key": name},
                MetadataDirective="REPLACE",
                # Without it the copy of a multipart object keeps a composite checksum that no
                # longer matches, and every later GET fails botocore's check.
                ChecksumAlgorithm="CRC32",
            )
        except ClientError as e:
            # Asked first, not after a HEAD: objects over 5 GiB are rare, requests are not.
            if not _copy_source_too_large(e):
                raise
            self._touch_in_parts(name)

    def _touch_in_parts(self, name: str) -> None:
        from boto3.s3.transfer import TransferConfig
        from s3transfer.exceptions import S3CopyFailedError

        # boto3's managed copy: a HEAD for the size and ETag, UploadPartCopy of each range
        # under CopySourceIfMatch of that ETag, and an abort of the upload if a part fails.
        config = TransferConfig(
            multipart_threshold=1,  # never CopyObject, which S3 just refused
            multipart_chunksize=_TOUCH_PART_SIZE,
            max_concurrency=self._concurrency,
        )
        try:
            self.client.copy(
                {"Bucket": self._bucket_name, "Key": name},
                self._bucket_name,
                name,
                # No MetadataDirective: a multipart upload has none, and without REPLACE
                # s3transfer gives the new upload the source's Content-Type and metadata from
                # the HEAD, so the object keeps them. CRC32 parts, as in _touch and uploads.
                ExtraArgs={"ChecksumAlgorithm": "CRC32"},
                Config=config,
            )
        except S3CopyFailedError:
            # Its ETag changed under the copy: another worker's touch rewrote it (the same
            # bytes: keys are content addresses), so it is fresh now. If it is gone instead
            # (gc), the HEAD raises NoSuchKey, which the caller takes as collected meanwhile.
            self.client.head_object(Bucket=self._bucket_name, Key=name)

    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket_name, Prefix=prefix):
            for entry in page.get("Contents", []):
                yield entry["Key"], int(entry["Size"]), entry["LastModified"].timestamp()

    def _bucket_exists(self) -> bool:
        self.client.head_bucket(Bucket=self._bucket_name)
        return True

    def _classify(self, error: BaseException) -> tuple[Fault, str] | None:
        from botocore.exceptions import ReadTimeoutError

        # A stalled body: botocore lost the URL, but the client knows where it was talking to
        # (asked only then: other errors may come from building that client).
        endpoint = self._endpoint() if isinstance(error, ReadTimeoutError) else None
        return classify_s3_error(error, endpoint)

    def _endpoint(self) -> str | None:
        return str(self.client.meta.endpoint_url)


class _MultipartUpload:
    """One S3 multipart upload: parts in any order and at once, then one completing request."""

    completes_separately = True

    def __init__(
        self, client: S3Client, bucket: str, name: str, upload_id: str, if_absent: bool
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._name = name
        self._upload_id = upload_id
        self._if_absent = if_absent
        self._parts: dict[int, CompletedPartTypeDef] = {}
        self._lock = threading.Lock()

    def send_part(self, number: int, offset: int, data: Part) -> None:
        response = self._client.upload_part(
            Bucket=self._bucket,
            Key=self._name,
            UploadId=self._upload_id,
            PartNumber=number,
            # botocore takes a bytearray as it is (its validator allows one; the stubs say
            # bytes): no copy of the part, and checksums read it in place, not 1 MiB at a time.
            # A sealed file's range is a seekable stream botocore reads (and rewinds) itself.
            Body=cast(bytes, data if isinstance(data, bytearray) else data.body()),
            ChecksumAlgorithm="CRC32",
        )
        part: CompletedPartTypeDef = {"ETag": response["ETag"], "PartNumber": number}
        if "ChecksumCRC32" in response:
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        with self._lock:
            self._parts[number] = part

    def send_last(self, number: int, offset: int, data: Part, total: int) -> None:
        if data:  # S3 needs no empty closing part: complete() ends the upload
            self.send_part(number, offset, data)

    def complete(self) -> None:
        parts = [self._parts[number] for number in sorted(self._parts)]
        self._client.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._name,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
            **_if_none_match(self._if_absent),
        )

    def abort(self) -> None:
        # Best effort: the error that led here is the one worth reporting.
        with contextlib.suppress(Exception):
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._name, UploadId=self._upload_id
            )


def _copy_source_too_large(error: ClientError) -> bool:
    """Whether S3 refused a CopyObject because its source is over 5 GiB (not for another reason)."""
    if _error_code(error)[0] != "InvalidRequest":
        return False
    message = str(error.response.get("Error", {}).get("Message", ""))
    return _COPY_SOURCE_TOO_LARGE.search(message) is not None


def _if_none_match(if_absent: bool) -> dict[str, Any]:
    """The create-only-if-absent condition of a PUT or a multipart completion, if asked for."""
    return {"IfNoneMatch": "*"} if if_absent else {}


@contextlib.contextmanager
def _our_get() -> Iterator[None]:
    _OUR_GET.active = True
    try:
        yield
    finally:
        _OUR_GET.active = False


def _without_response_checksum(params: dict[str, object], model: object, **_: object) -> None:
    """A botocore hook: no response checksum check on our GETs; the client's others unchanged.

    An object sent in one PUT (a pack, a small blob, a ref) carries a full-object CRC32, and
    a client left at botocore's default (``response_checksum_validation='when_supported'``)
    would hash every byte of a whole-object GET with it again: a fifth of the CPU of a
    download. Every read that materialises a file checks BLAKE3 digests over the same bytes.
    Multipart objects (Optuna's own uploads) carry a composite CRC32 botocore never checks.
    """
    if getattr(_OUR_GET, "active", False) and getattr(model, "name", None) == "GetObject":
        params.pop("ChecksumMode", None)


def _body(streaming_body: object) -> Body:
    # botocore-stubs types StreamingBody.readinto's argument as IO[bytes]; it takes any
    # writable buffer, like every io stream.
    return cast(Body, streaming_body)


def _default_client(
    endpoint_url: str | None,
    max_concurrency: int,
    sdk_retries: bool = True,
    timeout: float | tuple[float, float] | None = None,
) -> S3Client:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:
        raise StoreConfigError("S3Backend needs boto3: pip install 'optuna-cas[s3]'") from e
    # A fresh session: boto3's default session is not safe to share across threads.
    session = boto3.session.Session()
    options: dict[str, Any] = {}
    if not sdk_retries:
        # Not max_attempts: 1, which botocore reads as one *retry*.
        options["retries"] = {"total_max_attempts": 1}
    if timeout is not None:
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        options |= {"connect_timeout": connect, "read_timeout": read}
    config = Config(
        max_pool_connections=max(10, max_concurrency + 2),
        # As _without_response_checksum does for a client the caller passes.
        response_checksum_validation="when_required",
        **options,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)
