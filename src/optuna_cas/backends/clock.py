"""The store's clock: "now" as the store stamps objects, not as this machine's clock reads.

gc spares a blob an upload re-uses because the upload freshens the blob's time when it is old,
and gc deletes only blobs older than its grace period (see :mod:`optuna_cas.operations.gc`).
Both compare an object's time, which the store sets (the S3 or GCS server, the file system),
with "now". Read from the worker's own clock, "now" is off by the worker's skew: an uploader
whose clock runs 2 hours behind the store never freshens what it re-uses, and a gc whose
clock runs ahead deletes blobs young in the store's time, so together they lose an upload.
Skews that large are rare but real: a VM restored from a snapshot, a board without a battery
clock before NTP answers.

So ages are measured on the store's clock: once per process and store, an empty object is
written, its time read back and the object deleted (a local store stages a temp file and reads
its time instead, leaving no key); "now" is then that time plus the monotonic time elapsed
since, which a step of this machine's clock does not move. Where the two clocks agree within a
few seconds, this machine's reading at that moment is taken as the store's (it is finer: S3
stamps whole seconds), so a well-synced fleet measures ages as it always did.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import uuid
from typing import Any

from optuna_cas._forksafe import ForkSafeLock
from optuna_cas.backends.base import Backend, staging_of
from optuna_cas.exceptions import StoreClockError

__all__ = ["CLOCK_PREFIX", "StoreClock"]

# Where a remote store's probe object is written (and deleted at once). No listing of the
# store's records looks there; a probe left by a process killed between write and delete is
# an empty object.
CLOCK_PREFIX = "clock/"

_log = logging.getLogger(__name__)


class StoreClock:
    """Now, in the time the store stamps objects with, for the two decisions gc's safety needs.

    The store's time is read once (see the module docstring) and carried forward on the
    monotonic clock. That clock stops while the machine sleeps, so a reading carried across a
    suspend lags; each decision therefore also consults this machine's clock and takes the
    safe one of the two: an upload freshens by the later (a needless touch costs one request),
    gc deletes by the earlier (a blob kept too long costs nothing).

    Args:
        backend: The store. Asked lazily, at the first decision: it writes, reads and deletes
            one empty object (a local store: stages a temp file and discards it). A failed
            reading is not kept: a decision a minute later asks again.
        stage_in: Where a local store stages that temp file (an area it stages in anyway).

    Example:
        >>> import tempfile, time
        >>> from optuna_cas.backends.local import LocalBackend
        >>> clock = StoreClock(LocalBackend(tempfile.mkdtemp()), stage_in="blobs")
        >>> abs(clock.now_to_freshen() - time.time()) < 60  # its clock is this machine's
        True
    """

    def __init__(self, backend: Backend, *, stage_in: str) -> None:
        self._backend = backend
        self._stage_in = stage_in
        self._reading = _Reading()

    def through(self, backend: Backend) -> StoreClock:
        """This clock, asking the same store through ``backend`` (behind retries, say).

        The reading is shared: a wrapper of the same store reads its time once with it.
        """
        clock = StoreClock(backend, stage_in=self._stage_in)
        clock._reading = self._reading
        return clock

    def now_to_freshen(self) -> float:
        """The time an upload judges what it re-uses by (to touch it or not): the later estimate.

        If the store cannot be asked (it refuses writes, say), this machine's clock, with a
        warning (once per store).
        """
        try:
            return max(self._store_now(), time.time())
        except Exception as e:  # any failure leaves this machine's clock, as before
            if not self._reading.warned:
                self._reading.warned = True
                _log.warning(
                    "could not read the time of %s (%s); an upload judges ages with this "
                    "machine's clock, which may be skewed",
                    self._backend.describe(),
                    e,
                )
            return time.time()

    def now_to_delete(self) -> float:
        """The time gc judges what is old enough to delete by: the earlier estimate.

        Raises:
            StoreClockError: The store's time could not be read: gc must not judge ages by
                this machine's clock alone, which may run ahead.
        """
        try:
            return min(self._store_now(), time.time())
        except Exception as e:
            raise StoreClockError(
                f"could not read the time of {self._backend.describe()} ({e}); gc judges "
                "ages on the store's clock (read by writing and deleting an empty object: "
                f"under {CLOCK_PREFIX} on a remote store, a temp file in a local store's "
                f"{self._stage_in}/) and deleted nothing"
            ) from e

    def _store_now(self) -> float:
        reading, probe = self._reading, None
        with reading.lock:
            if reading.anchor is None:
                failed = reading.failure
                if failed is not None and time.monotonic() - failed[1] < _ASK_AGAIN_SECONDS:
                    raise _Unreadable(failed[0])  # a new one: raising the same one grows it
                try:
                    reading.anchor, probe = self._read()
                except Exception as e:
                    reading.failure = (str(e), time.monotonic())
                    raise
            stamped, at = reading.anchor
        if probe is not None:
            # Outside the lock: other threads need only the reading. Kept whatever the
            # delete does: a role may write but not delete (the empty object then stays, as
            # one a killed process leaves; gc collects both).
            with contextlib.suppress(Exception):
                self._backend.remove(probe)
        return stamped + (time.monotonic() - at)

    def _read(self) -> tuple[tuple[float, float], str | None]:
        """The anchor, and the key of the probe object to delete (None on a local store)."""
        stager = staging_of(self._backend)
        if stager is not None:
            staged = stager.stage(self._stage_in)
            try:
                # The file system set this time when it created the file.
                return _anchor(os.fstat(staged.fd).st_mtime), None
            finally:
                staged.discard()
        key = f"{CLOCK_PREFIX}{uuid.uuid4().hex}"
        self._backend.write(key, io.BytesIO(b""))
        try:
            return _anchor(self._backend.stat(key).modified), key
        except BaseException:
            with contextlib.suppress(Exception):
                self._backend.remove(key)
            raise


class _Reading:
    """A store's time as read once, shared by the clocks of wrappers of that store."""

    def __init__(self) -> None:
        self.lock = ForkSafeLock()  # released in a forked child
        # (the store's time of the reading, time.monotonic() then), once read.
        self.anchor: tuple[float, float] | None = None
        # The last failed reading's message and when (monotonic): not asked again for a
        # while, so a store that refuses the probe costs one request a minute, not one per
        # decision.
        self.failure: tuple[str, float] | None = None
        self.warned = False

    def __getstate__(self) -> dict[str, Any]:
        # An unpickled copy (a spawn worker, maybe on another machine) asks the store again:
        # the anchor's monotonic time means nothing there.
        return {**self.__dict__, "anchor": None, "failure": None}


class _Unreadable(Exception):
    """A reading that failed less than a minute ago (its message)."""


# How long after a failed reading the store is not asked again.
_ASK_AGAIN_SECONDS = 60.0

# Within this many seconds the store's stamp and this machine's clock agree: S3 stamps whole
# seconds, and a round trip lies between a stamp and its reading here, so this machine's finer
# reading is then the better one (an object written just before gc is then older than "now",
# as with a grace period of 0 it must be). Far less than any margin gc's argument relies on.
_AGREE_SECONDS = 5.0


def _anchor(stamped: float) -> tuple[float, float]:
    """(the store's time now, time.monotonic() now), from a stamp the store just made."""
    local, at = time.time(), time.monotonic()
    return (local if abs(stamped - local) <= _AGREE_SECONDS else stamped), at
