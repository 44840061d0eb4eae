"""Which descriptors a test process has open, to catch leaks without miscounting.

Counts alone misread a descriptor that an unrelated finalizer closes meanwhile (the garbage
collector, another test's thread winding down): the count drops, hiding a leak of the same
size or failing an equality check. A leak is a descriptor open afterwards that was not open,
naming the same thing, before.
"""

from __future__ import annotations

import contextlib
import os


def open_fds() -> set[tuple[int, str]]:
    """``(descriptor, what it names)`` for every descriptor open now (Linux ``/proc``)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is closed by now
            fds.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
    return fds


def new_fds(before: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Descriptors open now that were not open in ``before``: empty unless something leaked."""
    return open_fds() - before
