"""One base for object stores reached over the network (S3, GCS).

An adapter (``S3Backend``, ``GCSBackend``) supplies only primitive requests (HEAD, a
conditional PUT, a ranged GET, DELETE, a listing, a multipart or resumable upload) and one
table that sorts its SDK's errors into :class:`Fault` kinds. This base owns everything else,
once for all of them:

* keys, the prefix and bucket-name checks, before any request;
* ``write``: one request for small bodies, parts for large ones, with memory bounded by
  part size times concurrency, never closing the caller's stream, and publishing nothing before
  that stream was read to EOF (a verifying reader raises there);
* create-if-absent: a 412 means "already present" (keys are content addresses, so whatever is
  there holds the same bytes; it is also the answer to a retried create whose first answer was
  lost), and a finished upload whose answer was lost is recognised by the object it left
  (not one that was there before);
* error translation in one context manager (httpx's habit; in
  :mod:`~optuna_cas.backends.remote_errors`): a missing key is
  :class:`~optuna_cas.exceptions.ArtifactNotFound`, a missing bucket a clear
  :class:`~optuna_cas.exceptions.BackendError`, faults a retry may cure
  :class:`~optuna_cas.exceptions.TransientBackendError`;
* the request runner: ``with_request_runner`` returns a copy that sends each request of a
  write (each part, each chunk) through the runner, so :class:`~optuna_cas.Backoff` retries one
  part rather than a whole upload.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import functools
import io
import math
import re
from collections.abc import Callable, Iterator
from typing import BinaryIO, ClassVar, TypeVar, cast

from optuna_cas._fileio import read_up_to
from optuna_cas._validation import validate_key, validate_prefix
from optuna_cas.backends.base import ObjectInfo, RequestRunner, SealedFile, run_once
from optuna_cas.backends.per_process import PerProcess
from optuna_cas.backends.remote_errors import (
    AlreadyPresentError,
    ErrorTranslation,
    Fault,
    UploadGoneError,
)
from optuna_cas.backends.remote_io import (
    Download,
    FilePart,
    FileParts,
    ObjectReader,
    Part,
    PartReader,
    PartSender,
    PartUpload,
    part_threads,
    remaining_size,
)
from optuna_cas.backends.window import check_range
from optuna_cas.exceptions import (
    ArtifactNotFound,
    BackendError,
    StoreConfigError,
)

__all__ = ["AlreadyPresentError", "Fault", "PartUpload", "RemoteBackend", "UploadGoneError"]

T = TypeVar("T")
_BAD_BUCKET_CHARACTER = re.compile(r"[/\s\x00-\x1f\x7f]")


class RemoteBackend(ErrorTranslation):
    """The :class:`~optuna_cas.backends.base.Backend` contract for one bucket of a remote store.

    Subclasses implement the ``_primitive`` methods below and :meth:`_classify`; see
    :class:`~optuna_cas.backends.s3.S3Backend` and :class:`~optuna_cas.backends.gcs.GCSBackend`.

    Args:
        bucket: Bucket name (not a URL).
        prefix: Key prefix inside the bucket; keys live below it.
        single_request_limit: Bodies up to this many bytes go in one request.
        part_size: Bytes per part of a larger upload.
        max_parts: The service's limit on parts per upload (``None``: no limit).
        concurrency: Parts sent at once (1: in order, on the calling thread).
        read_buffer: Buffer size of the readers ``open_reader`` returns.
        sealed_request_limit: A :class:`~optuna_cas.backends.base.SealedFile` up to this many
            bytes goes in one request, streamed from the file (:meth:`_put_file`); 0: never.

    Raises:
        StoreConfigError: The bucket name is not a plain name.
        InvalidKeyError: ``prefix`` has an unsafe segment.

    Example:
        >>> from optuna_cas.backends.s3 import S3Backend
        >>> issubclass(S3Backend, RemoteBackend)
        True
    """

    scheme: ClassVar[str]

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str,
        single_request_limit: int,
        part_size: int,
        max_parts: int | None,
        concurrency: int,
        read_buffer: int,
        sealed_request_limit: int = 0,
    ) -> None:
        if not isinstance(bucket, str) or not bucket or _BAD_BUCKET_CHARACTER.search(bucket):
            raise StoreConfigError(
                f"{type(self).__name__}: invalid bucket name {bucket!r} "
                f"(a plain name, not a URL or path)"
            )
        if concurrency < 1:
            raise StoreConfigError(
                f"{type(self).__name__}: max_concurrency must be at least 1, got {concurrency}"
            )
        self._bucket_name = bucket
        self._prefix = validate_prefix(prefix)
        self._single_request_limit = single_request_limit
        self._part_size = part_size
        self._max_parts = max_parts
        self._concurrency = concurrency
        self._read_buffer = read_buffer
        self._sealed_request_limit = sealed_request_limit
        self._run: RequestRunner = run_once
        # Set once the bucket is known to exist, so later 404s need no second look.
        self._bucket_seen = False
        # Every upload through this backend sends its parts on these threads: packs sent at
        # once (one finishing while the next starts) then use no more threads, nor the memory
        # each keeps for its requests, than one upload. Rebuilt in a forked child (threads do
        # not survive a fork); shared with the copies with_request_runner makes.
        self._part_threads = PerProcess(functools.partial(part_threads, concurrency))

    # ---- primitives: one request each, raising the SDK's own errors -------------------------

    @abc.abstractmethod
    def _head(self, name: str) -> tuple[int, float]:
        """Size and modification time (epoch seconds) of the object ``name``."""

    @abc.abstractmethod
    def _get(self, name: str, offset: int, stop: int | None) -> Download:
        """Open ``name`` from ``offset`` up to ``stop`` (exclusive; ``None``: to its end).

        The request asks the server for exactly that range. Past the end of the object, or
        with ``stop <= offset``, the body is empty (not an error) but a missing object still
        raises. ``Download.size`` is always the whole object's size.
        """

    @abc.abstractmethod
    def _put(self, name: str, data: bytes, *, if_absent: bool) -> None:
        """Store ``data`` in one request; with ``if_absent``, only if ``name`` is absent."""

    def _put_file(self, name: str, part: FilePart, *, if_absent: bool) -> None:
        """Store a sealed file's range in one request, reading ``part.body()`` as it is sent.

        Only for adapters that pass a ``sealed_request_limit``.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def _start_upload(self, name: str, *, if_absent: bool) -> PartUpload:
        """Begin a multipart/resumable upload that publishes ``name`` only when complete."""

    @abc.abstractmethod
    def _delete(self, name: str) -> None:
        """Delete ``name``; a missing object raises the SDK's not-found error."""

    @abc.abstractmethod
    def _touch(self, name: str) -> None:
        """Set the modification time of ``name`` to now without changing its bytes."""

    @abc.abstractmethod
    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """``(name, size, modified)`` of every object whose name starts with ``prefix``."""

    @abc.abstractmethod
    def _bucket_exists(self) -> bool:
        """Whether the bucket exists (may raise, e.g. access denied)."""

    @abc.abstractmethod
    def _classify(self, error: BaseException) -> tuple[Fault, str] | None:
        """The adapter's error table: what an SDK error means, and a short detail.

        ``None`` for errors that are not the SDK's; those propagate untouched.
        """

    # ---- the Backend protocol ---------------------------------------------------------------

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        """Open ``key`` for reading from byte ``offset``, up to ``length`` bytes.

        The first request is made here, so a missing key fails now rather than at the first
        read. The stream is seekable (a seek starts a new request at the new place; with a
        ``length``, only within the window, see :mod:`optuna_cas.backends.window`).

        With a ``length`` the server is asked for exactly ``[offset, offset + length)``, so no
        byte past the window crosses the wire: S3 gets one ranged GET, GCS one metadata
        request and one ranged download per read buffer (``chunk_size``) of the window.
        ``length=0`` fetches no bytes at all (only the metadata that tells a missing key).

        Args:
            key: The object's key.
            offset: First byte to read; at or past the end, reads return ``b""``.
            length: Most bytes to read (fewer only at the object's end); ``None``: to the end.

        Returns:
            A buffered binary stream; close it (or use ``with``) to release the connection.

        Raises:
            ArtifactNotFound: No object under ``key``.
            TransientBackendError: Connection trouble, also while reading, or a short body.
            BackendError: Any other refusal (missing bucket, access denied).
            ValueError: ``offset`` or ``length`` is negative.

        Example:
            .. code-block:: python

                with backend.open_reader("refs/a", offset=1) as f:
                    f.read()
                with backend.open_reader("packs/p", offset=4096, length=65536) as f:
                    f.read()  # 64 KiB, one ranged GET of exactly those bytes
        """
        validate_key(key)
        check_range(offset, length)
        stop = None if length is None else offset + length
        # A reopen (after a seek) continues up to the same end.
        download = functools.partial(self._download, key, stop=stop)
        raw = ObjectReader(
            download(offset),
            offset,
            stop=stop,
            reopen=download,
            guard=functools.partial(self._translating, key),
            name=f"{self.describe()} key {key!r}",
        )
        return io.BufferedReader(raw, buffer_size=self._read_buffer)

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        """Store the rest of ``content_body`` under ``key``, all or nothing.

        Reads from the stream's current position to EOF and never closes it. Bodies up to the
        single-request limit go in one request; larger ones in a multipart/resumable upload
        that the service publishes only when it completes, after EOF was read, and that is
        aborted on any failure.

        Args:
            key: The object's key.
            content_body: A binary stream; it need not be seekable. A large
                :class:`~optuna_cas.backends.base.SealedFile` is sent range by range from its
                file (no part buffers).
            if_absent: Leave an existing object untouched (no error). The service checks this
                when publishing, so a large body may be sent before it turns out present.

        Raises:
            TransientBackendError: Connection trouble, throttling or 5xx.
            BackendError: Any other refusal (missing bucket, access denied). Errors raised by
                ``content_body`` itself propagate unchanged.

        Example:
            .. code-block:: python

                import io

                backend.write("refs/abc", io.BytesIO(b"{}"), if_absent=True)
        """
        validate_key(key)
        name = self._name(key)
        remaining = remaining_size(content_body)
        one_file = isinstance(content_body, SealedFile) and (
            0 < (remaining or 0) <= self._sealed_request_limit
        )
        # Reading one byte past the limit tells small from large without knowing the size;
        # a stream known to be large goes to parts at once (no part-sized head to copy).
        large = one_file or (remaining is not None and remaining > self._single_request_limit)
        head = b"" if large else read_up_to(content_body, self._single_request_limit + 1)
        try:
            if one_file:
                part = FilePart.rest_of(cast(SealedFile, content_body))
                self._send_in_one(
                    key, functools.partial(self._put_file, name, part, if_absent=if_absent)
                )
                return
            if len(head) <= self._single_request_limit and not large:
                self._request(
                    key,
                    f"upload {self._where(key)}",
                    functools.partial(self._put, name, head, if_absent=if_absent),
                )
                return
            part_size = self._part_size_for(len(head), content_body)
            # The part reader copies the head into its first buffer and lets it go: this
            # frame must not keep it alive for the whole upload. A sealed file is sent from
            # the file itself, range by range (no head was read: its size is known).
            parts = (
                FileParts(content_body, part_size)
                if isinstance(content_body, SealedFile)
                else PartReader(head, content_body, part_size)
            )
            with parts:
                del head
                self._upload_in_parts(key, parts, part_size, if_absent=if_absent)
        except AlreadyPresentError:
            if not if_absent:
                raise

    def remove(self, key: str) -> None:
        """Delete ``key``; a missing key raises ``ArtifactNotFound``.

        Example:
            .. code-block:: python

                backend.remove("refs/abc")
        """
        validate_key(key)
        with self._translating(key):
            self._delete(self._name(key))

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored (one metadata request).

        Raises:
            BackendError: The bucket does not exist, access is denied, etc.

        Example:
            .. code-block:: python

                backend.exists("refs/abc")  # True or False
        """
        try:
            self.stat(key)
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
        with self._translating(key):
            size, modified = self._head(self._name(key))
        return ObjectInfo(key=key, size=size, modified=modified)

    def touch(self, key: str) -> None:
        """Set ``key``'s modification time to now without changing its bytes (no bytes move).

        Example:
            .. code-block:: python

                backend.touch("blobs/blake3/ab/cd...")
        """
        validate_key(key)
        with self._translating(key):
            self._touch(self._name(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, keys relative to the backend's prefix.

        Objects whose names are not valid keys (e.g. ``folder/`` markers made by consoles) are
        skipped: no other method could use them.

        Example:
            .. code-block:: python

                [info.key for info in backend.list("refs/")]  # ['refs/abc', ...]
        """
        root = f"{self._prefix}/" if self._prefix else ""
        with self._translating(None):
            for name, size, modified in self._list(root + prefix):
                key = name[len(root) :]
                try:
                    validate_key(key)
                except ValueError:
                    continue
                yield ObjectInfo(key=key, size=size, modified=modified)

    def describe(self) -> str:
        """Return ``<scheme>://bucket`` or ``<scheme>://bucket/prefix``.

        Example:
            .. code-block:: python

                backend.describe()  # 's3://my-bucket/studies'
        """
        root = f"{self.scheme}://{self._bucket_name}"
        return f"{root}/{self._prefix}" if self._prefix else root

    def with_request_runner(self, runner: RequestRunner) -> RemoteBackend:
        """A copy of this backend that sends every request of ``write`` through ``runner``.

        :class:`~optuna_cas.Backoff` passes a retrying runner, so a failed part of a multipart
        or resumable upload is retried alone instead of the whole upload. The other methods
        make one request each; Backoff retries those itself.

        Example:
            .. code-block:: python

                from optuna_cas.backends.base import run_once

                same = backend.with_request_runner(run_once)
        """
        clone = copy.copy(self)
        clone._run = runner
        return clone

    # ---- internals ---------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _key_of(self, name: str) -> str:
        """The key of the object named ``name`` in the bucket (``_name``'s inverse)."""
        return name[len(self._prefix) + 1 :] if self._prefix else name

    def _where(self, key: str) -> str:
        return f"{self.describe()}/{key}"

    def _download(self, key: str, offset: int, *, stop: int | None) -> Download:
        with self._translating(key):
            return self._get(self._name(key), offset, stop)

    def _request(self, key: str, description: str, request: Callable[[], T]) -> T:
        """Send one request through the runner, its SDK errors translated."""

        def attempt() -> T:
            with self._translating(key):
                return request()

        return self._run(description, attempt)

    def _send_in_one(self, key: str, put: Callable[[], None]) -> None:
        """Send ``put`` (one request: a sealed file) on the part threads, and wait for it.

        There it counts against ``concurrency`` like a part: the packs of a chunked upload go
        this way, several at once, and with the parts of other uploads never exceed it.
        """
        request = functools.partial(self._request, key, f"upload {self._where(key)}", put)
        threads = self._part_threads.get()
        if threads is None:
            request()
        else:
            threads.submit(request).result()

    def _part_size_for(self, head: int, stream: BinaryIO) -> int:
        """The configured part size, raised if the service's part limit needs it."""
        remaining = remaining_size(stream)
        if self._max_parts is None or remaining is None:
            return self._part_size
        return max(self._part_size, math.ceil((head + remaining) / self._max_parts))

    def _upload_in_parts(
        self, key: str, parts: PartReader | FileParts, part_size: int, *, if_absent: bool
    ) -> None:
        where = self._where(key)
        # A rewrite (gc's manifest rewrite, a repair) may replace an object of the same size:
        # its state now tells it from ours if the publishing request's answer is lost. With
        # if_absent an object there holds the same bytes (keys are content addresses).
        before = None if if_absent else self._state(key, f"look at {where}")
        upload = self._request(
            key,
            f"start upload of {where}",
            functools.partial(self._start_upload, self._name(key), if_absent=if_absent),
        )
        try:
            offset, number = 0, 0
            with PartSender(self._concurrency, self._part_threads.get()) as sender:
                while True:
                    # The caller's stream is read here, outside any request: its errors
                    # propagate as they are, never translated or retried.
                    part: Part = parts.next()
                    if parts.eof:
                        break
                    number += 1
                    self._check_part_count(key, number, part_size)
                    sender.submit(
                        functools.partial(
                            self._send_part,
                            key,
                            f"upload part {number} of {where}",
                            functools.partial(upload.send_part, number, offset, part),
                            functools.partial(parts.release, part),
                        )
                    )
                    offset += len(part)
                    del part  # the sender holds the only reference now
                number += 1
                if part:
                    self._check_part_count(key, number, part_size)
                total = offset + len(part)
                last = functools.partial(upload.send_last, number, offset, part, total)
                if upload.completes_separately:
                    # complete() publishes, so the last part goes out beside the others.
                    description = f"upload part {number} of {where}"
                    sender.submit(functools.partial(self._request, key, description, last))
                sender.drain()
            # EOF was read and every part is in: only now may a request publish the object.
            if upload.completes_separately:
                self._publish(key, total, before, f"complete upload of {where}", upload.complete)
            else:
                self._publish(key, total, before, f"upload part {number} of {where}", last)
        except BaseException:
            # Unpublished parts are invisible but may be billed until dropped.
            upload.abort()
            raise

    def _send_part(
        self, key: str, description: str, send: Callable[[], None], release: Callable[[], None]
    ) -> None:
        """Send one part (retried through the runner), then give its buffer back.

        The buffer returns before the sender learns the part is done and reads the next one,
        so parts in memory never outnumber the buffers (``concurrency``).
        """
        try:
            self._request(key, description, send)
        finally:
            release()

    def _state(self, key: str, description: str) -> tuple[int, float] | None:
        """Size and modification time of ``key`` (one request, retried); ``None`` if absent."""
        try:
            return self._request(key, description, functools.partial(self._head, self._name(key)))
        except ArtifactNotFound:
            return None

    def _publish(
        self,
        key: str,
        total: int,
        before: tuple[int, float] | None,
        description: str,
        request: Callable[[], None],
    ) -> None:
        """Send the request that publishes the object (S3's complete, GCS's last chunk).

        ``before`` is the key's state before the upload began (``None``: absent, or not
        looked at).
        """
        try:
            self._request(key, description, request)
        except UploadGoneError:
            # Retried after its answer was lost, the publishing request finds the upload over.
            # The object tells whether it was ours that finished: the right size, and not the
            # object that was there before. A rewrite within the same second on S3 (whole
            # seconds in LastModified) is refused although ours: that costs the caller one
            # more write (UploadGoneError is not transient, Backoff does not redo a write),
            # never an acknowledged one with the old bytes in place (the safe direction).
            with contextlib.suppress(ArtifactNotFound):
                now = self.stat(key)
                if now.size == total and (now.size, now.modified) != before:
                    return
            raise

    def _check_part_count(self, key: str, number: int, part_size: int) -> None:
        if self._max_parts is not None and number > self._max_parts:
            raise BackendError(
                f"{self._where(key)} needs more than {self._max_parts} parts of {part_size} "
                f"bytes; raise part_size or pass a seekable stream"
            )
