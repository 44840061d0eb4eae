"""The content-addressed layer: blobs named by their digest, and refs that point at them.

Layout inside any backend::

    blobs/blake3/<first 2 hex>/<remaining 62 hex>   immutable content, written once
    refs/<artifact_id>                              small JSON :class:`~optuna_cas.refs.ArtifactRef`

This is the only layer that hashes. Invariants it keeps:

* a blob is written only if no blob of that digest (and size) exists: re-uploads cost a hash
  and an existence check, never a copy;
* a blob is published under its key only after its digest is known, so a key never names other
  bytes (for files, the source is re-checked after the copy: a file changed mid-upload fails);
* a ref is written only after its blob exists, so no ref points at missing data;
* every read that returns bytes verifies them against the digest while streaming.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from optuna_cas._fileio import PositionalReader, publish_new_file, temp_beside
from optuna_cas._validation import validate_artifact_id
from optuna_cas.backends.base import Backend, SupportsStaging
from optuna_cas.digest import (
    ALGORITHM,
    CHUNK_SIZE,
    Digest,
    VerifyingReader,
    hash_fd,
    hash_stream,
    readinto,
)
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.ingest import FileDigestMemo, FileSource, copy_hashing, copy_stream_hashing, now_ns
from optuna_cas.refs import ArtifactRef

__all__ = [
    "BLOB_PREFIX",
    "QUARANTINE_PREFIX",
    "REF_PREFIX",
    "BlobCache",
    "BlobInfo",
    "ContentStore",
    "blob_key",
    "materialize",
]

BLOB_PREFIX = "blobs/"
REF_PREFIX = "refs/"
# Corrupt blobs moved aside by verify(quarantine=True): kept for inspection, never read.
QUARANTINE_PREFIX = "quarantine/"
# Refs are tiny JSON records; refuse to parse anything absurdly large found at a ref key.
MAX_REF_BYTES = 1024 * 1024
# A dedup hit on a blob older than this refreshes its modification time, so garbage
# collection (whose grace period must exceed this: see optuna_cas.operations.gc) spares it.
FRESHEN_AFTER_SECONDS = 30 * 60
_BLOB_KEY = re.compile(r"blobs/([a-z0-9]+)/([0-9a-f]{2})/([0-9a-f]{62})")


# Digests of files this process stored, shared by every store (see FileDigestMemo).
DEFAULT_FILE_DIGESTS = FileDigestMemo()


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


class BlobCache(Protocol):
    """A local cache of blobs keyed by digest (see :mod:`optuna_cas.middleware.cache`).

    ``fetch`` opens the blob's raw bytes in the backing store; the cache verifies everything it
    stores or returns.
    """

    def open(self, digest: Digest, fetch: Callable[[], BinaryIO]) -> BinaryIO:
        """A verified reader of the blob, filling the cache from ``fetch`` on a miss."""
        ...

    def materialize(self, digest: Digest, path: Path, fetch: Callable[[], BinaryIO]) -> None:
        """Write the blob to the new file ``path`` (verified), filling the cache on a miss."""
        ...

    def add_file(self, digest: Digest, source: BinaryIO) -> None:
        """Offer a just-uploaded blob (``source`` at its start) to the cache."""
        ...

    def discard(self, digest: Digest) -> None:
        """Forget a blob (e.g. after gc removed it)."""
        ...


class ContentStore:
    """Blobs and refs on top of any :class:`~optuna_cas.backends.base.Backend`.

    Args:
        backend: Where bytes live.
        blob_cache: Optional local cache consulted before the backend on reads.
        freshen_after: Seconds after which a re-used blob's time is refreshed (so that gc,
            whose grace period must exceed this, spares it).
        file_digests: Remembers digests of unchanged files (default: one per process).

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> store = ContentStore(MemoryBackend())
        >>> ref = store.put_artifact("a1", io.BytesIO(b"weights"), filename="model.pt")
        >>> store.put_artifact("a2", io.BytesIO(b"weights")).digest == ref.digest
        True
        >>> len(list(store.iter_blobs()))
        1
        >>> store.open_artifact("a2").read()
        b'weights'
    """

    def __init__(
        self,
        backend: Backend,
        *,
        blob_cache: BlobCache | None = None,
        freshen_after: float = FRESHEN_AFTER_SECONDS,
        file_digests: FileDigestMemo = DEFAULT_FILE_DIGESTS,
    ) -> None:
        self._backend = backend
        self._blob_cache = blob_cache
        self.freshen_after = freshen_after
        self._file_digests = file_digests

    @property
    def backend(self) -> Backend:
        """The backend below this store.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentStore(MemoryBackend()).backend.describe()
            'memory://'
        """
        return self._backend

    @property
    def blob_cache(self) -> BlobCache | None:
        """The read cache in front of the backend, if any."""
        return self._blob_cache

    def with_backend(self, backend: Backend) -> ContentStore:
        """A store over ``backend`` (e.g. the same backend wrapped in retries), same cache.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentStore(MemoryBackend()).with_backend(MemoryBackend()).blob_cache is None
            True
        """
        return ContentStore(
            backend,
            blob_cache=self._blob_cache,
            freshen_after=self.freshen_after,
            file_digests=self._file_digests,
        )

    def with_blob_cache(self, blob_cache: BlobCache | None) -> ContentStore:
        """The same backend read through ``blob_cache``."""
        return ContentStore(
            self._backend,
            blob_cache=blob_cache,
            freshen_after=self.freshen_after,
            file_digests=self._file_digests,
        )

    def describe(self) -> str:
        """The backend's URL-like name, for messages."""
        return self._backend.describe()

    # -- blobs -------------------------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        """Whether a blob of this digest *and size* is stored.

        A stored object of the wrong size is corrupt (e.g. truncated by a crash of the storage
        host); reporting it absent lets the next upload of the same bytes repair it.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentStore(MemoryBackend()).has_blob(Digest.of_bytes(b"x"))
            False
        """
        try:
            info = self._backend.stat(blob_key(digest))
        except ArtifactNotFound:
            return False
        return info.size == digest.size

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
            >>> ContentStore(MemoryBackend()).put_blob(io.BytesIO(b"abc")).size
            3
        """
        if isinstance(source, str | os.PathLike):
            with FileSource.open(source) as src:
                return self._put_file(src)
        file_source = FileSource.of_stream(source)
        if file_source is not None:
            digest = self._put_file(file_source)
            source.seek(file_source.start + digest.size)
            return digest
        if isinstance(self._backend, SupportsStaging):
            return self._put_staged(lambda fd: copy_stream_hashing(source, fd))
        if _seekable(source):
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

    def _put_file(self, src: FileSource) -> Digest:
        remembered = self._file_digests.get(src.before) if src.start == 0 else None
        if remembered is not None and self._check_stored(remembered) == (True, False):
            src.check_unchanged()
            return remembered
        started = now_ns()
        if isinstance(self._backend, SupportsStaging):
            digest = self._put_staged(
                lambda fd: copy_hashing(src.fd, src.start, fd, src.size_hint), src
            )
        else:
            digest = hash_fd(src.fd, src.start)
            reader = io.BufferedReader(PositionalReader(src.fd, src.start), CHUNK_SIZE)
            try:
                self._store_verified(digest, reader)
            except IntegrityError:
                src.check_unchanged()  # the file changed under us: say so, by name
                raise
            src.check_unchanged()
        if src.start == 0:
            self._file_digests.remember(src.before, digest, started)
        return digest

    def _put_staged(self, fill: Callable[[int], Digest], src: FileSource | None = None) -> Digest:
        """Copy into the backend's own temp file while hashing the copy; publish by rename."""
        assert isinstance(self._backend, SupportsStaging)
        staged = self._backend.stage(BLOB_PREFIX.rstrip("/"))
        try:
            digest = fill(staged.fd)
            if src is not None:
                src.check_unchanged()
            # Published even if the blob is present: the bytes are verified, so replacing is
            # harmless, repairs a corrupt copy of any size, and refreshes the blob's time.
            staged.commit(blob_key(digest))
        except BaseException:
            staged.discard()
            raise
        if self._blob_cache is not None:
            with self._backend.open_reader(blob_key(digest)) as reader:
                self._blob_cache.add_file(digest, reader)
        return digest

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
        if info.size != digest.size:
            return False, True
        if time.time() - info.modified > self.freshen_after:
            self._freshen(key)
        return True, False

    def _store_verified(self, digest: Digest, source: BinaryIO) -> bool:
        """Send ``source`` under ``digest``'s key unless present, verifying it on the way.

        Every backend publishes only after reading its input to EOF, and the verifying reader
        raises there (or as soon as a byte too many arrives) if the bytes are not ``digest``:
        so a source that changed since it was hashed publishes nothing. Returns True if sent.
        """
        present, repair = self._check_stored(digest)
        if present:
            return False
        start = source.tell()
        name = f"upload of {digest}"
        verifying = VerifyingReader(source, digest, name=name, close_source=False)
        # A present object of the wrong size is corrupt: overwrite it to repair.
        self._backend.write(
            blob_key(digest), io.BufferedReader(verifying, CHUNK_SIZE), if_absent=not repair
        )
        if self._blob_cache is not None:
            source.seek(start)
            self._blob_cache.add_file(digest, source)
        return True

    def _freshen(self, key: str) -> None:
        touch = getattr(self._backend, "touch", None)
        if callable(touch):
            try:
                touch(key)
            except ArtifactNotFound:
                pass  # collected meanwhile: put_artifact's re-check after the ref rewrites it

    def write_verified_blob(self, digest: Digest, reader: BinaryIO) -> None:
        """Store a blob from a reader that already verifies ``digest``.

        For example another store's :meth:`open_blob`: no second hashing pass, no temp copy.

        The reader raises at EOF if the bytes are wrong; every backend publishes only after
        reading to EOF, so a bad source leaves nothing under the blob's key.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> a, b = ContentStore(MemoryBackend()), ContentStore(MemoryBackend())
            >>> d = a.put_blob(io.BytesIO(b"x"))
            >>> b.write_verified_blob(d, a.open_blob(d)); b.has_blob(d)
            True
        """
        self._backend.write(blob_key(digest), reader, if_absent=True)

    def open_blob(self, digest: Digest) -> BinaryIO:
        """A reader of the blob that raises ``IntegrityError`` rather than return wrong bytes.

        Raises:
            ArtifactNotFound: No such blob.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentStore(MemoryBackend())
            >>> d = store.put_blob(io.BytesIO(b"abc"))
            >>> store.open_blob(d).read()
            b'abc'
        """
        key = blob_key(digest)
        if self._blob_cache is not None:
            return self._blob_cache.open(digest, lambda: self._backend.open_reader(key))
        raw = self._backend.open_reader(key)
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
            >>> store = ContentStore(MemoryBackend())
            >>> d = store.put_blob(io.BytesIO(b"abc"))
            >>> target = os.path.join(tempfile.mkdtemp(), "out.bin")
            >>> store.materialize_blob(d, target); open(target, "rb").read()
            b'abc'
        """
        target = Path(path)
        key = blob_key(digest)
        if self._blob_cache is not None:
            self._blob_cache.materialize(digest, target, lambda: self._backend.open_reader(key))
            return
        with self.open_blob(digest) as reader:
            materialize(reader, target)

    def remove_blob(self, digest: Digest) -> None:
        """Delete a blob (callers must make sure no ref needs it: see :func:`optuna_cas.gc`).

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentStore(MemoryBackend()); d = store.put_blob(io.BytesIO(b"x"))
            >>> store.remove_blob(d); store.has_blob(d)
            False
        """
        self._backend.remove(blob_key(digest))
        if self._blob_cache is not None:
            self._blob_cache.discard(digest)

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every blob in the backend (keys that do not parse as blob keys are skipped).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> list(ContentStore(MemoryBackend()).iter_blobs())
            []
        """
        for info in self._backend.list(f"{BLOB_PREFIX}{ALGORITHM}/"):
            match = _BLOB_KEY.fullmatch(info.key)
            if match is None:
                continue
            algorithm, head, tail = match.groups()
            yield BlobInfo(head + tail, algorithm, info.size, info.modified, info.key)

    # -- refs --------------------------------------------------------------------------------

    @staticmethod
    def ref_key(artifact_id: str) -> str:
        """The key of an artifact's ref; validates the ID.

        Example:
            >>> ContentStore.ref_key("a1")
            'refs/a1'
        """
        return REF_PREFIX + validate_artifact_id(artifact_id)

    def put_ref(self, ref: ArtifactRef) -> None:
        """Store a ref. Its blob must already be stored (blob before ref).

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentStore(MemoryBackend()); d = store.put_blob(io.BytesIO(b"x"))
            >>> store.put_ref(ArtifactRef("a1", d)); store.get_ref("a1").digest == d
            True
        """
        self._backend.write(self.ref_key(ref.artifact_id), io.BytesIO(ref.to_json()))

    def get_ref(self, artifact_id: str) -> ArtifactRef:
        """Look up an artifact's ref.

        Raises:
            ArtifactNotFound: No such artifact (the message names the ID and the store).
            IntegrityError: The stored ref is malformed.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentStore(MemoryBackend()).get_ref("nope")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.ArtifactNotFound: Artifact 'nope' not found in memory://
        """
        key = self.ref_key(artifact_id)
        try:
            with self._backend.open_reader(key) as reader:
                data = reader.read(MAX_REF_BYTES + 1)
        except ArtifactNotFound as e:
            raise ArtifactNotFound(
                f"Artifact {artifact_id!r} not found in {self.describe()}"
            ) from e
        if len(data) > MAX_REF_BYTES:
            raise IntegrityError(f"ref {artifact_id!r} is larger than {MAX_REF_BYTES} bytes")
        return ArtifactRef.from_json(data, artifact_id)

    def has_ref(self, artifact_id: str) -> bool:
        """Whether an artifact ID has a ref.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentStore(MemoryBackend()).has_ref("a")
            False
        """
        return self._backend.exists(self.ref_key(artifact_id))

    def remove_ref(self, artifact_id: str) -> None:
        """Delete an artifact's ref (its blob stays until :func:`optuna_cas.gc`).

        Raises:
            ArtifactNotFound: No such artifact.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentStore(MemoryBackend()).remove_ref("a")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.ArtifactNotFound: Artifact 'a' not found in memory://
        """
        try:
            self._backend.remove(self.ref_key(artifact_id))
        except ArtifactNotFound as e:
            raise ArtifactNotFound(
                f"Artifact {artifact_id!r} not found in {self.describe()}"
            ) from e

    def iter_ref_ids(self) -> Iterator[str]:
        """IDs of every ref in the store (one listing, no reads).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> list(ContentStore(MemoryBackend()).iter_ref_ids())
            []
        """
        for info in self._backend.list(REF_PREFIX):
            artifact_id = info.key[len(REF_PREFIX) :]
            if "/" not in artifact_id:
                yield artifact_id

    def iter_refs(self, *, workers: int = 8) -> Iterator[ArtifactRef]:
        """Every ref in the store; refs removed while listing are skipped.

        Refs are read ``workers`` at a time: on S3 or GCS each is one ~5 ms request, and gc,
        verify, sync and stats read them all.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> list(ContentStore(MemoryBackend()).iter_refs())
            []
        """

        def read(artifact_id: str) -> ArtifactRef | None:
            try:
                return self.get_ref(artifact_id)
            except ArtifactNotFound:
                return None

        ids = list(self.iter_ref_ids())
        if workers <= 1 or len(ids) < 2:
            refs: Iterator[ArtifactRef | None] = map(read, ids)
            yield from (ref for ref in refs if ref is not None)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="optuna-cas-refs") as pool:
            # Bounded look-ahead: batches keep memory flat on stores with millions of refs.
            for start in range(0, len(ids), 256):
                for ref in pool.map(read, ids[start : start + 256]):
                    if ref is not None:
                        yield ref

    # -- artifacts ---------------------------------------------------------------------------

    def put_artifact(
        self,
        artifact_id: str,
        source: BinaryIO | str | os.PathLike[str],
        *,
        filename: str | None = None,
        mimetype: str | None = None,
        encoding: str | None = None,
    ) -> ArtifactRef:
        """Store content (deduplicated) and point ``artifact_id`` at it; blob before ref.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentStore(MemoryBackend()).put_artifact("a", io.BytesIO(b"x")).size
            1
        """
        validate_artifact_id(artifact_id)
        if isinstance(source, str | os.PathLike) or _seekable(source):
            return self._put_artifact(artifact_id, source, filename, mimetype, encoding)
        # A pipe cannot be re-read for the re-check below: keep a local copy while we work.
        with tempfile.TemporaryFile(prefix="optuna-cas-spool-") as spool:
            _copy_to_spool(source, spool)
            spool.seek(0)
            return self._put_artifact(artifact_id, spool, filename, mimetype, encoding)

    def _put_artifact(
        self,
        artifact_id: str,
        source: BinaryIO | str | os.PathLike[str],
        filename: str | None,
        mimetype: str | None,
        encoding: str | None,
    ) -> ArtifactRef:
        start = None if isinstance(source, str | os.PathLike) else source.tell()
        digest = self.put_blob(source)
        ref = ArtifactRef(
            artifact_id=artifact_id,
            digest=digest,
            filename=filename,
            mimetype=mimetype,
            encoding=encoding,
        )
        self.put_ref(ref)
        # Blob before ref is not enough with a concurrent gc: it may have judged the blob
        # unreferenced before our ref existed and delete it now. Checking after the ref is
        # written closes that race (argument in optuna_cas.operations.gc).
        if not self.has_blob(digest):
            if not isinstance(source, str | os.PathLike):
                source.seek(start or 0)
            try:
                again = self.put_blob(source)
            except BaseException:
                self._remove_own_ref(artifact_id)
                raise
            if again != digest:
                self._remove_own_ref(artifact_id)
                raise IntegrityError(
                    f"Content of artifact {artifact_id!r} changed during upload; nothing was "
                    "recorded for it"
                )
        return ref

    def _remove_own_ref(self, artifact_id: str) -> None:
        # Only the ref this upload just wrote: blobs are never deleted on the upload path.
        try:
            self._backend.remove(self.ref_key(artifact_id))
        except ArtifactNotFound:
            pass

    def open_artifact(self, artifact_id: str) -> BinaryIO:
        """A verifying reader of an artifact's content.

        Raises:
            ArtifactNotFound: No such artifact, or its blob is missing (the message says which).

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentStore(MemoryBackend()); _ = store.put_artifact("a", io.BytesIO(b"x"))
            >>> store.open_artifact("a").read()
            b'x'
        """
        try:
            ref = self.get_ref(artifact_id)
        except ArtifactNotFound:
            legacy = self._open_legacy(artifact_id)
            if legacy is None:
                raise
            return legacy
        try:
            return self.open_blob(ref.digest)
        except ArtifactNotFound as e:
            raise ArtifactNotFound(
                f"Artifact {artifact_id!r}: its blob {ref.digest} is missing from "
                f"{self.describe()} (run 'optuna-cas verify')"
            ) from e

    def _open_legacy(self, artifact_id: str) -> BinaryIO | None:
        """An object Optuna's own store wrote at ``<artifact_id>`` (no ref, no digest).

        Optuna's file-system, S3 and GCS stores keep one object per ID at the store's root;
        reading them (unverified: there is no digest) means switching the import loses
        nothing already uploaded.
        """
        if artifact_id + "/" in (BLOB_PREFIX, REF_PREFIX, QUARANTINE_PREFIX):
            return None
        try:
            return self._backend.open_reader(artifact_id)
        except ArtifactNotFound:
            return None


def materialize(reader: BinaryIO, target: Path) -> None:
    """Copy ``reader`` into a new file at ``target`` atomically, never overwriting.

    Bytes go to a temp file beside ``target``; only when the reader reached EOF cleanly (a
    verifying reader has then checked the digest) is it linked into place. Any failure removes
    the temp file, so no partial file is ever visible at ``target``.

    Args:
        reader: The content (typically verifying).
        target: The new file.

    Raises:
        FileExistsError: ``target`` exists (checked again at publication, atomically).

    Example:
        >>> import io, tempfile
        >>> from pathlib import Path
        >>> target = Path(tempfile.mkdtemp()) / "f"
        >>> materialize(io.BytesIO(b"abc"), target); target.read_bytes()
        b'abc'
    """
    if os.path.lexists(target):
        raise FileExistsError(f"File already exists: {target!s}")
    fd, temp_name = temp_beside(target)
    try:
        with open(fd, "wb") as out:
            buffer = bytearray(CHUNK_SIZE)
            view = memoryview(buffer)
            while n := readinto(reader, view):
                out.write(view[:n])
        publish_new_file(Path(temp_name), target)
    finally:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass


def _copy_to_spool(source: BinaryIO, out: BinaryIO) -> None:
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    while n := readinto(source, view):
        out.write(view[:n])


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable()) and stream.tell() >= 0
    except (AttributeError, OSError, ValueError):
        return False
