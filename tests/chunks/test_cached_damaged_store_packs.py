"""A pack the store holds wrongly, read through the cache: the read falls back to the store.

Another writer may append to a pack object, or damage bytes no manifest entry names. A plain
store reads such a pack fine (each chunk is checked on its own, the whole file at the end),
so a cache in front of it must too: the whole-pack fill fails its check, nothing of it is
kept, one warning names the pack and the store, and the chunks needed are read from the store
in ranged reads. Damaged bytes a chunk needs still fail the read; a missing pack or a network
error is raised as before.
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import pytest

from optuna_cas import (
    Boto3ArtifactStore,
    CachedArtifactStore,
    FileSystemArtifactStore,
    download_artifact,
)
from optuna_cas.backends.local import LocalBackend
from optuna_cas.chunks.assemble import contiguous_runs
from optuna_cas.chunks.layout import PACK_PREFIX, pack_key
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.exceptions import IntegrityError, TransientBackendError
from optuna_cas.middleware.blob_cache import DiskBlobCache
from optuna_cas.stores.base import ContentAddressedArtifactStore, content_store_of

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
# Chunked at the default threshold (8 MiB): one pack.
SIZE = 10 * MiB + 7
# For files spread over several packs: a low threshold, and parts uploaded first, one pack
# each (as tests/chunks/test_cached_prefetch.py), so a download prefetches the later packs.
THRESHOLD = 256 * 1024
PART = 3 * MiB + 5
PARTS = 4
LOGGER = "optuna_cas.chunks.cached_packs"
KINDS = [pytest.param("s3", marks=pytest.mark.s3), "local"]


def _store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, **options: Any
) -> ContentAddressedArtifactStore:
    if kind == "local":
        return FileSystemArtifactStore(tmp_path / "store", **options)
    # Fixtures asked for here, so that the local cases start no moto server.
    client: S3Client = request.getfixturevalue("s3_client")
    bucket: str = request.getfixturevalue("s3_bucket")
    return Boto3ArtifactStore(bucket, client, prefix="p", **options)


def _content(store: ContentAddressedArtifactStore) -> ContentStore:
    content = content_store_of(store)
    assert content is not None
    return content


def _rewrite(content: ContentStore, pack: Digest, edit: Callable[[bytes], bytes]) -> None:
    """Replace the store's pack object with ``edit`` of its bytes (another writer's doing)."""
    with content.backend.open_reader(pack_key(pack)) as reader:
        data = reader.read()
    content.backend.write(pack_key(pack), io.BytesIO(edit(data)))


def _appended(data: bytes) -> bytes:
    return data + b"appended by another writer"


def _cached(store: ContentAddressedArtifactStore, tmp_path: Path) -> CachedArtifactStore:
    return CachedArtifactStore(store, directory=tmp_path / "cache")


def _read(how: str, store: CachedArtifactStore, artifact_id: str, tmp_path: Path) -> bytes:
    if how == "open_reader":
        with store.open_reader(artifact_id) as reader:
            return reader.read()
    out = tmp_path / f"out-{artifact_id}"
    download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(out))
    return out.read_bytes()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def _assert_not_kept(cache: DiskBlobCache, pack: Digest) -> None:
    assert pack not in cache
    temps = cache.directory / "tmp"
    assert not temps.exists() or os.listdir(temps) == []


@pytest.mark.parametrize("how", ["download", "open_reader"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_pack_another_writer_appended_to_is_read_through_the_cache(
    kind: str,
    how: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _store(kind, request, tmp_path)
    data = random.Random(1).randbytes(SIZE)
    store.write("a1", io.BytesIO(data))
    content = _content(store)
    (pack,) = content.chunks.manifest(Digest.of_bytes(data)).packs
    _rewrite(content, pack, _appended)
    cached = _cached(store, tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _read(how, cached, "a1", tmp_path) == data
    (warning,) = _warnings(caplog)
    message = warning.getMessage()
    assert f"pack {pack} ({pack_key(pack)!r}" in message
    assert "more than the expected" in message
    assert content.backend.describe() in message
    _assert_not_kept(cached.cache, pack)


@pytest.mark.parametrize("how", ["download", "open_reader"])
def test_damaged_bytes_a_chunk_needs_still_fail_the_read_and_nothing_is_kept(
    how: str, tmp_path: Path
) -> None:
    store = FileSystemArtifactStore(tmp_path / "store")
    data = random.Random(2).randbytes(SIZE)
    store.write("a1", io.BytesIO(data))
    content = _content(store)
    (pack,) = content.chunks.manifest(Digest.of_bytes(data)).packs

    def flipped(body: bytes) -> bytes:
        middle = len(body) // 2
        return body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]

    _rewrite(content, pack, flipped)
    cached = _cached(store, tmp_path)
    with pytest.raises(IntegrityError):
        _read(how, cached, "a1", tmp_path)
    _assert_not_kept(cached.cache, pack)
    assert not (tmp_path / "out-a1").exists()


def _spread(store: ContentAddressedArtifactStore) -> tuple[bytes, list[Digest]]:
    """Upload a file whose chunks lie in several packs; its packs in the order first used."""
    parts = [random.Random(seed).randbytes(PART) for seed in range(PARTS)]
    for i, part in enumerate(parts):
        store.write(f"part{i}", io.BytesIO(part))
    data = b"".join(parts)
    store.write("whole", io.BytesIO(data))
    table = _content(store).chunks.manifest(Digest.of_bytes(data))
    first_use = [table.packs[n] for n in dict.fromkeys(n for n, _, _ in contiguous_runs(table))]
    assert len(first_use) >= 3
    return data, first_use


@pytest.mark.parametrize("kind", KINDS)
def test_a_pack_the_prefetcher_fills_that_fails_its_check_falls_back_to_the_store(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _store(kind, request, tmp_path, chunk_threshold=THRESHOLD)
    data, first_use = _spread(store)
    bad = first_use[2]  # the first pack is filled by the copy itself, the later ones ahead
    _rewrite(_content(store), bad, _appended)
    fills: list[tuple[Digest, str, bool]] = []
    real_fill = DiskBlobCache.fill

    def noted_fill(self: DiskBlobCache, digest: Digest, *args: Any, **kwargs: Any) -> None:
        thread = threading.current_thread().name
        try:
            real_fill(self, digest, *args, **kwargs)
        except IntegrityError:
            fills.append((digest, thread, False))
            raise
        fills.append((digest, thread, True))

    monkeypatch.setattr(DiskBlobCache, "fill", noted_fill)
    cached = _cached(store, tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _read("download", cached, "whole", tmp_path) == data
    assert (bad, "optuna-cas-prefetch", False) in fills
    (warning,) = _warnings(caplog)
    assert str(bad) in warning.getMessage()
    _assert_not_kept(cached.cache, bad)
    assert [t for t in threading.enumerate() if t.name == "optuna-cas-prefetch"] == []


class _CutPacks(LocalBackend):
    """Pack reads that fail midway as a dropped connection does once retries are spent."""

    def open_reader(self, key: str, **kwargs: Any) -> BinaryIO:
        reader = super().open_reader(key, **kwargs)
        if not key.startswith(PACK_PREFIX):
            return reader
        return _Cut(reader)


class _Cut(io.RawIOBase):
    def __init__(self, source: BinaryIO) -> None:
        super().__init__()
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise TransientBackendError("connection reset (test)")

    def close(self) -> None:
        self._source.close()
        super().close()


@pytest.mark.parametrize("how", ["materialize", "open"])
def test_a_network_error_during_a_fill_is_raised_not_taken_for_a_bad_pack(
    how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = random.Random(3).randbytes(PART)
    digest = ContentStore(LocalBackend(tmp_path / "store"), chunk_threshold=THRESHOLD).put_blob(
        io.BytesIO(data)
    )
    cache = DiskBlobCache(tmp_path / "cache")
    reader = ContentStore(
        _CutPacks(tmp_path / "store"), blob_cache=cache, chunk_threshold=THRESHOLD
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(TransientBackendError):
        if how == "open":
            with reader.open_blob(digest) as stream:
                stream.read()
        else:
            reader.materialize_blob(digest, tmp_path / "out")
    assert _warnings(caplog) == []
    assert not (tmp_path / "out").exists()


def test_a_failed_pack_fill_names_the_pack_its_key_and_the_store(tmp_path: Path) -> None:
    cache = DiskBlobCache(tmp_path / "cache")
    pack = Digest.of_bytes(b"pack bytes")
    name = f"pack {pack} ({pack_key(pack)!r} in file:///somewhere)"
    with pytest.raises(IntegrityError) as raised:
        cache.fill(pack, lambda: io.BytesIO(b"pack bytes, and more"), name=name)
    assert str(raised.value).startswith(f"{name} (cache fill): ")
    _assert_not_kept(cache, pack)
