"""Chunked content in one backend: put a stream, open or copy a file, all by the file's digest.

Order of writes (so nothing ever points at missing data): packs, then the index object, then
the manifest; the caller writes the ref after :meth:`ChunkStore.put` returns, and Optuna's
metadata after that. Nothing here deletes a published object; only gc does.

Concurrency with gc follows the blob rules (see :mod:`optuna_cas.operations.gc`): every pack an
upload reuses is looked at once and touched if older than ``freshen_after``, so gc (whose grace
period exceeds that, and whose delete is conditional on the pack being unchanged) spares it.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import blake3

from optuna_cas.backends.base import Backend, ObjectInfo, conditional_remover_of
from optuna_cas.chunks.chunker import Chunker
from optuna_cas.chunks.index import KnownChunks, read_bounded
from optuna_cas.chunks.layout import (
    CHUNK_AVG,
    INDEX_PREFIX,
    MANIFEST_PREFIX,
    PACK_PREFIX,
    index_key,
    manifest_key,
    pack_key,
    parse_content_key,
)
from optuna_cas.chunks.packer import PackWriter
from optuna_cas.chunks.reader import ChunkedReader, PackCache, whole_file_reader
from optuna_cas.chunks.table import (
    ENTRY,
    INDEX_MAGIC,
    MANIFEST_MAGIC,
    ChunkTable,
    TableBuilder,
    parse_table,
)
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError

__all__ = ["ChunkStore", "StoredObject"]

_MANIFEST_MEMO = 64
_EXPECT_AT_MOST = 1 << 17  # chunks of an 8 GiB file: 1 MiB of index slots


class ChunkStore:
    """Files stored as content-defined chunks in packs, named by the whole file's digest.

    Args:
        backend: Where packs, manifests and index objects live.
        cache: Optional local cache of packs.
        freshen_after: Seconds after which a reused pack or manifest is touched (see gc).

    Example:
        >>> import io, os
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> store = ChunkStore(MemoryBackend())
        >>> data = os.urandom(1_000_000)
        >>> digest = store.put(io.BytesIO(data))
        >>> digest == Digest.of_bytes(data), store.open(digest).read() == data
        (True, True)
        >>> store.put(io.BytesIO(data)) == digest   # nothing new is written
        True
    """

    def __init__(
        self, backend: Backend, *, cache: PackCache | None = None, freshen_after: float = 1800.0
    ) -> None:
        self._backend = backend
        self._cache = cache
        self.freshen_after = freshen_after
        self.known = KnownChunks(backend)
        # Parsed manifests, oldest first. No lock (a fork while another thread held it would
        # hang the child): single dict operations are atomic under the GIL.
        self._manifests: dict[str, ChunkTable] = {}
        self.last_new_bytes = 0  # chunk bytes the last put stored (for tests and stats)

    # -- writing -------------------------------------------------------------------------------

    def put(
        self,
        stream: BinaryIO,
        size_hint: int | None = None,
        check_unchanged: Callable[[], None] | None = None,
    ) -> Digest:
        """Store ``stream`` (from its position to EOF) as chunks; return the file's digest.

        Only the chunks the backend lacks are written, then the file's manifest.

        Args:
            stream: The content.
            size_hint: Expected length, if known.
            check_unchanged: Called after the last byte was read and before anything names
                the file; raises if the source changed meanwhile (nothing is recorded then).

        Raises:
            IntegrityError: Raised by ``check_unchanged``.
        """
        self.known.refresh()
        writer = PackWriter(self._backend, cache=self._cache)
        manifest = writer.manifest  # new chunks by reference to writer.index: 8 bytes each
        if size_hint:
            # Spares re-indexing as it grows; capped (a hint, and slots are resident memory).
            writer.index.expect(min(size_hint // CHUNK_AVG, _EXPECT_AT_MOST))
        usable: dict[str, bool] = {}
        chunker = Chunker(stream, size_hint)
        try:
            for chunk, data in chunker:
                where = self.known.find(chunk)
                if where is not None and self._pack_usable(where[0], usable):
                    writer.add_known(chunk, *where)
                else:
                    writer.add_new(chunk, data)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        writer.forget_new()  # before the records are serialised: memory per chunk adds up
        digest = chunker.digest()
        if check_unchanged is not None:
            check_unchanged()
        self.last_new_bytes = writer.bytes_written
        self.publish_index(writer.index)
        stored = self._stored_manifest_state(digest, usable)
        if stored != "complete":
            # One that names a pack gone since (or is malformed) is replaced by ours, whose
            # packs this upload just wrote or checked: a re-upload repairs it.
            self._write_manifest(digest, manifest.to_bytes(digest), replace=stored == "broken")
        return digest

    def _stored_manifest_state(self, digest: Digest, usable: dict[str, bool]) -> str:
        """Whether ``digest``'s manifest is ``"absent"``, ``"complete"`` or ``"broken"``.

        Complete: it and every pack it names are stored (all touched if old, as a dedup hit
        must). Broken: malformed, or a pack it names is gone.
        """
        if not self._present(manifest_key(digest)):
            return "absent"
        self._forget(digest)  # gc may have moved its chunks: read what is stored now
        try:
            table = self.manifest(digest)
        except ArtifactNotFound:
            return "absent"
        except IntegrityError:
            return "broken"
        complete = all(self._pack_usable(pack, usable) for pack in table.packs)
        return "complete" if complete else "broken"

    def _pack_usable(self, pack: Digest, usable: dict[str, bool]) -> bool:
        """Whether a pack an index names is still there (looked at once per upload)."""
        known = usable.get(pack.hexdigest)
        if known is None:
            known = usable[pack.hexdigest] = self._present(pack_key(pack), pack.size)
            if not known:
                self.known.forget_pack(pack)
        return known

    def _present(self, key: str, size: int | None = None) -> bool:
        """Whether ``key`` is stored (with ``size``); touch it if old, so gc spares it."""
        try:
            info = self._backend.stat(key)
        except ArtifactNotFound:
            return False
        if size is not None and info.size != size:
            return False
        if time.time() - info.modified > self.freshen_after:
            try:
                self._backend.touch(key)
            except ArtifactNotFound:
                return False
        return True

    def publish_index(self, index: TableBuilder) -> str | None:
        """Write an index object of ``index``'s entries (none if it has none); its name.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ChunkStore(MemoryBackend()).publish_index(TableBuilder(INDEX_MAGIC)) is None
            True
        """
        if not len(index):
            return None
        data = index.to_bytes()
        name = blake3.blake3(data).hexdigest()
        self._backend.write(index_key(name), io.BytesIO(data), if_absent=True)
        del data
        self.known.add_table(index.as_table())
        self.known.note_own(name)
        return name

    def _write_manifest(self, digest: Digest, data: bytes, *, replace: bool = False) -> None:
        key = manifest_key(digest)
        try:
            self._backend.write(key, io.BytesIO(data), if_absent=not replace)
        except FileExistsError:
            pass
        self._forget(digest)

    # -- reading -------------------------------------------------------------------------------

    def has_manifest(self, digest: Digest, *, with_packs: bool = False) -> bool:
        """Whether ``digest``'s manifest is stored (and, ``with_packs``, every pack it names).

        A manifest or pack older than ``freshen_after`` is touched, as a dedup hit must.
        """
        if not self._present(manifest_key(digest)):
            return False
        if not with_packs:
            return True
        self._forget(digest)  # gc may have moved its chunks: check what is stored now
        try:
            table = self.manifest(digest)
        except (ArtifactNotFound, IntegrityError):
            return False
        return all(self._present(pack_key(p), p.size) for p in table.packs)

    def manifest_hexdigests(self) -> Iterator[str]:
        """The hex digests of every file stored as chunks (one listing of manifests).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> list(ChunkStore(MemoryBackend()).manifest_hexdigests())
            []
        """
        for info in self._backend.list(MANIFEST_PREFIX):
            parsed = parse_content_key(info.key)
            if parsed is not None and parsed[0] == "manifests":
                yield parsed[1]

    def manifest(self, digest: Digest) -> ChunkTable:
        """The parsed manifest of ``digest``, remembered.

        A manifest never changes meaning, but gc's repacking may move its chunks: readers and
        completeness checks forget the remembered one first and read it afresh.

        Raises:
            ArtifactNotFound: No manifest for ``digest``.
            IntegrityError: It is malformed or describes another file.
        """
        table = self._manifests.get(digest.hexdigest)
        if table is not None:
            return table
        key = manifest_key(digest)
        name = f"manifest {key!r} in {self._backend.describe()}"
        table = parse_table(read_bounded(self._backend, key), name, MANIFEST_MAGIC)
        if table.file != digest:
            raise IntegrityError(f"{name} describes {table.file}, not {digest}")
        self._manifests[digest.hexdigest] = table
        while len(self._manifests) > _MANIFEST_MEMO:
            try:
                self._manifests.pop(next(iter(self._manifests)), None)
            except (RuntimeError, StopIteration):  # another thread changed it meanwhile
                break
        return table

    def _forget(self, digest: Digest) -> None:
        self._manifests.pop(digest.hexdigest, None)

    def open(self, digest: Digest, name: str | None = None) -> BinaryIO:
        """A reader of the file, every chunk and the whole verified.

        Raises:
            ArtifactNotFound: No manifest, or a pack it needs is missing (when read).
        """
        self._forget(digest)  # gc may have moved its chunks: read what is stored now
        table = self.manifest(digest)
        what = name or f"chunked file {digest} in {self._backend.describe()}"
        return whole_file_reader(
            # The whole-file check below covers every chunk fetched from the backend.
            ChunkedReader(self._backend, table, what, self._cache, check_chunks=False),
            digest,
            what,
        )

    # -- copying -------------------------------------------------------------------------------

    def copy_from(self, source: ChunkStore, digest: Digest) -> int:
        """Store ``digest`` here from another chunk store; return the chunk bytes sent.

        Only the chunks this store lacks move: packs, then the index object, then the manifest.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> a, b = ChunkStore(MemoryBackend()), ChunkStore(MemoryBackend())
            >>> d = a.put(io.BytesIO(os.urandom(500_000)))
            >>> b.copy_from(a, d) == d.size, b.copy_from(a, d)
            (True, 0)
        """
        if self.has_manifest(digest, with_packs=True):
            return 0
        table = source.manifest(digest)
        self.known.refresh()
        usable: dict[str, bool] = {}
        wanted, picked = bytearray(), set()
        for entry in table:
            where = self.known.find(Digest(entry.chunk.hex(), entry.length))
            if entry.chunk in picked or (where and self._pack_usable(where[0], usable)):
                continue
            picked.add(entry.chunk)
            wanted += ENTRY.pack(*entry)
        missing = ChunkTable(INDEX_MAGIC, None, table.packs, bytes(wanted))
        writer = PackWriter(self._backend, TableBuilder(MANIFEST_MAGIC))
        reader = ChunkedReader(source._backend, missing, f"copy of {digest}")
        try:
            for entry in missing:
                writer.add_new(
                    Digest(entry.chunk.hex(), entry.length), memoryview(next(reader._chunks))
                )
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        finally:
            reader.close()
        self.publish_index(writer.index)
        manifest = TableBuilder(MANIFEST_MAGIC)
        for entry in table:
            where = self.known.find(Digest(entry.chunk.hex(), entry.length))
            if where is None:
                raise IntegrityError(f"copy of {digest}: chunk {entry.chunk.hex()} was not stored")
            manifest.add(
                Digest(entry.chunk.hex(), entry.length), manifest.pack_number(where[0]), where[1]
            )
        # Replace one that is there but names a pack gone since (has_manifest said so above).
        self._write_manifest(digest, manifest.to_bytes(digest), replace=True)
        return writer.bytes_written

    # -- maintenance (gc, verify, stats) ---------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The backend holding the packs, manifests and index objects."""
        return self._backend

    def iter_manifests(self) -> Iterator[StoredObject]:
        """Every manifest in the backend, as listed (keys that do not parse are skipped).

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
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

        Where the backend cannot do that atomically (S3, GCS) it is deleted unconditionally:
        the residual window documented in :mod:`optuna_cas.operations.gc`.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ChunkStore(MemoryBackend()); _ = store.put(io.BytesIO(os.urandom(9)))
            >>> [store.remove_if_unchanged(p) for p in store.iter_packs()]
            [True]
        """
        remover = conditional_remover_of(self._backend)
        if remover is not None:
            seen = ObjectInfo(key=obj.key, size=obj.size, modified=obj.modified)
            removed = remover.remove_if_unchanged(obj.key, seen)
        else:
            removed = self.remove(obj)
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
        try:
            self._backend.touch(obj.key)
        except ArtifactNotFound:
            pass

    def read_manifest(self, obj: StoredObject) -> ChunkTable:
        """A listed manifest, read afresh and checked to describe the file its key names.

        Raises:
            ArtifactNotFound: Gone meanwhile.
            IntegrityError: Malformed, or it describes another file.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
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

    def replace_manifest(self, table: TableBuilder, file: Digest) -> None:
        """Publish a new manifest for ``file`` over the stored one, atomically.

        gc's repack: the same chunks in new places.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ChunkStore(MemoryBackend()); data = os.urandom(99)
            >>> d = store.put(io.BytesIO(data)); (m,) = store.iter_manifests()
            >>> old = store.read_manifest(m); new = TableBuilder(MANIFEST_MAGIC)
            >>> for e in old:
            ...     new.add_raw(e.chunk, e.length, new.pack_number(old.packs[0]), e.offset)
            >>> store.replace_manifest(new, d); store.open(d).read() == data
            True
        """
        self._write_manifest(file, table.to_bytes(file), replace=True)

    def read_index(self, obj: StoredObject) -> ChunkTable:
        """A listed index object, checked to hash to its name and to parse.

        Raises:
            ArtifactNotFound: Gone meanwhile.
            IntegrityError: It does not hash to its name, or is malformed.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
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

    def read_chunks(self, table: ChunkTable, name: str) -> ChunkedReader:
        """A reader of ``table``'s chunks straight from the backend, never from a cache.

        ``reader.chunks()`` yields each entry's bytes, verified against its digest.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
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

    def quarantine(self, obj: StoredObject, prefix: str) -> None:
        """Move a corrupt pack or manifest under ``prefix``, kept for inspection, never read.

        The next upload of the same content then writes a good one. A FIFO or device there
        holds no bytes to keep: it is just removed.

        Example:
            >>> import io, os
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ChunkStore(MemoryBackend()); _ = store.put(io.BytesIO(os.urandom(9)))
            >>> for pack in list(store.iter_packs()):
            ...     store.quarantine(pack, "quarantine/")
            >>> list(store.iter_packs()), [i.key[:17] for i in store.backend.list("quar")]
            ([], ['quarantine/packs/'])
        """
        try:
            try:
                reader = self._backend.open_reader(obj.key)
            except IntegrityError:
                self._backend.remove(obj.key)
            else:
                with reader:
                    self._backend.write(prefix + obj.key, reader)
                self._backend.remove(obj.key)
        except ArtifactNotFound:
            pass
        self._forget_object(obj)


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
