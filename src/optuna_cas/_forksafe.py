"""Locks and critical sections that a ``fork()`` cannot leave half-held in the child.

A child process gets a copy of every lock, but only the thread that forked: a lock another
thread held at that moment stays held in the child forever (found by a probe: a child forked
while a thread evicted from the cache hung on its first cache access). Two tools:

- :class:`ForkSafeLock`: a lock that is new (released) in every child, and in every
  unpickled copy, so objects holding one can be passed to ``spawn`` workers.
- :class:`ForkGate`: operations a fork waits for. SQLite keeps per-process lock bookkeeping
  that a child inherits: a child forked while another thread was inside a cache database
  transaction waited out the database timeout (60 s) on every later cache call. A fork first
  waits (a few seconds at most) until no gated operation is running; should one still be
  running, the child is told so (:attr:`ForkGate.spoiled`) and must not use what it guards.

Neither is left held by a ``KeyboardInterrupt`` (Ctrl-C). CPython raises it where a call
returns or a Python function starts, so a lock taken by a call inside a Python ``__enter__``
(``Condition``'s, say), or counted free by a Python ``__exit__``, could be left held: the next
upload, cache read or fork waited forever (found by a probe and a review). So both are taken
and released by the ``with`` statement itself, in C: :class:`ForkSafeLock` is a
``threading.RLock``, and being inside a section is holding one. The fork hooks themselves are
Python code that takes and releases many locks; on the main thread (the only one a Ctrl-C
interrupts) they hold ``SIGINT`` back until they are done (see :func:`_hold_interrupts`).
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["ForkGate", "ForkSafeLock", "ForkedMidOperation"]

# How long a fork waits for gated operations to end before forking regardless.
FORK_WAIT_SECONDS = 5.0

_locks: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


class ForkedMidOperation(RuntimeError):
    """Raised by a :class:`ForkGate` in a child forked while one of its sections ran."""


class ForkSafeLock(_thread.RLock):  # type: ignore[misc]
    """A lock that is released in a forked child and in an unpickled copy.

    A re-entrant ``threading.RLock`` whose ``with`` statement takes it in C: no Python code
    runs between the acquire and the start of the block, so a ``KeyboardInterrupt`` either
    leaves it free or arrives inside the block, whose exit releases it.

    Example:
        >>> import pickle
        >>> lock = ForkSafeLock()
        >>> with lock:
        ...     copy = pickle.loads(pickle.dumps(lock))
        ...     copy._is_owned()
        False
    """

    def __init__(self) -> None:
        super().__init__()
        _locks.add(self)

    def __reduce__(self) -> tuple[type[ForkSafeLock], tuple[()]]:
        return (type(self), ())

    def owned(self) -> bool:
        """Whether the calling thread holds this lock.

        Example:
            >>> lock = ForkSafeLock()
            >>> with lock:
            ...     lock.owned()
            True
        """
        return bool(self._is_owned())  # type: ignore[attr-defined]

    def _renew(self) -> None:
        self._at_fork_reinit()  # type: ignore[attr-defined]


class ForkGate:
    """Critical sections that ``os.fork()`` waits for (see the module notes).

    Each thread has its own re-entrant lock, held while it is inside a section (so sections
    nest). A fork takes every thread's lock: it waits for the sections running to end, and no
    new one starts until the fork is done. A child whose fork could not take them all (a
    section took longer than :data:`FORK_WAIT_SECONDS`, or the forking thread was inside one)
    has :attr:`spoiled` set. The child decides that from the locks it inherited, not from what
    the parent wrote down: a fork interrupted while it waited (its hooks' exceptions are
    ignored, and it forks anyway) spoils the child it should.

    Entering and leaving is the ``with`` statement taking and releasing a lock, in C: nothing
    a ``KeyboardInterrupt`` can cut in half.

    Example:
        >>> gate = ForkGate()
        >>> with gate.section():
        ...     with gate.section():
        ...         gate.spoiled
        False
    """

    def __init__(self) -> None:
        self._mine = threading.local()  # this thread's lock
        self._all: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()  # dead threads' go
        self.spoiled = False
        _gates.add(self)

    def section(self) -> ForkSafeLock:
        """A context manager: its body is one operation a fork waits for.

        Raises:
            ForkedMidOperation: This is a child forked while a section was running.
        """
        if self.spoiled:
            raise ForkedMidOperation(
                "this process was forked while another thread was inside it; not used here"
            )
        lock: ForkSafeLock | None = getattr(self._mine, "lock", None)
        if lock is None:
            lock = ForkSafeLock()
            self._all.add(lock)  # before it is this thread's: a fork never misses it
            self._mine.lock = lock
        return lock

    def _before_fork(self, deadline: float) -> None:
        # Every other thread's lock, until the deadline; the forking thread's own is not
        # taken (a fork from inside a section cannot wait for that section to end).
        own = getattr(self._mine, "lock", None)
        for lock in list(self._all):
            if lock is not own:
                lock.acquire(timeout=max(deadline - time.monotonic(), 0.0))

    def _after_fork_in_parent(self) -> None:
        # What this thread owns, other than its own lock, the hook above took: once each. An
        # interrupt here would leave a thread waiting for its own lock forever, so the loop
        # runs to the end first and raises it after.
        own = getattr(self._mine, "lock", None)
        interrupted: BaseException | None = None
        while True:
            try:
                held = [lock for lock in list(self._all) if lock is not own and lock.owned()]
                if not held:
                    break
                held[0].release()
            except BaseException as e:
                interrupted = e
        if interrupted is not None:
            raise interrupted

    def _after_fork_in_child(self) -> None:
        own = getattr(self._mine, "lock", None)
        # A section still running at the fork: another thread's lock the fork did not take
        # (it is held by a thread the child does not have), or this thread's own.
        running = own is not None and own.owned()
        for lock in list(self._all):
            if lock is not own and not lock.owned():
                running = True
        self.spoiled = self.spoiled or running
        self._mine = threading.local()
        self._all = weakref.WeakSet()


_gates: weakref.WeakSet[ForkGate] = weakref.WeakSet()
# One fork at a time runs the hooks (two threads may fork at once).
_fork_lock = ForkSafeLock()

# While the hooks hold SIGINT back: the handler they replaced (else []), and the pid of each
# process a SIGINT reached meanwhile. _replaced keeps the last replaced handler after that.
_Handler = Callable[[int, FrameType | None], Any] | int
_held_handler: list[_Handler] = []
_held_interrupts: list[int] = []
_replaced: list[_Handler] = [signal.default_int_handler]


def _note_interrupt(signum: int, frame: FrameType | None) -> None:
    if _held_handler:
        _held_interrupts.append(os.getpid())
    else:
        # Still installed after the hold ended (an interrupt cut its restore short): act as
        # the handler it replaced, so that Ctrl-C is never ignored for good (review).
        _deliver(_replaced[0])


def _hold_interrupts() -> None:
    """Hold ``SIGINT`` back until the hooks restore the handler (main thread only).

    A ``KeyboardInterrupt`` inside the hooks after the fork left other threads' locks held by
    the forking thread (each of those threads then waited for good at its next section), or
    left a child unspoiled whose cache was mid-transaction (found in review). A Ctrl-C while
    they run is noted instead and handed to the handler once they are done, so the wait of
    :func:`_before_fork` (at most :data:`FORK_WAIT_SECONDS`) delays it. The default handler
    then raises ``KeyboardInterrupt`` inside the hook, which CPython reports and ignores, as
    it always did for a Ctrl-C during a fork: the parent carries on (see reliability.md).
    """
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread gets KeyboardInterrupt, and only it may set handlers
    previous = signal.getsignal(signal.SIGINT)
    if previous is _note_interrupt:  # left by a restore cut short (see _note_interrupt)
        previous = _replaced[0]
    if previous is None or _held_handler:
        return  # a handler installed from C: not ours to swap and restore
    _held_interrupts.clear()  # none noted by an earlier hold may count for this one
    _replaced[0] = previous
    # Noted before the swap: an interrupt between the two leaves the same handler restored.
    _held_handler.append(previous)
    try:
        signal.signal(signal.SIGINT, _note_interrupt)
    except ValueError:  # not the thread signals go to (a subinterpreter): no hold, still wait
        _held_handler.clear()


def _restore_handler() -> _Handler | None:
    """Put the held handler back; return it if a Ctrl-C was noted meanwhile, else None.

    Only on the main thread: another thread's fork must leave the main thread's hold alone
    (the main thread may be holding for a fork of its own), and only the main thread may set
    handlers (review: a ValueError in the hook). In a child forked by another thread, that
    thread is the main thread. Should an interrupt cut this short, _note_interrupt stays
    installed but acts as the handler, and the next hold starts afresh.
    """
    if not _held_handler or threading.current_thread() is not threading.main_thread():
        return None
    handler = _held_handler.pop()  # the hold ends: a SIGINT from here goes to the handler
    noted = os.getpid() in _held_interrupts  # in a child, only one that reached it
    _held_interrupts.clear()
    signal.signal(signal.SIGINT, handler)
    return handler if noted else None


def _deliver(handler: _Handler) -> None:
    if callable(handler):
        # Called, not raised again: raise_signal would also write asyncio's wakeup fd a
        # second time for one Ctrl-C (found in review).
        handler(signal.SIGINT, None)
    elif handler == signal.SIG_DFL:
        signal.signal(signal.SIGINT, handler)  # (from _note_interrupt it is not back yet)
        signal.raise_signal(signal.SIGINT)


def _before_fork() -> None:
    # A Ctrl-C before the hold ends this hook early; os.fork ignores the exception (CPython
    # prints it) and forks anyway, and the child learns from the locks it inherits whether to
    # trust its caches.
    _hold_interrupts()
    _fork_lock.acquire()
    deadline = time.monotonic() + FORK_WAIT_SECONDS
    for gate in list(_gates):
        gate._before_fork(deadline)


def _after_fork_in_parent() -> None:
    noted = None
    try:
        for gate in list(_gates):
            gate._after_fork_in_parent()
    finally:
        try:
            # Before _fork_lock goes: a thread waiting on it could fork between our release
            # and the restore, and its child would ignore Ctrl-C for good (review).
            noted = _restore_handler()
        finally:
            while _fork_lock.owned():
                _fork_lock.release()
    if noted is not None:
        _deliver(noted)


def _after_fork_in_child() -> None:
    noted = None
    try:
        for gate in list(_gates):
            gate._after_fork_in_child()
        # Not a lock this thread holds in a with statement: renewed, its exit would release
        # a lock not held and raise (a fork from inside a section; found in review). The
        # hooks' own _fork_lock is renewed: no with statement releases it.
        for lock in list(_locks):
            if lock is _fork_lock or not lock.owned():
                lock._renew()
    finally:
        noted = _restore_handler()  # else the child would ignore Ctrl-C for good
    if noted is not None:
        _deliver(noted)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
