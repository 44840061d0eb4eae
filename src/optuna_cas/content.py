"""The content-addressed store: blobs named by their digest, refs that point at them.

Layout inside any backend::

    blobs/blake3/<first 2 hex>/<remaining 62 hex>   immutable content (:mod:`~optuna_cas.blobstore`)
    refs/<artifact_id>                              small JSON (:mod:`~optuna_cas.refstore`)

:class:`ContentStore` joins the two and adds artifacts: blob before ref, and a ref is written
only after its blob exists, so no ref points at missing data.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO

from optuna_cas._fileio import copy_to_spool
from optuna_cas._validation import validate_artifact_id
from optuna_cas.backends.base import Backend
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
    seekable,
)
from optuna_cas.chunks.layout import CHUNK_THRESHOLD
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.ingest import FileDigestMemo
from optuna_cas.refs import ArtifactRef
from optuna_cas.refstore import MAX_REF_BYTES, REF_PREFIX, RefStore

__all__ = [
    "BLOB_PREFIX",
    "CHUNK_THRESHOLD",
    "DEFAULT_FILE_DIGESTS",
    "FRESHEN_AFTER_SECONDS",
    "MAX_REF_BYTES",
    "QUARANTINE_PREFIX",
    "REF_PREFIX",
    "BlobCache",
    "BlobInfo",
    "ContentStore",
    "blob_key",
]


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
        chunk_threshold: int | None = CHUNK_THRESHOLD,
    ) -> None:
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
        return ContentStore(
            backend if backend is not None else self._backend,
            blob_cache=blob_cache if blob_cache is not None else self._blob_cache,
            freshen_after=self.freshen_after,
            file_digests=self._file_digests,
            chunk_threshold=self.chunk_threshold,
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
        if isinstance(source, str | os.PathLike) or seekable(source):
            return self._put_artifact(artifact_id, source, filename, mimetype, encoding)
        # A pipe cannot be re-read for the re-check below: keep a local copy while we work.
        with tempfile.TemporaryFile(prefix="optuna-cas-spool-") as spool:
            copy_to_spool(source, spool)
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
        receipt = PublishReceipt()
        digest = self._put_blob(source, receipt)
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
        # written closes that race (argument in optuna_cas.operations.gc). A blob this
        # upload just renamed into place is looked at where it was put (one lstat); any
        # other answer than "still there" gets the full check.
        if not receipt.still_stored(digest) and not self.has_blob(digest):
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
        with contextlib.suppress(ArtifactNotFound):
            self._backend.remove(self.ref_key(artifact_id))

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
            self.forget_ref(artifact_id)
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
