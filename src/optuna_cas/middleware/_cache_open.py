"""Opening the cache's database: refused fast and by name when another process holds it."""

from __future__ import annotations

import os
import sqlite3
import stat

from optuna_cas._forksafe import ForkGate
from optuna_cas.exceptions import StoreConfigError
from optuna_cas.middleware._cache_files import CACHE_ERRORS, ConfinedDisk, GatedCache
from optuna_cas.middleware.cache_config import CACHE_DATABASE

__all__ = ["open_cache"]


def open_cache(gate: ForkGate, root: str, *, timeout: float, size_limit: int) -> GatedCache:
    """The cache database in ``root``, opened with the settings DiskBlobCache relies on.

    Raises:
        StoreConfigError: It cannot be opened: unreadable, or held by another process for
            more than ``timeout`` seconds (diskcache alone waits 60 s whatever the timeout).
    """
    _wait_for_writers(root, timeout)
    try:
        return GatedCache(
            gate,
            root,
            timeout=timeout,
            disk=ConfinedDisk,
            # diskcache's default is least-recently-*stored* with a 1 GiB limit.
            eviction_policy="least-recently-used",
            size_limit=size_limit,
            # One LRU entry per insertion; see the module notes on exact eviction.
            cull_limit=1,
            # Hit/miss counters live in the shared database: counted for every process.
            statistics=1,
        )
    except CACHE_ERRORS as e:
        raise StoreConfigError(f"Cannot open the cache in {root!r}: {e}") from e


def _wait_for_writers(root: str, timeout: float) -> None:
    """Wait at most ``timeout`` seconds for the database's write lock, then let it go.

    A process stopped (Ctrl-Z) or hung inside a write holds it; diskcache's set-up then
    retries for a fixed 60 s and fails. Only a regular file is opened: anything else at that
    name is left for diskcache to refuse.
    """
    path = os.path.join(root, CACHE_DATABASE)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return
        connection = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    except (OSError, sqlite3.Error):
        return  # none yet, or unreadable: diskcache's own open names the problem
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        if "locked" in str(e):
            raise StoreConfigError(
                f"Cannot open the cache in {root!r}: another process has held its database "
                f"for over {timeout:g} s (stopped or hung while writing it?)"
            ) from e
    except sqlite3.Error:
        pass  # not a database, say: diskcache's own error names it
    finally:
        connection.close()
