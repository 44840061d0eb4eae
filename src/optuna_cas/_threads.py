"""Work spread over a few threads that stops when the caller is interrupted.

``with ThreadPoolExecutor() as pool`` waits for every queued task on the way out, even when
the caller's thread leaves on an exception: a Ctrl-C during ``sync`` went on copying every
remaining artifact, then reported "interrupted". Here the tasks not started yet are
cancelled instead, and only the running ones are waited for (each finishes its own steps,
so nothing is left half-written).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["map_in_threads"]

_T = TypeVar("_T")
_R = TypeVar("_R")


def map_in_threads(function: Callable[[_T], _R], items: Iterable[_T], workers: int) -> list[_R]:
    """``function`` of each item on up to ``workers`` threads; results in the items' order.

    An exception (``KeyboardInterrupt`` in the caller at once; a task's once the results
    before it in item order are collected) cancels the tasks that have not started and is
    raised after the running ones end.

    Example:
        >>> map_in_threads(lambda x: x * x, range(5), workers=2)
        [0, 1, 4, 9, 16]
    """
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="optuna-cas-work")
    try:
        futures = [pool.submit(function, item) for item in items]
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
