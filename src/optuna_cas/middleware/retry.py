"""Retry policy and the one loop that applies it.

A policy is a small immutable value (urllib3's habit): the delay before attempt *n* and whether
to give up. Sleeping and randomness are injected so tests never sleep and are repeatable.
"""

from __future__ import annotations

import importlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from optuna_cas.backends.remote import Fault
from optuna_cas.exceptions import ArtifactNotFound, OptunaCasError, TransientBackendError

__all__ = ["Retrier", "RetryPolicy", "is_transient"]

logger = logging.getLogger("optuna_cas.retry")
T = TypeVar("T")

# Optuna's own stores raise the SDKs' errors untranslated. To wrap them, an error whose class
# comes from one of these packages is judged by that SDK's one error table, the very table our
# backend uses to translate it (imported only when such an error shows up).
_SDK_TABLES: tuple[tuple[frozenset[str], str, str], ...] = (
    (
        frozenset({"botocore", "boto3", "s3transfer", "urllib3"}),
        "optuna_cas.backends.s3",
        "classify_s3_error",
    ),
    (
        frozenset({"google", "requests", "urllib3", "http"}),
        "optuna_cas.backends.gcs",
        "classify_gcs_error",
    ),
)


def is_transient(error: BaseException) -> bool:
    """Whether retrying the operation that raised ``error`` may succeed.

    Our stores translate every SDK error at the backend boundary, so for them this is simply
    "is it a :class:`~optuna_cas.exceptions.TransientBackendError`". Never transient: a missing
    artifact (ours or Optuna's), invalid input, integrity errors, and any other optuna-cas
    error. For errors from other stores (Optuna's own, wrapped by ``Backoff``): an SDK's error is
    judged by that SDK's error table (:func:`~optuna_cas.backends.s3.classify_s3_error`,
    :func:`~optuna_cas.backends.gcs.classify_gcs_error`), and a bare connection reset or
    timeout is transient.

    Example:
        >>> is_transient(ConnectionResetError()), is_transient(ValueError("bad id"))
        (True, False)
    """
    if isinstance(error, TransientBackendError):
        return True
    if isinstance(error, OptunaCasError):  # ArtifactNotFound, IntegrityError, BackendError, ...
        return False
    if type(error).__name__ == "ArtifactNotFound":  # Optuna's class, without importing it
        return False
    transient = _judged_by_sdk_table(error)
    if transient is not None:
        return transient
    return isinstance(error, ConnectionError | TimeoutError)


def _judged_by_sdk_table(error: BaseException) -> bool | None:
    """The verdict of the error table of the SDK ``error`` comes from; ``None`` if none."""
    packages = {cls.__module__.partition(".")[0] for cls in type(error).__mro__}
    for roots, module, function in _SDK_TABLES:
        if not packages & roots:
            continue
        try:
            classify = getattr(importlib.import_module(module), function)
            verdict = classify(error)
        except ImportError:  # e.g. a urllib3 error where only the other SDK is installed
            continue
        if verdict is not None:
            return bool(verdict[0] is Fault.TRANSIENT)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: Optuna's ``Backoff`` schedule, plus jitter.

    The delay before retry *n* (0-based) is ``min(min_delay * multiplier**n, max_delay)``;
    with jitter it is drawn uniformly from the upper half of that, so that many workers hit by
    one outage do not retry in lockstep yet never retry sooner than half the schedule.

    Attributes:
        max_retries: Total attempts, first included (Optuna's meaning).
        multiplier: Growth factor of the delay.
        min_delay: First value of the schedule in seconds (the first delay itself with
            jitter off; with jitter on, between half of it and it).
        max_delay: Cap on any delay in seconds.
        jitter: Randomise delays (on by default).

    Example:
        >>> policy = RetryPolicy(jitter=False)
        >>> [policy.delay(n) for n in (0, 1, 2)], policy.delay(20)
        ([0.1, 0.2, 0.4], 30)
    """

    max_retries: int = 10
    multiplier: float = 2
    min_delay: float = 0.1
    max_delay: float = 30
    jitter: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or self.max_retries < 1:
            raise ValueError(f"max_retries must be an int >= 1, got {self.max_retries!r}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if self.min_delay < 0 or self.max_delay < self.min_delay:
            raise ValueError(
                f"need 0 <= min_delay <= max_delay, got {self.min_delay!r}, {self.max_delay!r}"
            )

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (0 for the first retry).

        Example:
            >>> import random
            >>> 0.05 <= RetryPolicy().delay(0, random.Random(1)) <= 0.1
            True
        """
        base = min(self.min_delay * self.multiplier**retry_number, self.max_delay)
        if not self.jitter:
            return base
        return base * (0.5 + 0.5 * (rng or random).random())


class Retrier:
    """Runs operations under a :class:`RetryPolicy`, logging each retry at WARNING.

    Args:
        policy: The schedule.
        sleep: Replaces ``time.sleep`` (tests pass a recorder).
        rng: Source of jitter.

    Example:
        >>> calls = []
        >>> def flaky():
        ...     calls.append(1)
        ...     if len(calls) < 3:
        ...         raise ConnectionResetError("reset")
        ...     return "ok"
        >>> Retrier(RetryPolicy(), sleep=lambda s: None).call("read x", flaky), len(calls)
        ('ok', 3)
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._rng = rng or random.Random()

    def call(
        self,
        operation: str,
        fn: Callable[[], T],
        *,
        before_retry: Callable[[], object] | None = None,
        missing_after_retry: Callable[[], T] | None = None,
    ) -> T:
        """Run ``fn`` until it succeeds, fails permanently, or attempts run out.

        Args:
            operation: Described in log messages, e.g. ``"write s3://b/blobs/..."``.
            fn: The operation.
            before_retry: Restores state before each retry (e.g. rewinds a stream).
            missing_after_retry: If a *retry* raises ``ArtifactNotFound``, return this instead:
                for deletes, where an earlier attempt may have succeeded but lost its answer.

        Returns:
            What ``fn`` returned.

        Raises:
            BaseException: The last error, unchanged, when it is permanent or attempts ran out.
        """
        attempt = 1
        while True:
            try:
                return fn()
            except ArtifactNotFound:
                if attempt > 1 and missing_after_retry is not None:
                    return missing_after_retry()
                raise
            except Exception as error:
                if not is_transient(error) or attempt >= self.policy.max_retries:
                    raise
                delay = self.policy.delay(attempt - 1, self._rng)
                logger.warning(
                    "%s failed on attempt %d of %d (%s: %s); retrying in %.2fs",
                    operation,
                    attempt,
                    self.policy.max_retries,
                    type(error).__name__,
                    error,
                    delay,
                )
                self._sleep(delay)
                if before_retry is not None:
                    before_retry()
                attempt += 1
