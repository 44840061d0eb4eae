"""An S3 (or S3-compatible) backend on boto3.

Objects are written whole: a single ``PutObject`` below ``multipart_threshold``, else a
multipart upload that becomes visible only when completed, so no reader ever sees part of an
object. Memory stays bounded both ways: uploads hold at most ``max_concurrency`` parts, and
readers stream the response body.

Every botocore/urllib3 error is translated at this boundary by :func:`_translate_error`:
a missing key becomes :class:`~optuna_cas.exceptions.ArtifactNotFound`, faults that may pass
(connection trouble, throttling, 5xx, a short body) become
:class:`~optuna_cas.exceptions.TransientBackendError`, and everything else
:class:`~optuna_cas.exceptions.BackendError`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, BinaryIO

from optuna_cas._validation import validate_key, validate_prefix
from optuna_cas.backends.base import ObjectInfo, RequestRunner, run_once
from optuna_cas.exceptions import (
    ArtifactNotFound,
    BackendError,
    OptunaCasError,
    StoreConfigError,
    TransientBackendError,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["S3Backend"]

MiB = 1024 * 1024
# S3's own limits: every part but the last is at least 5 MiB, at most 5 GiB (also the largest
# single PUT), and an upload has at most 10,000 parts.
_MIN_PART_SIZE = 5 * MiB
_MAX_PART_SIZE = 5 * 1024 * MiB
_MAX_PARTS = 10_000
_READ_BUFFER_SIZE = 256 * 1024

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "403",
    }
)
# Codes AWS documents as retryable, plus integrity failures of the request body in transit and
# the 409 S3 answers while a competing conditional write is in flight (a retry then sees 412).
_TRANSIENT_CODES = frozenset(
    {
        "BadDigest",
        "ConditionalRequestConflict",
        "IncompleteBody",
        "InternalError",
        "OperationAborted",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "XAmzContentSHA256Mismatch",
    }
)


@functools.cache
def _sdk_errors() -> tuple[type[BaseException], ...]:
    """Exception types that come from the SDK or the network (imported lazily, like boto3).

    Errors raised by the caller's own stream are deliberately not read inside the blocks that
    catch these, so they propagate untranslated.
    """
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import HTTPError

    return (ClientError, BotoCoreError, HTTPError, ConnectionError, TimeoutError)


def _error_code(error: BaseException) -> tuple[str, int]:
    """Return the S3 error code and HTTP status of a ``ClientError`` (``("", 0)`` otherwise)."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code, status if isinstance(status, int) else 0


def _translate_error(
    error: BaseException, *, store: str, bucket: str, key: str | None
) -> OptunaCasError:
    """Map an SDK or network error to the optuna-cas error to raise ``from`` it.

    Args:
        error: What boto3, botocore or urllib3 raised.
        store: The backend's :meth:`S3Backend.describe` string, for messages.
        bucket: The bucket name, for messages.
        key: The key being worked on (relative to the prefix), if any.

    Returns:
        ``ArtifactNotFound`` for a missing key, ``TransientBackendError`` for faults a retry
        may cure, ``BackendError`` for the rest.

    Example:
        .. code-block:: python

            from botocore.exceptions import EndpointConnectionError

            err = _translate_error(
                EndpointConnectionError(endpoint_url="http://x"),
                store="s3://b", bucket="b", key="k",
            )
            assert isinstance(err, TransientBackendError)
    """
    from botocore.exceptions import (
        ChecksumError,
        ClientError,
        ConnectionError,
        FlexibleChecksumError,
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from urllib3.exceptions import HTTPError

    on = f" for key {key!r}" if key is not None else ""
    if isinstance(error, ClientError):
        code, status = _error_code(error)
        message = error.response.get("Error", {}).get("Message") or str(error)
        if code == "NoSuchBucket":
            return BackendError(f"{store}: bucket {bucket!r} does not exist")
        if code in _NOT_FOUND_CODES and key is not None:
            return ArtifactNotFound(f"no object {key!r} in {store}")
        if code in _ACCESS_CODES or status == 403:
            return BackendError(f"{store}: access denied{on} ({code}: {message})")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientBackendError(f"{store}: service error{on} ({code}: {message})")
        return BackendError(f"{store}: request failed{on} ({code or status}: {message})")
    if isinstance(error, IncompleteReadError):
        return TransientBackendError(f"{store}: response body cut short{on}: {error}")
    if isinstance(error, ChecksumError | FlexibleChecksumError):
        # Bytes damaged in transit; the content store checks digests on top of this anyway.
        return TransientBackendError(f"{store}: checksum mismatch in transit{on}: {error}")
    if isinstance(error, ConnectionError | HTTPClientError | HTTPError):
        return TransientBackendError(f"{store}: connection problem{on}: {error}")
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return BackendError(f"{store}: no usable AWS credentials: {error}")
    if isinstance(error, OSError):  # builtin ConnectionError / TimeoutError from the socket
        return TransientBackendError(f"{store}: connection problem{on}: {error!r}")
    return BackendError(f"{store}: request failed{on}: {error}")


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes from ``stream``, fewer only at EOF.

    Returns ``bytes`` (not ``bytearray``): botocore sends ``bytes`` bodies without copying them.
    """
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        if isinstance(chunk, str):
            raise TypeError("content_body must be a binary stream, got a text stream")
        chunks.append(chunk if isinstance(chunk, bytes) else bytes(chunk))
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _remaining_size(stream: BinaryIO) -> int | None:
    """Bytes left in ``stream`` if it can tell cheaply, else ``None``."""
    try:
        if not stream.seekable():
            return None
        position = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(position)
    except (OSError, ValueError, AttributeError):
        return None
    return max(end - position, 0)


class _S3BodyReader(io.RawIOBase):
    """Raw reader over a GET response body that translates errors and catches short bodies.

    ``StreamingBody`` already compares the byte count with ``Content-Length`` at EOF; checking
    again here means a silent EOF can never pass for the end of an object, whatever the SDK does.
    """

    def __init__(
        self,
        body: StreamingBody,
        *,
        expected: int | None,
        name: str,
        translate: Callable[[BaseException], OptunaCasError],
    ) -> None:
        super().__init__()
        self._body = body
        self._expected = expected
        self._received = 0
        self._name = name
        self._translate = translate

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        try:
            # botocore-stubs types the argument as IO[bytes]; it is any writable buffer.
            count: int = self._body.readinto(view)  # type: ignore[arg-type]
        except _sdk_errors() as e:
            raise self._translate(e) from e
        self._received += count
        if count == 0 and len(view) > 0:
            self._check_complete()
        return count

    def readall(self) -> bytes:
        # RawIOBase.readall would loop in 8 KiB steps; one read of the rest is what was asked.
        self._checkClosed()
        try:
            data: bytes = self._body.read()
        except _sdk_errors() as e:
            raise self._translate(e) from e
        self._received += len(data)
        self._check_complete()
        return data

    def _check_complete(self) -> None:
        if self._expected is not None and self._received < self._expected:
            raise TransientBackendError(
                f"{self._name}: connection ended after {self._received} of {self._expected} bytes"
            )

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


class S3Backend:
    """Keys and bytes in one S3 bucket, optionally under a key prefix.

    Args:
        bucket: The bucket name; it must exist.
        client: A boto3 S3 client to use (thread-safe; shared by upload threads). When
            ``None``, one is built from the default credential chain.
        prefix: Keys are stored under ``<prefix>/``; ``""`` for the bucket root.
        endpoint_url: For S3-compatible services, when ``client`` is ``None``.
        part_size: Bytes per multipart part (5 MiB to 5 GiB). Raised automatically for a
            seekable stream that would otherwise need more than 10,000 parts.
        max_concurrency: Parts uploaded at once; also the number of parts held in memory.
        multipart_threshold: Bodies up to this many bytes are sent in one ``PutObject``.

    Raises:
        StoreConfigError: boto3 is not installed, or an argument is out of range.
        InvalidKeyError: ``prefix`` has an unsafe segment.

    Example:
        .. code-block:: python

            import io

            backend = S3Backend("my-bucket", prefix="studies/run-1")
            backend.write("refs/abc", io.BytesIO(b"{}"))
            backend.describe()  # 's3://my-bucket/studies/run-1'
    """

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
    ) -> None:
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise StoreConfigError(f"S3Backend: invalid bucket name {bucket!r}")
        if not _MIN_PART_SIZE <= part_size <= _MAX_PART_SIZE:
            raise StoreConfigError(
                f"S3Backend: part_size must be between 5 MiB and 5 GiB, got {part_size}"
            )
        if max_concurrency < 1:
            raise StoreConfigError(
                f"S3Backend: max_concurrency must be at least 1, got {max_concurrency}"
            )
        if not 0 <= multipart_threshold < _MAX_PART_SIZE:
            raise StoreConfigError(
                f"S3Backend: multipart_threshold must be in [0, 5 GiB), got {multipart_threshold}"
            )
        if client is not None and endpoint_url is not None:
            raise StoreConfigError(
                "S3Backend: pass endpoint_url or client, not both (configure the client instead)"
            )
        self._bucket = bucket
        self._prefix = validate_prefix(prefix)
        self._part_size = part_size
        self._max_concurrency = max_concurrency
        self._run: RequestRunner = run_once
        self._multipart_threshold = multipart_threshold
        # Private knob so tests can exercise pagination without writing 1,000+ objects.
        self._page_size = 1000
        # HEAD answers a bare 404 for a missing bucket as for a missing key; the first such
        # answer triggers one HeadBucket to tell them apart (see _confirm_bucket).
        self._bucket_confirmed = False
        # A client we build is rebuilt in a forked child: its connection pool would share
        # the parent's sockets. A client passed in is the caller's to make per process.
        self._client_factory = (
            (lambda: self._default_client(endpoint_url, max_concurrency))
            if client is None
            else None
        )
        self._client_value = client if client is not None else self._client_factory()  # type: ignore[misc]
        self._client_pid = os.getpid()

    @staticmethod
    def _default_client(endpoint_url: str | None, max_concurrency: int) -> S3Client:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as e:
            raise StoreConfigError("S3Backend needs boto3: pip install 'optuna-cas[s3]'") from e
        # A fresh session: boto3's default session is not safe to share across threads.
        session = boto3.session.Session()
        config = Config(max_pool_connections=max(10, max_concurrency + 2))
        return session.client("s3", endpoint_url=endpoint_url, config=config)

    # ---- helpers ---------------------------------------------------------------------------

    @property
    def _client(self) -> S3Client:
        if self._client_pid != os.getpid() and self._client_factory is not None:
            self._client_value = self._client_factory()
            self._client_pid = os.getpid()
        return self._client_value

    def _full_key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    @contextlib.contextmanager
    def _translating(self, key: str | None) -> Iterator[None]:
        """Translate SDK errors raised in the block; everything else passes through."""
        try:
            yield
        except _sdk_errors() as e:
            raise _translate_error(e, store=self.describe(), bucket=self._bucket, key=key) from e

    def _confirm_bucket(self) -> None:
        """Raise ``BackendError`` if the bucket does not exist (checked once per backend)."""
        if self._bucket_confirmed:
            return
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except _sdk_errors() as e:
            code, status = _error_code(e)
            if code in _NOT_FOUND_CODES or code == "NoSuchBucket":
                raise BackendError(
                    f"{self.describe()}: bucket {self._bucket!r} does not exist"
                ) from e
            # A 403 only means we may not list the bucket; object access can still work.
            if not (code in _ACCESS_CODES or status == 403):
                raise _translate_error(
                    e, store=self.describe(), bucket=self._bucket, key=None
                ) from e
        self._bucket_confirmed = True

    def _head(self, key: str) -> dict[str, Any]:
        """HEAD ``key``; a missing key raises ``ArtifactNotFound`` (a missing bucket does not)."""
        with self._translating(key):
            try:
                response = self._client.head_object(Bucket=self._bucket, Key=self._full_key(key))
            except _sdk_errors() as e:
                if _error_code(e)[0] not in _NOT_FOUND_CODES:
                    raise
                self._confirm_bucket()
                raise ArtifactNotFound(f"no object {key!r} in {self.describe()}") from e
        return dict(response)

    # ---- Backend protocol ------------------------------------------------------------------

    def open_reader(self, key: str, *, offset: int = 0) -> BinaryIO:
        """Open ``key`` for reading from byte ``offset`` (one GET, streamed).

        Args:
            key: The object's key.
            offset: First byte to return; at or past the end gives an empty stream.

        Returns:
            A buffered binary stream; close it (or use ``with``) to release the connection.

        Raises:
            ArtifactNotFound: No such key.
            TransientBackendError: Connection trouble, also while reading, or a short body.
            BackendError: Any other refusal (missing bucket, access denied).

        Example:
            .. code-block:: python

                with backend.open_reader("blobs/blake3/ab/cdef", offset=1024) as f:
                    chunk = f.read(1 << 20)
        """
        validate_key(key)
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        full_key = self._full_key(key)
        with self._translating(key):
            try:
                if offset > 0:
                    response = self._client.get_object(
                        Bucket=self._bucket, Key=full_key, Range=f"bytes={offset}-"
                    )
                else:
                    # No "bytes=0-": S3 answers 416 to it on an empty object.
                    response = self._client.get_object(Bucket=self._bucket, Key=full_key)
            except _sdk_errors() as e:
                if offset > 0 and _error_code(e)[0] == "InvalidRange":
                    # The object exists but is shorter than offset: like a file, read nothing.
                    return io.BytesIO(b"")
                raise
        raw = _S3BodyReader(
            response["Body"],
            expected=response.get("ContentLength"),
            name=f"{self.describe()}: {key!r}",
            translate=functools.partial(
                _translate_error, store=self.describe(), bucket=self._bucket, key=key
            ),
        )
        return io.BufferedReader(raw, buffer_size=_READ_BUFFER_SIZE)

    def with_request_runner(self, runner: RequestRunner) -> S3Backend:
        """A copy of this backend that sends every request through ``runner``.

        :class:`~optuna_cas.Backoff` passes a retrying runner, so a failed part of a multipart
        upload is retried alone instead of the whole upload.

        Example:
            .. code-block:: python

                from optuna_cas.backends.base import run_once

                same = backend.with_request_runner(run_once)
        """
        clone = copy.copy(self)
        clone._run = runner
        return clone

    @property
    def runs_every_request(self) -> bool:
        """True when a request runner other than the default is installed."""
        return self._run is not run_once

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        """Store the rest of ``content_body`` under ``key``, all or nothing.

        Reads from the stream's current position and never closes it. Bodies up to
        ``multipart_threshold`` bytes go in one ``PutObject``; larger ones in a multipart upload
        that is aborted on any failure.

        Args:
            key: The object's key.
            content_body: A binary stream; it need not be seekable.
            if_absent: Leave an existing object untouched (no error). Small bodies use
                ``If-None-Match: *``; large ones check with HEAD first and send the same
                condition when completing. When the write is skipped, how much of
                ``content_body`` was consumed is unspecified.

        Raises:
            TransientBackendError: Connection trouble, throttling or 5xx.
            BackendError: Any other refusal (missing bucket, access denied).

        Example:
            .. code-block:: python

                import io

                backend.write("refs/abc", io.BytesIO(b"{}"), if_absent=True)
        """
        validate_key(key)
        # Reading one byte past the threshold tells small from large without knowing the size.
        head = _read_up_to(content_body, self._multipart_threshold + 1)
        if len(head) <= self._multipart_threshold:
            self._run(
                f"put {self._where(key)}", lambda: self._put_object(key, head, if_absent=if_absent)
            )
            return
        if if_absent and self._run(f"check {self._where(key)}", lambda: self.exists(key)):
            return
        self._multipart_upload(key, head, content_body, if_absent=if_absent)

    def _put_object(self, key: str, body: bytes, *, if_absent: bool) -> None:
        with self._translating(key):
            try:
                if if_absent:
                    self._client.put_object(
                        Bucket=self._bucket, Key=self._full_key(key), Body=body, IfNoneMatch="*"
                    )
                else:
                    self._client.put_object(Bucket=self._bucket, Key=self._full_key(key), Body=body)
            except _sdk_errors() as e:
                # 412: the object exists, possibly stored by an earlier attempt whose response
                # was lost. Keys are content addresses, so that copy is as good as ours.
                if if_absent and _error_code(e)[0] in _PRECONDITION_CODES:
                    return
                raise

    def _multipart_upload(
        self, key: str, head: bytes, stream: BinaryIO, *, if_absent: bool
    ) -> None:
        full_key = self._full_key(key)
        part_size = self._part_size
        remaining = _remaining_size(stream)
        if remaining is not None:
            part_size = max(part_size, math.ceil((len(head) + remaining) / _MAX_PARTS))

        def create() -> str:
            with self._translating(key):
                # Declaring per-part CRC32 (as boto3's transfer manager does) spares the server
                # a whole-object checksum pass on completion: ~30% faster uploads on moto.
                return self._client.create_multipart_upload(
                    Bucket=self._bucket, Key=full_key, ChecksumAlgorithm="CRC32"
                )["UploadId"]

        upload_id = self._run(f"start multipart upload of {self._where(key)}", create)
        try:
            parts = self._upload_parts(key, upload_id, head, stream, part_size)
            self._run(
                f"complete multipart upload of {self._where(key)}",
                lambda: self._complete(key, upload_id, parts, if_absent=if_absent),
            )
        except BaseException:
            # Uncompleted parts are invisible but billed until aborted. Best effort: the
            # original error is the one worth reporting.
            self._abort(full_key, upload_id)
            raise

    def _complete(
        self, key: str, upload_id: str, parts: list[CompletedPartTypeDef], *, if_absent: bool
    ) -> None:
        full_key = self._full_key(key)
        with self._translating(key):
            try:
                if if_absent:
                    self._client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=full_key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                        IfNoneMatch="*",
                    )
                else:
                    self._client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=full_key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    )
            except _sdk_errors() as e:
                code = _error_code(e)[0]
                if if_absent and code in _PRECONDITION_CODES:
                    # Someone stored the key since our HEAD: keep theirs, drop our parts.
                    self._abort(full_key, upload_id)
                    return
                if code == "NoSuchUpload" and self.exists(key):
                    # A retried complete whose first answer was lost: it did complete.
                    return
                raise

    def _abort(self, full_key: str, upload_id: str) -> None:
        with contextlib.suppress(*_sdk_errors()):
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=full_key, UploadId=upload_id
            )

    def _upload_parts(
        self, key: str, upload_id: str, head: bytes, stream: BinaryIO, part_size: int
    ) -> list[CompletedPartTypeDef]:
        """Upload ``head`` + the rest of ``stream`` as parts; at most max_concurrency in memory.

        The first part is ``head`` topped up to ``part_size`` (or ``head`` alone if larger:
        parts need not be equal), so the bytes read to pick the path are never copied twice.
        """
        done_parts: list[CompletedPartTypeDef] = []
        pending: set[Future[CompletedPartTypeDef]] = set()

        def collect(futures: set[Future[CompletedPartTypeDef]]) -> None:
            for future in futures:
                done_parts.append(future.result())  # re-raises the part's translated error

        pool = ThreadPoolExecutor(
            max_workers=self._max_concurrency, thread_name_prefix="optuna-cas-s3"
        )
        try:
            chunk = head
            if len(chunk) < part_size:
                chunk += _read_up_to(stream, part_size - len(chunk))
            number = 0
            while chunk:
                number += 1
                if number > _MAX_PARTS:
                    raise BackendError(
                        f"{self.describe()}: {key!r} needs more than {_MAX_PARTS} parts of "
                        f"{part_size} bytes; raise part_size or pass a seekable stream"
                    )
                pending.add(pool.submit(self._upload_part, key, upload_id, number, chunk))
                del chunk  # the worker holds the only reference now
                # Wait *before* reading the next part, so buffered parts never exceed the limit.
                while len(pending) >= self._max_concurrency:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    collect(finished)
                chunk = _read_up_to(stream, part_size)
            finished, pending = wait(pending)
            collect(finished)
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
        done_parts.sort(key=lambda part: part["PartNumber"])
        return done_parts

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes
    ) -> CompletedPartTypeDef:
        def send() -> CompletedPartTypeDef:
            with self._translating(key):
                response = self._client.upload_part(
                    Bucket=self._bucket,
                    Key=self._full_key(key),
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    ChecksumAlgorithm="CRC32",
                )
            part: CompletedPartTypeDef = {"ETag": response["ETag"], "PartNumber": number}
            if "ChecksumCRC32" in response:
                part["ChecksumCRC32"] = response["ChecksumCRC32"]
            return part

        return self._run(f"upload part {number} of {self._where(key)}", send)

    def _where(self, key: str) -> str:
        return f"{self.describe().rstrip('/')}/{key}"

    def touch(self, key: str) -> None:
        """Refresh ``key``'s LastModified with a server-side copy onto itself.

        S3 has no other way to change LastModified; the copy happens inside S3 (no bytes
        travel) and :class:`~optuna_cas.content.ContentStore` does it at most once per half
        gc grace period per blob.

        Example:
            .. code-block:: python

                backend.touch("blobs/blake3/ab/cd...")
        """
        validate_key(key)
        full_key = self._full_key(key)

        def copy_onto_itself() -> None:
            with self._translating(key):
                self._client.copy_object(
                    Bucket=self._bucket,
                    Key=full_key,
                    CopySource={"Bucket": self._bucket, "Key": full_key},
                    MetadataDirective="REPLACE",
                    # Without it the copy of a multipart object keeps a composite checksum
                    # that no longer matches, and every later GET fails botocore's check.
                    ChecksumAlgorithm="CRC32",
                )

        self._run(f"touch {self._where(key)}", copy_onto_itself)

    def remove(self, key: str) -> None:
        """Delete ``key``; a missing key raises ``ArtifactNotFound``.

        S3 deletes silently whether or not the key exists, so this checks with HEAD first.

        Example:
            .. code-block:: python

                backend.remove("refs/abc")
                backend.exists("refs/abc")  # False
        """
        validate_key(key)
        self._head(key)
        with self._translating(key):
            self._client.delete_object(Bucket=self._bucket, Key=self._full_key(key))

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored (one HEAD request).

        Raises:
            BackendError: The bucket does not exist, access is denied, etc.

        Example:
            .. code-block:: python

                backend.exists("refs/abc")  # True or False
        """
        validate_key(key)
        try:
            self._head(key)
        except ArtifactNotFound:
            return False
        return True

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``.

        Raises:
            ArtifactNotFound: No such key.

        Example:
            .. code-block:: python

                backend.stat("refs/abc").size  # 2
        """
        validate_key(key)
        response = self._head(key)
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            modified=response["LastModified"].timestamp(),
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, page by page.

        Keys are relative to the backend's prefix. Objects whose names are not valid keys
        (e.g. ``folder/`` markers made by consoles) are skipped: no other method could use them.

        Example:
            .. code-block:: python

                [info.key for info in backend.list("refs/")]  # ['refs/abc', ...]
        """
        root = f"{self._prefix}/" if self._prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self._bucket,
            Prefix=root + prefix,
            PaginationConfig={"PageSize": self._page_size},
        )
        with self._translating(None):
            for page in pages:
                for entry in page.get("Contents", []):
                    key = entry["Key"][len(root) :]
                    try:
                        validate_key(key)
                    except ValueError:
                        continue
                    yield ObjectInfo(
                        key=key, size=int(entry["Size"]), modified=entry["LastModified"].timestamp()
                    )

    def describe(self) -> str:
        """Return ``s3://bucket`` or ``s3://bucket/prefix``.

        Example:
            .. code-block:: python

                S3Backend("b", prefix="/p/", client=client).describe()  # 's3://b/p'
        """
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"
