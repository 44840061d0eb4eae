"""Values that belong to one process: SDK clients, rebuilt in a forked child."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerProcess"]

T = TypeVar("T")


class PerProcess(Generic[T]):
    """A value (an SDK client) built now and again in a forked child.

    A client holds a pool of connections; in a forked child they are the parent's sockets, and
    two processes talking over one socket garble both conversations. ``factory`` decides what
    a rebuild means: a client passed in by the caller is the caller's to make per process, so
    its factory hands back the same object.

    Example:
        >>> clients = PerProcess(object)
        >>> clients.get() is clients.get()
        True
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._value = factory()
        self._pid = os.getpid()

    @classmethod
    def unless_given(cls, given: T | None, build: Callable[[], T]) -> PerProcess[T]:
        """``given`` as it is, in every process; or ``build()``, rebuilt per process.

        Example:
            >>> PerProcess.unless_given("theirs", str).get()
            'theirs'
        """
        if given is None:
            return cls(build)
        return cls(functools.partial(_itself, given))

    def get(self) -> T:
        """The value for this process."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._value = self._factory()
                    self._pid = os.getpid()
        return self._value


def _itself(value: T) -> T:
    return value
