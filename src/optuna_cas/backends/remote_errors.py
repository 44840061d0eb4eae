"""What a remote store's errors mean, for :mod:`optuna_cas.backends.remote`.

:class:`Fault` is the kinds an adapter's error table sorts SDK errors into; the two errors
here are the ones the base handles itself rather than raising to callers.
"""

from __future__ import annotations

import enum

from optuna_cas.exceptions import BackendError

__all__ = ["AlreadyPresentError", "Fault", "UploadGoneError"]


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
