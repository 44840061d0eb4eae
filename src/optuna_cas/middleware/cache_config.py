"""Where the blob cache lives, how big it may grow, and what it reports.

Example:
    >>> DEFAULT_SIZE_LIMIT == 10 * 2**30
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from optuna_cas.exceptions import StoreConfigError

__all__ = [
    "CACHE_DATABASE",
    "CACHE_DIR_ENV",
    "DEFAULT_SIZE_LIMIT",
    "CacheInfo",
    "MaterializeMode",
    "default_cache_dir",
]

#: Environment variable that overrides the default cache directory.
CACHE_DIR_ENV = "OPTUNA_CAS_CACHE_DIR"
#: The index database diskcache keeps in a cache directory: there is a cache if it is there.
CACHE_DATABASE = "cache.db"
#: Default bound on the cache's size on disk: 10 GiB.
DEFAULT_SIZE_LIMIT = 10 * 1024**3

MaterializeMode = Literal["copy", "hardlink"]


def default_cache_dir() -> Path:
    """The cache directory used when none is given.

    ``$OPTUNA_CAS_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/optuna-cas`` (if ``XDG_CACHE_HOME``
    is an absolute path, as the XDG spec requires), else ``~/.cache/optuna-cas``.

    Example:
        >>> import os
        >>> os.environ["OPTUNA_CAS_CACHE_DIR"] = "/tmp/my-cache"
        >>> str(default_cache_dir())
        '/tmp/my-cache'
        >>> del os.environ["OPTUNA_CAS_CACHE_DIR"]
    """
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "optuna-cas"
    try:
        home = Path.home()
    except RuntimeError as e:  # no $HOME and no passwd entry (containers with random UIDs)
        raise StoreConfigError(
            f"no home directory for the default cache ({e}): pass a directory or set "
            f"{CACHE_DIR_ENV}"
        ) from e
    return home / ".cache" / "optuna-cas"


@dataclass(frozen=True)
class CacheInfo:
    """A snapshot of a cache's state.

    Attributes:
        directory: Where the cache lives.
        entries: Number of cached blobs.
        size_bytes: Size on disk (value files plus the index database); kept within
            ``size_limit``.
        size_limit: The bound enforced by this process.
        hits: Lookups that found an entry, by every process sharing the directory (an unusable
            entry found and dropped counts here too).
        misses: Lookups that found none (each followed by a fill).

    Example:
        >>> import tempfile
        >>> from optuna_cas import DiskBlobCache
        >>> info = DiskBlobCache(tempfile.mkdtemp(), size_limit=2**20).info()
        >>> info.entries, info.size_limit, info.hits
        (0, 1048576, 0)
    """

    directory: Path
    entries: int
    size_bytes: int
    size_limit: int
    hits: int
    misses: int
