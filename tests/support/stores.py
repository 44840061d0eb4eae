"""Fixtures building every artifact store and middleware stack the conformance suite covers.

Each kind is a name in STORE_KINDS and a builder here; later layers (the cache) add theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import (
    Backoff,
    Boto3ArtifactStore,
    CachedArtifactStore,
    FileSystemArtifactStore,
    GCSArtifactStore,
    MemoryArtifactStore,
)
from optuna_cas.stores.base import ContentAddressedArtifactStore
from tests.support.gcs import GCS_TEST_CHUNK_SIZE
from tests.support.s3 import TEST_PART_SIZE

StoreBuilder = Callable[[pytest.FixtureRequest], ContentAddressedArtifactStore]


def _fast_backoff(store: Any) -> Backoff:
    return Backoff(store, min_delay=0.01, max_delay=0.05)


def _memory(request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
    return MemoryArtifactStore()


def _filesystem(request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return FileSystemArtifactStore(tmp_path / "fs-store")


def _s3(request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
    bucket: str = request.getfixturevalue("s3_bucket")
    client = request.getfixturevalue("s3_client")
    return Boto3ArtifactStore(bucket, client, prefix="conformance", part_size=TEST_PART_SIZE)


def _gcs(request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
    bucket = request.getfixturevalue("gcs_bucket")
    client = request.getfixturevalue("gcs_client")
    return GCSArtifactStore(
        bucket.name, client, prefix="conformance", chunk_size=GCS_TEST_CHUNK_SIZE
    )


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


@pytest.fixture(params=list(STORE_BUILDERS))
def any_store(request: pytest.FixtureRequest) -> ContentAddressedArtifactStore:
    return STORE_BUILDERS[request.param](request)
