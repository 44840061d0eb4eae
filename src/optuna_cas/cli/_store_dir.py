"""Whether a directory named on the command line is an artifact store, or a mistyped path.

A store directory holds nothing but our folders (``refs/``, ``blobs/``, ...), what Optuna's own
``FileSystemArtifactStore`` writes (one file per artifact ID, and ``upload_artifact`` makes
every ID a UUID), hidden names, and what operating systems and volumes put into any folder
(:data:`~optuna_cas.content.NOT_ARTIFACTS`: ``lost+found``, ``Thumbs.db``, ...). Any other entry
makes the command line refuse the directory: a probe pointed ``--store`` at a project
directory, saw its source files listed as artifacts, and ``rm train.py`` deleted one; a review
found a folder of subfolders and dotfiles (a home directory), a LaTeX project with a ``refs/``
and a folder of symlinks accepted too. (The Python API keeps Optuna's rule, any directory.)
"""

from __future__ import annotations

import os
import re
import stat

from optuna_cas.blob_maintenance import BLOB_PREFIX, QUARANTINE_PREFIX
from optuna_cas.chunks.layout import INDEX_PREFIX, MANIFEST_PREFIX, PACK_PREFIX
from optuna_cas.content import NOT_ARTIFACTS
from optuna_cas.refstore import REF_PREFIX

__all__ = ["not_a_store_reason"]

_OUR_DIRS = frozenset(
    p.rstrip("/")
    for p in (
        REF_PREFIX,
        BLOB_PREFIX,
        QUARANTINE_PREFIX,
        PACK_PREFIX,
        MANIFEST_PREFIX,
        INDEX_PREFIX,
    )
)
# str(uuid.uuid4()), the only form of ID Optuna's upload_artifact writes.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def not_a_store_reason(path: str) -> str | None:
    """Why the existing directory ``path`` is not a store; ``None`` if it is one (or is absent).

    Example:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp(); not_a_store_reason(d) is None  # empty: a new store
        True
        >>> os.mkdir(os.path.join(d, "refs")); os.mkdir(os.path.join(d, "blobs"))
        >>> not_a_store_reason(d) is None
        True
        >>> _ = open(os.path.join(d, "train.py"), "w").write("code")
        >>> print(not_a_store_reason(d))
        'train.py' is neither a folder of a store nor a file Optuna's store writes (one per artifact ID, a UUID)
        >>> print(not_a_store_reason(os.path.join(d, "refs")))
        it is the refs/ directory inside a store: give its parent directory
    """
    try:
        with os.scandir(path) as entries:
            kinds = {e.name: e.stat(follow_symlinks=False).st_mode for e in entries}
    except OSError:
        return None  # absent or not a directory: opening the store reports it
    here = os.path.abspath(path)
    name, parent = os.path.basename(here), os.path.dirname(here)
    try:
        beside = set(os.listdir(parent))
    except OSError:
        beside = set()
    # Beside another of ours: a store's own refs/ (whose files are named by UUIDs too).
    if name in _OUR_DIRS and _OUR_DIRS.intersection(beside) - {name}:
        return f"it is the {name}/ directory inside a store: give its parent directory"
    for entry, mode in sorted(kinds.items()):
        # A folder of ours may be a symlink (blobs/ moved to a larger disk; or planted: the
        # store's own checks deal with where it leads).
        ours = entry in _OUR_DIRS and (stat.S_ISDIR(mode) or stat.S_ISLNK(mode))
        optunas = stat.S_ISREG(mode) and _UUID.fullmatch(entry)
        if not (ours or optunas or entry.startswith(".") or entry.casefold() in NOT_ARTIFACTS):
            return (
                f"{entry!r} is neither a folder of a store nor a file Optuna's store writes "
                "(one per artifact ID, a UUID)"
            )
    return None
