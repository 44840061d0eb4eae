"""optuna-cas: a content-addressed, deduplicating, verified drop-in for ``optuna.artifacts``.

Switch by changing one import::

    from optuna_cas import FileSystemArtifactStore, upload_artifact, download_artifact

Example:
    >>> import io
    >>> from optuna_cas import MemoryArtifactStore
    >>> store = MemoryArtifactStore()
    >>> store.write("a1", io.BytesIO(b"weights")); store.write("a2", io.BytesIO(b"weights"))
    >>> len(list(store.content.iter_blobs()))
    1
"""

from __future__ import annotations

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
