"""Chunked content in one backend: put a stream, open or copy a file, all by the file's digest.

Order of writes (so nothing ever points at missing data): packs, then the index object, then
the manifest; the caller writes the ref after :meth:`ChunkStore.put` returns, and Optuna's
metadata after that. Nothing here deletes a published object; only gc does.

Concurrency with gc follows the blob rules (see :mod:`optuna_cas.operations.gc`): every pack an
upload reuses is looked at once and touched if older than ``freshen_after``, so gc (whose grace
period exceeds that, and whose delete is conditional on the pack being unchanged) spares it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, cast

import blake3

from optuna_cas._fileio import materialize_buffers, seekable
from optuna_cas.backends.base import Backend, staging_of
from optuna_cas.backends.clock import StoreClock
from optuna_cas.chunks.assemble import assemble_from_cache, assemble_from_store
from optuna_cas.chunks.cached_packs import PackCache
from optuna_cas.chunks.chunker import Chunker
from optuna_cas.chunks.delta import DeltaFinder
from optuna_cas.chunks.index import KnownChunks, Location, read_bounded
from optuna_cas.chunks.layout import (
    CHUNK_AVG,
    MANIFEST_PREFIX,
    PACK_PREFIX,
    index_key,
    manifest_key,
    pack_key,
    parse_content_key,
)
from optuna_cas.chunks.maintenance import ChunkMaintenance, StoredObject
from optuna_cas.chunks.pack_checks import PackChecks
from optuna_cas.chunks.packer import PackWriter
from optuna_cas.chunks.reader import ChunkedReader, missing_pack, pack_in, whole_file_reader
from optuna_cas.chunks.runs import RunCopier, overlapping_runs, runs_table
from optuna_cas.chunks.table import (
    ENTRY,
    INDEX_MAGIC,
    MANIFEST_MAGIC,
    MAX_TABLE_BYTES,
    ChunkTable,
    TableBuilder,
    check_manifest_fits,
    parse_manifest,
)
from optuna_cas.digest import Digest, verified_buffers
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, MalformedRecordWarning

__all__ = ["ChunkStore", "StoredObject"]

# Parsed manifests remembered, and their entries' bytes at most (an 85 GiB file's are 64 MiB).
_MANIFEST_MEMO, _MANIFEST_MEMO_BYTES = 64, 64 << 20
# Packs looked at at once when checking that a remote store holds a file's packs.
_PARALLEL_HEADS = 8
_EXPECT_AT_MOST = 1 << 17  # chunks of an 8 GiB file: 1 MiB of index slots


class ChunkStore(ChunkMaintenance):
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
        # Ages of packs, manifests (and a blob store's blobs) are measured on the store's clock.
        self.clock = StoreClock(backend, stage_in=PACK_PREFIX.rstrip("/"))
        self.known = KnownChunks(backend)
        # Parsed manifests, oldest first. No lock (a fork while another thread held it would
        # hang the child): single dict operations are atomic under the GIL.
        self._manifests: dict[str, ChunkTable] = {}
        self.last_new_bytes = 0  # chunk bytes the last put stored (for tests and stats)
        # Wraps the stream each put reads (a progress bar counts the file's bytes there: the
        # packs it writes hold only the new chunks).
        self.wrap_source: Callable[[BinaryIO], BinaryIO] | None = None

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
            size_hint: Expected length, if known (sizes the map of this upload's chunks).
            check_unchanged: Called after the last byte was read and before anything names
                the file; raises if the source changed meanwhile (nothing is recorded then).

        Raises:
            IntegrityError: Raised by ``check_unchanged``.
        """
        self.known = self.known.refreshed()
        if self.wrap_source is not None:
            stream = self.wrap_source(stream)
        start = stream.tell() if seekable(stream) else None
        # Looks at reused packs go ahead of the chunk loop on a remote store (on a local one
        # they cost microseconds), when the stream can be read again should one be gone.
        background = start is not None and staging_of(self._backend) is None
        checks = PackChecks(self._pack_present, background=background)
        try:
            while (done := self._cut_and_pack(stream, size_hint, checks)) is None:
                # A pack this pass leaned on is gone (gc's race): again, storing its chunks.
                stream.seek(cast(int, start))
            writer, digest = done
            # ~58 GiB of random bytes: a copy or repack of its manifest might be refused.
            check_manifest_fits(len(writer.manifest), digest, self._backend.describe())
            # Before the check: a hint, true whatever the source did (its packs hold the
            # chunks), which lets the retry of an upload whose source changed reuse them.
            self.publish_index(writer.index)
            if check_unchanged is not None:
                check_unchanged()
            self.last_new_bytes = writer.bytes_written
            stored = self._manifest_state(digest, lambda packs: all(map(checks.usable, packs)))
            self._settle(checks)
        finally:
            checks.close()
        if stored != "complete":
            # One that names a pack gone since (or is malformed) is replaced by ours, whose
            # packs this upload just wrote or checked: a re-upload repairs it.
            manifest = writer.manifest.to_bytes(digest)
            self._write_manifest(digest, manifest, replace=stored == "broken")
        return digest

    def _cut_and_pack(
        self, stream: BinaryIO, size_hint: int | None, checks: PackChecks
    ) -> tuple[PackWriter, Digest] | None:
        """One pass over ``stream``: new chunks into packs; None if it leaned on a gone pack.

        The packs such a pass (or one that fails) published are named by no manifest: gc's
        orphans, which an index object lets the next pass reuse meanwhile.
        """
        writer = PackWriter(self._backend, cache=self._cache)
        if size_hint:
            # Spares re-indexing as it grows; capped (a hint, and slots are resident memory).
            writer.index.expect(min(size_hint // CHUNK_AVG, _EXPECT_AT_MOST))
        chunker = Chunker(stream)
        # Local stores only: a delta reads the old bytes (see chunks.delta).
        deltas = (
            DeltaFinder(self.read_range, self.known, checks.assume)
            if staging_of(self._backend) is not None
            else None
        )
        try:
            for chunk, data in chunker:
                where = self._reusable(chunk, checks)
                if where is not None:
                    writer.add_known(chunk, *where)
                    if deltas is not None:
                        deltas.after(chunk, where)
                    continue
                if deltas is None or not deltas.add(writer, chunk, data):
                    writer.add_new(chunk, data)
            writer.finish()
            if deltas is not None:
                deltas.finish()
            leaned = self._settle(checks)
        except BaseException:
            writer.abort()
            self._keep_sent(writer)
            raise
        if leaned:
            self._keep_sent(writer)
            return None
        writer.forget_new()  # before the records are serialised: memory per chunk adds up
        return writer, chunker.digest()

    def _keep_sent(self, writer: PackWriter) -> None:
        """Name in an index object the chunks an unfinished pass published (best effort).

        Their packs are orphans until gc takes them; named, the retry of a failed upload or
        ``sync`` reuses them instead of sending them again. Failing to name them costs only
        that, so the error that stopped the pass is the one raised.
        """
        with contextlib.suppress(Exception):
            self.publish_index(writer.sent_index())

    def _reusable(self, chunk: Digest, checks: PackChecks) -> Location | None:
        """Where the store holds ``chunk`` in a pack this upload may lean on, if it does."""
        return self.known.find_usable(chunk, checks.assume)

    def manifest_state(self, digest: Digest) -> str:
        """Whether ``digest``'s manifest is ``"absent"``, ``"complete"`` or ``"broken"``.

        Complete: it and every pack it names are stored (all touched if old, as a dedup hit
        must). Broken: malformed, or a pack it names is gone; readers still take it over a
        whole blob of the same file, so a store must write the file again to replace it.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ChunkStore(MemoryBackend())
            >>> d = store.put(io.BytesIO(bytes(300_000)))
            >>> store.manifest_state(d), store.manifest_state(Digest.of_bytes(b"x"))
            ('complete', 'absent')
        """
        return self._manifest_state(digest, self._all_present)

    def _manifest_state(
        self, digest: Digest, packs_present: Callable[[Sequence[Digest]], bool]
    ) -> str:
        """:meth:`manifest_state`, with the packs looked at by ``packs_present``."""
        if not self._present(manifest_key(digest)):
            return "absent"
        self._forget(digest)  # gc may have moved its chunks: read what is stored now
        try:
            table = self.manifest(digest)
        except ArtifactNotFound:
            return "absent"
        except IntegrityError:
            return "broken"
        return "complete" if packs_present(table.packs) else "broken"

    def _chunks_to_copy(self, table: ChunkTable) -> bytes:
        """The entries of ``table`` whose chunks this store lacks (each once).

        The packs holding the others are looked at in parallel on a remote store, and the
        choice is made again should one turn out gone.
        """
        checks = PackChecks(self._pack_present, background=staging_of(self._backend) is None)
        try:
            while True:
                wanted, picked = bytearray(), set()
                for entry in table:
                    if entry.chunk in picked:
                        continue
                    if self._reusable(Digest(entry.chunk.hex(), entry.length), checks):
                        continue
                    picked.add(entry.chunk)
                    wanted += ENTRY.pack(*entry)
                if not self._settle(checks):
                    return bytes(wanted)
        finally:
            checks.close()

    def _settle(self, checks: PackChecks) -> bool:
        """Wait for ``checks``; forget the packs found gone (no later upload leans on them).

        Returns:
            Whether the pass leaned on one of them (it must start again).
        """
        missing, leaned = checks.settle()
        for pack in missing:
            self.known.forget_pack(pack)
        return leaned

    def _pack_present(self, pack: Digest) -> bool:
        """Whether a pack an index names is still there (touched if old: see gc)."""
        return self._present(pack_key(pack), pack.size)

    def _present(self, key: str, size: int | None = None, *, touch: bool = True) -> bool:
        """Whether ``key`` is stored (with ``size``); touch it if old, so gc spares it."""
        try:
            info = self._backend.stat(key)
        except ArtifactNotFound:
            return False
        if size is not None and info.size != size:
            return False
        if touch and self.clock.now_to_freshen() - info.modified > self.freshen_after:
            try:
                self._backend.touch(key)
            except ArtifactNotFound:
                return False
        return True

    def publish_index(self, index: TableBuilder, known: KnownChunks | None = None) -> str | None:
        """Write an index object of ``index``'s entries (none if it has none); its name.

        ``known`` (default: the store's) learns them too.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ChunkStore(MemoryBackend()).publish_index(TableBuilder(INDEX_MAGIC)) is None
            True
        """
        if not len(index):
            return None
        data = index.to_bytes()
        name = blake3.blake3(data).hexdigest()
        published: str | None = name
        try:
            self._backend.write(index_key(name), io.BytesIO(data), if_absent=True)
        except IntegrityError as e:
            # Something planted at the key (a directory, say): an index object is only a hint
            # to later uploads, so this one goes on without it (this process still knows).
            warnings.warn(MalformedRecordWarning(f"index object not written: {e}"), stacklevel=2)
            published = None
        finally:
            del data
        known = self.known if known is None else known
        known.add_table(index.as_table())
        if published is not None:
            known.note_own(published)
        return published

    def _write_manifest(self, digest: Digest, data: bytes, *, replace: bool = False) -> None:
        key = manifest_key(digest)
        with contextlib.suppress(FileExistsError):
            self._backend.write(key, io.BytesIO(data), if_absent=not replace)
        self._forget(digest)

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

    # -- reading -------------------------------------------------------------------------------

    def has_manifest(self, digest: Digest, *, with_packs: bool = False, touch: bool = True) -> bool:
        """Whether ``digest``'s manifest is stored (and, ``with_packs``, every pack it names).

        A manifest or pack older than ``freshen_after`` is touched, as a dedup hit must;
        ``touch=False`` (only with ``with_packs=False``) looks without writing: a store this
        process only reads from, such as the source of a sync, may refuse writes.
        """
        if not touch:
            if with_packs:
                raise ValueError("has_manifest(touch=False) looks at the manifest only")
            return self._present(manifest_key(digest), touch=False)
        if not with_packs:
            return self._present(manifest_key(digest))
        return self.manifest_state(digest) == "complete"

    def _all_present(self, packs: Sequence[Digest]) -> bool:
        """Whether every pack is stored; remote stores are asked in parallel (a HEAD each)."""
        remote = len(packs) > 1 and staging_of(self._backend) is None
        checks = PackChecks(self._pack_present, background=remote, threads=_PARALLEL_HEADS)
        try:
            return all(checks.assume(p) for p in packs) and not checks.settle()[0]
        finally:
            checks.close()

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
        return table if table is not None else self._read_manifest(digest)[0]

    def _read_manifest(self, digest: Digest) -> tuple[ChunkTable, bytes]:
        """The stored manifest of ``digest``, parsed and remembered, and its bytes."""
        key = manifest_key(digest)
        raw = read_bounded(self._backend, key)
        table = parse_manifest(raw, f"manifest {key!r} in {self._backend.describe()}", digest)
        memo = self._manifests
        memo[digest.hexdigest] = table
        while len(memo) > _MANIFEST_MEMO or (
            len(memo) > 1
            and sum(len(t.entries) for t in list(memo.values())) > _MANIFEST_MEMO_BYTES
        ):
            try:
                memo.pop(next(iter(memo)), None)
            except (RuntimeError, StopIteration):  # another thread changed it meanwhile
                break
        return table, raw

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
            # Every chunk is checked before the caller gets it (a reader may stop early, or
            # seek back into bytes it has read); the whole file at its end.
            ChunkedReader(self._backend, table, what, self._cache),
            digest,
            what,
        )

    def materialize(self, digest: Digest, target: Path) -> bool:
        """Write the file at the new path ``target``, reading its packs from the store.

        What :meth:`open` reads, without the copy into a reader's buffer: each block fetched
        goes to the file as it is, hashed on the way, and the file gets its name only once
        the whole file's digest matched. A cache is not used: this is the path of a store
        without one, and of a cache that could not take the file's packs
        (:meth:`materialize_cached` said so), which reading through it would only try to
        fill again.

        Returns:
            True when done; False, with nothing at ``target``, when ``digest`` has no
            manifest (stored whole).

        Raises:
            ArtifactNotFound: A pack the manifest names is missing.
            IntegrityError: The bytes read are not ``digest``'s.

        Example:
            >>> import io, os, tempfile
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store, data = ChunkStore(MemoryBackend()), os.urandom(300_000)
            >>> d = store.put(io.BytesIO(data))
            >>> target = Path(tempfile.mkdtemp()) / "model.pt"
            >>> store.materialize(d, target), target.read_bytes() == data
            (True, True)
        """
        self._forget(digest)  # gc may have moved its chunks: read what is stored now
        try:
            table = self.manifest(digest)
        except ArtifactNotFound:
            return False
        what = f"chunked file {digest} in {self._backend.describe()}"
        # The whole-file check covers every chunk fetched from the backend.
        reader = ChunkedReader(self._backend, table, what, check_chunks=False)
        with reader:
            materialize_buffers(verified_buffers(reader.chunks(), digest, name=what), target)
        return True

    def materialize_cached(self, digest: Digest, target: Path) -> bool | None:
        """Write the file at the new path ``target`` from cached packs (copied in the kernel).

        The manifest is taken from the cache when it is kept there (then the store is not
        asked at all) and kept there after a copy with the store's. A kept one is dropped if
        it does not parse, does not reassemble the file, or names a pack gone from both the
        cache and the store (gc repacked since): then the store's is read.

        Returns:
            True when done. False, with nothing at ``target``, when there is no cache or the
            packs could not be used (see :func:`~optuna_cas.chunks.assemble.assemble_from_cache`):
            read with :meth:`materialize` then. None when ``digest`` has no manifest (stored whole).

        Raises:
            ArtifactNotFound: A pack the manifest names is missing from the store.
        """
        cache = self._cache
        if cache is None:
            return False
        what = f"chunked file {digest} in {self._backend.describe()}"

        def fetch(pack: Digest) -> BinaryIO:
            try:
                return self._backend.open_reader(pack_key(pack))
            except ArtifactNotFound as e:
                raise missing_pack(what, pack, self._backend) from e

        def describe(pack: Digest) -> str:
            return pack_in(pack, self._backend)

        kept = cache.manifests.get(digest, MAX_TABLE_BYTES)
        if kept is not None:
            with contextlib.suppress(IntegrityError, ArtifactNotFound):
                table = parse_manifest(kept, f"cached manifest of {what}", digest)
                if assemble_from_cache(table, digest, target, cache, fetch, describe):
                    return True
            cache.manifests.discard(digest)
        self._forget(digest)  # gc may have moved its chunks: read what is stored now
        try:
            table, raw = self._read_manifest(digest)
        except ArtifactNotFound:
            return None
        done = assemble_from_cache(table, digest, target, cache, fetch, describe)
        if done:
            cache.manifests.add(digest, raw)
        return done

    def materialize_local(self, digest: Digest, target: Path, files: Backend) -> bool | None:
        """Write the file at the new path ``target`` from a local store's own pack files.

        ``files`` is the layer whose readers are the pack files themselves: the local backend,
        below any retries.

        Returns:
            True when done; False, with nothing at ``target``, when the packs are not local
            files or do not reassemble the file (read with :meth:`materialize` then); None when
            ``digest`` has no manifest (stored whole).

        Raises:
            ArtifactNotFound: A pack the manifest names is missing.
        """
        self._forget(digest)  # gc may have moved its chunks: read what is stored now
        try:
            table = self.manifest(digest)
        except ArtifactNotFound:
            return None
        return assemble_from_store(table, digest, target, files)

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
        source._forget(digest)  # a gc elsewhere may have moved its chunks since we read it
        table = source.manifest(digest)
        known = self.known = self.known.refreshed()  # kept: another put may swap self.known
        wanted = ChunkTable(INDEX_MAGIC, None, table.packs, self._chunks_to_copy(table))
        # Ranges that overlap (a delta's, inside the chunk it replaced) are copied as one run,
        # the runs in the order the file first needs them.
        first_use = {chunk: i for i, chunk in reversed(list(enumerate(e.chunk for e in table)))}
        runs = sorted(overlapping_runs(wanted), key=lambda r: min(first_use[e.chunk] for e in r))
        copier = RunCopier(PackWriter(self._backend, TableBuilder(MANIFEST_MAGIC)))
        reader = ChunkedReader(source._backend, runs_table(runs, table.packs), f"copy of {digest}")
        try:
            copier.copy(runs, reader.chunks())
            copier.finish()
        except BaseException:
            copier.writer.abort()
            self._keep_sent(copier.writer)
            raise
        finally:
            reader.close()
        # With the ranges inside runs: this and later copies find each by digest.
        self.publish_index(copier.writer.index, known)
        manifest = TableBuilder(MANIFEST_MAGIC)
        for entry in table:
            chunk = Digest(entry.chunk.hex(), entry.length)
            where = known.find(chunk) or self.known.find(chunk)
            if where is None:
                raise IntegrityError(f"copy of {digest}: chunk {entry.chunk.hex()} was not stored")
            manifest.add(chunk, manifest.pack_number(where[0]), where[1])
        # Replace one that is there but names a pack gone since (has_manifest said so above).
        self._write_manifest(digest, manifest.to_bytes(digest), replace=True)
        return copier.writer.bytes_written
