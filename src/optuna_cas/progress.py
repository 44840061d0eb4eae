"""Progress reporting: the one callback type every long operation accepts.

``progress(task, done, total)``: ``done`` units of ``total`` (None when unknown) of ``task``, a
short description such as ``"verify: hashing blobs"`` or ``"put model.pt"``. Units are bytes
for transfers and hashing, items otherwise. It is called often: keep it cheap. The command
line draws it with tqdm; a library user can log it, or pass nothing.

Example:
    >>> seen = []
    >>> def log(task: str, done: int, total: int | None) -> None:
    ...     seen.append(f"{task}: {done}/{total}")
    >>> p = Progress("copy", 10, log)
    >>> p.advance(10)
    >>> seen
    ['copy: 0/10', 'copy: 10/10']
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Progress", "ProgressCallback"]

ProgressCallback = Callable[[str, int, int | None], None]


class Progress:
    """Accumulates progress for one task and forwards it to an optional callback.

    Args:
        task: What is being done, shown to the user.
        total: Units to do, or None when unknown.
        callback: Told ``(task, 0, total)`` at once and ``(task, done, total)`` on each advance.

    Example:
        >>> seen = []
        >>> p = Progress("copy", 10, lambda task, done, total: seen.append((done, total)))
        >>> p.advance(4); p.advance(6)
        >>> seen
        [(0, 10), (4, 10), (10, 10)]
    """

    def __init__(self, task: str, total: int | None, callback: ProgressCallback | None) -> None:
        self.task = task
        self.total = total
        self.done = 0
        self._callback = callback
        self._lock = threading.Lock()  # threads of one task (deep verify's) advance it at once
        if callback is not None:
            callback(task, 0, total)

    def advance(self, amount: int) -> None:
        """Record ``amount`` more units done.

        Example:
            >>> p = Progress("copy", None, None); p.advance(3); p.done
            3
        """
        with self._lock:
            self.done += amount
            if self._callback is not None:
                self._callback(self.task, self.done, self.total)

    def set(self, done: int) -> None:
        """Record that ``done`` units are done in all (e.g. after a retry started over).

        Example:
            >>> p = Progress("copy", 10, None); p.advance(8); p.set(2); p.done
            2
        """
        with self._lock:
            self.done = done
            if self._callback is not None:
                self._callback(self.task, self.done, self.total)
