"""Writing new chunks into packs: the only place chunk bytes are stored.

A :class:`PackWriter` appends each new chunk to the pack it is filling, hashing the pack as it
goes; at :data:`~optuna_cas.chunks.layout.PACK_TARGET` bytes the pack is sealed and published
under its digest. The bytes hashed are the bytes written (invariant 11): chunks arrive as
buffers the chunker hashed, and the pack's digest is computed from those same buffers.

* A local backend hands out a temp file in the store (staging); the pack is written there and
  renamed into place: one copy.
* Other backends get a private spool file; each sealed pack is read back through its digest,
  so a spool file changed meanwhile publishes nothing, and sent by one of four background
  threads (at most four packs in flight; their requests run on the backend's part threads).

A pack may start with up to 4 KiB of zeros that no entry names, so that its first chunk sits
at its file offset modulo a page (see ``PackWriter._open_pack``).

Concurrent uploaders each write their own packs; a chunk two of them add at once is stored
twice, and gc reclaims the copy no manifest uses. Nothing here deletes a published object.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Protocol, cast

import blake3

from optuna_cas._fileio import pwrite_all
from optuna_cas.backends.base import Backend, SealedFile, StagedObject, staging_of
from optuna_cas.chunks.layout import PACK_LEAD_MAX, PACK_PREFIX, PACK_TARGET, pack_key
from optuna_cas.chunks.table import INDEX_MAGIC, MANIFEST_MAGIC, TableBuilder
from optuna_cas.digest import Digest, VerifyingReader
from optuna_cas.exceptions import ArtifactNotFound

__all__ = ["PackWriter", "UploadCache"]

# Sealed packs waiting or being sent (spool files on disk), and the threads sending them. S3
# takes a pack in one PUT, sent on the backend's part threads (4 by default): four senders
# keep four packs on the wire, as many streams as an upload in parts had. A backend that
# sends packs in parts shares the same part threads among them, so memory stays that of one
# upload either way.
_IN_FLIGHT = 4
_SENDERS = 4
_WRITE_BUFFER = 2 * 1024 * 1024
# A remote upload's packs go to a spool file at page-cache speed while the network is the
# bottleneck: smaller buffers cost nothing there.
_SPOOL_BUFFER = 1024 * 1024


class UploadCache(Protocol):
    """A local cache offered the packs an upload sends (the blob cache, usually)."""

    def add_file(self, digest: Digest, source: BinaryIO) -> None:
        """Cache ``source``'s bytes under ``digest`` if they match (best effort)."""
        ...

    def close(self) -> None:
        """Release what the calling thread holds (its connection to the cache's index)."""
        ...


class _OpenPack:
    """The pack being filled: a staged file in the store, or a private spool file.

    Chunks are gathered into buffers (2 MiB; 1 MiB for a spool file) that a writer thread
    writes and hashes while the caller cuts the next ones (``pwrite`` and BLAKE3 release the
    GIL); two buffers alternate.
    They are the upload's (``buffers``), used by one pack after the other.
    """

    def __init__(
        self,
        backend: Backend,
        number: int,
        index_number: int,
        io_pool: ThreadPoolExecutor,
        buffers: list[bytearray],
    ) -> None:
        stager = staging_of(backend)
        self.staged: StagedObject | None = stager.stage(PACK_PREFIX.rstrip("/")) if stager else None
        # Closed in discard(), after the background upload read it.
        self.spool = None if self.staged else tempfile.TemporaryFile(prefix="optuna-cas-pack-")  # noqa: SIM115
        self.fd = self.staged.fd if self.staged else self.spool.fileno()  # type: ignore[union-attr]
        # One thread per hasher: 2 MiB updates gain nothing from a pool.
        self._hasher: Any = blake3.blake3()
        self._io = io_pool
        self._buffers = buffers
        self._filled = 0  # bytes in the current buffer
        self._written = 0  # where the current buffer starts in the file
        self._pending: Future[None] | None = None
        self.size = 0
        self.number = number  # in the manifest's pack table
        self.index_number = index_number  # in the index object's

    def append(self, data: memoryview) -> int:
        """Add a chunk's bytes (copied now); return its offset in the pack."""
        n = len(data)
        if self._filled + n > len(self._buffers[0]):
            self._flush()
        self._buffers[0][self._filled : self._filled + n] = data
        offset = self.size
        self._filled += n
        self.size += n
        return offset

    def _flush(self) -> None:
        self._wait()
        if self._filled:
            buffer, filled, at = self._buffers[0], self._filled, self._written
            self._pending = self._io.submit(self._write, buffer, filled, at)
            self._buffers.reverse()
            self._written += filled
            self._filled = 0

    def _write(self, buffer: bytearray, filled: int, at: int) -> None:
        with memoryview(buffer) as whole:
            view = whole[:filled]
            pwrite_all(self.fd, view, at)
            self._hasher.update(view)  # the bytes just written, from the same buffer
            view.release()

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def digest(self) -> Digest:
        """Write what is buffered; the pack's digest."""
        self._flush()
        self._wait()
        self._buffers = []  # sealed: the next pack fills them while this one is sent
        return Digest(self._hasher.hexdigest(), self.size)

    def discard(self) -> None:
        try:
            self._wait()
        finally:
            if self.staged is not None:
                self.staged.discard()
            if self.spool is not None:
                self.spool.close()


class PackWriter:
    """Stores the new chunks of one upload in packs and records every chunk's place.

    Args:
        backend: Where packs go.
        manifest: Receives one entry per chunk, in file order (pack numbers are this table's).
            By default (:attr:`manifest`) a manifest that names each new chunk by reference
            to :attr:`index`, in 8 bytes instead of 48.
        pack_target: Seal a pack once it holds this many bytes.
        cache: Offered each pack sent to a remote backend.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> from optuna_cas.chunks.table import MANIFEST_MAGIC
        >>> backend, manifest = MemoryBackend(), TableBuilder(MANIFEST_MAGIC)
        >>> writer = PackWriter(backend, manifest)
        >>> writer.add_new(Digest.of_bytes(b"abc"), memoryview(b"abc"))
        >>> writer.finish(); len(manifest), len(writer.index)
        (1, 1)
        >>> [k.startswith("packs/") for k in (i.key for i in backend.list())]
        [True]
    """

    def __init__(
        self,
        backend: Backend,
        manifest: TableBuilder | None = None,
        *,
        pack_target: int = PACK_TARGET,
        cache: UploadCache | None = None,
    ) -> None:
        self._backend = backend
        self._cache = cache
        self._pack_target = pack_target
        # The chunks this upload added, findable by digest (a chunk repeated in the file is
        # stored once) in a few bytes per chunk: multi-GiB files have tens of thousands.
        self.index = TableBuilder(INDEX_MAGIC, findable=True)
        self._borrowing = manifest is None
        self.manifest = self._manifest = (
            TableBuilder(MANIFEST_MAGIC, source=self.index) if manifest is None else manifest
        )
        self._pack: _OpenPack | None = None
        # Index pack numbers to the manifest's.
        self._manifest_pack: list[int] = []
        self._pool: ThreadPoolExecutor | None = None  # sends sealed packs (remote backends)
        self._io: ThreadPoolExecutor | None = None  # writes and hashes pack buffers
        self._sending: list[Future[None]] = []
        # Index pack numbers of the packs published so far (see sent_index()).
        self._published: set[int] = set()
        # Reused by every pack of the upload: buffers allocated per pack would be freed to a
        # malloc that keeps them resident (and fragmented) once its mmap threshold has risen.
        self._write_buffers: list[bytearray] = []
        self.bytes_written = 0
        self._position = 0  # where the next chunk starts in the file

    def add_known(self, chunk: Digest, pack: Digest, offset: int) -> None:
        """Record a chunk the store already holds at ``offset`` in ``pack``."""
        self._manifest.add(chunk, self._manifest.pack_number(pack), offset)
        self._position += chunk.size

    def add_new(self, chunk: Digest, data: memoryview) -> None:
        """Record a chunk the store lacks; store ``data`` unless this upload already did."""
        self._add_new(chunk, data)
        self._position += chunk.size

    def _add_new(self, chunk: Digest, data: memoryview) -> None:
        raw = bytes.fromhex(chunk.hexdigest)
        pack = self._pack
        if pack is not None:
            # Entered in the index at the pack's end unless it is there already: one probe.
            row = self.index.find_or_add(raw, chunk.size, pack.index_number, pack.size)
            if row is None:
                self._store_new(raw, chunk.size, pack, data)
                return
        else:
            row = self.index.row_of(raw)
        if row is not None:
            _chunk, index_pack, _length, offset = self.index.entry(row)
            if self._borrowing:
                self._manifest.add_from_source(row, self._manifest_pack[index_pack])
            else:
                self._manifest.add_raw(raw, chunk.size, self._manifest_pack[index_pack], offset)
            return
        if self._pack is None:
            if self._io is None:
                self._io = ThreadPoolExecutor(1, thread_name_prefix="optuna-cas-pack-write")
                size = _WRITE_BUFFER if staging_of(self._backend) else _SPOOL_BUFFER
                self._write_buffers = [bytearray(size), bytearray(size)]
            self._pack = self._open_pack()
        self.index.add_raw(raw, chunk.size, self._pack.index_number, self._pack.size)
        self._store_new(raw, chunk.size, self._pack, data)

    def _open_pack(self) -> _OpenPack:
        """A new pack whose first chunk sits at the same offset modulo a page as in the file.

        The pack starts with up to 4 KiB of zeros that no entry names. A cached read copies
        the file's runs out of cached packs with ``copy_file_range``; a run whose offsets in
        pack and file differ modulo a page makes the kernel copy each page in two pieces. A
        file's new chunks are written back to back, so every pack of a first upload then
        copies page for page (a cached read of a 256 MiB file measured 7-13% faster).
        """
        assert self._io is not None
        pack = _OpenPack(
            self._backend,
            self._manifest.pack_number(None),
            self.index.pack_number(None),
            self._io,
            list(self._write_buffers),
        )
        self._manifest_pack.append(pack.number)
        lead = self._position % PACK_LEAD_MAX
        if lead:
            pack.append(memoryview(bytes(lead)))
        return pack

    def _store_new(self, raw: bytes, size: int, pack: _OpenPack, data: memoryview) -> None:
        """Write a chunk just entered in the index (at the pack's end) and name it."""
        offset = pack.append(data)
        if self._borrowing:
            self._manifest.add_from_source(len(self.index) - 1, pack.number)
        else:
            self._manifest.add_raw(raw, size, pack.number, offset)
        self.bytes_written += size
        if pack.size >= self._pack_target:
            self._seal()

    def forget_new(self) -> None:
        """Stop finding this upload's new chunks by digest (after :meth:`finish`)."""
        self.index.stop_finding()

    def _seal(self) -> None:
        pack, self._pack = self._pack, None
        if pack is None:
            return
        try:
            digest = pack.digest()
        except BaseException:
            pack.discard()
            raise
        self._manifest.resolve(pack.number, digest)
        self.index.resolve(pack.index_number, digest)
        if pack.staged is not None:
            try:
                pack.staged.commit(pack_key(digest))
                self._published.add(pack.index_number)
            finally:
                pack.discard()
            return
        assert pack.spool is not None
        try:
            # Read back here, while earlier packs are on the wire (the sender would wait
            # for the check; this thread mostly waits for the sender anyway).
            _check_spool(pack.spool, digest)
        except BaseException:
            pack.discard()
            raise
        self._wait(_IN_FLIGHT - 1)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_SENDERS, thread_name_prefix="optuna-cas-pack-upload")
        self._sending.append(self._pool.submit(self._send, pack, digest))

    def _send(self, pack: _OpenPack, digest: Digest) -> None:
        assert pack.spool is not None
        try:
            # Checked, and private (unlinked, ours alone): sealed, so a remote backend sends
            # each part straight from the file, with no part buffers in memory.
            key = pack_key(digest)
            pack.spool.seek(0)
            self._backend.write(key, cast(BinaryIO, SealedFile.of(pack.spool)), if_absent=True)
            # Not written if the key was taken: a pack there of another size is damaged (cut
            # short, say; a local store's rename replaces it anyway), and this checked copy
            # is what mends it; an old one gc deleted since is put back. One HEAD per pack.
            if _stored_size(self._backend, key) != digest.size:
                pack.spool.seek(0)
                self._backend.write(key, cast(BinaryIO, SealedFile.of(pack.spool)))
            self._published.add(pack.index_number)
            if self._cache is not None:
                # The uploading worker often reads its upload back: keep the pack (the cache
                # verifies it; it skips this when told not to cache uploads). This thread's
                # connection to the cache's index would outlive the thread: closed each time.
                pack.spool.seek(0)
                try:
                    self._cache.add_file(digest, pack.spool)
                finally:
                    self._cache.close()
        finally:
            pack.discard()

    def _wait(self, at_most: int) -> None:
        while len(self._sending) > at_most:
            self._sending.pop(0).result()

    def finish(self) -> None:
        """Seal the last pack and wait until every pack is published."""
        try:
            self._seal()
            self._wait(0)
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Drop the open pack; packs already published stay (orphans for gc)."""
        if self._pack is not None:
            self._pack.discard()
            self._pack = None
        for future in self._sending:
            future.cancel()
        try:
            self._wait(0)
        except BaseException:
            pass
        finally:
            self._shutdown()

    def sent_index(self) -> TableBuilder:
        """The :attr:`index` entries whose packs are published (all of them after :meth:`finish`).

        After :meth:`abort` these packs are orphans until gc takes them; an index object of
        their chunks lets the retry of a failed upload or ``sync`` reuse them instead of
        sending them again.

        Example:
            >>> import tempfile
            >>> from optuna_cas.backends.local import LocalBackend
            >>> writer = PackWriter(LocalBackend(tempfile.mkdtemp()), pack_target=4096)
            >>> full = bytes(4096)  # fills a pack: sealed and published at once
            >>> writer.add_new(Digest.of_bytes(full), memoryview(full))
            >>> writer.add_new(Digest.of_bytes(b"de"), memoryview(b"de"))
            >>> writer.abort(); len(writer.index), len(writer.sent_index())
            (2, 1)
        """
        sent = TableBuilder(INDEX_MAGIC)
        for row in range(len(self.index)):
            chunk, pack, length, offset = self.index.entry(row)
            digest = self.index.packs[pack]
            if pack in self._published and digest is not None:
                sent.add_raw(chunk, length, sent.pack_number(digest), offset)
        return sent

    def _shutdown(self) -> None:
        for pool in (self._pool, self._io):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._io = None
        self._write_buffers = []


def _stored_size(backend: Backend, key: str) -> int | None:
    try:
        return backend.stat(key).size
    except ArtifactNotFound:
        return None


def _check_spool(spool: BinaryIO, digest: Digest) -> None:
    """Read a sealed pack's spool file through its digest: what was written is what is sent.

    Raises:
        IntegrityError: The file does not hold the pack's bytes (a write went wrong).
    """
    spool.seek(0)
    verifying = VerifyingReader(spool, digest, name=f"pack {digest}", close_source=False)
    view = memoryview(bytearray(_SPOOL_BUFFER))
    while verifying.readinto(view):
        pass
