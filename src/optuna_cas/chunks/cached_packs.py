"""The packs of a chunked file, made local in a cache and opened from there.

A reader with a cache (:class:`PackCache`) asks :class:`CachedPacks` for each pack a manifest
names: it is opened from the cache, or fetched into it first. A copy that will ask for several
packs in a known order gets them filled ahead on a thread of its own (:class:`_Prefetcher`),
whose next request is already sent while it fills one (:class:`_PackOpener`).

A cache is never needed for a read to work: a pack whose fill fails its check (another writer
appended to it, or bytes no entry names are damaged) is not cached, and the caller reads the
chunks it needs from the store, each checked on its own, as for a pack too large to cache.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Protocol

from optuna_cas.chunks.layout import pack_key
from optuna_cas.digest import Digest
from optuna_cas.exceptions import IntegrityError

__all__ = ["OPEN_FILES", "PREFETCH_AHEAD", "CachedPacks", "ManifestCache", "OpenFiles", "PackCache"]

logger = logging.getLogger(__name__)

# Pack files kept open at once by one reader or copy (see OpenFiles).
OPEN_FILES = 16
# Packs a cached copy fills ahead of the one it copies from: the next GET overlaps the copy.
PREFETCH_AHEAD = 2


class ManifestCache(Protocol):
    """Manifest bytes kept locally, keyed by the file's digest (untrusted: parse with bounds)."""

    def get(self, digest: Digest, limit: int) -> bytes | None:
        """The bytes kept for ``digest`` (at most ``limit``), or None."""
        ...

    def add(self, digest: Digest, data: bytes) -> None:
        """Keep ``data`` for ``digest`` (best effort)."""
        ...

    def discard(self, digest: Digest) -> None:
        """Forget what is kept for ``digest``."""
        ...


class PackCache(Protocol):
    """What the reader needs from a local cache: whole packs, keyed by their digest."""

    @property
    def manifests(self) -> ManifestCache:
        """Where manifests of chunked files are kept beside the packs."""
        ...

    def open_entry(self, digest: Digest) -> BinaryIO | None:
        """The cached bytes (unverified: the reader checks each chunk), or None."""
        ...

    def fill(
        self, digest: Digest, fetch: Callable[[], BinaryIO], *, name: str | None = None
    ) -> None:
        """Cache the bytes ``fetch`` opens, verified against ``digest`` (best effort).

        ``name`` says what is fetched in messages. Raises ``IntegrityError`` (keeping nothing)
        if the bytes are not ``digest``'s.
        """
        ...

    def add_file(self, digest: Digest, source: BinaryIO) -> None:
        """Offer a pack this process uploaded (``source`` at its start); best effort."""
        ...

    def discard(self, digest: Digest) -> None:
        """Forget an entry found damaged."""
        ...

    def __contains__(self, digest: object) -> bool:
        """Whether an entry for ``digest`` exists (unverified)."""
        ...

    def close(self) -> None:
        """Release what the calling thread holds (its connection to the cache's index)."""
        ...


class CachedPacks:
    """A table's packs opened from a local cache (filled on a miss), the last few kept open.

    Args:
        cache: Holds packs under their digests.
        packs: The table's pack list (numbers index it).
        fetch: Opens a pack's bytes in the store, for a fill (thread-safe if ``order`` is
            given).
        order: The pack numbers the caller will ask for, in that order. From the first pack
            found missing on, a thread fills the next ones while the caller copies out of
            the current one (:class:`_Prefetcher`).
        describe: Names a pack in messages, with its key and store (default: the pack and
            its key only).

    Example:
        >>> import io, tempfile
        >>> from optuna_cas.middleware.blob_cache import DiskBlobCache
        >>> pack, cache = Digest.of_bytes(b"pack"), DiskBlobCache(tempfile.mkdtemp())
        >>> packs = CachedPacks(cache, [pack], lambda p: io.BytesIO(b"pack"))
        >>> packs.get(0).read(); packs.close()
        b'pack'
    """

    def __init__(
        self,
        cache: PackCache,
        packs: Sequence[Digest],
        fetch: Callable[[Digest], BinaryIO],
        order: Sequence[int] = (),
        describe: Callable[[Digest], str] | None = None,
    ) -> None:
        self._cache = cache
        self._packs = packs
        self._fetch = fetch
        self._order = order
        self._describe = describe or _pack_and_key
        self._prefetcher: _Prefetcher | None = None
        self._handles = OpenFiles()
        self._uncached: set[int] = set()

    def get(self, number: int) -> BinaryIO | None:
        """Pack ``number``'s cached file (filled first if absent); None if it cannot be cached.

        None also when the store's pack fails the fill's check: the caller then reads the
        chunks it needs from the store, each checked (a pack grown by an appending writer
        still holds them). Any other error of the fill (a missing pack, the network) is
        raised.
        """
        if number in self._uncached:
            return None
        handle = self._handles.get(number)
        if handle is not None:
            return handle
        pack = self._packs[number]
        try:
            if self._prefetcher is not None:
                self._prefetcher.wait_for(number)  # raises what its fill of this pack raised
            handle = self._cache.open_entry(pack)
            if handle is None:
                if self._prefetcher is None and number in self._order:
                    later = self._order[self._order.index(number) + 1 :]
                    self._prefetcher = _Prefetcher(
                        self._cache, self._packs, self._fetch, later, self._describe
                    )
                self._cache.fill(pack, lambda: self._fetch(pack), name=self._describe(pack))
                handle = self._cache.open_entry(pack)
        except IntegrityError as e:
            logger.warning("%s; not caching it, reading the chunks needed from the store", e)
            handle = None
        if handle is None:
            self._uncached.add(number)  # too large, the cache failed, or the store's pack is bad
            return None
        return self._handles.add(number, handle)

    def drop(self, number: int) -> None:
        """Pack ``number`` was found damaged: remove it from the cache and stop using it."""
        self._cache.discard(self._packs[number])
        self._handles.close_one(number)
        self._uncached.add(number)

    def close(self) -> None:
        """Stop filling ahead; close every pack file still open."""
        if self._prefetcher is not None:
            self._prefetcher.stop()
            self._prefetcher = None
        self._handles.close()


class OpenFiles:
    """Open files by key, at most :data:`OPEN_FILES`: one more closes the least recently used.

    A chunked file may name hundreds of packs (a long series of sparse edits): keeping each
    open until the end failed with EMFILE. The reader, the local assembly and the cached
    copy each keep their packs in one of these.

    Example:
        >>> import io
        >>> files = OpenFiles()
        >>> first = files.add(0, io.BytesIO(b"x"))
        >>> for number in range(1, OPEN_FILES + 1):
        ...     _ = files.add(number, io.BytesIO(b"y"))
        >>> first.closed, files.get(0), files.get(1) is not None
        (True, None, True)
        >>> files.close()
    """

    def __init__(self) -> None:
        self._files: OrderedDict[Hashable, BinaryIO] = OrderedDict()

    def get(self, key: Hashable) -> BinaryIO | None:
        """The file kept under ``key`` (now the most recently used one), or None."""
        handle = self._files.get(key)
        if handle is not None:
            self._files.move_to_end(key)
        return handle

    def add(self, key: Hashable, handle: BinaryIO) -> BinaryIO:
        """Keep ``handle`` under ``key`` (closing the least recently used one if too many)."""
        self._files[key] = handle
        if len(self._files) > OPEN_FILES:
            self._files.popitem(last=False)[1].close()
        return handle

    def close_one(self, key: Hashable) -> None:
        """Close and forget the file kept under ``key``, if any."""
        handle = self._files.pop(key, None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        """Close every file still kept."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()


class _Prefetcher:
    """Fills packs into the cache on one thread, in the order a copy will ask for them.

    It stays at most :data:`PREFETCH_AHEAD` packs ahead of the last one asked for, so a copy
    that stops early leaves little fetched for nothing. While it fills one pack, the next one's
    request is sent (:class:`_PackOpener`). A fill's exception is kept and raised to the thread
    that asks for that pack; the thread closes its own connection to the cache's index when it
    ends (diskcache opens one per thread).
    """

    def __init__(
        self,
        cache: PackCache,
        packs: Sequence[Digest],
        fetch: Callable[[Digest], BinaryIO],
        order: Sequence[int],
        describe: Callable[[Digest], str],
    ) -> None:
        self._cache, self._packs, self._fetch = cache, packs, fetch
        self._describe = describe
        # Where each pack is first asked for.
        self._position = {number: i for i, number in reversed(list(enumerate(order)))}
        self._order = order
        self._cond = threading.Condition()
        self._asked = 0  # entries of order asked for so far
        self._outcome: dict[int, BaseException | None] = {}
        self._stopped = self._ended = False
        self._thread = threading.Thread(target=self._run, name="optuna-cas-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        opener = _PackOpener(self._fetch)
        try:
            for i, number in enumerate(self._order):
                with self._cond:
                    self._cond.wait_for(functools.partial(self._may_fill, i))
                    if self._stopped:
                        return
                if number in self._outcome:
                    continue  # listed twice
                error: BaseException | None = None
                pack = self._packs[number]
                try:
                    self._open_next(opener, i)
                    if pack not in self._cache:
                        name = self._describe(pack)
                        self._cache.fill(pack, functools.partial(opener.open, pack), name=name)
                except BaseException as e:  # the asking thread raises it
                    error = e
                finally:  # sent ahead, not read (another process filled it, say): closed now
                    opener.release(pack)
                with self._cond:
                    self._outcome[number] = error
                    self._cond.notify_all()
        finally:
            opener.close()
            self._cache.close()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _may_fill(self, position: int) -> bool:
        return self._stopped or position < self._asked + PREFETCH_AHEAD

    def _open_next(self, opener: _PackOpener, position: int) -> None:
        """Send the request of the pack filled after ``position``'s, if it may be filled now."""
        following = self._order[position + 1 : position + 2]
        if not following or following[0] in self._outcome:
            return
        with self._cond:
            if not self._may_fill(position + 1) or self._stopped:
                return
        pack = self._packs[following[0]]
        if pack not in self._cache:
            opener.prepare(pack)

    def wait_for(self, number: int) -> None:
        """Pack ``number`` is wanted now: let the thread go further, and wait if it is ours."""
        position = self._position.get(number)
        if position is None:
            return
        with self._cond:
            self._asked = max(self._asked, position + 1)
            self._cond.notify_all()
            self._cond.wait_for(lambda: number in self._outcome or self._ended)
            error = self._outcome.get(number)
        if error is not None:
            raise error

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()


class _PackOpener:
    """Sends a pack's request on a thread of its own, ahead of the fill that will read it.

    A fill reads its pack as fast as it arrives; waiting for the server's first byte before
    each one left the link idle (moto: 12-16 ms per 32 MiB pack, a quarter of a fill on
    loopback). A request no fill takes is closed once its pack's turn has passed.
    """

    def __init__(self, fetch: Callable[[Digest], BinaryIO]) -> None:
        self._fetch = fetch
        self._threads = ThreadPoolExecutor(1, thread_name_prefix="optuna-cas-open-pack")
        self._sent: dict[Digest, Future[BinaryIO]] = {}

    def prepare(self, pack: Digest) -> None:
        if pack not in self._sent:
            self._sent[pack] = self._threads.submit(self._fetch, pack)

    def open(self, pack: Digest) -> BinaryIO:
        sent = self._sent.pop(pack, None)
        return self._fetch(pack) if sent is None else sent.result()

    def release(self, pack: Digest) -> None:
        """Close ``pack``'s request if it was sent and not opened."""
        sent = self._sent.pop(pack, None)
        if sent is not None and not sent.cancel():
            with contextlib.suppress(Exception):
                sent.result().close()

    def close(self) -> None:
        for pack in list(self._sent):
            self.release(pack)
        self._threads.shutdown(wait=True)


def _pack_and_key(pack: Digest) -> str:
    return f"pack {pack} ({pack_key(pack)!r})"
