"""Filling a cache entry: the store's bytes streamed once, verified, into a private temp file.

A download through the cache writes the same buffers into its own temp file as they pass
(``out_fd``), so a miss costs one fetch, not a fetch and a copy. The temp file becomes an
entry only when :class:`~optuna_cas.middleware.blob_cache.DiskBlobCache` hands it to
diskcache; until then nobody else can name it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import BinaryIO

from optuna_cas._fileio import raw_blocks
from optuna_cas.digest import Digest, verified_buffers
from optuna_cas.middleware import _cache_files as files
from optuna_cas.middleware._cache_files import FillTemp

__all__ = ["fill_temp"]


def fill_temp(
    root: str,
    digest: Digest,
    fetch: Callable[[], BinaryIO],
    warn: Callable[[OSError], None],
    *,
    out_fd: int | None = None,
    name: str | None = None,
) -> FillTemp | None:
    """Stream the blob once, verifying, into a private temp file (and into ``out_fd``).

    Args:
        root: The cache directory (the temp file goes into its ``tmp`` directory).
        digest: What the fetched bytes must be.
        fetch: Opens the blob in the store.
        warn: Told when the cache's side fails (the copy to ``out_fd`` goes on).
        out_fd: Also write every buffer here (a download's temp file).
        name: What is fetched, for the error's message (default ``"blob <digest>"``); a pack
            fill names the pack, its key and the store, so a damaged one can be found.

    Returns:
        The verified temp file (read-only, descriptor at EOF), or None if the cache's side
        failed: then, with ``out_fd``, the stream still went there in full; without, it was
        abandoned and the caller reads from the store instead.

    Raises:
        IntegrityError: The store's bytes are not ``digest`` (nothing is kept).

    Example:
        >>> import io, os, tempfile
        >>> root = tempfile.mkdtemp()
        >>> filled = fill_temp(root, Digest.of_bytes(b"abc"), lambda: io.BytesIO(b"abc"), print)
        >>> filled.size; os.close(filled.fd)
        3
    """
    try:
        fd, temp = files.new_temp(root)
    except OSError as e:
        warn(e)
        if out_fd is None:
            return None
        fd, temp = -1, ""
    try:
        # The store's own blocks (no copy), hashed on the way: a mismatch raises first.
        with fetch() as source:
            what = f"{name or f'blob {digest}'} (cache fill)"
            blocks = verified_buffers(raw_blocks(source), digest, name=what)
            cached = _tee(blocks, fd, out_fd, warn)
        if cached:
            os.fchmod(fd, files.READ_ONLY)
            return FillTemp(fd, temp, digest.size)
    except BaseException:
        _discard(root, fd, temp)
        raise
    _discard(root, fd, temp)
    return None


def _tee(
    buffers: Iterable[bytes | memoryview],
    cache_fd: int,
    out_fd: int | None,
    warn: Callable[[OSError], None],
) -> bool:
    """Write every buffer into ``out_fd`` and ``cache_fd`` (-1: none); False if no cache.

    A failed write to the cache is warned about and ends the cache's part: the rest still goes
    to ``out_fd``, or, without one, the copy stops.
    """
    cached = cache_fd >= 0
    for buffer in buffers:
        view = memoryview(buffer)
        if out_fd is not None:
            files.write_all(out_fd, view)
        if cached:
            try:
                files.write_all(cache_fd, view)
            except OSError as e:
                warn(e)
                cached = False
                if out_fd is None:
                    return False
    return cached


def _discard(root: str, fd: int, name: str) -> None:
    if fd >= 0:
        os.close(fd)
        files.unlink_temp(root, name)
