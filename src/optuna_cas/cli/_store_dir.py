"""Whether a directory named on the command line is an artifact store, or a mistyped path.

A probe pointed ``--store`` at a project directory, saw its source files listed as artifacts,
and ``rm train.py`` deleted one. Two rules keep that from happening, with room for real stores:

* A directory with one of our folders (``refs/``, ``blobs/``, ...) is a store, whatever else it
  holds (a README, files of an old Optuna store). Without one, it is taken only if it holds
  nothing but what Optuna's own ``FileSystemArtifactStore`` writes (one file per artifact ID,
  and ``upload_artifact`` makes every ID a UUID), hidden names and what operating systems and
  volumes put into any folder (:data:`~optuna_cas.content.NOT_ARTIFACTS`); a review found a
  home directory (subfolders and dotfiles) taken for a store.
* ``rm`` deletes a file no ref names only under a UUID (see ``cli/_files.py``): a LaTeX
  project's ``refs/`` or a ``.git`` directory makes a folder look like a store, but its
  ``main.tex`` or ``config`` is still no artifact (found in review).

The Python API keeps Optuna's rule: any directory, any file.
"""

from __future__ import annotations

import os
import re

from optuna_cas.content import NOT_ARTIFACTS, OUR_PREFIXES

__all__ = ["looks_like_an_optuna_id", "not_a_store_reason"]

_OUR_DIRS = frozenset(p.rstrip("/") for p in OUR_PREFIXES)
# str(uuid.uuid4()), the only form of ID Optuna's upload_artifact writes.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def looks_like_an_optuna_id(name: str) -> bool:
    """Whether ``name`` is an ID Optuna's ``upload_artifact`` could have made (a UUID).

    Example:
        >>> looks_like_an_optuna_id("0b6e1f9c-3f7e-4c53-9a39-2f1c9f5f0a11"), looks_like_an_optuna_id("x")
        (True, False)
    """
    return _UUID.fullmatch(name) is not None


def not_a_store_reason(path: str) -> str | None:
    """Why the existing directory ``path`` is not a store; ``None`` if it is one (or is absent).

    Example:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp(); not_a_store_reason(d) is None  # empty: a new store
        True
        >>> _ = open(os.path.join(d, "train.py"), "w").write("code")
        >>> print(not_a_store_reason(d))
        it has no refs/ or blobs/, and 'train.py' is not a file Optuna's store writes (one per artifact ID, a UUID)
        >>> os.mkdir(os.path.join(d, "refs")); not_a_store_reason(d) is None
        True
        >>> os.mkdir(os.path.join(d, "blobs"))
        >>> print(not_a_store_reason(os.path.join(d, "refs")))
        it is the refs/ directory inside a store: give its parent directory
    """
    strays = []
    try:
        with os.scandir(path) as entries:
            for e in entries:  # the type from the listing: no stat per entry
                if e.name in _OUR_DIRS and (e.is_dir() or e.is_symlink()):
                    return None
                ignored = e.name.startswith(".") or e.name.casefold() in NOT_ARTIFACTS
                optunas = e.is_file(follow_symlinks=False) and looks_like_an_optuna_id(e.name)
                if not (ignored or optunas):
                    strays.append(e.name)
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
    if strays:
        return (
            f"it has no refs/ or blobs/, and {min(strays)!r} is not a file Optuna's store "
            "writes (one per artifact ID, a UUID)"
        )
    return None
