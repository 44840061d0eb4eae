"""Optuna's ``ArtifactNotFound`` without importing the cloud SDKs behind ``optuna.artifacts``.

Our :class:`~optuna_cas.exceptions.ArtifactNotFound` must subclass Optuna's, so that
``except optuna.artifacts.exceptions.ArtifactNotFound`` (in user code, in optuna-dashboard)
catches ours. But ``import optuna.artifacts.exceptions`` first runs
``optuna/artifacts/__init__.py``, which imports boto3 and google-cloud-storage: 0.4 s on every
``optuna-cas`` command and every ``import optuna_cas``, for two SDKs most commands never use.

So the small module ``optuna/artifacts/exceptions.py`` is loaded on its own, from its file,
and registered in ``sys.modules`` under its real name. A later ``import optuna.artifacts``
(by the user, Optuna or the dashboard) finds it there and reuses the *same* module object, so
there is only ever one ``ArtifactNotFound`` class. The one thing a normal import would also
have done, binding ``exceptions`` as an attribute of the package, is done by a finder that
waits on ``sys.meta_path`` for the package to be imported.

``optuna.exceptions`` (which it imports) is loaded the same way when Optuna itself is not
imported yet: ``optuna/__init__.py`` imports all of Optuna, 0.25 s that a command touching no
study need not pay. Optuna's ``__init__`` later takes it from ``sys.modules`` (``from optuna
import exceptions``), so there is one ``OptunaError`` too.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["optuna_artifact_exceptions"]

_MODULE = "optuna.artifacts.exceptions"
_PACKAGE = "optuna.artifacts"


def optuna_artifact_exceptions() -> ModuleType | None:
    """The module ``optuna.artifacts.exceptions``, or None if Optuna is not installed.

    Loaded without ``optuna.artifacts``'s ``__init__`` (and so without boto3 and
    google-cloud-storage) unless that package is already imported.

    Example:
        >>> module = optuna_artifact_exceptions()
        >>> import optuna.artifacts.exceptions
        >>> module is optuna.artifacts.exceptions
        True
    """
    loaded = sys.modules.get(_MODULE)
    if loaded is not None:
        return loaded
    if _PACKAGE in sys.modules:  # already imported: the normal import costs nothing more
        return importlib.import_module(_MODULE)
    try:
        top = importlib.util.find_spec("optuna")  # a top-level spec: nothing of it runs
    except (ImportError, ValueError):
        top = None
    if top is None or top.submodule_search_locations is None:
        return None
    if "optuna" in sys.modules:
        folders = importlib.util.find_spec(_PACKAGE)
    else:
        # ``optuna/__init__.py`` imports all of Optuna (0.25 s); its ``exceptions`` imports
        # nothing. Loaded alone, it is the module a later ``import optuna`` reuses (that
        # ``from optuna import exceptions`` takes it from sys.modules), so there is one
        # OptunaError, and a command that never touches a study never pays for Optuna.
        _load_alone("optuna.exceptions", top.submodule_search_locations)
        folders = importlib.machinery.PathFinder.find_spec(_PACKAGE, top.submodule_search_locations)
    locations = folders.submodule_search_locations if folders is not None else None
    if locations is None:  # an unusual installation: the ordinary way
        return importlib.import_module(_MODULE)
    module = _load_alone(_MODULE, locations)
    if module is None:
        return importlib.import_module(_MODULE)
    sys.meta_path.insert(0, _BindOnPackageImport(module))
    return module


def _load_alone(name: str, folders: Sequence[str]) -> ModuleType | None:
    """Run the module ``name`` found in ``folders`` without its package's ``__init__``."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.machinery.PathFinder.find_spec(name, list(folders))
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class _BindOnPackageImport(importlib.abc.MetaPathFinder):
    """Sets ``optuna.artifacts.exceptions`` on the package when ``optuna.artifacts`` loads.

    A submodule found already in ``sys.modules`` is not bound to its package by the import
    system; without this, ``optuna.artifacts.exceptions.ArtifactNotFound`` would raise
    AttributeError after ``import optuna.artifacts``.
    """

    def __init__(self, exceptions: ModuleType) -> None:
        self._exceptions = exceptions

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _PACKAGE:
            return None
        # The real spec, from the finders after this one (sys.meta_path is being iterated:
        # this finder removes itself later, when the package executes).
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: importlib.machinery.ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _BindingLoader(spec.loader, self._exceptions, self)
                return spec
        return None


class _BindingLoader(importlib.abc.Loader):
    """Delegates to the package's real loader after binding ``exceptions`` on the module."""

    def __init__(self, loader: Any, exceptions: ModuleType, finder: _BindOnPackageImport) -> None:
        self._loader = loader
        self._exceptions = exceptions
        self._finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self._finder)
        module.exceptions = self._exceptions  # type: ignore[attr-defined]
        # From here on the package is an ordinary module of its real loader.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        # get_resource_reader, is_package, get_code, ...: the real loader's.
        return getattr(self._loader, name)
