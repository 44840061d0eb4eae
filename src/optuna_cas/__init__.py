"""optuna-cas: a content-addressed, deduplicating, verified drop-in for ``optuna.artifacts``.

Switch by changing one import::

    from optuna_cas import FileSystemArtifactStore, upload_artifact, download_artifact

Example:
    >>> import io
    >>> from optuna_cas import MemoryArtifactStore
    >>> store = MemoryArtifactStore()
    >>> weights = bytes(1 << 20)
    >>> store.write("a1", io.BytesIO(weights)); store.write("a2", io.BytesIO(weights))
    >>> len(list(store.content.iter_blobs()))   # stored once
    1
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public names are imported on first use (PEP 562): ``import optuna_cas`` and the
# ``optuna-cas`` command start fast, and a command imports only what it uses.
_WHERE: dict[str, str] = {
    "ArtifactMeta": "optuna_cas._meta",
    "ArtifactRef": "optuna_cas.refs",
    "Backoff": "optuna_cas.middleware.backoff",
    "Boto3ArtifactStore": "optuna_cas.stores.boto3",
    "CacheInfo": "optuna_cas.middleware.cache",
    "CachedArtifactStore": "optuna_cas.middleware.cache",
    "ContentAddressedArtifactStore": "optuna_cas.stores.base",
    "Digest": "optuna_cas.digest",
    "DiskBlobCache": "optuna_cas.middleware.cache",
    "FileSystemArtifactStore": "optuna_cas.stores.filesystem",
    "GCSArtifactStore": "optuna_cas.stores.gcs",
    "GcReport": "optuna_cas.operations.gc",
    "MemoryArtifactStore": "optuna_cas.stores.memory",
    "ReconcileReport": "optuna_cas.operations.reconcile",
    "StoreStats": "optuna_cas.operations.stats",
    "SyncReport": "optuna_cas.operations.sync",
    "VerifyReport": "optuna_cas.operations.verify",
    "delete_artifact": "optuna_cas._delete",
    "download_artifact": "optuna_cas._download",
    "gc": "optuna_cas.operations.gc",
    "get_all_artifact_meta": "optuna_cas._list_artifact_meta",
    "open_store": "optuna_cas.registry",
    "reconcile": "optuna_cas.operations.reconcile",
    "stats": "optuna_cas.operations.stats",
    "sync": "optuna_cas.operations.sync",
    "upload_artifact": "optuna_cas._upload",
    "verify": "optuna_cas.operations.verify",
}

if TYPE_CHECKING:
    from optuna_cas import exceptions
    from optuna_cas._delete import delete_artifact
    from optuna_cas._download import download_artifact
    from optuna_cas._list_artifact_meta import get_all_artifact_meta
    from optuna_cas._meta import ArtifactMeta
    from optuna_cas._upload import upload_artifact
    from optuna_cas.digest import Digest
    from optuna_cas.middleware.backoff import Backoff
    from optuna_cas.middleware.cache import CachedArtifactStore, CacheInfo, DiskBlobCache
    from optuna_cas.operations.gc import GcReport, gc
    from optuna_cas.operations.reconcile import ReconcileReport, reconcile
    from optuna_cas.operations.stats import StoreStats, stats
    from optuna_cas.operations.sync import SyncReport, sync
    from optuna_cas.operations.verify import VerifyReport, verify
    from optuna_cas.refs import ArtifactRef
    from optuna_cas.registry import open_store
    from optuna_cas.stores.base import ContentAddressedArtifactStore
    from optuna_cas.stores.boto3 import Boto3ArtifactStore
    from optuna_cas.stores.filesystem import FileSystemArtifactStore
    from optuna_cas.stores.gcs import GCSArtifactStore
    from optuna_cas.stores.memory import MemoryArtifactStore

__all__ = [
    "ArtifactMeta",
    "ArtifactRef",
    "Backoff",
    "Boto3ArtifactStore",
    "CacheInfo",
    "CachedArtifactStore",
    "ContentAddressedArtifactStore",
    "Digest",
    "DiskBlobCache",
    "FileSystemArtifactStore",
    "GCSArtifactStore",
    "GcReport",
    "MemoryArtifactStore",
    "ReconcileReport",
    "StoreStats",
    "SyncReport",
    "VerifyReport",
    "delete_artifact",
    "download_artifact",
    "exceptions",
    "gc",
    "get_all_artifact_meta",
    "open_store",
    "reconcile",
    "stats",
    "sync",
    "upload_artifact",
    "verify",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "exceptions":
        return importlib.import_module("optuna_cas.exceptions")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'optuna_cas' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
