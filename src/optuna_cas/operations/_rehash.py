"""Re-hash one stored object straight from the backend (verify's deep check)."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from optuna_cas.digest import CHUNK_SIZE, Digest, Hasher, readinto
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.progress import Progress

__all__ = ["rehash_problem"]


def rehash_problem(
    open_stored: Callable[[], BinaryIO], hexdigest: str, algorithm: str, bar: Progress
) -> str | None:
    """What is wrong with the object ``open_stored`` opens, named ``hexdigest``; None if good.

    Args:
        open_stored: Opens the stored bytes (never a cache).
        hexdigest: The digest the object's key names.
        algorithm: Its algorithm.
        bar: Advanced by every byte read.

    Example:
        >>> import io
        >>> bar = Progress("x", None, None)
        >>> good = Digest.of_bytes(b"abc").hexdigest
        >>> rehash_problem(lambda: io.BytesIO(b"abc"), good, "blake3", bar) is None
        True
        >>> rehash_problem(lambda: io.BytesIO(b"abd"), good, "blake3", bar)[:19]
        'content hashes to b'
    """
    hasher = Hasher()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    try:
        with open_stored() as reader:
            while n := readinto(reader, view):
                hasher.update(view[:n])
                bar.advance(n)
    except ArtifactNotFound:
        return None  # deleted (by gc) while we looked: nothing corrupt left behind
    except IntegrityError as e:
        return str(e)  # not a stored object at all: a FIFO, socket or device at the key
    got = hasher.digest()
    if got != Digest(hexdigest, got.size, algorithm):
        return f"content hashes to {got}, not the digest its key names"
    return None
