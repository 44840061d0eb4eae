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

Both survive a ``KeyboardInterrupt`` (Ctrl-C) at any instant. CPython raises it where a call
returns, so a lock taken by a call inside a Python ``__enter__`` (``Condition``'s, say) could
be left held with no ``__exit__`` to come: the next upload, cache read or fork waited forever
(found by a probe). :class:`ForkSafeLock` is therefore taken by C code (the ``with`` statement
itself), and a section undoes its own bookkeeping if it is interrupted on its way in.
"""

from __future__ import annotations

import _thread
import os
import threading
import weakref

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

    def _renew(self) -> None:
        self._at_fork_reinit()  # type: ignore[attr-defined]


class ForkGate:
    """Critical sections that ``os.fork()`` waits for (see the module notes).

    Sections nest on one thread. While a fork waits, no new section starts, so the running
    ones drain. A child whose fork could not wait for every section to end (one took longer
    than :data:`FORK_WAIT_SECONDS`, or the forking thread was inside one) has :attr:`spoiled`
    set.

    Example:
        >>> gate = ForkGate()
        >>> with gate.section():
        ...     with gate.section():
        ...         gate.spoiled
        False
    """

    def __init__(self) -> None:
        self._new_lock()
        self._running = 0
        self._forking = False
        self._depth = threading.local()
        self._left_running = 0
        self.spoiled = False
        _gates.add(self)

    def _new_lock(self) -> None:
        self._lock = ForkSafeLock()
        self._drained = threading.Condition(self._lock)

    def section(self) -> _Section:
        """Run the body of a ``with`` statement as one operation a fork waits for.

        Raises:
            ForkedMidOperation: This is a child forked while a section was running.
        """
        if self.spoiled:
            raise ForkedMidOperation(
                "this process was forked while another thread was inside it; not used here"
            )
        return _Section(self)

    def _before_fork(self) -> None:
        # Held across the fork: no section starts or ends meanwhile. The forking thread's
        # own section (a fork from inside one) cannot end first: the child is spoiled then.
        own = 1 if getattr(self._depth, "n", 0) else 0
        self._lock.acquire()
        self._forking = True
        self._drained.wait_for(lambda: self._running <= own, timeout=FORK_WAIT_SECONDS)
        self._left_running = self._running

    def _after_fork_in_parent(self) -> None:
        self._forking = False
        self._drained.notify_all()
        self._lock.release()

    def _after_fork_in_child(self, *, waited: bool) -> None:
        # A gate made while the fork waited (other threads run on) was not waited for: what
        # its sections were doing then is unknown.
        left = self._left_running if waited else self._running
        self._new_lock()
        self._depth = threading.local()
        self.spoiled = self.spoiled or left > 0
        self._running = 0
        self._forking = False


class _Section:
    """One :meth:`ForkGate.section`: counted on entry, uncounted on exit or interruption.

    A class, not a generator: a ``KeyboardInterrupt`` raised inside a generator-based
    ``__enter__`` after the count went up would skip the ``finally`` meant to undo it.
    """

    __slots__ = ("_counted", "_depth", "_gate")

    def __init__(self, gate: ForkGate) -> None:
        self._gate = gate
        self._depth = 0
        self._counted = False

    def __enter__(self) -> None:
        gate = self._gate
        self._depth = getattr(gate._depth, "n", 0)
        try:
            if self._depth == 0:
                with gate._lock:
                    while gate._forking:
                        gate._drained.wait()
                    gate._running += 1
                    self._counted = True
            gate._depth.n = self._depth + 1
        except BaseException:
            self._leave()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self._leave()

    def _leave(self) -> None:
        gate = self._gate
        gate._depth.n = self._depth
        if self._counted:
            with gate._lock:
                if self._counted:
                    self._counted = False
                    gate._running -= 1
                    gate._drained.notify_all()


_gates: weakref.WeakSet[ForkGate] = weakref.WeakSet()
# One fork at a time prepares and finishes (two threads may fork at once): the gates the
# current fork waited for, which only it must release afterwards.
_fork_lock = threading.Lock()
_held: list[ForkGate] = []


def _before_fork() -> None:
    _fork_lock.acquire()
    _held[:] = list(_gates)
    for gate in _held:
        gate._before_fork()


def _after_fork_in_parent() -> None:
    try:
        for gate in _held:
            gate._after_fork_in_parent()
        _held.clear()
    finally:
        _fork_lock.release()


def _after_fork_in_child() -> None:
    global _fork_lock
    waited = set(map(id, _held))
    for gate in list(_gates):
        gate._after_fork_in_child(waited=id(gate) in waited)
    _held.clear()
    _fork_lock = threading.Lock()
    for lock in list(_locks):
        lock._renew()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
