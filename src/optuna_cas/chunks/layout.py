"""Where chunked content lives in a backend, and the chunking parameters.

Layout (beside ``blobs/`` and ``refs/``; see docs/concepts.md)::

    packs/blake3/<2 hex>/<62 hex>      chunk bytes, concatenated; named by the pack's digest
    manifests/blake3/<2 hex>/<62 hex>  one per chunked file, named by the *file's* digest
    chunk-index/<64 hex>               which chunks which packs hold; named by its own digest

The file's digest (BLAKE3 of all its bytes, plus its size) stays the artifact's identity: a ref
names it whether the content is one blob or a manifest of chunks.
"""

from __future__ import annotations

import re

from optuna_cas.digest import ALGORITHM, Digest

__all__ = [
    "CHUNK_AVG",
    "CHUNK_MAX",
    "CHUNK_MIN",
    "CHUNK_THRESHOLD",
    "INDEX_PREFIX",
    "MANIFEST_PREFIX",
    "PACK_LEAD_MAX",
    "PACK_MAX",
    "PACK_PREFIX",
    "PACK_TARGET",
    "index_key",
    "manifest_key",
    "pack_key",
    "parse_content_key",
]

# FastCDC parameters. They decide chunk boundaries, so changing them makes new uploads share
# fewer chunks with old ones (never wrong, only less dedup). Chosen by measurement: see
# docs/chunk-study.md.
CHUNK_MIN = 16 * 1024
CHUNK_AVG = 64 * 1024
CHUNK_MAX = 256 * 1024
# Files smaller than this stay one blob: a chunked file costs three objects to write and two
# requests to read, and from 8 MiB a changed version already saves 91-94% (chunk-study.md).
CHUNK_THRESHOLD = 8 * 1024 * 1024
# A pack is sealed and published once it holds this much: large enough that S3/GCS requests
# scale with bytes, small enough that a reader needing one chunk range wastes little.
PACK_TARGET = 32 * 1024 * 1024
# Larger than any pack an upload or gc writes (PACK_TARGET plus one chunk and the lead), with
# room to spare: deep verify reads no larger object under packs/, and quarantine keeps no more
# of one (a sparse file planted there may be terabytes of holes).
PACK_MAX = 4 * PACK_TARGET
# A pack may start with fewer zeros than this, which no entry names, so that its first chunk
# sits at its file offset modulo a page (see chunks.packer). Readers may fetch them along with
# the first chunk (a range from byte 0), never use them, and read packs without them alike.
PACK_LEAD_MAX = 4096

PACK_PREFIX = "packs/"
MANIFEST_PREFIX = "manifests/"
INDEX_PREFIX = "chunk-index/"

_DIGEST_KEY = re.compile(r"(packs|manifests)/([a-z0-9]+)/([0-9a-f]{2})/([0-9a-f]{62})")
_INDEX_KEY = re.compile(r"chunk-index/([0-9a-f]{64})")


def _split(prefix: str, hexdigest: str) -> str:
    return f"{prefix}{ALGORITHM}/{hexdigest[:2]}/{hexdigest[2:]}"


def pack_key(digest: Digest) -> str:
    """The key of the pack whose bytes have ``digest``.

    Example:
        >>> pack_key(Digest.of_bytes(b""))[:16]
        'packs/blake3/af/'
    """
    return _split(PACK_PREFIX, digest.hexdigest)


def manifest_key(digest: Digest) -> str:
    """The key of the manifest of the file whose bytes have ``digest``.

    Example:
        >>> manifest_key(Digest.of_bytes(b""))[:20]
        'manifests/blake3/af/'
    """
    return _split(MANIFEST_PREFIX, digest.hexdigest)


def index_key(hexdigest: str) -> str:
    """The key of an index object whose bytes hash to ``hexdigest``.

    Example:
        >>> index_key("ab" * 32)[:14]
        'chunk-index/ab'
    """
    return f"{INDEX_PREFIX}{hexdigest}"


def parse_content_key(key: str) -> tuple[str, str] | None:
    """``(kind, hexdigest)`` for a pack, manifest or index key; None for anything else.

    ``kind`` is ``"packs"``, ``"manifests"`` or ``"chunk-index"``.

    Example:
        >>> parse_content_key(pack_key(Digest.of_bytes(b"x")))[0]
        'packs'
        >>> parse_content_key("packs/blake3/zz") is None
        True
    """
    match = _DIGEST_KEY.fullmatch(key)
    if match is not None:
        kind, algorithm, head, tail = match.groups()
        return (kind, head + tail) if algorithm == ALGORITHM else None
    match = _INDEX_KEY.fullmatch(key)
    return ("chunk-index", match.group(1)) if match is not None else None
