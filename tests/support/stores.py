"""Fixtures building every artifact store and middleware stack the conformance suite covers.

Each kind is a name in STORE_BUILDERS and a builder here; later layers (the cache) add theirs.
``raw_view`` gives the out-of-band view of a built store's storage (see
optuna_cas.testing.raw) for the suites that check what was really written.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from optuna_cas import (
    Backoff,
    Boto3ArtifactStore,
    CachedArtifactStore,
    FileSystemArtifactStore,
    GCSArtifactStore,
    MemoryArtifactStore,
)
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.raw import DirectoryView, GCSView, MemoryView, RawView, S3View
from optuna_cas.testing.streams import HandsOver
from tests.support.gcs import GCS_TEST_CHUNK_SIZE
from tests.support.s3 import TEST_PART_SIZE

StoreBuilder = Callable[[pytest.FixtureRequest], ContentAddressedArtifactStore]

FS_DIRECTORY = "fs-store"
PREFIX = "conformance"  # the remote stores' prefix in their bucket


def _fast_backoff(store: Any) -> Backoff:
    return Backoff(store, min_delay=0.01, max_delay=0.05)


def _memory(request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
    return MemoryArtifactStore()


def _filesystem(request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return FileSystemArtifactStore(tmp_path / FS_DIRECTORY)


def _s3(request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
    bucket: str = request.getfixturevalue("s3_bucket")
    client = request.getfixturevalue("s3_client")
    return Boto3ArtifactStore(bucket, client, prefix=PREFIX, part_size=TEST_PART_SIZE)


def _gcs(request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
    bucket = request.getfixturevalue("gcs_bucket")
    client = request.getfixturevalue("gcs_client")
    return GCSArtifactStore(bucket.name, client, prefix=PREFIX, chunk_size=GCS_TEST_CHUNK_SIZE)


def _cached(
    store: ContentAddressedArtifactStore, request: pytest.FixtureRequest
) -> CachedArtifactStore:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    # Modest, but larger than the suite's biggest blob (20 MiB) so every read goes through it.
    return CachedArtifactStore(
        store, directory=tmp_path / "blob-cache", size_limit=64 * 1024 * 1024
    )


STORE_BUILDERS: dict[str, StoreBuilder] = {
    "memory": _memory,
    "filesystem": _filesystem,
    "s3": _s3,
    "gcs": _gcs,
    "backoff-filesystem": lambda r: _fast_backoff(_filesystem(r)),
    "backoff-s3": lambda r: _fast_backoff(_s3(r)),
    "backoff-gcs": lambda r: _fast_backoff(_gcs(r)),
    "cached-s3": lambda r: _cached(_s3(r), r),
    "cached-gcs": lambda r: _cached(_gcs(r), r),
    "cached-backoff-s3": lambda r: _cached(_fast_backoff(_s3(r)), r),
}


def raw_view(
    kind: str, request: pytest.FixtureRequest, store: ContentAddressedArtifactStore
) -> RawView:
    """What ``store`` (built by ``STORE_BUILDERS[kind]``) really holds, seen around it."""
    base = kind.rsplit("-", 1)[-1]  # the innermost store: "cached-backoff-s3" -> "s3"
    if base == "memory":
        backend = store.content.backend
        assert isinstance(backend, MemoryBackend), backend
        return MemoryView(backend)
    if base == "filesystem":
        return DirectoryView(request.getfixturevalue("tmp_path") / FS_DIRECTORY)
    if base == "s3":
        client = request.getfixturevalue("s3_client")
        return S3View(client, request.getfixturevalue("s3_bucket"), prefix=PREFIX)
    if base == "gcs":
        return GCSView(request.getfixturevalue("gcs_bucket"), prefix=PREFIX)
    raise AssertionError(f"no raw view for store kind {kind!r}")


class HandsOverBackend(MemoryBackend):
    """Blobs and packs are read through raw streams that refuse ``readinto`` (``HandsOver``).

    A download or cache fill that copies their bytes through a buffer of its own fails.
    Small objects (refs, manifests) read as usual. Every such stream is kept in ``streams``.

    Args:
        cut_first_after: The first such stream raises ``ConnectionResetError`` on the read
            after it handed over this many bytes (a connection cut mid-body).
    """

    def __init__(self, cut_first_after: int | None = None) -> None:
        super().__init__()
        self.streams: list[HandsOver] = []
        self._cut_first_after = cut_first_after

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        inner = super().open_reader(key, offset=offset, length=length)
        if not key.startswith(("blobs/", "packs/")):
            return inner
        limit = None if self.streams else self._cut_first_after

        def cut() -> None:
            if limit is not None and sum(map(len, stream.handed)) >= limit:
                raise ConnectionResetError("cut mid-body")

        stream = HandsOver(inner, before=cut)  # type: ignore[arg-type]
        self.streams.append(stream)
        return io.BufferedReader(stream)  # type: ignore[return-value]
