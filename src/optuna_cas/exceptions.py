"""Exceptions raised by optuna-cas.

Every error derives from :class:`OptunaCasError`. :class:`ArtifactNotFound` keeps Optuna's name
and is also a :class:`FileNotFoundError` and, when Optuna is installed, a subclass of
``optuna.artifacts.exceptions.ArtifactNotFound``, so code (and optuna-dashboard) that catches
Optuna's class keeps working after the import change.

Example:
    >>> from optuna_cas.exceptions import ArtifactNotFound
    >>> issubclass(ArtifactNotFound, FileNotFoundError)
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = [
    "ArtifactNotFound",
    "BackendError",
    "IntegrityError",
    "InvalidKeyError",
    "MalformedRecordError",
    "MalformedRecordWarning",
    "MissingPackError",
    "NewerFormatError",
    "OptunaCasError",
    "StoreClockError",
    "StoreConfigError",
    "TooManyChunks",
    "TransientBackendError",
    "UnsupportedSourceError",
    "not_found_as_ours",
]


class OptunaCasError(Exception):
    """Root of every error raised by optuna-cas.

    Example:
        >>> from optuna_cas.exceptions import IntegrityError, OptunaCasError
        >>> issubclass(IntegrityError, OptunaCasError)
        True
    """


def _optuna_artifact_not_found() -> tuple[type[BaseException], ...]:
    # Optuna is an optional extra: without it our class simply has one base fewer. Loaded
    # without optuna.artifacts' __init__, which would import boto3 and google-cloud-storage.
    from optuna_cas._optuna_exceptions import optuna_artifact_exceptions

    module = optuna_artifact_exceptions()
    if module is None:  # pragma: no cover - exercised only without the optuna extra
        return ()
    return (module.ArtifactNotFound,)


class ArtifactNotFound(OptunaCasError, FileNotFoundError, *_optuna_artifact_not_found()):  # type: ignore[misc]
    """An artifact, ref or blob that was asked for does not exist.

    Example:
        >>> err = ArtifactNotFound("no artifact with id 'abc'")
        >>> isinstance(err, FileNotFoundError)
        True
    """

    def __init__(self, message: str) -> None:
        # FileNotFoundError's (errno, strerror) constructor would mangle a single message.
        Exception.__init__(self, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions cross process pools: rebuild from the message alone.
        return (type(self), (self.message,))


class MissingPackError(ArtifactNotFound):
    """A pack a chunked file's manifest names is not in the store (an :class:`ArtifactNotFound`).

    It carries the pack, so that a caller naming the artifact keeps the pack in its message:
    the pack is what to restore, and what ``verify`` names.

    Example:
        >>> err = MissingPackError("chunked file x: its pack blake3:ab is missing", "blake3:ab")
        >>> isinstance(err, ArtifactNotFound), err.pack
        (True, 'blake3:ab')
    """

    def __init__(self, message: str, pack: str) -> None:
        super().__init__(message)
        self.pack = pack

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.pack))


class IntegrityError(OptunaCasError):
    """Bytes read back do not match the digest or size they were stored under.

    Example:
        >>> raise IntegrityError("blob blake3:ab.. size 3: got 4 bytes")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.IntegrityError: blob blake3:ab.. size 3: got 4 bytes
    """


class NewerFormatError(IntegrityError):
    """A stored record is in a format version this release does not read.

    A newer optuna-cas wrote it (or its version bytes are damaged). Reads fail on it as on
    any record they cannot check, but maintenance never moves or deletes what it cannot
    read: during a rolling upgrade, older workers share the store with newer ones.

    Example:
        >>> issubclass(NewerFormatError, IntegrityError)
        True
    """


class InvalidKeyError(OptunaCasError, ValueError):
    """An artifact ID, key or path is unsafe or malformed; raised before any I/O.

    Example:
        >>> issubclass(InvalidKeyError, ValueError)
        True
    """


class MalformedRecordError(OptunaCasError, ValueError):
    """A stored record (a ref, an Optuna attribute) cannot be read.

    It is not JSON, too large, too deeply nested, or has a field of the wrong type; the
    message names the record and the reason.

    Example:
        >>> issubclass(MalformedRecordError, ValueError)
        True
    """


class StoreConfigError(OptunaCasError, ValueError):
    """A store cannot be built as asked: bad URL, missing extra, unusable directory, ...

    Example:
        >>> issubclass(StoreConfigError, ValueError)
        True
    """


class StoreClockError(OptunaCasError):
    """The store's time could not be read, so gc judged no age and deleted nothing.

    gc measures ages on the store's clock (see :mod:`optuna_cas.backends.clock`): reading it
    writes, reads and deletes one empty object under ``clock/``.

    Example:
        >>> issubclass(StoreClockError, OptunaCasError)
        True
    """


class TooManyChunks(OptunaCasError):
    """A file has more chunks than one manifest may name (one that readers accept).

    Raised by ``ChunkStore.put`` before anything names the file (its packs are orphans for
    gc), so that nothing is acknowledged that would not read back: readers would call such a
    manifest malformed, and verify set it aside. The blob store then stores the file whole.

    Example:
        >>> issubclass(TooManyChunks, OptunaCasError)
        True
    """


class BackendError(OptunaCasError):
    """A storage service refused or failed an operation for a reason retrying will not fix.

    Backends translate SDK errors into this (``raise BackendError(...) from sdk_error``) so that
    no botocore or google exception leaks out of a store; the message names the store and key.

    Example:
        >>> str(BackendError("s3://bucket: access denied"))
        's3://bucket: access denied'
    """


class TransientBackendError(BackendError):
    """A failure that may go away on retry: connection reset or timeout, throttling, 5xx.

    :class:`~optuna_cas.Backoff` retries these; it never retries other errors.

    Example:
        >>> issubclass(TransientBackendError, BackendError)
        True
    """


class UnsupportedSourceError(OptunaCasError, ValueError):
    """A file given to upload cannot be stored: a directory, FIFO, device or socket.

    Those can block forever (a FIFO with no writer) or never end (``/dev/zero``); Optuna would
    hang or fill the disk. The message names the file and what it is.

    Example:
        >>> issubclass(UnsupportedSourceError, ValueError)
        True
    """


class MalformedRecordWarning(UserWarning):
    """A bad record (a malformed ref or attribute, a special file at a key) was skipped.

    Operations over many records report such a record and go on with the others instead of
    failing as a whole: :func:`optuna_cas.get_all_artifact_meta` warns with this for every
    ``artifacts:<id>`` attribute it cannot read, gc/stats/sync for every bad ref; the message
    names the record and the reason. ``optuna-cas verify`` lists them with their reasons.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warnings.warn("skipped ref 'x'", MalformedRecordWarning)
        >>> caught[0].category.__name__
        'MalformedRecordWarning'
    """


@contextlib.contextmanager
def not_found_as_ours(artifact_id: str) -> Iterator[None]:
    """Re-raise Optuna's ``ArtifactNotFound`` as optuna-cas's (a subclass of it).

    Optuna's own stores and third-party ones raise Optuna's class, which
    ``except optuna_cas.exceptions.ArtifactNotFound`` would miss after the import change.
    Ours passes unchanged; the message gains the ID when the store's did not name it
    (Optuna's ``FileSystemArtifactStore`` says only "not found").

    Example:
        >>> import optuna.artifacts.exceptions as optuna_exceptions
        >>> with not_found_as_ours("a1"):
        ...     raise optuna_exceptions.ArtifactNotFound("not found")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.ArtifactNotFound: Artifact 'a1': not found
    """
    try:
        yield
    except ArtifactNotFound:
        raise
    except Exception as e:
        # Already loaded (our class derives from it), so this costs a dict lookup and never
        # imports optuna.artifacts with its cloud SDKs.
        from optuna_cas._optuna_exceptions import optuna_artifact_exceptions

        module = optuna_artifact_exceptions()
        if module is None or not isinstance(e, module.ArtifactNotFound):
            raise
        message = str(e) if artifact_id in str(e) else f"Artifact {artifact_id!r}: {e}"
        raise ArtifactNotFound(message) from e
