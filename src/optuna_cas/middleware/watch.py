"""``TransferWatch``: what one upload or download moves between this machine and a store.

The content store decides whether bytes travel at all (a blob already stored is not sent
again) and how (a local store copies into its own temp file in the kernel; S3 and GCS read a
stream). Rather than thread a callback through each of those paths, the watch wraps the
store's *backend*, where every byte of content passes: it reports bytes as the backend reads
or writes them, and notes whether a new blob was stored. The command line uses it to draw
progress bars and to say "already stored".

A file stored as chunks is the exception: its packs hold only the chunks the store lacked,
written several at a time, so the watch counts the file's bytes as the chunker reads them
instead (``ChunkStore.wrap_source``), and the bar goes from 0 to the file's size whatever
was new. Each stream or staged file counts what it moved; one that rewinds for a retry takes
back what it re-reads, so the bar only goes back on a retry.
"""

from __future__ import annotations

import functools
import io
import json
import os
import threading
from collections.abc import Iterator
from typing import BinaryIO, cast

from optuna_cas._seekable import CountingReader
from optuna_cas.backends.base import (
    Backend,
    ObjectInfo,
    SealedFile,
    StagedObject,
    SupportsStaging,
    staging_of,
)
from optuna_cas.chunks.layout import MANIFEST_PREFIX, PACK_PREFIX
from optuna_cas.content import BLOB_PREFIX, REF_PREFIX
from optuna_cas.digest import CHUNK_SIZE
from optuna_cas.progress import Progress, ProgressCallback
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["TransferWatch"]

# How often the size of a temp file being filled by a kernel copy is looked at.
POLL_SECONDS = 0.1


class TransferWatch:
    """Reports the content bytes one operation moves, and whether it stored a new blob.

    One watch per operation (one upload or one download): its total is that file's size, and
    once it counted a chunked file as it was read, it counts nothing else.

    Args:
        task: Shown with the progress, e.g. ``"put model.pt"``.
        total: Bytes expected (the file's size), or None.
        progress: Called as ``progress(task, done, total)``; None to only record.

    Example:
        >>> import io
        >>> from optuna_cas import MemoryArtifactStore
        >>> store = MemoryArtifactStore()
        >>> seen = []
        >>> weights = bytes(10_000)
        >>> watch = TransferWatch("put", 10_000, lambda task, done, total: seen.append(done))
        >>> _ = watch.watch(store).put("a1", io.BytesIO(weights))
        >>> watch.stored_new_blob, seen[-1]
        (True, 10000)
        >>> again = TransferWatch("put", 10_000)
        >>> _ = again.watch(store).put("a2", io.BytesIO(weights))
        >>> again.stored_new_blob   # the same bytes: only a new ref
        False
    """

    def __init__(self, task: str, total: int | None, progress: ProgressCallback | None = None):
        if progress is not None and total is not None:
            progress = functools.partial(_at_most, total, progress)
        self._progress = Progress(task, total, progress)
        self.reporting = progress is not None
        """Whether anyone is told of the progress (else only the outcome is recorded)."""
        self._lock = threading.Lock()
        self._from_source = False  # counting a chunked file's bytes as they are read
        self._read = 0  # ... so many of them so far
        self._sending_bytes = 0  # bytes of packs on their way to a remote store
        self.stored_new_blob = False
        """Whether the operation stored content the store did not hold before (a new blob, or
        a new chunked file)."""
        self.new_chunk_bytes = 0
        """Bytes of new chunks stored, for content stored as chunks (see optuna_cas.chunks)."""

    @property
    def done(self) -> int:
        """Content bytes moved so far.

        Example:
            >>> TransferWatch("get", None).done
            0
        """
        return self._progress.done

    def watch(self, store: ContentAddressedArtifactStore) -> ContentAddressedArtifactStore:
        """The same store (same backend, cache and settings), watched by this object.

        Example:
            >>> from optuna_cas import MemoryArtifactStore
            >>> type(TransferWatch("get", None).watch(MemoryArtifactStore())).__name__
            'ContentAddressedArtifactStore'
        """
        content = store.content
        inner = content.backend
        # A local backend stages (perhaps behind retries): watch its staged files.
        stager = staging_of(inner)
        watched: Backend = (
            _WatchedStagingBackend(inner, self, stager)
            if stager is not None
            else _WatchedBackend(inner, self)
        )
        watched_content = content.with_parts(backend=watched)
        watched_content.chunks.wrap_source = self._counting_source
        return ContentAddressedArtifactStore(watched_content)

    def finish(self) -> None:
        """Show the whole as done (a dedup hit, a read from a local cache moved no bytes).

        Example:
            >>> seen = []
            >>> TransferWatch("put", 5, lambda t, done, total: seen.append(done)).finish()
            >>> seen
            [0, 5]
        """
        total = self._progress.total
        if total is not None and self._progress.done != total:
            self._progress.set(total)

    # -- called by the watched backend (possibly from several threads) ------------------------

    def _counting_source(self, stream: BinaryIO) -> BinaryIO:
        self._from_source = True
        # The caller's stream (an upload's source): the wrapper, once dropped, must not close it.
        counting = CountingReader(stream, self._source_read, closes_inner=False)
        return cast(BinaryIO, io.BufferedReader(counting, CHUNK_SIZE))

    def _source_read(self, amount: int) -> None:
        with self._lock:
            self._read += amount
            self._show_source()

    def _sending(self, amount: int) -> None:
        """A pack of ``amount`` bytes started (or, negative, finished) going out."""
        with self._lock:
            self._sending_bytes += amount
            self._show_source()

    def _show_source(self) -> None:
        # The file's bytes read, less those in packs still on their way: a remote upload
        # reaches its total when its last pack is sent, not when the chunker is done. Only
        # forward (a pack starting to go out, or a rewind, holds the bar where it is).
        done = self._read - self._sending_bytes
        if done > self._progress.done:
            self._progress.set(done)

    def _advance(self, amount: int) -> None:
        if not self._from_source:  # a chunked file is counted as it is read, not as sent
            self._progress.advance(amount)

    def _blob_stored(self) -> None:
        self.stored_new_blob = True

    def _ref_stored(self, record: bytes) -> None:
        # A small file travels inside its ref (optuna_cas.refs): that is its content stored.
        fields = json.loads(record)
        if fields.get("inline") is not None:
            self._advance(fields["size"])
            self._blob_stored()

    def _pack_stored(self, size: int) -> None:
        with self._lock:
            self.new_chunk_bytes += size


def _at_most(
    limit: int, progress: ProgressCallback, task: str, done: int, total: int | None
) -> None:
    # A download reads whole ranges of packs (the gaps between a file's chunks too): never
    # more than the file on the bar.
    progress(task, min(done, limit), total)


class _WatchedBackend:
    """A backend that reports the content bytes it reads and writes (not refs)."""

    def __init__(self, inner: Backend, watch: TransferWatch) -> None:
        self._inner = inner
        self._watch = watch

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        reader = self._inner.open_reader(key, offset=offset, length=length)
        if key.startswith(REF_PREFIX):
            return reader
        return cast(
            BinaryIO, io.BufferedReader(CountingReader(reader, self._watch._advance), CHUNK_SIZE)
        )

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        if key.startswith(MANIFEST_PREFIX):
            self._inner.write(key, content_body, if_absent=if_absent)
            self._watch._blob_stored()  # a chunked file the store did not hold
            return
        if key.startswith(REF_PREFIX):
            record = content_body.read()  # a ref: a few KiB at most
            self._inner.write(key, io.BytesIO(record), if_absent=if_absent)
            self._watch._ref_stored(record)
            return
        if not key.startswith((BLOB_PREFIX, PACK_PREFIX)):
            self._inner.write(key, content_body, if_absent=if_absent)
            return
        if isinstance(content_body, SealedFile):
            # A pack's spool file, which a remote backend sends range by range from the file:
            # wrapped in a stream, it would be read into part buffers (memory x senders).
            size = len(content_body)
            self._watch._sending(size)
            try:
                self._inner.write(key, content_body, if_absent=if_absent)
            finally:
                self._watch._sending(-size)
            self._watch._advance(size)
            self._watch._pack_stored(size)
            return
        body = CountingReader(content_body, self._watch._advance)
        start = body.tell()  # where this write starts, for rewinds
        self._inner.write(
            key, cast(BinaryIO, io.BufferedReader(body, CHUNK_SIZE)), if_absent=if_absent
        )
        if key.startswith(PACK_PREFIX):
            self._watch._pack_stored(body.tell() - start)
        else:
            self._watch._blob_stored()

    def remove(self, key: str) -> None:
        self._inner.remove(key)

    def exists(self, key: str) -> bool:
        return self._inner.exists(key)

    def stat(self, key: str) -> ObjectInfo:
        return self._inner.stat(key)

    def touch(self, key: str) -> None:
        self._inner.touch(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._inner.list(prefix)

    def describe(self) -> str:
        return self._inner.describe()

    @property
    def inner(self) -> Backend:
        """The watched backend (its other capabilities, e.g. temp-file cleanup, stay found)."""
        return self._inner


class _WatchedStagingBackend(_WatchedBackend):
    """For a local store: the kernel fills its temp file, so the file's size is the progress."""

    def __init__(self, inner: Backend, watch: TransferWatch, stager: SupportsStaging) -> None:
        super().__init__(inner, watch)
        self._stager = stager

    def stage(self, area: str) -> StagedObject:
        return _WatchedStaged(self._stager.stage(area), self._inner, self._watch)


class _WatchedStaged:
    def __init__(self, staged: StagedObject, backend: Backend, watch: TransferWatch) -> None:
        self._staged = staged
        self._backend = backend
        self._watch = watch
        self.fd = staged.fd
        self._reported = 0  # the file's size last told to the watch
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if watch.reporting:
            self._poller = threading.Thread(
                target=self._poll, name="optuna-cas-progress", daemon=True
            )
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._report(os.fstat(self.fd).st_size)
            except OSError:
                return

    def _report(self, size: int) -> None:
        # Several staged files (packs) may fill at once: each adds what it grew by.
        self._watch._advance(size - self._reported)
        self._reported = size

    def _stop_polling(self) -> None:
        # Before the descriptor is closed: fstat must never see a reused number.
        self._stop.set()
        if self._poller is not None:
            self._poller.join()

    def commit(self, key: str) -> None:
        self._stop_polling()
        size = os.fstat(self.fd).st_size
        self._report(size)
        # The content store publishes its verified copy even over an existing blob.
        existed = key.startswith(BLOB_PREFIX) and self._backend.exists(key)
        self._staged.commit(key)
        if key.startswith(BLOB_PREFIX) and not existed:
            self._watch._blob_stored()
        elif key.startswith(PACK_PREFIX):
            self._watch._pack_stored(size)

    def commit_new(self, key: str) -> ObjectInfo | None:
        self._stop_polling()
        size = os.fstat(self.fd).st_size
        self._report(size)
        existing = self._staged.commit_new(key)
        if existing is None and key.startswith(BLOB_PREFIX):
            self._watch._blob_stored()
        elif existing is None and key.startswith(PACK_PREFIX):
            self._watch._pack_stored(size)
        return existing

    def still_published(self, size: int) -> bool:
        return self._staged.still_published(size)

    def discard(self) -> None:
        self._stop_polling()
        self._staged.discard()
