"""Blobs as gc, verify and sync see them: listed, looked at again, removed, quarantined.

:class:`BlobMaintenance` is the part of :class:`~optuna_cas.blobstore.BlobStore` that works on
*listed* blobs (:class:`BlobInfo`), not on digests a caller asks for; the upload and read paths
stay in :mod:`optuna_cas.blobstore`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from optuna_cas.backends.base import Backend, ObjectInfo, move_aside, remove_if_unchanged
from optuna_cas.digest import ALGORITHM, Digest
from optuna_cas.exceptions import ArtifactNotFound

if TYPE_CHECKING:
    from optuna_cas.blobstore import BlobCache

__all__ = ["BLOB_PREFIX", "QUARANTINE_PREFIX", "BlobInfo", "BlobMaintenance", "blob_key"]

BLOB_PREFIX = "blobs/"
# Corrupt blobs moved aside by verify(quarantine=True): kept for inspection, never read.
QUARANTINE_PREFIX = "quarantine/"
_BLOB_KEY = re.compile(r"blobs/([a-z0-9]+)/([0-9a-f]{2})/([0-9a-f]{62})")


def blob_key(digest: Digest) -> str:
    """The backend key of a blob: ``blobs/<algorithm>/<2 hex>/<62 hex>``.

    Two-character fan-out keeps directories small on local disks (as git and dvc do).

    Example:
        >>> blob_key(Digest.of_bytes(b""))[:20]
        'blobs/blake3/af/1349'
    """
    hexdigest = digest.hexdigest
    return f"{BLOB_PREFIX}{digest.algorithm}/{hexdigest[:2]}/{hexdigest[2:]}"


@dataclass(frozen=True)
class BlobInfo:
    """A blob as listed in a backend: its digest (named by the key) and what is stored.

    Attributes:
        hexdigest: The digest named by the key.
        algorithm: Hash algorithm named by the key.
        stored_size: Bytes actually stored (a mismatch with refs means corruption).
        modified: Last modification time, epoch seconds.
        key: The backend key.

    Example:
        >>> BlobInfo("ab" * 32, "blake3", 3, 0.0, "blobs/...").stored_size
        3
    """

    hexdigest: str
    algorithm: str
    stored_size: int
    modified: float
    key: str

    @property
    def digest(self) -> Digest:
        """The digest, taking the stored size as the size.

        Example:
            >>> BlobInfo("ab" * 32, "blake3", 3, 0.0, "k").digest.size
            3
        """
        return Digest(hexdigest=self.hexdigest, size=self.stored_size, algorithm=self.algorithm)


class BlobMaintenance:
    """Listing, re-checking, conditional removal and quarantine of blobs (for the operations).

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> from optuna_cas.blobstore import BlobStore
        >>> store = BlobStore(MemoryBackend()); _ = store.put_blob(io.BytesIO(b"x"))
        >>> [info.stored_size for info in store.iter_blobs()]
        [1]
    """

    _backend: Backend
    _blob_cache: BlobCache | None

    def remove_blob(self, digest: Digest) -> None:
        """Delete a blob (callers must make sure no ref needs it: see :func:`optuna_cas.gc`).

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.blobstore import BlobStore
            >>> store = BlobStore(MemoryBackend()); d = store.put_blob(io.BytesIO(b"x"))
            >>> store.remove_blob(d); store.has_blob(d)
            False
        """
        self._backend.remove(blob_key(digest))
        if self._blob_cache is not None:
            self._blob_cache.discard(digest)

    def remove_blob_if_unchanged(self, info: BlobInfo) -> bool:
        """Delete a blob only if it is still as ``info`` saw it (gc's delete); True if deleted.

        Where the backend cannot do that atomically (S3), the blob is deleted unconditionally:
        the window between gc's last look and its delete is then the residual risk documented
        in :mod:`optuna_cas.operations.gc`.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.blobstore import BlobStore
            >>> store = BlobStore(MemoryBackend()); _ = store.put_blob(io.BytesIO(b"x"))
            >>> [store.remove_blob_if_unchanged(info) for info in store.iter_blobs()]
            [True]
        """
        seen = ObjectInfo(key=info.key, size=info.stored_size, modified=info.modified)
        removed = remove_if_unchanged(self._backend, seen)
        if removed and self._blob_cache is not None:
            self._blob_cache.discard(info.digest)
        return removed

    def restat_blob(self, info: BlobInfo) -> BlobInfo | None:
        """A listed blob looked at again (gc's last look); None if it is gone or not a file.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.blobstore import BlobStore
            >>> store = BlobStore(MemoryBackend()); _ = store.put_blob(io.BytesIO(b"x"))
            >>> [store.restat_blob(info).stored_size for info in store.iter_blobs()]
            [1]
        """
        try:
            fresh = self._backend.stat(info.key)
        except ArtifactNotFound:
            return None
        return BlobInfo(info.hexdigest, info.algorithm, fresh.size, fresh.modified, info.key)

    def open_stored_blob(self, info: BlobInfo) -> BinaryIO:
        """The bytes stored for a listed blob, unverified and never from a cache (verify's view).

        Raises:
            ArtifactNotFound: Gone meanwhile.
            IntegrityError: Not a stored object (a FIFO, socket or device at the key).

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.blobstore import BlobStore
            >>> store = BlobStore(MemoryBackend()); _ = store.put_blob(io.BytesIO(b"x"))
            >>> [store.open_stored_blob(info).read() for info in store.iter_blobs()]
            [b'x']
        """
        return self._backend.open_reader(info.key)

    def quarantine_blob(self, info: BlobInfo) -> None:
        """Move a corrupt blob under ``quarantine/``, kept for inspection and never read.

        The next upload of the same content then writes a good one. A FIFO or device there
        holds no bytes to keep: it is just removed.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.blobstore import BlobStore
            >>> store = BlobStore(MemoryBackend()); _ = store.put_blob(io.BytesIO(b"x"))
            >>> for info in list(store.iter_blobs()):
            ...     store.quarantine_blob(info)
            >>> list(store.iter_blobs()), [i.key for i in store.backend.list("quarantine/")]
            ([], ['quarantine/blobs/blake3/...'])
        """
        move_aside(self._backend, info.key, QUARANTINE_PREFIX)
        if self._blob_cache is not None:
            self._blob_cache.discard(info.digest)

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every blob in the backend (keys that do not parse as blob keys are skipped).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.blobstore import BlobStore
            >>> list(BlobStore(MemoryBackend()).iter_blobs())
            []
        """
        for info in self._backend.list(f"{BLOB_PREFIX}{ALGORITHM}/"):
            match = _BLOB_KEY.fullmatch(info.key)
            if match is None:
                continue
            algorithm, head, tail = match.groups()
            yield BlobInfo(head + tail, algorithm, info.size, info.modified, info.key)
