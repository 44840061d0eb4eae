"""Blobs: content stored once under its BLAKE3 digest, written and read verified.

Layout inside any backend::

    blobs/blake3/<first 2 hex>/<remaining 62 hex>   immutable content, written once

This is the only layer that hashes. Invariants it keeps:

* the digest is always that of the bytes stored (see :mod:`optuna_cas.ingest`): a key never
  names other bytes, and a file changed mid-upload records nothing;
* re-uploads of stored bytes write no blob bytes: remote stores hash and check existence;
  local stores copy while hashing the copy and compare it with the stored blob (repairing a
  corrupt one). A file this process stored and that has not changed since costs a stat; a
  large one saved again with the same bytes (its fingerprint names a blob unchanged since it
  was known good) is hashed in place, without a copy;
* the upload path never deletes a blob (a concurrent uploader may rely on it; gc collects);
* every read that returns bytes verifies them against the digest while streaming.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from optuna_cas._fileio import (
    PositionalReader,
    materialize,
    materialize_buffers,
    raw_blocks,
    real_fileno,
    seekable,
)
from optuna_cas._verified_copy import copy_and_publish
from optuna_cas.backends.base import Backend, ObjectInfo, SupportsStaging, staging_of
from optuna_cas.backends.remote_io import remaining_size
from optuna_cas.blob_maintenance import (
    BLOB_PREFIX,
    QUARANTINE_PREFIX,
    BlobInfo,
    BlobMaintenance,
    blob_key,
)
from optuna_cas.chunks.cached_packs import PackCache
from optuna_cas.chunks.layout import CHUNK_THRESHOLD, manifest_key
from optuna_cas.chunks.store import ChunkStore
from optuna_cas.digest import (
    CHUNK_SIZE,
    Digest,
    VerifyingReader,
    hash_fd,
    hash_stream,
    verified_buffers,
)
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, StoreConfigError, TooManyChunks
from optuna_cas.ingest import (
    FileDigestMemo,
    FileSource,
    PublishReceipt,
    copy_hashing,
    copy_stream_hashing,
    fingerprint,
    hash_in_place,
    now_ns,
)

__all__ = [
    "BLOB_PREFIX",
    "DEFAULT_FILE_DIGESTS",
    "FRESHEN_AFTER_SECONDS",
    "QUARANTINE_PREFIX",
    "BlobCache",
    "BlobInfo",
    "BlobStore",
    "PublishReceipt",
    "blob_key",
]

# A dedup hit on a blob older than this refreshes its modification time, so garbage
# collection (whose grace period must exceed this: see optuna_cas.operations.gc) spares it.
FRESHEN_AFTER_SECONDS = 30 * 60
# A threshold no file reaches: chunking off.
_NEVER = 2**63

# Digests of files this process stored, shared by every store (see FileDigestMemo).
DEFAULT_FILE_DIGESTS = FileDigestMemo()


class BlobCache(PackCache, Protocol):
    """A local cache of blobs (and packs) keyed by digest (see :mod:`optuna_cas.middleware.cache`).

    ``fetch`` opens the raw bytes in the backing store; the cache verifies everything it
    stores or returns (``open_entry`` aside: its callers check every chunk they read).
    """

    def open(self, digest: Digest, fetch: Callable[[], BinaryIO]) -> BinaryIO:
        """A verified reader of the blob, filling the cache from ``fetch`` on a miss."""
        ...

    def materialize(self, digest: Digest, path: Path, fetch: Callable[[], BinaryIO]) -> None:
        """Write the blob to the new file ``path`` (verified), filling the cache on a miss."""
        ...


class BlobStore(BlobMaintenance):
    """Blobs on top of any :class:`~optuna_cas.backends.base.Backend`.

    The base of :class:`~optuna_cas.content.ContentStore`, which adds refs and artifacts.

    Args:
        backend: Where bytes live.
        blob_cache: Optional local cache consulted before the backend on reads.
        freshen_after: Seconds after which a re-used blob's time is refreshed (so that gc,
            whose grace period must exceed this, spares it).
        file_digests: Remembers digests of unchanged files (default: one per process).
        chunk_threshold: Files of at least this many bytes are stored as chunks (``None``:
            never).

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> store = BlobStore(MemoryBackend())
        >>> digest = store.put_blob(io.BytesIO(b"weights"))
        >>> store.put_blob(io.BytesIO(b"weights")) == digest, len(list(store.iter_blobs()))
        (True, 1)
    """

    def __init__(
        self,
        backend: Backend,
        *,
        blob_cache: BlobCache | None = None,
        freshen_after: float = FRESHEN_AFTER_SECONDS,
        file_digests: FileDigestMemo = DEFAULT_FILE_DIGESTS,
        chunk_threshold: int | None = CHUNK_THRESHOLD,
    ) -> None:
        self._backend = backend
        self._blob_cache = blob_cache
        self._file_digests = file_digests
        # Files this large or larger are stored as chunks in packs (see optuna_cas.chunks).
        # Not isinstance: True is an int, and no number of bytes.
        bad = type(chunk_threshold) is not int or chunk_threshold < 1
        if chunk_threshold is not None and bad:
            raise StoreConfigError(
                f"chunk_threshold must be a positive number of bytes or None, got "
                f"{chunk_threshold!r}"
            )
        self.chunk_threshold = _NEVER if chunk_threshold is None else chunk_threshold
        self.chunks = ChunkStore(backend, cache=blob_cache, freshen_after=freshen_after)
        self.clock = self.chunks.clock  # what ages are measured on (see backends.clock)
        # Found once: a runtime Protocol check per upload cost ~5% of a small file's upload.
        # A local backend behind Backoff still stages: local copies need no retries.
        self._staging = staging_of(backend)
        # That layer holds the files themselves: downloads copy from them in the kernel,
        # without retries too (Backoff's readers are not files).
        self._local_files = self._staging if isinstance(self._staging, Backend) else None

    @property
    def freshen_after(self) -> float:
        """Seconds after which a re-used blob, manifest or pack is touched: one value for both."""
        return self.chunks.freshen_after

    @freshen_after.setter
    def freshen_after(self, seconds: float) -> None:
        self.chunks.freshen_after = seconds

    @property
    def backend(self) -> Backend:
        """The backend below this store.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> BlobStore(MemoryBackend()).backend.describe()
            'memory://'
        """
        return self._backend

    @property
    def blob_cache(self) -> BlobCache | None:
        """The read cache in front of the backend, if any."""
        return self._blob_cache

    def describe(self) -> str:
        """The backend's URL-like name, for messages."""
        return self._backend.describe()

    # -- blobs -------------------------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        """Whether a blob of this digest *and size* is stored; touched if old, as a dedup hit is.

        A stored object of the wrong size is corrupt (e.g. truncated by a crash of the storage
        host); reporting it absent lets the next upload of the same bytes repair it. Content
        found is touched if older than ``freshen_after`` (a chunked file's manifest and packs
        too), so a copy or upload that writes a ref to it just before or after is spared by a
        concurrent gc (the argument in :mod:`optuna_cas.operations.gc`).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> BlobStore(MemoryBackend()).has_blob(Digest.of_bytes(b"x"))
            False
        """
        chunked = digest.size >= self.chunk_threshold  # where to look first
        if chunked and (state := self.chunks.manifest_state(digest)) != "absent":
            # A manifest decides, as readers take it over a whole blob of the file: a broken one
            # (a pack gone: gc's race) means storing the file again, which replaces it (found
            # by a probe: the whole blob answered, and both artifacts were unreadable).
            return state == "complete"
        if self._check_stored(digest)[0]:
            return True
        return not chunked and self.chunks.has_manifest(digest, with_packs=True)

    def put_blob(self, source: BinaryIO | str | os.PathLike[str]) -> Digest:
        """Store the bytes of a file path or stream (from its position) once; return the digest.

        The digest is always that of the bytes stored (see :mod:`optuna_cas.ingest`): a local
        store copies into its own temp file while hashing that copy; other stores hash first
        and then send the bytes through a reader that verifies them, so nothing is published
        under a key that names other bytes. Nothing already published is ever deleted here.

        Args:
            source: A path, or a binary stream positioned at the start of the content.

        Returns:
            The digest (and size) of the content.

        Raises:
            IntegrityError: A file changed while it was being uploaded (nothing is recorded).
            UnsupportedSourceError: ``source`` names a directory, FIFO, device or socket.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> BlobStore(MemoryBackend()).put_blob(io.BytesIO(b"abc")).size
            3
        """
        return self._put_blob(source, None)

    def _put_blob(
        self, source: BinaryIO | str | os.PathLike[str], receipt: PublishReceipt | None
    ) -> Digest:
        """:meth:`put_blob`; ``receipt`` learns where a local store published the blob."""
        if isinstance(source, str | os.PathLike):
            with FileSource.open(source) as src:
                return self._put_file(src, receipt)
        file_source = FileSource.of_stream(source)
        if file_source is None and (remaining_size(source) or 0) >= self.chunk_threshold:
            start = source.tell()
            with contextlib.suppress(TooManyChunks):  # then stored whole, below
                return self.chunks.put(source)
            source.seek(start)
        if file_source is not None:
            digest = self._put_file(file_source, receipt)
            source.seek(file_source.start + digest.size)
            return digest
        if self._staging is not None:
            return self._put_staged(lambda fd: copy_stream_hashing(source, fd), receipt=receipt)
        if seekable(source):
            start = source.tell()
            digest = hash_stream(source)
            source.seek(start)
            self._store_verified(digest, source)
            source.seek(start + digest.size)
            return digest
        with tempfile.TemporaryFile(prefix="optuna-cas-spool-") as spool:
            digest = copy_stream_hashing(source, spool.fileno())
            self._store_verified(digest, spool)
            return digest

    def _put_file(self, src: FileSource, receipt: PublishReceipt | None = None) -> Digest:
        remembered = self._file_digests.get(src.before) if src.start == 0 else None
        # With its packs (a re-upload repairs a gone pack: gc's argument), else maybe a blob.
        large = remembered is not None and remembered.size >= self.chunk_threshold
        state = self.chunks.manifest_state(cast(Digest, remembered)) if large else "absent"
        if state == "complete":
            src.check_unchanged()
            return cast(Digest, remembered)
        # A large file stored whole (TooManyChunks) has no manifest; beside a broken one its
        # blob is not what readers take: store the file again.
        if (
            remembered is not None
            and state == "absent"
            and self._check_stored(remembered) == (True, False)
        ):
            if self._blob_cache is not None:
                reader = io.BufferedReader(PositionalReader(src.fd, src.start), CHUNK_SIZE)
                self._blob_cache.add_file(remembered, reader)
            src.check_unchanged()
            return remembered
        started = now_ns()
        hint = fingerprint(src) if self._blob_cache is None else None
        digest = self._reuse_known_content(src, hint)
        if digest is None and src.size_hint >= self.chunk_threshold:
            reader = io.BufferedReader(PositionalReader(src.fd, src.start), CHUNK_SIZE)
            with contextlib.suppress(TooManyChunks):  # then stored whole, below
                digest = self.chunks.put(reader, src.size_hint, src.check_unchanged)
            if digest is not None and hint is not None:  # its manifest and packs are there
                self._remember_stored(digest, hint)
        if digest is None and (stager := self._staging) is not None:
            copy = lambda fd: copy_hashing(src.fd, src.start, fd, src.size_hint)  # noqa: E731
            digest = self._put_staged(copy, src, stager, hint, receipt)
        elif digest is None:
            digest = hash_fd(src.fd, src.start)
            reader = io.BufferedReader(PositionalReader(src.fd, src.start), CHUNK_SIZE)
            # Read twice (hashed, then sent): bytes that differ the second time changed in
            # place, where stat may not show it (a pseudo-file such as /proc/self/maps).
            second_read = f"File {src.name!r} changed while it was being uploaded (read again)"
            try:
                self._store_verified(digest, reader, name=second_read)
            except IntegrityError:
                src.check_unchanged()  # the file changed under us: say so, by name
                raise
            src.check_unchanged()
        if src.start == 0:
            self._file_digests.remember(src.before, digest, started)
        return digest

    def _put_staged(
        self,
        fill: Callable[[int], Digest],
        src: FileSource | None = None,
        stager: SupportsStaging | None = None,
        hint: bytes | None = None,
        receipt: PublishReceipt | None = None,
    ) -> Digest:
        """Copy into the backend's own temp file while hashing the copy; publish by rename."""
        stager = stager or self._staging
        assert stager is not None
        staged = stager.stage(BLOB_PREFIX.rstrip("/"))
        try:
            digest = fill(staged.fd)
            if src is not None:
                src.check_unchanged()
            # Published at once if nothing is stored under the key (the usual case, one look
            # at the key). Dedup: a blob already stored with the right bytes gets no bytes
            # written (the copy is dropped). One of the wrong size, or of the right size but
            # wrong bytes (corrupt), is repaired by publishing our verified copy over it; its
            # check reads, never maps, the file.
            key = blob_key(digest)
            existing = staged.commit_new(key)
            if existing is None:
                published = True
            elif self._present(key, existing, digest) and self._stored_blob_matches(digest):
                published = False
                staged.discard()
            else:
                published = True
                staged.commit(key)
        except BaseException:
            staged.discard()
            raise
        if published and receipt is not None:
            receipt.staged = staged
        if hint is not None:  # the blob now holds exactly these bytes: see _reuse_known_content
            self._remember_stored(digest, hint)
        if self._blob_cache is not None:
            with self._backend.open_reader(blob_key(digest)) as reader:
                self._blob_cache.add_file(digest, reader)
        return digest

    def _reuse_known_content(self, src: FileSource, hint: bytes | None) -> Digest | None:
        """The digest of a large file saved again with bytes this store already holds, or None.

        A re-saved file (new inode and mtime) misses the identity memo. Its fingerprint names
        the content this process last stored or verified here with that fingerprint; if that
        blob is unchanged since (same size, mtime and, in a local store, ctime: a corrupting
        write changes the ctime even if its author puts the mtime back, and then the copy path
        below compares and repairs it), the file is hashed where it lies
        (``pread``, never a map) and nothing is copied: a dedup hit stores no bytes, and the
        digest is of exactly the bytes read, which the re-check after hashing proves were the
        file's. Any mismatch returns None, and the caller takes the copy path.
        """
        known = None if hint is None else self._file_digests.likely(self.describe(), hint)
        if known is None:
            return None
        candidate, state = known
        if self._stored_state(candidate) != state:
            return None
        digest = hash_in_place(src)
        src.check_unchanged()
        if digest != candidate:
            return None
        if self._stored_key(digest) == blob_key(digest):
            if self._check_stored(digest) != (True, False):
                return None
        elif not self.chunks.has_manifest(digest, with_packs=True):
            return None
        self._remember_stored(digest, hint)  # a freshening touch changed the mtime
        return digest

    def _stored_key(self, digest: Digest) -> str:
        """Where ``digest``'s content is named: its manifest (chunked) or its blob."""
        return manifest_key(digest) if digest.size >= self.chunk_threshold else blob_key(digest)

    def _stored_state(self, digest: Digest) -> tuple[int, float, float | None] | None:
        try:
            info = self._backend.stat(self._stored_key(digest))
        except ArtifactNotFound:
            return None
        # With the ctime where known: a write that put the mtime back (touch -r) still shows.
        return info.size, info.modified, info.changed

    def _remember_stored(self, digest: Digest, hint: bytes | None) -> None:
        state = self._stored_state(digest)
        if hint is not None and state is not None:
            self._file_digests.remember_stored(self.describe(), hint, digest, state)

    def _stored_blob_matches(self, digest: Digest) -> bool:
        try:
            with self._backend.open_reader(blob_key(digest)) as reader:
                return hash_fd(reader.fileno()) == digest
        except (ArtifactNotFound, IntegrityError, OSError, io.UnsupportedOperation):
            return False

    def _check_stored(self, digest: Digest) -> tuple[bool, bool]:
        """Return (present, repair) for ``digest``'s blob.

        ``present``: stored with the right size; its time is refreshed if older than
        ``freshen_after`` (so gc spares a re-used blob). ``repair``: an object of the wrong
        size is in the way (corrupt) and must be overwritten, not created-if-absent.
        """
        key = blob_key(digest)
        try:
            info = self._backend.stat(key)
        except ArtifactNotFound:
            return False, False
        present = self._present(key, info, digest)
        return present, not present

    def _present(self, key: str, info: ObjectInfo, digest: Digest) -> bool:
        """Whether ``info`` (stored at ``key``) is ``digest``'s blob by its size; freshens it.

        Its time is refreshed if older than ``freshen_after`` (so gc spares a re-used blob).
        """
        if info.size != digest.size:
            return False
        if self.clock.now_to_freshen() - info.modified > self.freshen_after:
            self._freshen(key)
        return True

    def _store_verified(self, digest: Digest, source: BinaryIO, name: str | None = None) -> bool:
        """Send ``source`` under ``digest``'s key unless present, verifying it on the way.

        Every backend publishes only after reading its input to EOF, and the verifying reader
        raises there (or as soon as a byte too many arrives) if the bytes are not ``digest``:
        so a source that changed since it was hashed publishes nothing. Returns True if sent.
        """
        present, repair = self._check_stored(digest)
        start = source.tell()
        if not present:
            name = name or f"upload of {digest}"
            verifying = VerifyingReader(source, digest, name=name, close_source=False)
            # A present object of the wrong size is corrupt: overwrite it to repair.
            self._backend.write(
                blob_key(digest), io.BufferedReader(verifying, CHUNK_SIZE), if_absent=not repair
            )
        if self._blob_cache is not None:
            # Dedup hit or not: the uploading worker often reads its upload back.
            source.seek(start)
            self._blob_cache.add_file(digest, source)
            source.seek(start + digest.size)
        return not present

    def _freshen(self, key: str) -> None:
        # Collected meanwhile: put_artifact's re-check after the ref rewrites it.
        with contextlib.suppress(ArtifactNotFound):
            self._backend.touch(key)

    def write_verified_blob(self, digest: Digest, reader: BinaryIO) -> None:
        """Store a blob from a reader that already verifies ``digest``.

        For example another store's :meth:`open_blob`: no second hashing pass, no temp copy.

        The reader raises at EOF if the bytes are wrong; every backend publishes only after
        reading to EOF, so a bad source leaves nothing under the blob's key.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> a, b = BlobStore(MemoryBackend()), BlobStore(MemoryBackend())
            >>> d = a.put_blob(io.BytesIO(b"x"))
            >>> b.write_verified_blob(d, a.open_blob(d)); b.has_blob(d)
            True
        """
        present, repair = self._check_stored(digest)  # an object of the wrong size is replaced
        if not present:
            self._backend.write(blob_key(digest), reader, if_absent=not repair)
        elif not self.has_blob(digest):  # a broken manifest readers take over the blob
            with contextlib.suppress(TooManyChunks):  # then it stays broken: has_blob says so
                self.chunks.put(reader)  # replaces it

    def open_blob(self, digest: Digest) -> BinaryIO:
        """A reader of the blob that raises ``IntegrityError`` rather than return wrong bytes.

        Raises:
            ArtifactNotFound: No such blob.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = BlobStore(MemoryBackend())
            >>> d = store.put_blob(io.BytesIO(b"abc"))
            >>> store.open_blob(d).read()
            b'abc'
        """
        if digest.size >= self.chunk_threshold:
            # No manifest: stored whole (below the threshold when it was uploaded).
            with contextlib.suppress(ArtifactNotFound):
                return self.chunks.open(digest)
        return self._open_whole(digest)

    def _open_whole(self, digest: Digest) -> BinaryIO:
        """:meth:`open_blob` without looking for a manifest (below the threshold, or none)."""
        key = blob_key(digest)
        if self._blob_cache is not None:
            return self._blob_cache.open(digest, lambda: self._backend.open_reader(key))
        try:
            raw = self._backend.open_reader(key)
        except ArtifactNotFound:
            if digest.size >= self.chunk_threshold:
                raise
            return self.chunks.open(digest)  # chunked under a lower threshold
        name = f"blob {digest} in {self.describe()}"
        return io.BufferedReader(VerifyingReader(raw, digest, name=name), CHUNK_SIZE)

    def materialize_blob(self, digest: Digest, path: str | os.PathLike[str]) -> None:
        """Write the blob to the new file ``path``: verified, atomic, never overwriting.

        Raises:
            FileExistsError: ``path`` exists.
            IntegrityError: The stored bytes do not match; nothing is left at ``path``.

        Example:
            >>> import io, os, tempfile
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = BlobStore(MemoryBackend())
            >>> d = store.put_blob(io.BytesIO(b"abc"))
            >>> target = os.path.join(tempfile.mkdtemp(), "out.bin")
            >>> store.materialize_blob(d, target); open(target, "rb").read()
            b'abc'
        """
        target = Path(path)
        key = blob_key(digest)
        if self._blob_cache is not None:
            # Chunked: assembled from cached packs (None: no manifest, so a whole blob).
            chunked = (
                self.chunks.materialize_cached(digest, target)
                if digest.size >= self.chunk_threshold
                else None
            )
            if chunked is None:
                self._blob_cache.materialize(digest, target, lambda: self._backend.open_reader(key))
                return
            if chunked:
                return
        elif (files := self._local_files) is not None and self._materialize_local(
            digest, target, files
        ):
            return
        if digest.size >= self.chunk_threshold and self.chunks.materialize(digest, target):
            return
        if self._blob_cache is not None:
            with self._open_whole(digest) as reader:
                materialize(reader, target)
            return
        try:
            raw = self._backend.open_reader(key)
        except ArtifactNotFound:
            if digest.size >= self.chunk_threshold or not self.chunks.materialize(digest, target):
                raise
            return  # chunked under a lower threshold
        with raw:  # written as the backend hands the bytes over: no copy into a buffer
            name = f"blob {digest} in {self.describe()}"
            materialize_buffers(verified_buffers(raw_blocks(raw), digest, name=name), target)

    def _materialize_local(self, digest: Digest, target: Path, files: Backend) -> bool:
        """From a local store's files, copied in the kernel and hashed as they land.

        ``files`` reads them (the local layer, below any retries). About ``cp``'s time, where
        reading into this process, hashing and writing takes twice that. False, with nothing
        at ``target``, when it cannot be done that way or the copy is not ``digest``: the
        verifying stream then says what is wrong.
        """
        if digest.size >= self.chunk_threshold:
            done = self.chunks.materialize_local(digest, target, files)
            if done is not None:
                return done
        try:
            raw = files.open_reader(blob_key(digest))
        except ArtifactNotFound:
            return False
        with raw:
            fd = real_fileno(raw)
            return fd is not None and copy_and_publish(fd, digest, target)
