"""A Google Cloud Storage backend that streams both ways with bounded memory.

Optuna's ``GCSArtifactStore`` reads and writes whole objects through ``BytesIO``. Here reads are
ranged downloads into a reused buffer and large writes are resumable uploads fed chunk by chunk
from the caller's stream, so memory stays at a few ``chunk_size`` buffers whatever the size.

``google-cloud-storage`` is an optional extra, imported only when a backend is built without a
client, and every SDK error is translated at this boundary (see :func:`_translate`).
"""

from __future__ import annotations

import copy
import http.client
import io
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

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

__all__ = ["GCSBackend"]

# Resumable upload chunks must be multiples of this (a GCS protocol rule).
_CHUNK_MULTIPLE = 256 * 1024
# Above this size the SDK switches a known-size upload from one multipart request to a resumable
# one, where fake-gcs-server ignores ``if_generation_match``: keep single requests below it.
_MAX_SINGLE_REQUEST = 8 * 1024 * 1024
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Answers to a resumable-upload status query once the session is over: finished (200/201), or
# forgotten (404/410: completed a while ago, cancelled or expired; the object tells which).
_SESSION_FINISHED = frozenset({200, 201})
_SESSION_GONE = frozenset({404, 410})
_CONTENT_TYPE = "application/octet-stream"


class _AlreadyPresentError(BackendError):
    """A create-if-absent met an existing object (HTTP 412); ``write`` swallows it."""


class _SourceReadError(Exception):
    """Wraps an error raised by the caller's stream so it is never mistaken for an SDK error."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class GCSBackend:
    """Objects in a Google Cloud Storage bucket, optionally under a key prefix.

    Args:
        bucket: Bucket name (not a URL).
        client: A ``google.cloud.storage.Client``; built with default credentials when omitted.
        prefix: Key prefix inside the bucket, e.g. ``"team/run-1"``; keys live below it.
        chunk_size: Bytes per ranged download and per resumable-upload chunk; a positive
            multiple of 256 KiB. Bodies smaller than ``min(chunk_size, 8 MiB)`` go in one request.
        sdk_retries: Keep the SDK's own retry policies (the default). ``False`` passes
            ``retry=None`` everywhere, so every fault surfaces to the caller at once (use it
            under :class:`~optuna_cas.Backoff`, or in fault tests).
        timeout: Seconds the SDK waits on each HTTP request.

    Raises:
        StoreConfigError: ``google-cloud-storage`` is missing, credentials cannot be found, or
            an argument is invalid.

    Example:
        >>> import io
        >>> from google.auth.credentials import AnonymousCredentials
        >>> from google.cloud import storage
        >>> client = storage.Client(  # doctest: +SKIP
        ...     project="test",
        ...     credentials=AnonymousCredentials(),
        ...     client_options={"api_endpoint": "http://127.0.0.1:4443"},
        ... )
        >>> backend = GCSBackend("my-bucket", client=client, prefix="optuna")  # doctest: +SKIP
        >>> backend.write("refs/a", io.BytesIO(b"hello"))  # doctest: +SKIP
        >>> backend.open_reader("refs/a").read()  # doctest: +SKIP
        b'hello'
    """

    def __init__(
        self,
        bucket: str,
        *,
        client: Any = None,
        prefix: str = "",
        chunk_size: int = 8 * 1024 * 1024,
        sdk_retries: bool = True,
        timeout: float = 60.0,
    ) -> None:
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise StoreConfigError(f"Invalid GCS bucket name: {bucket!r}")
        if chunk_size <= 0 or chunk_size % _CHUNK_MULTIPLE:
            raise StoreConfigError(
                f"chunk_size must be a positive multiple of {_CHUNK_MULTIPLE}, got {chunk_size}"
            )
        self._prefix = validate_prefix(prefix)
        # A client we build is rebuilt in a forked child: its HTTP session would share the
        # parent's connections. A client passed in is the caller's to make per process.
        self._owns_client = client is None
        self._client_value = client if client is not None else _default_client()
        self._client_pid = os.getpid()
        self._bucket_name = bucket
        self._bucket_value = self._client_value.bucket(bucket)
        self._chunk_size = chunk_size
        self._single_request_limit = min(chunk_size, _MAX_SINGLE_REQUEST)
        self._timeout = timeout
        # Omitting ``retry`` keeps each SDK method's own default (they differ per method).
        self._retry: dict[str, Any] = {} if sdk_retries else {"retry": None}
        self._sdk_retries = sdk_retries
        self._run: RequestRunner = run_once
        # Set once the bucket is known to exist, so a 404 needs no second look (see _not_found).
        self._bucket_seen = False

    @property
    def _client(self) -> Any:
        if self._client_pid != os.getpid() and self._owns_client:
            self._client_value = _default_client()
            self._bucket_value = self._client_value.bucket(self._bucket_name)
            self._client_pid = os.getpid()
        return self._client_value

    @property
    def _bucket(self) -> Any:
        self._client  # noqa: B018 - rebuilds both after a fork
        return self._bucket_value

    # -- public API ------------------------------------------------------------------------

    def open_reader(self, key: str, *, offset: int = 0) -> io.BufferedReader:
        """Open ``key`` for reading from byte ``offset``.

        The object's metadata is fetched here, so a missing key fails now rather than at the
        first read. Reads are ranged downloads of the object's generation seen at open time,
        buffered ``chunk_size`` at a time.

        Args:
            key: The object's key.
            offset: First byte to read; past the end, reads return ``b""``.

        Returns:
            A buffered binary stream (a context manager with ``read``/``readinto``/``seek``).

        Raises:
            ArtifactNotFound: No object under ``key``.
            BackendError: The service refused the request; ``TransientBackendError`` when a
                retry may help (also raised by reads on the returned stream).

        Example:
            >>> with backend.open_reader("refs/a", offset=1) as f:  # doctest: +SKIP
            ...     f.read()
            b'ello'
        """
        validate_key(key)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        meta = self._reload(key)
        # A fresh handle pinned to the generation seen now: every range then comes from the same
        # object version, and URLs are built from the client's endpoint, not the server-supplied
        # ``mediaLink`` (which bypasses proxies and emulator endpoint settings).
        blob = self._bucket.blob(self._name(key), generation=meta.generation)
        raw = _BlobRawReader(self, key, blob, size=int(meta.size or 0), offset=offset)
        return io.BufferedReader(raw, buffer_size=self._chunk_size)

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        """Store the rest of ``content_body`` under ``key`` atomically.

        Bodies under ``min(chunk_size, 8 MiB)`` go in one request; larger ones in a resumable
        upload that GCS publishes only when the last chunk arrives. ``content_body`` is read
        from its current position, need not be seekable, and is never closed.

        Args:
            key: The object's key.
            content_body: A binary stream.
            if_absent: Leave an existing object untouched (no error). Keys are content
                addresses, so an object already present holds the same bytes.

        Raises:
            BackendError: The service refused the upload; ``TransientBackendError`` when a
                retry may help. Errors raised by ``content_body`` itself propagate unchanged.

        Example:
            >>> import io
            >>> backend.write("refs/a", io.BytesIO(b"hello"), if_absent=True)  # doctest: +SKIP
        """
        validate_key(key)
        where = self._where(key)
        head = _read_up_to(content_body, self._single_request_limit)
        if len(head) < self._single_request_limit:
            self._run(f"upload {where}", lambda: self._upload_whole(key, head, if_absent=if_absent))
            return
        # fake-gcs-server ignores ``if_generation_match`` on resumable uploads, so look first
        # (safe: a content-addressed key never changes meaning) and still send the precondition
        # for real GCS, where it closes the race between the look and the upload.
        if if_absent and self._run(f"check {where}", lambda: self.exists(key)):
            return
        if self.runs_every_request:
            self._upload_chunk_by_chunk(key, head, content_body, if_absent=if_absent)
        else:
            self._upload_resumable(key, head, content_body, if_absent=if_absent)

    def with_request_runner(self, runner: RequestRunner) -> GCSBackend:
        """A copy of this backend that sends every request of ``write`` through ``runner``.

        :class:`~optuna_cas.Backoff` passes a retrying runner. Resumable uploads are then
        driven here one request at a time (start the session, then each chunk), and a
        failed chunk is retried alone: the retry first asks the session how many bytes GCS
        holds (the resumable protocol's status query) and resends from there.

        Example:
            >>> from optuna_cas.backends.base import run_once
            >>> same = backend.with_request_runner(run_once)  # doctest: +SKIP
        """
        clone = copy.copy(self)
        clone._run = runner
        return clone

    @property
    def runs_every_request(self) -> bool:
        """True when a request runner other than the default is installed.

        Example:
            >>> backend.runs_every_request  # doctest: +SKIP
            False
        """
        return self._run is not run_once

    def remove(self, key: str) -> None:
        """Delete ``key``.

        Raises:
            ArtifactNotFound: No object under ``key``.
            BackendError: The service refused the request.

        Example:
            >>> backend.remove("refs/a")  # doctest: +SKIP
        """
        validate_key(key)
        blob = self._bucket.blob(self._name(key))
        with self._translating(key):
            blob.delete(timeout=self._timeout, **self._retry)

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored.

        Raises:
            BackendError: The bucket is missing or access is denied.

        Example:
            >>> backend.exists("refs/missing")  # doctest: +SKIP
            False
        """
        validate_key(key)
        try:
            self._reload(key)
        except ArtifactNotFound:
            return False
        return True

    def touch(self, key: str) -> None:
        """Refresh ``key``'s ``updated`` time by patching a metadata field (no bytes move).

        Example:
            .. code-block:: python

                backend.touch("blobs/blake3/ab/cd...")
        """
        validate_key(key)

        def patch() -> None:
            with self._translating(key):
                blob = self._bucket.blob(self._name(key))
                blob.metadata = {"optuna-cas-touched": f"{time.time():.3f}"}
                blob.patch(timeout=self._timeout, **self._retry)

        self._run(f"touch {self.describe()}/{key}", patch)

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``.

        Raises:
            ArtifactNotFound: No object under ``key``.

        Example:
            >>> backend.stat("refs/a").size  # doctest: +SKIP
            5
        """
        validate_key(key)
        return self._info(key, self._reload(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, with keys relative to the backend's.

        Pages are fetched lazily by the SDK's iterator. Zero-byte "folder" placeholders (names
        ending in ``/``, made by the Cloud Console) are skipped: they are not keys.

        Raises:
            BackendError: The bucket is missing or access is denied.

        Example:
            >>> [info.key for info in backend.list("refs/")]  # doctest: +SKIP
            ['refs/a']
        """
        root = f"{self._prefix}/" if self._prefix else ""
        with self._translating(None):
            blobs = self._client.list_blobs(
                self._bucket, prefix=root + prefix, timeout=self._timeout, **self._retry
            )
            for blob in blobs:
                name: str = blob.name
                if name.endswith("/"):
                    continue
                yield self._info(name[len(root) :], blob)

    def describe(self) -> str:
        """Return ``gs://bucket`` or ``gs://bucket/prefix``.

        Example:
            >>> backend.describe()  # doctest: +SKIP
            'gs://my-bucket/optuna'
        """
        return f"gs://{self._bucket_name}" + (f"/{self._prefix}" if self._prefix else "")

    # -- internals -------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _where(self, key: str) -> str:
        return f"{self.describe()}/{key}"

    def _reload(self, key: str) -> Any:
        blob = self._bucket.blob(self._name(key))
        with self._translating(key):
            blob.reload(timeout=self._timeout, **self._retry)
        return blob

    def _info(self, key: str, blob: Any) -> ObjectInfo:
        when = blob.updated or blob.time_created
        return ObjectInfo(
            key=key,
            size=int(blob.size or 0),
            modified=when.timestamp() if when is not None else 0.0,
        )

    def _upload_whole(self, key: str, data: bytes, *, if_absent: bool) -> None:
        blob = self._bucket.blob(self._name(key))
        try:
            with self._translating(key):
                blob.upload_from_string(
                    data,
                    content_type=_CONTENT_TYPE,
                    if_generation_match=0 if if_absent else None,
                    timeout=self._timeout,
                    **self._retry,
                )
        except _AlreadyPresentError:
            # Also the answer to a retried create whose first response was lost.
            if not if_absent:
                raise

    def _upload_resumable(
        self, key: str, head: bytes, source: BinaryIO, *, if_absent: bool
    ) -> None:
        blob = self._bucket.blob(self._name(key), chunk_size=self._chunk_size)
        stream = _ReplayableStream(head, source)
        del head  # the stream owns it now; let it go once sent
        try:
            with self._translating(key):
                # size=None: the SDK reads chunk by chunk until a short read and finalises
                # only then, so readers never see a partial object. An abandoned session is
                # invisible and expires on its own.
                blob.upload_from_file(
                    stream,
                    size=None,
                    content_type=_CONTENT_TYPE,
                    if_generation_match=0 if if_absent else None,
                    timeout=self._timeout,
                    **self._retry,
                )
        except _AlreadyPresentError:
            if not if_absent:
                raise

    def _upload_chunk_by_chunk(
        self, key: str, head: bytes, source: BinaryIO, *, if_absent: bool
    ) -> None:
        """A resumable upload whose every request goes through ``self._run`` on its own."""
        upload = _ChunkedUpload(self, key, _ReplayableStream(head, source), if_absent=if_absent)
        del head  # the stream owns it now
        where = self._where(key)
        try:
            self._run(f"start resumable upload of {where}", upload.start)
            while not upload.done:
                self._run(f"upload chunk {upload.next_chunk} of {where}", upload.send_next_chunk)
        except _AlreadyPresentError:
            if not if_absent:
                raise

    @contextmanager
    def _translating(self, key: str | None) -> Iterator[None]:
        """Run SDK calls, re-raising their errors as ours (``raise ... from``)."""
        try:
            yield
        except _SourceReadError as e:
            # The caller's stream failed, not GCS: hand back its own error untouched.
            raise e.original from None
        except OptunaCasError:
            raise
        except Exception as e:
            translated = _translate(e, self, key)
            if translated is None:
                raise
            raise translated from e

    def _not_found(self, key: str | None) -> OptunaCasError:
        missing_bucket = BackendError(
            f"GCS bucket {self._bucket_name!r} does not exist ({self.describe()})"
        )
        if key is None:  # bucket-level calls (listing) 404 only for a missing bucket
            return missing_bucket
        # For an object, 404 means "no such object" or "no such bucket" and fake-gcs-server
        # words both alike, so ask about the bucket (once per backend). Only a clear "does not
        # exist" is believed: a reader may lack storage.buckets.get (objectViewer does), and
        # then the object is simply missing.
        if not self._bucket_seen:
            try:
                bucket_exists = bool(self._bucket.exists(timeout=self._timeout, **self._retry))
            except Exception:
                bucket_exists = True
            if not bucket_exists:
                return missing_bucket
            self._bucket_seen = True
        return ArtifactNotFound(f"no object {key!r} in {self.describe()}")


def _translate(error: Exception, backend: GCSBackend, key: str | None) -> OptunaCasError | None:
    """Map an SDK/transport error to ours; ``None`` for errors that are not the SDK's.

    The one place that knows google-cloud-storage's failure modes: api_core HTTP errors,
    un-wrapped media ``InvalidResponse``/``DataCorruption`` (resumable paths), retry
    exhaustion, auth failures, and requests/urllib3 connection problems.
    """
    import requests
    import urllib3.exceptions
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth
    from google.cloud.storage import exceptions as media

    where = backend.describe() + (f" key {key!r}" if key is not None else "")
    if isinstance(error, media.InvalidResponse):
        # Media uploads/downloads raise this raw when the SDK does not wrap it.
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        if status is None:
            return BackendError(f"{where}: unexpected response: {error}")
        error = api.from_http_status(status, str(error), response=response)  # type: ignore[no-untyped-call]
    if isinstance(error, api.RetryError):
        cause = error.cause
        if isinstance(cause, Exception):
            inner = _translate(cause, backend, key)
            if inner is not None:
                return inner
        return TransientBackendError(f"{where}: retries exhausted: {error.message}")
    if isinstance(error, api.PreconditionFailed):
        return _AlreadyPresentError(f"{where}: already exists")
    if isinstance(error, api.NotFound):
        return backend._not_found(key)
    if isinstance(error, api.Unauthorized | api.Forbidden):
        return BackendError(
            f"{where}: access denied (HTTP {error.code}); check the credentials and their "
            f"permissions on bucket {backend._bucket_name!r}: {error.message}"
        )
    if isinstance(error, api.GoogleAPICallError):
        cls = TransientBackendError if error.code in _TRANSIENT_STATUS else BackendError
        return cls(f"{where}: HTTP {error.code}: {error.message}")
    if isinstance(error, media.DataCorruption):
        # Bytes were damaged in transit (the SDK already deleted a corrupt upload): resend.
        return TransientBackendError(f"{where}: checksum mismatch in transfer: {error}")
    if isinstance(error, auth.TransportError):
        return TransientBackendError(f"{where}: cannot reach the auth service: {error}")
    if isinstance(error, auth.GoogleAuthError):
        cls = TransientBackendError if error.retryable else BackendError
        return cls(f"{where}: authentication failed: {error}")
    transient_types = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.ProtocolError,
        urllib3.exceptions.TimeoutError,
        http.client.IncompleteRead,
        ConnectionError,
        TimeoutError,
    )
    if isinstance(error, transient_types):
        return TransientBackendError(f"{where}: {type(error).__name__}: {error}")
    return None


def _default_client() -> Any:
    try:
        from google.auth import exceptions as auth
        from google.cloud import storage
    except ImportError as e:
        raise StoreConfigError(
            "GCSBackend needs google-cloud-storage: pip install 'optuna-cas[gcs]'"
        ) from e
    try:
        return storage.Client()
    except (auth.DefaultCredentialsError, OSError) as e:
        raise StoreConfigError(
            f"cannot build a GCS client from the environment ({e}); pass client=..."
        ) from e


def _read_up_to(stream: BinaryIO, limit: int) -> bytes:
    """Read until ``limit`` bytes or EOF (a raw stream may return less than asked)."""
    parts: list[bytes] = []
    got = 0
    while got < limit:
        data = stream.read(limit - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _ReplayableStream:
    """``head`` then the caller's stream, forward-only but able to seek back over the last read.

    The SDK's resumable upload needs ``tell()`` and, to recover from a failed chunk,
    ``seek()`` back to what the server has persisted, which always lies inside the last
    chunk it read. Keeping only the bytes from that read's start up to what has been taken
    from the source bounds memory and lets non-seekable sources work.
    """

    def __init__(self, head: bytes, source: BinaryIO) -> None:
        self._head: memoryview | None = memoryview(head) if head else None
        self._source = source
        self._eof = False
        self._window = b""  # bytes [_window_start, frontier) already taken from the source
        self._window_start = 0
        self._pos = 0

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or not (
            self._window_start <= pos <= self._window_start + len(self._window)
        ):
            raise ValueError(f"cannot seek to {pos} (whence={whence}) in a streamed upload")
        self._pos = pos
        return pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise ValueError("streamed upload reads must be bounded")
        skip = self._pos - self._window_start
        replay = self._window[skip : skip + size]
        fresh = self._fresh(size - len(replay)) if len(replay) < size else b""
        data = replay + fresh if replay else fresh
        # The new window starts here and still reaches the frontier: either this read
        # consumed the old window and took fresh bytes, or it stopped inside it.
        self._window = data if len(replay) < size else self._window[skip:]
        self._window_start = self._pos
        self._pos += len(data)
        return data

    def _fresh(self, size: int) -> bytes:
        parts: list[bytes] = []
        while size > 0 and self._head is not None:
            piece = self._head[:size]
            parts.append(piece.tobytes())
            size -= len(piece)
            self._head = self._head[len(piece) :] or None
        while size > 0 and not self._eof:
            try:
                data = self._source.read(size)
            except Exception as e:
                raise _SourceReadError(e) from e
            if not data:
                self._eof = True
                break
            parts.append(data)
            size -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _TimedTransport:
    """The SDK's HTTP session with the backend's timeout forced onto every request.

    ``ResumableUpload.recover`` takes no timeout (it would wait over a minute on a stall).
    """

    def __init__(self, transport: Any, timeout: float) -> None:
        self._transport = transport
        self._timeout = timeout

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = self._timeout
        return self._transport.request(method, url, *args, **kwargs)


def _status(error: BaseException) -> int | None:
    status = getattr(getattr(error, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


class _ChunkedUpload:
    """One resumable upload driven request by request, each request safe to repeat.

    ``start`` opens a session; a repeat opens a fresh one (an abandoned session is invisible
    and expires on its own). ``send_next_chunk`` sends the chunk after what GCS holds. Once a
    chunk request has failed, GCS may or may not hold that chunk (the answer may be what was
    lost), so the next attempt first asks (the protocol's status query) and rewinds the stream
    to the answer, which always lies within the last chunk read: the window
    :class:`_ReplayableStream` keeps. A final chunk whose answer was lost shows up as a
    finished (or already forgotten) session; the object is then checked before believing it.
    """

    def __init__(
        self, backend: GCSBackend, key: str, stream: _ReplayableStream, *, if_absent: bool
    ) -> None:
        self._backend = backend
        self._key = key
        self._stream = stream
        self._if_absent = if_absent
        self._blob = backend._bucket.blob(backend._name(key), chunk_size=backend._chunk_size)
        self._upload: Any = None
        self._transport: Any = None
        self._in_doubt = False  # the last chunk request failed: its bytes may have landed
        self.done = False

    @property
    def next_chunk(self) -> int:
        """1-based number of the chunk to send next (for log messages)."""
        sent = int(self._upload.bytes_uploaded) if self._upload is not None else 0
        return sent // self._backend._chunk_size + 1

    def start(self) -> None:
        """Open the upload session (one request)."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        backend = self._backend
        with backend._translating(self._key):
            # The SDK's own first step of ``upload_from_file``; size=None: the upload ends at
            # the first short read, and GCS publishes the object only then.
            upload, transport = self._blob._initiate_resumable_upload(
                backend._client,
                self._stream,
                _CONTENT_TYPE,
                None,
                chunk_size=backend._chunk_size,
                if_generation_match=0 if self._if_absent else None,
                timeout=backend._timeout,
                retry=DEFAULT_RETRY if backend._sdk_retries else None,
            )
        self._upload = upload
        self._transport = _TimedTransport(transport, backend._timeout)

    def send_next_chunk(self) -> None:
        """Send the next chunk (one request), after a status query if the last attempt failed."""
        from google.cloud.storage import exceptions as media

        backend, upload = self._backend, self._upload
        with backend._translating(self._key):
            if self._in_doubt and self._recover():
                self.done = True
                return
            self._in_doubt = True
            if self._stream.tell() != upload.bytes_uploaded:
                # GCS may persist less than a whole chunk (it says so in the 308's Range).
                self._rewind(upload.bytes_uploaded)
            try:
                upload.transmit_next_chunk(self._transport, timeout=backend._timeout)
            except media.DataCorruption as e:
                # The object is published but damaged: remove it, like the SDK does. Its bytes
                # are gone from the stream, so this upload cannot be repeated from here.
                with suppress(Exception):
                    self._blob.delete(timeout=backend._timeout, **backend._retry)
                raise BackendError(
                    f"{backend._where(self._key)}: checksum mismatch after upload; the "
                    f"damaged object was deleted: {e}"
                ) from e
            except media.InvalidResponse as e:
                status = _status(e)
                if status in _SESSION_GONE:
                    raise self._session_gone(e) from e
                if status == 308:
                    # A 308 without its Range header: an answer cut short. Ask again.
                    raise TransientBackendError(
                        f"{backend._where(self._key)}: chunk answer incomplete: {e}"
                    ) from e
                raise
            self._in_doubt = False
            self.done = bool(upload.finished)

    def _recover(self) -> bool:
        """Ask GCS how much it holds and rewind there; True if the upload is in fact complete."""
        from google.cloud.storage import exceptions as media

        try:
            # Status query (``Content-Range: bytes */*``); on a 308 it seeks the stream to
            # the first byte GCS lacks.
            self._upload.recover(self._transport)
        except media.InvalidResponse as e:
            status = _status(e)
            if status not in _SESSION_FINISHED and status not in _SESSION_GONE:
                raise
            if self._object_is_complete():
                return True
            raise self._session_gone(e) from e
        except ValueError as e:
            # _ReplayableStream.seek: GCS claims fewer bytes than it had acknowledged, which
            # only a garbled answer does (a 308 cut before its Range header reads as "none").
            raise TransientBackendError(
                f"{self._backend._where(self._key)}: implausible upload status "
                f"({self._upload.bytes_uploaded} bytes stored): {e}"
            ) from e
        return False

    def _rewind(self, offset: int) -> None:
        try:
            self._stream.seek(offset)
        except ValueError as e:
            raise BackendError(
                f"{self._backend._where(self._key)}: resumable upload cannot resume: {e}"
            ) from e

    def _object_is_complete(self) -> bool:
        """Whether the object stands complete: the whole size is known and matches."""
        total = self._upload.total_bytes
        if total is None:  # the last chunk was never even prepared
            return False
        try:
            meta = self._backend._reload(self._key)
        except ArtifactNotFound:
            return False
        return int(meta.size or 0) == int(total)

    def _session_gone(self, error: Exception) -> BackendError:
        return BackendError(
            f"{self._backend._where(self._key)}: the resumable upload session ended before "
            f"the upload was complete (HTTP {_status(error)}): {error}"
        )


class _IntoView:
    """A write-only sink the SDK downloads into: fills a caller-supplied buffer in place."""

    def __init__(self, view: memoryview, where: str) -> None:
        self._view = view
        self._where = where
        self.filled = 0

    def write(self, data: bytes) -> int:
        end = self.filled + len(data)
        if end > len(self._view):
            # A server that ignores Range would overflow the buffer: refuse, never truncate.
            raise BackendError(f"{self._where}: server sent more bytes than the range asked for")
        self._view[self.filled : end] = data
        self.filled = end
        return len(data)


class _BlobRawReader(io.RawIOBase):
    """Ranged downloads of one object generation; ``io.BufferedReader`` adds the buffering."""

    def __init__(self, backend: GCSBackend, key: str, blob: Any, *, size: int, offset: int):
        super().__init__()
        self._backend = backend
        self._key = key
        self._blob = blob
        self._size = size
        self._pos = min(offset, size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence: {whence}")
        if base + pos < 0:
            raise ValueError(f"negative seek position {base + pos}")
        self._pos = min(base + pos, self._size)
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        with memoryview(buffer) as view, view.cast("B") as flat:
            n = min(len(flat), self._size - self._pos)
            if n <= 0:
                return 0
            sink = _IntoView(flat[:n], self._backend.describe())
            with self._backend._translating(self._key):
                self._blob.download_to_file(
                    sink,
                    start=self._pos,
                    end=self._pos + n - 1,
                    raw_download=True,  # stored bytes exactly: offsets must not shift
                    checksum=None,  # no whole-object checksum exists for a range
                    timeout=self._backend._timeout,
                    **self._backend._retry,
                )
        if sink.filled != n:
            self._short_read(n, sink.filled)
        self._pos += n
        return n

    def readall(self) -> bytes:
        # RawIOBase.readall would issue one request per 8 KiB; ask for the rest at once.
        out = bytearray(self._size - self._pos)
        view = memoryview(out)
        done = 0
        while done < len(out):
            got = self.readinto(view[done:])
            if not got:
                break
            done += got
        view.release()
        del out[done:]
        return bytes(out)

    def _short_read(self, wanted: int, got: int) -> NoReturn:
        raise TransientBackendError(
            f"{self._backend.describe()} key {self._key!r}: short read at {self._pos}: "
            f"got {got} of {wanted} bytes"
        )
