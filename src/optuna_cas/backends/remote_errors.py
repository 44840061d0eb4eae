"""What a remote store's errors mean, for :mod:`optuna_cas.backends.remote`.

:class:`Fault` is the kinds an adapter's error table sorts SDK errors into, and
:class:`ErrorTranslation` the part of the base that turns them into ours; the two errors here
are the ones the base handles itself rather than raising to callers.
"""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import Iterator
from typing import NoReturn

from optuna_cas.exceptions import (
    ArtifactNotFound,
    BackendError,
    OptunaCasError,
    TransientBackendError,
)

__all__ = ["AlreadyPresentError", "ErrorTranslation", "Fault", "UploadGoneError"]


class Fault(enum.Enum):
    """What an SDK error means, as an adapter's error table says; the base picks our exception.

    Example:
        >>> Fault("transient") is Fault.TRANSIENT
        True
    """

    MISSING = "missing"  # 404: no such object, or no such bucket (the base tells them apart)
    NO_BUCKET = "no bucket"  # the service said the bucket does not exist
    EXISTS = "exists"  # 412 on a create-if-absent: the object is there
    GONE = "gone"  # the multipart/resumable upload is no longer known to the service
    DENIED = "denied"  # 401/403
    TRANSIENT = "transient"  # connection trouble, throttling, 5xx, a body cut short
    PERMANENT = "permanent"  # anything else the SDK raised


class AlreadyPresentError(BackendError):
    """A create-if-absent met an existing object (HTTP 412); ``write`` swallows it."""


class UploadGoneError(BackendError):
    """The service no longer knows an upload (finished, cancelled or expired).

    Raised by an adapter's upload, or from a :attr:`Fault.GONE` error. After the last part it
    usually means the upload *did* finish and the answer was lost: the base then looks for the
    object before believing it failed.
    """


class ErrorTranslation(abc.ABC):
    """SDK errors raised as ours, through an adapter's error table (``_classify``).

    The error-translating half of :class:`~optuna_cas.backends.remote.RemoteBackend`, which
    supplies what is abstract here and sets ``_bucket_name`` and ``_bucket_seen``.

    Example:
        >>> from optuna_cas.backends.remote import RemoteBackend
        >>> issubclass(RemoteBackend, ErrorTranslation)
        True
    """

    _bucket_name: str
    _bucket_seen: bool  # the bucket is known to exist: later 404s need no second look

    @abc.abstractmethod
    def describe(self) -> str:
        """The store, e.g. ``s3://bucket/prefix``, for messages."""

    @abc.abstractmethod
    def _bucket_exists(self) -> bool:
        """Whether the bucket exists (may raise, e.g. access denied)."""

    @abc.abstractmethod
    def _classify(self, error: BaseException) -> tuple[Fault, str] | None:
        """The adapter's error table: what an SDK error means, and a short detail."""

    def _endpoint(self) -> str | None:
        """The address of the service the requests go to, for messages (None: unknown)."""
        return None

    @contextlib.contextmanager
    def _translating(self, key: str | None) -> Iterator[None]:
        """Re-raise SDK errors from the block as ours (``raise ... from``); others pass."""
        try:
            yield
        except OptunaCasError:
            raise
        except Exception as error:
            verdict = self._classify(error)
            if verdict is None:
                raise
            self._raise(*verdict, key=key, cause=error)

    def _raise(self, fault: Fault, detail: str, *, key: str | None, cause: Exception) -> NoReturn:
        store = self.describe()
        on = f" for key {key!r}" if key is not None else ""
        error: OptunaCasError
        if fault is Fault.MISSING and key is not None and self._bucket_is_there():
            error = ArtifactNotFound(f"no object {key!r} in {store}")
        elif fault in (Fault.MISSING, Fault.NO_BUCKET):
            # A 404 on a bucket-level request (a listing) can only mean the bucket.
            error = BackendError(
                f"{store}: bucket {self._bucket_name!r} does not exist"
                + _no_bucket_hint(self._endpoint())
            )
        elif fault is Fault.EXISTS:
            error = AlreadyPresentError(f"{store}: {key!r} already exists")
        elif fault is Fault.GONE:
            error = UploadGoneError(
                f"{store}: the upload session ended before the upload was complete{on} ({detail})"
            )
        elif fault is Fault.DENIED:
            error = BackendError(
                f"{store}: access denied{on} ({detail}); check the credentials and their "
                f"permissions on bucket {self._bucket_name!r}"
            )
        elif fault is Fault.TRANSIENT:
            error = TransientBackendError(f"{store}: {detail}{on}")
        else:
            error = BackendError(f"{store}: request failed{on} ({detail})")
        raise error from cause

    def _bucket_is_there(self) -> bool:
        """Tell a missing key from a missing bucket: both are a bare 404 (asked once).

        Only a clear "does not exist" is believed: a reader may not be allowed to look at the
        bucket (S3 HeadBucket 403, GCS without storage.buckets.get), and then the object is
        simply missing. Other failures of the check are raised, translated.
        """
        if self._bucket_seen:
            return True
        try:
            exists = self._bucket_exists()
        except Exception as error:
            verdict = self._classify(error)
            if verdict is None:
                raise
            fault, detail = verdict
            if fault in (Fault.MISSING, Fault.NO_BUCKET):
                return False
            if fault is not Fault.DENIED:
                self._raise(fault, detail, key=None, cause=error)
            exists = True
        self._bucket_seen = exists
        return exists


def _no_bucket_hint(endpoint: str | None) -> str:
    """Where a bucket was looked for, and what to check: its name, or the endpoint.

    A wrong endpoint (another service, or a URL that ends with the bucket) answers "no such
    bucket" too; a message without the address did not show that (found by a probe).

    Example:
        >>> _no_bucket_hint("http://127.0.0.1:9000/b")
        " at endpoint http://127.0.0.1:9000/b: an endpoint URL names the service alone, without a path ('/b' here); the bucket goes in the store URL"
        >>> _no_bucket_hint(None)
        ''
    """
    from urllib.parse import urlsplit

    if not endpoint:
        return ""
    try:
        path = urlsplit(endpoint).path.rstrip("/")
    except ValueError:  # not a URL we can split: named as it is
        path = ""
    if path:
        return (
            f" at endpoint {endpoint}: an endpoint URL names the service alone, without a path "
            f"({path!r} here); the bucket goes in the store URL"
        )
    return (
        f" at endpoint {endpoint}: check the bucket's name, and that the endpoint is the "
        "service that holds it"
    )
