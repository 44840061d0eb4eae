"""Progress reporting for long operations: a plain callback the CLI turns into a bar."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "ProgressCallback"]

# progress(task, done, total): ``done`` units of ``total`` (None when unknown) of ``task``
# (e.g. "verify: hashing blobs", bytes). Called often; keep it cheap.
ProgressCallback = Callable[[str, int, int | None], None]


class Progress:
    """Accumulates progress for one task and forwards it to an optional callback.

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
        if callback is not None:
            callback(task, 0, total)

    def advance(self, amount: int) -> None:
        """Record ``amount`` more units done."""
        self.done += amount
        if self._callback is not None:
            self._callback(self.task, self.done, self.total)
