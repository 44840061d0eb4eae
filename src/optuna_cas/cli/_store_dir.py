"""Whether a directory named on the command line is an artifact store, or a mistyped path.

A store directory holds our subdirectories (``refs/``, ``blobs/``, ...), or holds no file but
what Optuna's own ``FileSystemArtifactStore`` writes: one file per artifact ID, and
``upload_artifact`` makes every ID a UUID. Hidden names, other subdirectories (a volume's
``lost+found``, a NAS's ``@eaDir``) and the files operating systems drop into folders are
ignored: none of them is taken for an artifact. Any other directory is refused by the command line:
a probe pointed ``--store`` at a project directory, saw its source files listed as artifacts,
and ``rm train.py`` deleted one. (The Python API keeps Optuna's rule, any directory.)
"""

from __future__ import annotations

import os
import re

from optuna_cas.blob_maintenance import BLOB_PREFIX, QUARANTINE_PREFIX
from optuna_cas.chunks.layout import INDEX_PREFIX, MANIFEST_PREFIX, PACK_PREFIX
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
# Files operating systems leave in any folder (".DS_Store" and the like start with a dot).
_OS_FILES = frozenset({"Thumbs.db", "desktop.ini", "Desktop.ini"})
# str(uuid.uuid4()), the only form of ID Optuna's upload_artifact writes.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def not_a_store_reason(path: str) -> str | None:
    """Why the existing directory ``path`` is not a store; ``None`` if it is one (or is absent).

    Example:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp(); not_a_store_reason(d) is None  # empty: a new store
        True
        >>> _ = open(os.path.join(d, "train.py"), "w").write("code")
        >>> print(not_a_store_reason(d))
        it has no refs/ or blobs/, and 'train.py' is not a file Optuna's store writes (one per artifact ID, a UUID)
        >>> os.mkdir(os.path.join(d, "refs")); os.mkdir(os.path.join(d, "blobs"))
        >>> not_a_store_reason(d) is None
        True
        >>> print(not_a_store_reason(os.path.join(d, "refs")))
        it is the refs/ directory inside a store: give its parent directory
    """
    try:
        with os.scandir(path) as entries:
            names = {e.name: e.is_file(follow_symlinks=False) for e in entries}
    except OSError:
        return None  # absent or not a directory: opening the store reports it
    if _OUR_DIRS.intersection(names):
        return None
    here = os.path.abspath(path)
    name, parent = os.path.basename(here), os.path.dirname(here)
    # Beside another of ours: a store's own refs/ (whose files are named by UUIDs too).
    if name in _OUR_DIRS and _OUR_DIRS.intersection(os.listdir(parent)) - {name}:
        return f"it is the {name}/ directory inside a store: give its parent directory"
    strays = sorted(
        n
        for n, regular in names.items()
        if regular and not (n.startswith(".") or n in _OS_FILES or _UUID.fullmatch(n))
    )
    if strays:
        return (
            f"it has no refs/ or blobs/, and {strays[0]!r} is not a file Optuna's store "
            "writes (one per artifact ID, a UUID)"
        )
    return None
