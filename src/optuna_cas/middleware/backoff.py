"""``Backoff``: Optuna's retrying wrapper, retrying each request rather than each artifact.

Wrapping one of our stores, ``Backoff`` re-wraps its *backend*, so every single request (an
existence check, one blob upload, one ref write, one GET) is retried on its own, and a download
interrupted mid-stream resumes at the byte where it stopped. Wrapping any other object with
Optuna's protocol (Optuna's own stores included), it retries each of the three methods.
"""

from __future__ import annotations

import contextlib
import io
import random
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar, cast

from optuna_cas.backends.base import (
    Backend,
    ObjectInfo,
    SupportsRequestRunner,
    remove_if_unchanged,
)
from optuna_cas.digest import CHUNK_SIZE, RawReader, readinto, rewind_point
from optuna_cas.exceptions import ArtifactNotFound, not_found_as_ours
from optuna_cas.middleware.retry import Retrier, RetryPolicy
from optuna_cas.stores.base import ArtifactStore, ContentAddressedArtifactStore

__all__ = ["Backoff", "ResumingReader", "RetryingBackend"]

_T = TypeVar("_T")


class ResumingReader(RawReader):
    """A reader that reopens its source at the current offset after a transient error.

    Args:
        reader: The first open reader.
        reopen: Opens the same object again starting at the given byte offset.
        retrier: Decides how many consecutive failures to tolerate and how long to wait.
        name: For log messages.

    Example:
        >>> import io
        >>> data = b"0123456789"
        >>> class Flaky(io.BytesIO):
        ...     def readinto(self, b):
        ...         if self.tell() == 4: raise ConnectionResetError("cut")
        ...         return super().readinto(memoryview(b)[:2])
        >>> def reopen(offset):
        ...     f = io.BytesIO(data); f.seek(offset); return f
        >>> r = ResumingReader(Flaky(data), reopen, Retrier(RetryPolicy(), sleep=lambda s: None), name="x")
        >>> r.read()
        b'0123456789'
    """

    def __init__(
        self,
        reader: BinaryIO,
        reopen: Callable[[int], BinaryIO],
        retrier: Retrier,
        *,
        name: str,
    ) -> None:
        super().__init__()
        self._reader = reader
        self._reopen = reopen
        self._retrier = retrier
        self._name = name
        self._offset = 0

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Read into ``buffer``; on a transient error reopen at the current offset and retry."""
        view = memoryview(buffer).cast("B")
        n: int = self._retrying(lambda: readinto(self._reader, view))
        self._offset += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes as the source hands them over (retried like :meth:`readinto`).

        No copy through a buffer of ours: a remote backend's raw stream returns the bytes its
        response was read into (the chunk reader reads blocks this way).
        """
        if size is None or size < 0:
            return self.readall()
        data: bytes = self._retrying(lambda: self._reader.read(size) or b"")
        self._offset += len(data)
        return data

    def seekable(self) -> bool:
        """Whether the current source can seek (a file Optuna's own store opened can)."""
        try:
            return bool(self._reader.seekable())
        except (AttributeError, OSError, ValueError):
            return False

    def tell(self) -> int:
        """Bytes delivered so far, or where the last seek went."""
        return self._offset

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Seek the source (if it can), retried like a read; a resume then starts there."""
        if not self.seekable():
            raise io.UnsupportedOperation("this reader's source cannot seek")
        self._offset = self._retrying(lambda: self._reader.seek(offset, whence))
        return self._offset

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        def resume() -> None:
            with contextlib.suppress(Exception):
                self._reader.close()
            self._reader = self._reopen(self._offset)

        return self._retrier.call(
            f"read {self._name} at byte {self._offset}", attempt, before_retry=resume
        )

    def close(self) -> None:
        """Close the current underlying reader."""
        try:
            self._reader.close()
        finally:
            super().close()


class RetryingBackend:
    """A :class:`~optuna_cas.backends.base.Backend` whose every request is retried.

    Args:
        backend: The backend to wrap.
        retrier: The retry loop and policy.

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> backend = RetryingBackend(MemoryBackend(), Retrier(RetryPolicy()))
        >>> backend.write("k", io.BytesIO(b"v")); backend.open_reader("k").read()
        b'v'
    """

    def __init__(self, backend: Backend, retrier: Retrier) -> None:
        self._retrier = retrier
        # A backend that makes several requests per write (multipart, resumable) can retry
        # each of them itself; then the write as a whole is not retried again on top.
        self._per_request = isinstance(backend, SupportsRequestRunner)
        self._backend: Backend = (
            backend.with_request_runner(retrier.call)
            if isinstance(backend, SupportsRequestRunner)
            else backend
        )

    @property
    def inner(self) -> Backend:
        """The wrapped backend."""
        return self._backend

    def _where(self, key: str) -> str:
        return f"{self._backend.describe().rstrip('/')}/{key}"

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        """Open with retries; the reader resumes from where it was after a mid-stream error.

        A bounded read (``length``) resumes up to the same end: the reopen asks for the rest
        of the window only.
        """

        def reopen(at: int) -> BinaryIO:
            rest = None if length is None else length - at
            opened = self._retrier.call(
                f"open {self._where(key)}",
                lambda: self._backend.open_reader(key, offset=offset + at, length=rest),
            )
            # Fresh, so its buffer holds nothing yet: read its raw stream instead (see
            # ResumingReader.read), and buffer once, outside. Detached, or the dropped buffer
            # would close the raw stream when collected.
            if isinstance(opened, io.BufferedReader):
                return cast(BinaryIO, opened.detach())
            return opened

        first = reopen(0)
        reader = ResumingReader(first, reopen, self._retrier, name=self._where(key))
        return cast(BinaryIO, io.BufferedReader(reader, CHUNK_SIZE))

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        """Write with retries, rewinding ``content_body`` to where it started before each retry.

        A stream that cannot seek gets a single attempt (there is no way to replay it).
        Backends that retry each of their requests themselves are called once.
        """
        if self._per_request:
            self._backend.write(key, content_body, if_absent=if_absent)
            return
        start = rewind_point(content_body)
        if start is None:
            self._backend.write(key, content_body, if_absent=if_absent)
            return
        self._retrier.call(
            f"write {self._where(key)}",
            lambda: self._backend.write(key, content_body, if_absent=if_absent),
            before_retry=lambda: content_body.seek(start),
        )

    def remove(self, key: str) -> None:
        """Delete with retries; missing on a retry means an earlier attempt succeeded."""
        self._retrier.call(
            f"remove {self._where(key)}",
            lambda: self._backend.remove(key),
            missing_after_retry=lambda: None,
        )

    def remove_if_unchanged(self, key: str, seen: ObjectInfo) -> bool:
        """The delete gc uses, with retries: conditional where the wrapped backend can.

        Without it here, gc found the wrapped backend's own conditional delete and sent it
        unretried: one lost connection stopped gc on GCS under ``Backoff`` (found by a test
        of chunked files under faults). Each retry looks at the object again first, as gc's
        last look did: where the delete is unconditional (S3) a retry sent after the backoff
        sleep deleted a blob an upload had re-used and touched meanwhile, losing that upload
        (found by a probe). Gone at that look, it is taken as deleted by the attempt whose
        answer was lost.
        """
        attempts = 0

        def attempt() -> bool:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                try:
                    now = self._backend.stat(key)
                except ArtifactNotFound:
                    return True
                if (now.size, now.modified) != (seen.size, seen.modified):
                    return False  # re-used since gc's look: it stays
            return remove_if_unchanged(self._backend, seen)

        return self._retrier.call(f"remove {self._where(key)}", attempt)

    def exists(self, key: str) -> bool:
        """Existence check with retries."""
        return self._retrier.call(f"check {self._where(key)}", lambda: self._backend.exists(key))

    def touch(self, key: str) -> None:
        """Touch with retries."""
        self._retrier.call(f"touch {self._where(key)}", lambda: self._backend.touch(key))

    def stat(self, key: str) -> ObjectInfo:
        """Stat with retries."""
        return self._retrier.call(f"stat {self._where(key)}", lambda: self._backend.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """List with retries; a listing that fails midway is restarted whole."""
        listing = self._retrier.call(
            f"list {self._where(prefix)}", lambda: list(self._backend.list(prefix))
        )
        return iter(listing)

    def describe(self) -> str:
        """The wrapped backend's name."""
        return self._backend.describe()


class Backoff(ContentAddressedArtifactStore):
    """A drop-in for ``optuna.artifacts.Backoff`` that retries only what can succeed.

    Compared with Optuna's: delays get jitter (``jitter=False`` restores Optuna's exact
    schedule); only transient errors are retried (connection resets and timeouts, throttling,
    5xx), never a missing artifact, bad input or an integrity error; every operation returns on
    its first success (Optuna's ``remove`` keeps deleting); each retry is logged at WARNING with
    the attempt number; after the last attempt the original error is raised unchanged.

    Over an optuna-cas store each *request* is retried and downloads resume mid-stream; over
    any other store (Optuna's own included) each method call is retried.

    The store's SDK retries inside each attempt unless told not to (botocore up to 3 times,
    google-cloud-storage for up to 120 s). For ``max_retries`` to be every attempt made, and
    each bounded in time, build the store with ``sdk_retries=False`` and a ``timeout``
    (docs/concepts.md, Retries).

    Args:
        backend: The store to wrap (Optuna's parameter name).
        max_retries: Total attempts, the first included.
        multiplier: Growth factor of the delay.
        min_delay: Base of the schedule, seconds: the delay before retry ``n`` (0 for the
            first) is ``min(min_delay * multiplier**n, max_delay)``, exactly without jitter.
        max_delay: Cap on that schedule, seconds.
        jitter: Draw each delay uniformly from the upper half of its schedule value (so the
            first is between ``min_delay / 2`` and ``min_delay``, none above ``max_delay``).
        sleep: Replaces ``time.sleep`` (for tests).
        seed: Seed for the jitter (for reproducible tests).

    Example:
        >>> import io
        >>> from optuna_cas import MemoryArtifactStore
        >>> store = Backoff(MemoryArtifactStore(), max_retries=5)
        >>> store.write("a", io.BytesIO(b"x")); store.open_reader("a").read()
        b'x'
    """

    def __init__(
        self,
        backend: ArtifactStore,
        *,
        max_retries: int = 10,
        multiplier: float = 2,
        min_delay: float = 0.1,
        max_delay: float = 30,
        jitter: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        for method in ("open_reader", "write", "remove"):
            if not callable(getattr(backend, method, None)):
                raise TypeError(
                    f"Backoff needs an artifact store with open_reader/write/remove; "
                    f"{backend!r} has no {method}()"
                )
        policy = RetryPolicy(
            max_retries=max_retries,
            multiplier=multiplier,
            min_delay=min_delay,
            max_delay=max_delay,
            jitter=jitter,
        )
        self._retrier = Retrier(policy, sleep=sleep, rng=random.Random(seed))
        self._backend = backend
        if isinstance(backend, ContentAddressedArtifactStore):
            inner = backend.content
            super().__init__(
                inner.with_parts(backend=RetryingBackend(inner.backend, self._retrier))
            )
            self._foreign: ArtifactStore | None = None
        else:
            super().__init__(None)
            self._foreign = backend

    @property
    def policy(self) -> RetryPolicy:
        """The retry schedule in force.

        Example:
            >>> from optuna_cas import MemoryArtifactStore
            >>> Backoff(MemoryArtifactStore(), max_retries=3).policy.max_retries
            3
        """
        return self._retrier.policy

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """Open with retries (see class docs)."""
        foreign = self._foreign
        if foreign is None:
            return super().open_reader(artifact_id)

        def reopen(offset: int) -> BinaryIO:
            reader = self._retrier.call(
                f"open artifact {artifact_id!r}",
                lambda: _ours(artifact_id, lambda: foreign.open_reader(artifact_id)),
            )
            # Optuna's stores cannot open at an offset: skip what was already delivered.
            _skip(reader, offset)
            return reader

        first = reopen(0)
        resuming = ResumingReader(first, reopen, self._retrier, name=f"artifact {artifact_id!r}")
        # Buffered like the file Optuna's store returns (read1, peek, readline).
        return cast(BinaryIO, io.BufferedReader(resuming, CHUNK_SIZE))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Write with retries, rewinding the source to where it started before each retry."""
        foreign = self._foreign
        if foreign is None:
            super().write(artifact_id, content_body)
            return
        start = rewind_point(content_body)
        if start is None:  # a pipe, or an object with read() only: one attempt, as Optuna's
            _ours(artifact_id, lambda: foreign.write(artifact_id, content_body))
            return
        self._retrier.call(
            f"write artifact {artifact_id!r}",
            lambda: _ours(artifact_id, lambda: foreign.write(artifact_id, content_body)),
            before_retry=lambda: content_body.seek(start),
        )

    def remove(self, artifact_id: str) -> None:
        """Remove with retries; returns on the first success."""
        foreign = self._foreign
        if foreign is None:
            super().remove(artifact_id)
            return
        self._retrier.call(
            f"remove artifact {artifact_id!r}",
            lambda: _ours(artifact_id, lambda: foreign.remove(artifact_id)),
            missing_after_retry=lambda: None,
        )

    def __repr__(self) -> str:
        return f"Backoff({self._backend!r}, max_retries={self.policy.max_retries})"


def _ours(artifact_id: str, call: Callable[[], _T]) -> _T:
    # Optuna's ArtifactNotFound from another store raised as ours: a switched `except` catches
    # it, and a retried remove knows it by our class.
    with not_found_as_ours(artifact_id):
        return call()


def _skip(reader: BinaryIO, count: int) -> None:
    remaining = count
    while remaining:
        chunk = reader.read(min(remaining, 1024 * 1024))
        if not chunk:
            raise ArtifactNotFound("artifact shrank while being re-read after a retry")
        remaining -= len(chunk)
