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
    try:
        # Its own dependency, and the parent package every later import needs anyway. Plain
        # ``import optuna`` does not import optuna.artifacts (Optuna imports it lazily).
        import optuna.exceptions  # noqa: F401
    except ImportError:
        return None
    if _PACKAGE in sys.modules:  # already imported: the normal import costs nothing more
        return importlib.import_module(_MODULE)
    # Found, not imported: find_spec runs nothing of the package's __init__.
    package = importlib.util.find_spec(_PACKAGE)
    folders = package.submodule_search_locations if package is not None else None
    spec = importlib.machinery.PathFinder.find_spec(_MODULE, folders) if folders else None
    if spec is None or spec.loader is None:  # an unusual installation: the ordinary way
        return importlib.import_module(_MODULE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE]
        raise
    sys.meta_path.insert(0, _BindOnPackageImport(module))
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
