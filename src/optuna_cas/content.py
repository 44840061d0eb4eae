"""The content-addressed store: blobs named by their digest, refs that point at them.

Layout inside any backend::

    blobs/blake3/<first 2 hex>/<remaining 62 hex>   immutable content (:mod:`~optuna_cas.blobstore`)
    refs/<artifact_id>                              small JSON (:mod:`~optuna_cas.refstore`)

:class:`ContentStore` joins the two and adds artifacts: blob before ref, and a ref is written
only after its blob exists, so no ref points at missing data. Content of at most
:data:`~optuna_cas.refs.INLINE_LIMIT` bytes is kept inside its ref instead (no blob).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Container, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from optuna_cas._fileio import (
    PositionalReader,
    copy_to_spool,
    materialize,
    naming_full_disk,
    read_up_to,
    seekable,
)
from optuna_cas._seekable import seekable_reader
from optuna_cas._validation import check_optional_text, validate_artifact_id
from optuna_cas.backends.base import Backend, ObjectInfo
from optuna_cas.blobstore import (
    BLOB_PREFIX,
    DEFAULT_FILE_DIGESTS,
    FRESHEN_AFTER_SECONDS,
    QUARANTINE_PREFIX,
    BlobCache,
    BlobInfo,
    BlobStore,
    PublishReceipt,
    blob_key,
)
from optuna_cas.chunks.layout import (
    CHUNK_THRESHOLD,
    INDEX_PREFIX,
    MANIFEST_PREFIX,
    PACK_PREFIX,
)
from optuna_cas.chunks.reader import ChunkCheckedReader
from optuna_cas.digest import Digest
from optuna_cas.exceptions import (
    ArtifactNotFound,
    IntegrityError,
    InvalidKeyError,
    MissingPackError,
)
from optuna_cas.ingest import FileDigestMemo, FileSource
from optuna_cas.refs import INLINE_LIMIT, ArtifactRef
from optuna_cas.refstore import MAX_REF_BYTES, REF_PREFIX, RefStore

__all__ = [
    "BLOB_PREFIX",
    "CHUNK_THRESHOLD",
    "DEFAULT_FILE_DIGESTS",
    "FRESHEN_AFTER_SECONDS",
    "INLINE_LIMIT",
    "MAX_REF_BYTES",
    "QUARANTINE_PREFIX",
    "REF_PREFIX",
    "BlobCache",
    "BlobInfo",
    "ContentStore",
    "blob_key",
]

# Stores of an upload's content after its ref is written, when it is found gone (see gc).
_STORE_AGAIN_TRIES = 3


class ContentStore(BlobStore, RefStore):
    """Blobs and refs on top of any :class:`~optuna_cas.backends.base.Backend`.

    Args:
        backend: Where bytes live.
        blob_cache: Optional local cache consulted before the backend on reads.
        freshen_after: Seconds after which a re-used blob's time is refreshed (so that gc,
            whose grace period must exceed this, spares it).
        file_digests: Remembers digests of unchanged files (default: one per process).
        chunk_threshold: Files of at least this many bytes are stored as chunks in packs
            (``None``: never).
        inline_limit: Content of at most this many bytes is kept inside its ref, not as a
            blob (``None``: never).

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> store = ContentStore(MemoryBackend())
        >>> weights = bytes(8192)
        >>> ref = store.put_artifact("a1", io.BytesIO(weights), filename="model.pt")
        >>> store.put_artifact("a2", io.BytesIO(weights)).digest == ref.digest
        True
        >>> len(list(store.iter_blobs()))
        1
        >>> store.open_artifact("a2").read() == weights
        True
        >>> store.put_artifact("a3", io.BytesIO(b"small")).inline, len(list(store.iter_blobs()))
        (b'small', 1)
    """

    def __init__(
        self,
        backend: Backend,
        *,
        blob_cache: BlobCache | None = None,
        freshen_after: float = FRESHEN_AFTER_SECONDS,
        file_digests: FileDigestMemo = DEFAULT_FILE_DIGESTS,
        chunk_threshold: int | None = CHUNK_THRESHOLD,
        inline_limit: int | None = INLINE_LIMIT,
    ) -> None:
        if inline_limit is not None and not 0 <= inline_limit <= INLINE_LIMIT:
            raise ValueError(
                f"inline_limit must be None or between 0 and {INLINE_LIMIT}, got {inline_limit}"
            )
        self.inline_limit = inline_limit
        # Refs are remembered exactly when blobs are cached: a worker reading through a cache
        # saves both round trips, and every stack with a cache behaves the same.
        BlobStore.__init__(
            self,
            backend,
            blob_cache=blob_cache,
            freshen_after=freshen_after,
            file_digests=file_digests,
            chunk_threshold=chunk_threshold,
        )
        RefStore.__init__(self, backend, remember_refs=blob_cache is not None)

    def with_parts(
        self, *, backend: Backend | None = None, blob_cache: BlobCache | None = None
    ) -> ContentStore:
        """The same store with its backend or its cache replaced, every other part kept.

        The one place where stacks are assembled: :class:`~optuna_cas.Backoff` replaces the
        backend (by the same backend behind retries), the cache adds a blob cache, and
        whichever wraps the other, the result is the same store.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentStore(MemoryBackend()).with_parts(backend=MemoryBackend()).blob_cache is None
            True
        """
        store = ContentStore(
            backend if backend is not None else self._backend,
            blob_cache=blob_cache if blob_cache is not None else self._blob_cache,
            freshen_after=self.freshen_after,
            file_digests=self._file_digests,
            chunk_threshold=self.chunk_threshold,
            inline_limit=self.inline_limit,
        )
        # The same store: its time is read once, through the new backend (behind retries).
        store.clock = store.chunks.clock = self.clock.through(store.backend)
        return store

    def naming_full_disk(self) -> AbstractContextManager[None]:
        """Running out of space while writing to this store raises an error naming the disk.

        ``[Errno 28] No space left on device`` alone does not say which disk filled. A store on
        a local file system writes there; a remote one spools an upload's packs to ``$TMPDIR``
        before sending them.

        Example:
            >>> import errno
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> with ContentStore(MemoryBackend()).naming_full_disk():
            ...     raise OSError(errno.ENOSPC, "No space left on device")
            Traceback (most recent call last):
            ...
            OSError: [Errno 28] No space left on device ($TMPDIR, where uploads to memory:// spool their packs): '...'
        """
        if self._staging is not None:  # found once (a Protocol check costs ~8 us an upload)
            return naming_full_disk(self.describe(), " (writing to the artifact store)")
        return naming_full_disk(
            tempfile.gettempdir(),
            f" ($TMPDIR, where uploads to {self.describe()} spool their packs)",
        )

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
        check_optional_text(filename=filename, mimetype=mimetype, encoding=encoding)
        if isinstance(source, str | os.PathLike) or seekable(source):
            try:
                return self._put_artifact(artifact_id, source, filename, mimetype, encoding)
            except OSError:
                # Entered only on an error: a small file's upload takes ~100 us, and entering
                # a context manager on every one costs a few.
                with self.naming_full_disk():
                    raise
        # A pipe cannot be re-read for the re-check below: keep a local copy while we work.
        with tempfile.TemporaryFile(prefix="optuna-cas-spool-") as spool:
            with naming_full_disk(tempfile.gettempdir(), " ($TMPDIR, where a pipe is spooled)"):
                copy_to_spool(source, spool)
            spool.seek(0)
            try:
                return self._put_artifact(artifact_id, spool, filename, mimetype, encoding)
            except OSError:
                with self.naming_full_disk():
                    raise

    def _put_artifact(
        self,
        artifact_id: str,
        source: BinaryIO | str | os.PathLike[str],
        filename: str | None,
        mimetype: str | None,
        encoding: str | None,
    ) -> ArtifactRef:
        start = None if isinstance(source, str | os.PathLike) else source.tell()
        receipt = PublishReceipt()
        if isinstance(source, str | os.PathLike):
            with FileSource.open(source) as src:
                small = self._small_file(src)
                digest = self._put_file(src, receipt) if small is None else Digest.of_bytes(small)
        else:
            small = self._small_stream(source)
            digest = self._put_blob(source, receipt) if small is None else Digest.of_bytes(small)
        ref = ArtifactRef(artifact_id, digest, filename, mimetype, encoding, inline=small)
        self.put_ref(ref)
        if small is not None:
            # The ref is the whole artifact: nothing was written before it, and there is no
            # blob a concurrent gc could take away after it.
            return ref
        # Blob before ref is not enough with a concurrent gc: it may have judged the blob
        # unreferenced before our ref existed and delete it now. Checking after the ref is
        # written closes that race (argument in optuna_cas.operations.gc). A blob this
        # upload just renamed into place is looked at where it was put (one lstat); any
        # other answer than "still there" gets the full check.
        stored = receipt.still_stored(digest) or self.has_blob(digest)
        # A gc that listed refs before ours existed may take what is stored again too, with a
        # grace period shorter than the upload; one that starts later sees the ref. So a few
        # tries; then the upload fails: never acknowledge what will not read back.
        for _ in range(_STORE_AGAIN_TRIES):
            if stored:
                return ref
            if not isinstance(source, str | os.PathLike):
                source.seek(start or 0)
            try:
                again = self.put_blob(source)
            except BaseException as e:
                self._remove_own_ref(artifact_id, e)
                raise
            if again != digest:
                changed = IntegrityError(
                    f"Content of artifact {artifact_id!r} changed during upload; nothing was "
                    "recorded for it"
                )
                self._remove_own_ref(artifact_id, changed)
                raise changed
            stored = self.has_blob(digest)
        if stored:
            return ref
        lost = IntegrityError(
            f"Content of artifact {artifact_id!r} could not be stored whole in "
            f"{self.describe()} ({_STORE_AGAIN_TRIES} tries: an object there is damaged and "
            "is not replaced, or a gc with a short grace period keeps taking it); nothing was "
            "recorded for it: run 'optuna-cas verify'"
        )
        self._remove_own_ref(artifact_id, lost)
        raise lost

    def _small_file(self, src: FileSource) -> bytes | None:
        """All of ``src`` if it holds at most ``inline_limit`` bytes and did not change."""
        limit = self.inline_limit
        if limit is None or src.size_hint > limit:
            return None
        # Pseudo-files (size 0 in stat) may hold more: read one byte past the limit to know.
        reader = io.BufferedReader(PositionalReader(src.fd, src.start), limit + 1)
        data = read_up_to(reader, limit + 1)
        if len(data) > limit:
            return None
        src.check_unchanged()
        return data

    def _small_stream(self, source: BinaryIO) -> bytes | None:
        """All of a stream from its position if that is at most ``inline_limit`` bytes.

        The stream is then left at its end; otherwise where it was.
        """
        limit = self.inline_limit
        if limit is None:
            return None
        file_source = FileSource.of_stream(source)
        if file_source is not None:
            small = self._small_file(file_source)
            if small is not None:
                source.seek(file_source.start + len(small))
            return small
        start = source.tell()
        data = read_up_to(source, limit + 1)
        if len(data) <= limit:
            return data
        source.seek(start)
        return None

    def _remove_own_ref(self, artifact_id: str, failure: BaseException) -> None:
        """Remove the ref a failing upload wrote; if that fails too, say so on ``failure``.

        Only that ref: blobs are never deleted on the upload path. The upload's own error is
        the one raised (a role that may not delete must not hide it behind AccessDenied).
        """
        key = self.ref_key(artifact_id)
        try:
            self._backend.remove(key)
        except ArtifactNotFound:
            pass
        except Exception as e:
            failure.add_note(
                f"Its ref {key!r} could not be removed ({e}): it names content that is not "
                f"stored; remove it ('optuna-cas rm {artifact_id}') with a role that may delete"
            )

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
        if ref.inline is not None:
            return io.BytesIO(ref.inline)
        try:
            reader = self.open_blob(ref.digest)
        except ArtifactNotFound as e:
            self.forget_ref(artifact_id)
            raise self._missing(ref, e) from e
        # Seekable like the file Optuna's store returns (np.load, zipfile), and handing out
        # only checked bytes to a reader that stops early (a header, a pickle): see _seekable.
        return seekable_reader(
            reader,
            lambda: self.open_blob(ref.digest),
            ref.size,
            checked_as_read=isinstance(reader, ChunkCheckedReader),
        )

    def materialize_artifact(self, ref: ArtifactRef, path: str | os.PathLike[str]) -> None:
        """Write the content ``ref`` names to the new file ``path``: verified, atomic.

        Raises:
            ArtifactNotFound: Its blob, or a pack of its chunks, is missing (the message names
                it and says to run verify).
            FileExistsError: ``path`` exists.

        Example:
            >>> import io, os, tempfile
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentStore(MemoryBackend())
            >>> ref = store.put_artifact("a", io.BytesIO(b"abc"))
            >>> target = os.path.join(tempfile.mkdtemp(), "out.bin")
            >>> store.materialize_artifact(ref, target); open(target, "rb").read()
            b'abc'
        """
        if ref.inline is not None:  # checked against its digest when the ref was read
            materialize(io.BytesIO(ref.inline), Path(path))
            return
        try:
            self.materialize_blob(ref.digest, path)
        except ArtifactNotFound as e:
            self.forget_ref(ref.artifact_id)
            raise self._missing(ref, e) from e

    def _missing(self, ref: ArtifactRef, error: ArtifactNotFound) -> ArtifactNotFound:
        # A chunked file's missing pack is what to restore (and what verify names): a message
        # naming only the file's digest as a "blob" sent users looking for an object that
        # never existed.
        if isinstance(error, MissingPackError):
            return MissingPackError(
                f"Artifact {ref.artifact_id!r}: its pack {error.pack} is missing from "
                f"{self.describe()} (run 'optuna-cas verify')",
                error.pack,
            )
        # Neither a blob nor a manifest is there, and either may have been: "its blob" sent
        # users of a chunked file looking for an object that never existed (found by a probe).
        return ArtifactNotFound(
            f"Artifact {ref.artifact_id!r}: its content {ref.digest} (a blob, or a chunked "
            f"file's manifest) is missing from {self.describe()} (run 'optuna-cas verify')"
        )

    def remove_artifact(self, artifact_id: str) -> None:
        """Remove an artifact's ref (its content stays for gc), or what Optuna's store wrote.

        An ID may name an object Optuna's own store wrote before the switch (:meth:`open_artifact`
        serves those when there is no ref): it is deleted, as Optuna's ``remove`` would. With
        a ref too (``sync`` back into a store that still holds the file makes one), both go:
        the object would be served again once the ref is gone.

        Raises:
            ArtifactNotFound: Neither exists.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentStore(MemoryBackend())
            >>> store.backend.write("old", io.BytesIO(b"written by Optuna"))
            >>> store.remove_artifact("old"); store.backend.exists("old")
            False
        """
        try:
            self.remove_ref(artifact_id)
        except ArtifactNotFound:
            if not _optuna_store_key(artifact_id):
                raise
            try:
                self._backend.remove(artifact_id)
            except ArtifactNotFound:
                raise self._not_found(artifact_id) from None
            return
        # A look first (no DELETE for the common case, where there is no such object).
        if _optuna_store_key(artifact_id) and self._backend.exists(artifact_id):
            with contextlib.suppress(ArtifactNotFound):
                self._backend.remove(artifact_id)

    def holds_optuna_store_object(self, artifact_id: str) -> bool:
        """Whether an object Optuna's own store wrote is at ``artifact_id`` (no ref needed).

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentStore(MemoryBackend())
            >>> store.backend.write("old", io.BytesIO(b"written by Optuna"))
            >>> store.holds_optuna_store_object("old"), store.holds_optuna_store_object("new")
            (True, False)
        """
        return _optuna_store_key(artifact_id) and self._backend.exists(artifact_id)

    def iter_optuna_store_objects(self, without: Container[str] = ()) -> Iterator[ObjectInfo]:
        """Objects at the root that Optuna's own store could have written under an artifact ID.

        Optuna's stores keep one object per ID at the root (``base_path/<id>``, or the bucket's
        ``<id>``); our own keys all live below a prefix. Names starting with a dot are temporary
        or hidden files, never an artifact. Whether a ref exists for the ID is not checked:
        callers pass the IDs they found refs for (``without``), which then read as those refs.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentStore(MemoryBackend())
            >>> store.backend.write("old", io.BytesIO(b"written by Optuna"))
            >>> _ = store.put_artifact("new", io.BytesIO(b"x"))
            >>> [info.key for info in store.iter_optuna_store_objects()]
            ['old']
            >>> list(store.iter_optuna_store_objects(without={"old"}))  # a ref names "old"
            []
        """
        for info in self._backend.list(""):
            key = info.key
            at_root = "/" not in key and not key.startswith(".")
            if at_root and key not in without and _optuna_store_key(key):
                yield info

    def optuna_store_object_size(self, artifact_id: str) -> int | None:
        """The size of the object Optuna's own store wrote under ``artifact_id``, if any.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentStore(MemoryBackend()).optuna_store_object_size("old") is None
            True
        """
        if not _optuna_store_key(artifact_id):
            return None
        try:
            return self._backend.stat(artifact_id).size
        except ArtifactNotFound:
            return None

    def _open_legacy(self, artifact_id: str) -> BinaryIO | None:
        """An object Optuna's own store wrote at ``<artifact_id>`` (no ref, no digest).

        Optuna's file-system, S3 and GCS stores keep one object per ID at the store's root;
        reading them (unverified: there is no digest) means switching the import loses
        nothing already uploaded.
        """
        if not _optuna_store_key(artifact_id):
            return None
        try:
            return self._backend.open_reader(artifact_id)
        except ArtifactNotFound:
            return None


# The folders a store keeps its own objects in (the command line's store check uses them too).
OUR_PREFIXES = (
    BLOB_PREFIX,
    REF_PREFIX,
    QUARANTINE_PREFIX,
    PACK_PREFIX,
    MANIFEST_PREFIX,
    INDEX_PREFIX,
)


# What operating systems and volumes put into any folder (compared casefolded): never an
# artifact, though Optuna's store could have written such a name (review: a NAS share's
# Thumbs.db was listed, verified and synced as one).
NOT_ARTIFACTS = frozenset(
    {"lost+found", "$recycle.bin", "system volume information", "icon\r"}  # volumes, macOS
    | {"thumbs.db", "ehthumbs.db", "desktop.ini"}  # Windows
    | {"@eadir", "#recycle", "#snapshot", "@recycle", "@recently-snapshot"}  # NAS shares
)


def _optuna_store_key(artifact_id: str) -> bool:
    """Whether Optuna's own store could have written this ID: valid, and none of our prefixes.

    Nor a hidden name (Optuna's IDs are UUIDs; ``rm .bashrc`` deleted one, found in review),
    nor one of :data:`NOT_ARTIFACTS`.
    """
    if artifact_id + "/" in OUR_PREFIXES or artifact_id.startswith("."):
        return False
    if artifact_id.casefold() in NOT_ARTIFACTS:
        return False
    try:
        validate_artifact_id(artifact_id)
    except InvalidKeyError:
        return False
    return True
