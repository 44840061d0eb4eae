"""What gc, verify and stats need of a chunk store: listing, looking again, deleting safely.

Kept apart from :mod:`optuna_cas.chunks.store` (the upload and read paths), as
:mod:`optuna_cas.blob_maintenance` is from the blob store: the operations call these methods
and never build a key themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import blake3

from optuna_cas._fileio import read_up_to
from optuna_cas.backends.base import Backend, ObjectInfo, move_aside, remove_if_unchanged
from optuna_cas.chunks.cached_packs import PackCache
from optuna_cas.chunks.index import read_bounded
from optuna_cas.chunks.layout import (
    INDEX_PREFIX,
    MANIFEST_PREFIX,
    PACK_MAX,
    PACK_PREFIX,
    pack_key,
    parse_content_key,
)
from optuna_cas.chunks.reader import ChunkedReader, whole_file_reader
from optuna_cas.chunks.table import (
    INDEX_MAGIC,
    MANIFEST_MAGIC,
    MAX_TABLE_BYTES,
    ChunkTable,
    parse_table,
)
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError

__all__ = ["ChunkMaintenance", "StoredObject"]


class ChunkMaintenance:
    """The maintenance half of :class:`~optuna_cas.chunks.store.ChunkStore` (its base class).

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> from optuna_cas.chunks.store import ChunkStore
        >>> list(ChunkStore(MemoryBackend()).iter_packs())
        []
    """

    _backend: Backend
    _cache: PackCache | None
    _manifests: dict[str, ChunkTable]

    @property
    def backend(self) -> Backend:
        """The backend holding the packs, manifests and index objects."""
        return self._backend

    def iter_manifests(self) -> Iterator[StoredObject]:
        """Every manifest in the backend, as listed (keys that do not parse are skipped).

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.chunks.store import ChunkStore
            >>> store = ChunkStore(MemoryBackend()); d = store.put(io.BytesIO(os.urandom(99)))
            >>> [m.hexdigest == d.hexdigest for m in store.iter_manifests()]
            [True]
        """
        return self._iter(MANIFEST_PREFIX, "manifests")

    def iter_packs(self) -> Iterator[StoredObject]:
        """Every pack in the backend, as listed (keys that do not parse are skipped).

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.chunks.store import ChunkStore
            >>> store = ChunkStore(MemoryBackend()); _ = store.put(io.BytesIO(os.urandom(99)))
            >>> [p.size for p in store.iter_packs()]
            [99]
        """
        return self._iter(PACK_PREFIX, "packs")

    def iter_indexes(self) -> Iterator[StoredObject]:
        """Every index object in the backend, as listed (keys that do not parse are skipped).

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.chunks.store import ChunkStore
            >>> store = ChunkStore(MemoryBackend()); _ = store.put(io.BytesIO(os.urandom(99)))
            >>> len(list(store.iter_indexes()))
            1
        """
        return self._iter(INDEX_PREFIX, "chunk-index")

    def _iter(self, prefix: str, kind: str) -> Iterator[StoredObject]:
        for info in self._backend.list(prefix):
            parsed = parse_content_key(info.key)
            if parsed is not None and parsed[0] == kind:
                yield StoredObject(kind, parsed[1], info.key, info.size, info.modified)

    def restat(self, obj: StoredObject) -> StoredObject | None:
        """A listed object looked at again (gc's last look); None if it is gone.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.chunks.store import ChunkStore
            >>> store = ChunkStore(MemoryBackend()); _ = store.put(io.BytesIO(os.urandom(9)))
            >>> [store.restat(p).size for p in store.iter_packs()]
            [9]
        """
        try:
            info = self._backend.stat(obj.key)
        except ArtifactNotFound:
            return None
        return dataclasses.replace(obj, size=info.size, modified=info.modified)

    def remove_if_unchanged(self, obj: StoredObject) -> bool:
        """Delete a listed pack or manifest only if it is as ``obj`` saw it; True if deleted.

        This is gc's delete: an upload that re-used the object since gc's last look wins.

        Where the backend cannot do that atomically (S3) it is deleted unconditionally:
        the residual window documented in :mod:`optuna_cas.operations.gc`.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.chunks.store import ChunkStore
            >>> store = ChunkStore(MemoryBackend()); _ = store.put(io.BytesIO(os.urandom(9)))
            >>> [store.remove_if_unchanged(p) for p in store.iter_packs()]
            [True]
        """
        seen = ObjectInfo(key=obj.key, size=obj.size, modified=obj.modified)
        removed = remove_if_unchanged(self._backend, seen)
        if removed:
            self._forget_object(obj)
        return removed

    def remove(self, obj: StoredObject) -> bool:
        """Delete a listed object unconditionally (index objects: hints); False if gone."""
        try:
            self._backend.remove(obj.key)
        except ArtifactNotFound:
            return False
        self._forget_object(obj)
        return True

    def _forget_object(self, obj: StoredObject) -> None:
        if obj.kind == "manifests":
            self._manifests.pop(obj.hexdigest, None)
        elif obj.kind == "packs" and self._cache is not None:
            self._cache.discard(Digest(obj.hexdigest, obj.size))

    def touch(self, obj: StoredObject) -> None:
        """Set a listed object's time to now (gc: an old pack stays for readers); no-op if gone."""
        with contextlib.suppress(ArtifactNotFound):
            self._backend.touch(obj.key)

    def read_manifest(self, obj: StoredObject) -> ChunkTable:
        """A listed manifest, read afresh and checked to describe the file its key names.

        Raises:
            ArtifactNotFound: Gone meanwhile.
            IntegrityError: Malformed, or it describes another file.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.chunks.store import ChunkStore
            >>> store = ChunkStore(MemoryBackend()); d = store.put(io.BytesIO(os.urandom(99)))
            >>> [store.read_manifest(m).file == d for m in store.iter_manifests()]
            [True]
        """
        name = f"manifest {obj.key!r} in {self._backend.describe()}"
        table = parse_table(read_bounded(self._backend, obj.key), name, MANIFEST_MAGIC)
        assert table.file is not None
        if table.file.hexdigest != obj.hexdigest:
            raise IntegrityError(f"{name} describes {table.file}, not the file its key names")
        return table

    def read_index(self, obj: StoredObject) -> ChunkTable:
        """A listed index object, checked to hash to its name and to parse.

        Raises:
            ArtifactNotFound: Gone meanwhile.
            IntegrityError: It does not hash to its name, or is malformed.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.chunks.store import ChunkStore
            >>> store = ChunkStore(MemoryBackend()); _ = store.put(io.BytesIO(os.urandom(99)))
            >>> [len(store.read_index(i)) for i in store.iter_indexes()]
            [1]
        """
        data = read_bounded(self._backend, obj.key)
        if blake3.blake3(data).hexdigest() != obj.hexdigest:
            raise IntegrityError(f"index object {obj.key!r} does not hash to its name")
        return parse_table(data, f"index object {obj.key!r}", INDEX_MAGIC)

    def open_stored(self, obj: StoredObject) -> BinaryIO:
        """The stored bytes of a listed object, unverified and never from a cache (verify).

        Raises:
            ArtifactNotFound: Gone meanwhile.
            IntegrityError: Not a stored object (a FIFO, socket or device at the key).
        """
        return self._backend.open_reader(obj.key)

    def read_range(self, pack: Digest, offset: int, length: int) -> bytes:
        """Up to ``length`` stored bytes of ``pack`` from ``offset``, unverified, never cached.

        Raises:
            ArtifactNotFound: The pack is gone.
            IntegrityError: Not a stored object (a FIFO, socket or device at the key).

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.chunks.store import ChunkStore
            >>> store = ChunkStore(MemoryBackend()); pack = Digest.of_bytes(b"0123456789")
            >>> store.backend.write(pack_key(pack), io.BytesIO(b"0123456789"))
            >>> store.read_range(pack, 2, 3)
            b'234'
        """
        with self._backend.open_reader(pack_key(pack), offset=offset, length=length) as reader:
            return read_up_to(reader, length)

    def read_chunks(self, table: ChunkTable, name: str) -> ChunkedReader:
        """A reader of ``table``'s chunks straight from the backend, never from a cache.

        ``reader.chunks()`` yields each entry's bytes, verified against its digest.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.chunks.store import ChunkStore
            >>> store = ChunkStore(MemoryBackend()); data = os.urandom(99)
            >>> d = store.put(io.BytesIO(data)); (m,) = store.iter_manifests()
            >>> with store.read_chunks(store.read_manifest(m), "x") as r:
            ...     b"".join(r.chunks()) == data
            True
        """
        return ChunkedReader(self._backend, table, name)

    def open_file(self, table: ChunkTable, name: str) -> BinaryIO:
        """The file a manifest describes, straight from the backend, verified (deep verify).

        Every chunk is checked against its digest, and the whole file against the file's.

        Raises:
            ArtifactNotFound: A pack it needs is missing (when read).
            IntegrityError: A chunk or the whole file does not match (when read).
        """
        assert table.file is not None
        return whole_file_reader(ChunkedReader(self._backend, table, name), table.file, name)

    def quarantine(self, obj: StoredObject, prefix: str) -> int:
        """Move a corrupt pack or manifest under ``prefix``, kept for inspection, never read.

        The next upload of the same content then writes a good one. A FIFO or device there
        holds no bytes to keep: it is just removed. A local store renames it; another copies
        it, and keeps no more of it than any object of its kind holds (:data:`PACK_MAX`,
        :data:`MAX_TABLE_BYTES`): see :func:`~optuna_cas.backends.base.move_aside`.

        Returns:
            How many bytes past that bound were not kept (0: all of it).

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.chunks.store import ChunkStore
            >>> store = ChunkStore(MemoryBackend()); _ = store.put(io.BytesIO(os.urandom(9)))
            >>> for pack in list(store.iter_packs()):
            ...     _ = store.quarantine(pack, "quarantine/")
            >>> list(store.iter_packs()), [i.key[:17] for i in store.backend.list("quar")]
            ([], ['quarantine/packs/'])
        """
        limit = PACK_MAX if obj.kind == "packs" else MAX_TABLE_BYTES
        dropped = move_aside(self._backend, obj.key, prefix, limit=limit)
        self._forget_object(obj)
        return dropped


@dataclass(frozen=True)
class StoredObject:
    """A pack, manifest or index object as listed in a backend.

    Attributes:
        kind: ``"packs"``, ``"manifests"`` or ``"chunk-index"``.
        hexdigest: The digest its key names (a manifest's is the *file's*).
        key: The backend key.
        size: Bytes stored.
        modified: Last modification time, epoch seconds.

    Example:
        >>> StoredObject("packs", "ab" * 32, "packs/blake3/ab/...", 3, 0.0).size
        3
    """

    kind: str
    hexdigest: str
    key: str
    size: int
    modified: float
