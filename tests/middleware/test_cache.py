"""The read-through disk cache: no repeat GETs, LRU bound, corruption, processes, management."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import blake3
import optuna.artifacts as oa
import pytest

import optuna_cas
from optuna_cas import (
    Backoff,
    Boto3ArtifactStore,
    CachedArtifactStore,
    DiskBlobCache,
    FileSystemArtifactStore,
    MemoryArtifactStore,
)
from optuna_cas.backends.local import LocalBackend
from optuna_cas.content import ContentStore, blob_key
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, StoreConfigError
from optuna_cas.middleware import _cache_files as cache_files
from optuna_cas.middleware.cache import CACHE_DIR_ENV, default_cache_dir
from optuna_cas.stores.base import ContentAddressedArtifactStore
from tests.conftest import random_bytes
from tests.support.fault_proxy import FaultProxy
from tests.support.s3 import TEST_PART_SIZE, S3Server, make_s3_client
from tests.support.stores import HandsOverBackend

KiB = 1024
MiB = 1024 * 1024


def entry_files(directory: Path) -> list[Path]:
    """The cache's value files (diskcache names them <2 hex>/<2 hex>/<hex>.val)."""
    return sorted(directory.rglob("*.val"))


def only_entry(directory: Path) -> Path:
    files = entry_files(directory)
    assert len(files) == 1, files
    return files[0]


def corrupt(path: Path, how: str) -> None:
    os.chmod(path, 0o644)  # cache files are read-only
    if how == "flip":
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, io.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        os.truncate(path, os.path.getsize(path) - 7)


class CountingFetch:
    """A ``fetch`` for DiskBlobCache that serves fixed bytes and counts calls."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.digest = Digest.of_bytes(data)
        self.calls = 0

    def __call__(self) -> BinaryIO:
        self.calls += 1
        return io.BytesIO(self.data)


def read_all(reader: BinaryIO) -> bytes:
    with reader:
        return reader.read()


# -- no blob GET when cached ---------------------------------------------------------------------


@pytest.mark.s3
def test_cached_download_makes_no_blob_get(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    data = random_bytes(3 * MiB + 5, seed=10)
    cache_dir = tmp_path / "cache"
    with FaultProxy(s3_server.host, s3_server.port) as proxy:
        client = make_s3_client(proxy.endpoint_url)

        def s3_store() -> Boto3ArtifactStore:
            return Boto3ArtifactStore(s3_bucket, client, prefix="p", part_size=TEST_PART_SIZE)

        s3_store().write("model", io.BytesIO(data))  # uploaded without the cache

        def blob_gets() -> list[str]:
            return [r.path for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]

        proxy.reset_log()
        first = CachedArtifactStore(s3_store(), directory=cache_dir)
        assert read_all(first.open_reader("model")) == data
        assert blob_gets(), "the fill should have fetched the blob through the proxy"

        proxy.reset_log()
        second = CachedArtifactStore(s3_store(), directory=cache_dir)  # new instance, same dir
        assert read_all(second.open_reader("model")) == data
        optuna_cas.download_artifact(
            artifact_store=second, file_path=str(tmp_path / "ours.bin"), artifact_id="model"
        )
        oa.download_artifact(
            artifact_store=second, file_path=str(tmp_path / "optunas.bin"), artifact_id="model"
        )
        assert (tmp_path / "ours.bin").read_bytes() == data
        assert (tmp_path / "optunas.bin").read_bytes() == data
        assert blob_gets() == []
        # The proxy was in the path: the ref was looked up (once: then remembered).
        ref_gets = [r for r in proxy.requests if r.method == "GET" and "/refs/" in r.path]
        assert len(ref_gets) == 1
        assert second.cache.info().hits == 3


# -- bounded, least recently used ----------------------------------------------------------------


def test_lru_touched_entry_survives_and_size_stays_within_limit(tmp_path: Path) -> None:
    size_limit = 3 * MiB
    cache = DiskBlobCache(tmp_path / "cache", size_limit=size_limit)
    blobs = [CountingFetch(random_bytes(512 * KiB, seed=i)) for i in range(8)]
    for blob in blobs[:5]:
        assert read_all(cache.open(blob.digest, blob)) == blob.data
        assert cache.volume() <= size_limit
    assert len(cache) == 5
    oldest = blobs[0]
    assert read_all(cache.open(oldest.digest, oldest)) == oldest.data  # touch
    assert oldest.calls == 1  # a hit
    for blob in blobs[5:]:
        assert read_all(cache.open(blob.digest, blob)) == blob.data
        assert cache.volume() <= size_limit
    # Least recently *stored* would have evicted blobs[0] first.
    assert [b.digest in cache for b in blobs] == [True, False, False, False] + [True] * 4
    # Evicted exactly as needed: as many entries as fit (diskcache's own cull drops 10 at once).
    assert len(cache) == 5
    assert sum(p.stat().st_size for p in entry_files(tmp_path / "cache")) <= size_limit


def test_a_big_blob_evicts_exactly_the_least_recently_used_entries_it_needs(
    tmp_path: Path,
) -> None:
    # Several evictions for one insertion: strictly in LRU order, and not one more than needed
    # (diskcache's public cull() would drop ten at a time).
    size_limit = 3 * MiB
    cache = DiskBlobCache(tmp_path / "cache", size_limit=size_limit)
    small = [CountingFetch(random_bytes(256 * KiB, seed=40 + i)) for i in range(10)]
    for blob in small:
        read_all(cache.open(blob.digest, blob))
    read_all(cache.open(small[0].digest, small[0]))  # most recently used now
    big = CountingFetch(random_bytes(MiB + 100 * KiB, seed=50))
    assert read_all(cache.open(big.digest, big)) == big.data
    kept = [blob.digest in cache for blob in small]
    gone = kept.index(True, 1) - 1  # small[1..gone] were evicted, oldest first
    assert gone >= 2 and kept == [True] + [False] * gone + [True] * (9 - gone)
    assert big.digest in cache and cache.volume() <= size_limit
    assert cache.volume() + 256 * KiB > size_limit  # one eviction fewer would not have fit


def test_blob_larger_than_limit_is_streamed_not_cached(tmp_path: Path) -> None:
    cache = DiskBlobCache(tmp_path / "cache", size_limit=1 * MiB)
    big = CountingFetch(random_bytes(2 * MiB, seed=1))
    for _ in range(2):
        assert read_all(cache.open(big.digest, big)) == big.data
    cache.materialize(big.digest, tmp_path / "big.bin", big)
    assert (tmp_path / "big.bin").read_bytes() == big.data
    assert big.calls == 3 and len(cache) == 0 and entry_files(tmp_path / "cache") == []


# -- verification ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("read_via", ["open_reader", "download"])
def test_corrupt_entry_is_dropped_and_refetched(tmp_path: Path, how: str, read_via: str) -> None:
    data = random_bytes(700 * KiB, seed=2)
    store = CachedArtifactStore(FileSystemArtifactStore(tmp_path / "fs"), directory=tmp_path / "c")
    store.write("a", io.BytesIO(data))
    entry = only_entry(tmp_path / "c")
    corrupt(entry, how)
    if read_via == "open_reader":
        assert read_all(store.open_reader("a")) == data
    else:
        optuna_cas.download_artifact(
            artifact_store=store, file_path=str(tmp_path / "out"), artifact_id="a"
        )
        assert (tmp_path / "out").read_bytes() == data
    healed = only_entry(tmp_path / "c")
    assert healed != entry and healed.read_bytes() == data
    assert len(store.cache) == 1


def test_every_use_is_verified_whatever_was_checked_before(tmp_path: Path) -> None:
    # No process remembers earlier checks: an entry edited in place (same size) after it was
    # verified several times is still caught on the next use, by every way of reading.
    data = random_bytes(300 * KiB, seed=8)
    store = CachedArtifactStore(FileSystemArtifactStore(tmp_path / "fs"), directory=tmp_path / "c")
    store.write("a", io.BytesIO(data))
    for _ in range(3):
        assert read_all(store.open_reader("a")) == data
    for n, via in enumerate(["open_reader", "download", "open_reader", "download"]):
        corrupt(only_entry(tmp_path / "c"), "flip")
        if via == "open_reader":
            assert read_all(store.open_reader("a")) == data
        else:
            out = tmp_path / f"o{n}"
            optuna_cas.download_artifact(artifact_store=store, file_path=str(out), artifact_id="a")
            assert out.read_bytes() == data
        assert only_entry(tmp_path / "c").read_bytes() == data


def test_corrupt_store_blob_is_not_cached(tmp_path: Path) -> None:
    inner = MemoryArtifactStore()
    # > INLINE_LIMIT, so the content is a blob that can be corrupted (same size, other bytes)
    ref = inner.put("a", io.BytesIO(b"good bytes" * 500))
    inner.content.backend.write(blob_key(ref.digest), io.BytesIO(b"evil bytes" * 500))
    store = CachedArtifactStore(inner, directory=tmp_path / "c")
    with pytest.raises(IntegrityError):
        store.open_reader("a")
    with pytest.raises(IntegrityError):
        optuna_cas.download_artifact(
            artifact_store=store, file_path=str(tmp_path / "out"), artifact_id="a"
        )
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out*")) == []
    assert len(store.cache) == 0 and entry_files(tmp_path / "c") == []
    assert list((tmp_path / "c" / "tmp").iterdir()) == []


@pytest.mark.parametrize("size", [100_000, 3 * MiB + 5], ids=["whole", "chunked"])
def test_a_fill_writes_the_blocks_the_store_hands_over(tmp_path: Path, size: int) -> None:
    # A fill (a whole blob, or a chunked file's packs) takes the store's own blocks, as a
    # download does: no copy through a buffer of its own (HandsOverBackend refuses one).
    inner = ContentAddressedArtifactStore(
        ContentStore(HandsOverBackend(), chunk_threshold=256 * 1024)
    )
    data = random_bytes(size, seed=size)
    inner.write("a", io.BytesIO(data))
    store = CachedArtifactStore(inner, directory=tmp_path / "c")
    optuna_cas.download_artifact(
        artifact_store=store, file_path=str(tmp_path / "1"), artifact_id="a"
    )
    assert (tmp_path / "1").read_bytes() == data
    assert len(store.cache) >= 1  # filled: the packs, or the blob


# -- several processes ---------------------------------------------------------------------------


def _read_in_child(
    base: str, cache_dir: str, out: str, use_download: bool, barrier: Any, results: Any
) -> None:
    store = CachedArtifactStore(
        FileSystemArtifactStore(base), directory=cache_dir, size_limit=256 * MiB
    )
    barrier.wait(timeout=60)
    hasher = blake3.blake3()
    if use_download:
        optuna_cas.download_artifact(artifact_store=store, file_path=out, artifact_id="big")
        with open(out, "rb") as f:
            hasher.update(f.read())
    else:
        with store.open_reader("big") as reader:
            while chunk := reader.read(4 * MiB):
                hasher.update(chunk)
    results.put(hasher.hexdigest())


@pytest.mark.slow
def test_four_processes_fill_one_blob_at_once(tmp_path: Path) -> None:
    data = random_bytes(64 * MiB, seed=7)
    base, cache_dir = tmp_path / "fs", tmp_path / "cache"
    FileSystemArtifactStore(base).write("big", io.BytesIO(data))  # not cached
    expected = blake3.blake3(data).hexdigest()
    del data
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(
            target=_read_in_child,
            args=(
                str(base),
                str(cache_dir),
                str(tmp_path / f"out{i}"),
                i % 2 == 1,
                barrier,
                results,
            ),
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    digests = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert digests == [expected] * 4
    cache = DiskBlobCache(cache_dir, size_limit=256 * MiB)
    info = cache.info()
    # 64 MiB is stored as chunks: the cache holds each pack once, filled by one process, and
    # the file's manifest once.
    backend = LocalBackend(base)
    packs = {"".join(i.key.split("/")[-2:]) for i in backend.list("packs/")}
    (manifest,) = [read_all(backend.open_reader(i.key)) for i in backend.list("manifests/")]
    assert len(packs) >= 2 and info.entries == len(packs) + 1
    kept = {blake3.blake3(f.read_bytes()).hexdigest() for f in entry_files(cache_dir)}
    assert kept == packs | {blake3.blake3(manifest).hexdigest()}
    assert list((cache_dir / "tmp").iterdir()) == []


# -- bad input -----------------------------------------------------------------------------------


def test_directory_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "afile"
    path.write_text("x")
    with pytest.raises(StoreConfigError, match="afile"):
        CachedArtifactStore(MemoryArtifactStore(), directory=path)
    with pytest.raises(StoreConfigError, match="afile"):
        DiskBlobCache(path / "below")


def test_a_cache_database_this_user_cannot_open_is_a_store_config_error() -> None:
    # The look for a stopped writer opened the database outside its guard: a cache.db left
    # by `sudo optuna-cas get` raised a bare sqlite3 error, and the CLI failed instead of
    # reading without the cache (review of 13b577b). As root, the check runs as nobody.
    import shutil
    import subprocess
    import sys
    import tempfile

    directory = Path(tempfile.mkdtemp()) / "cache"
    try:
        DiskBlobCache(directory).close()
        (directory / "cache.db").chmod(0)
        if os.geteuid() == 0:
            for path in [directory.parent, *directory.parent.rglob("*")]:
                os.chown(path, 65534, 65534)
        program = (
            "import os, sys\n"
            "from optuna_cas import DiskBlobCache\n"
            "from optuna_cas.exceptions import StoreConfigError\n"
            "if os.geteuid() == 0:  # imported first: nobody may not read the interpreter's\n"
            "    os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            "    DiskBlobCache(sys.argv[1])\n"
            "except StoreConfigError as e:\n"
            "    print('refused:', e)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", program, str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.stdout.startswith("refused:") and str(directory) in done.stdout, done.stderr
    finally:
        shutil.rmtree(directory.parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o500")
def test_directory_not_writable_chmod(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o500)
    try:
        with pytest.raises(StoreConfigError, match="ro"):
            DiskBlobCache(path)
    finally:
        path.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs procfs")
def test_directory_not_writable_even_for_root() -> None:
    # procfs refuses new files to everyone, root included.
    with pytest.raises(StoreConfigError, match="/proc/self"):
        DiskBlobCache("/proc/self")
    with pytest.raises(StoreConfigError, match="/proc/self/optuna-cas"):
        DiskBlobCache("/proc/self/optuna-cas")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="optuna-cas stores only"):
        CachedArtifactStore(oa.FileSystemArtifactStore(str(tmp_path)), directory=tmp_path / "c")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="optuna-cas stores only"):
        CachedArtifactStore(Backoff(oa.FileSystemArtifactStore(str(tmp_path))))
    with pytest.raises(StoreConfigError, match="size_limit"):
        DiskBlobCache(tmp_path / "c", size_limit=0)
    with pytest.raises(StoreConfigError, match="materialize"):
        DiskBlobCache(tmp_path / "c", materialize="symlink")  # type: ignore[arg-type]


def test_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "optuna-cas"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "optuna-cas"
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env"))
    store = CachedArtifactStore(MemoryArtifactStore())
    assert store.cache.directory == tmp_path / "env" and (tmp_path / "env").is_dir()


# -- hard-link materialisation -------------------------------------------------------------------


def test_hardlink_mode_links_and_the_caveat_holds(tmp_path: Path) -> None:
    data = random_bytes(300 * KiB, seed=3)
    store = CachedArtifactStore(
        FileSystemArtifactStore(tmp_path / "fs"), directory=tmp_path / "c", materialize="hardlink"
    )
    store.write("a", io.BytesIO(data))
    target = tmp_path / "linked.bin"
    optuna_cas.download_artifact(artifact_store=store, file_path=str(target), artifact_id="a")
    entry = only_entry(tmp_path / "c")
    assert os.path.samefile(target, entry) and target.read_bytes() == data
    with pytest.raises(FileExistsError):
        optuna_cas.download_artifact(artifact_store=store, file_path=str(target), artifact_id="a")

    # The caveat: editing the download in place edits the cache entry...
    corrupt(target, "flip")
    assert entry.read_bytes() != data
    # ... which the cache detects: the next read refetches, never returning the edited bytes.
    assert read_all(store.open_reader("a")) == data
    healed = only_entry(tmp_path / "c")
    assert healed.read_bytes() == data and not os.path.samefile(healed, target)
    optuna_cas.download_artifact(
        artifact_store=store, file_path=str(tmp_path / "again.bin"), artifact_id="a"
    )
    assert (tmp_path / "again.bin").read_bytes() == data


def test_hardlink_mode_on_a_miss_and_copy_mode_copies(tmp_path: Path) -> None:
    data = random_bytes(100 * KiB, seed=4)
    inner = FileSystemArtifactStore(tmp_path / "fs")
    inner.write("a", io.BytesIO(data))  # not cached
    linked = CachedArtifactStore(inner, directory=tmp_path / "c1", materialize="hardlink")
    optuna_cas.download_artifact(
        artifact_store=linked, file_path=str(tmp_path / "l.bin"), artifact_id="a"
    )
    assert os.path.samefile(tmp_path / "l.bin", only_entry(tmp_path / "c1"))
    copied = CachedArtifactStore(inner, directory=tmp_path / "c2")
    for name in ("c-miss.bin", "c-hit.bin"):
        optuna_cas.download_artifact(
            artifact_store=copied, file_path=str(tmp_path / name), artifact_id="a"
        )
        assert (tmp_path / name).read_bytes() == data
        assert not os.path.samefile(tmp_path / name, only_entry(tmp_path / "c2"))
    assert copied.cache.info().hits == 1


# -- writes, refs, management --------------------------------------------------------------------


def test_writes_go_through_and_stay_cached_also_on_dedup(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    data = random_bytes(200 * KiB, seed=5)
    inner = FileSystemArtifactStore(tmp_path / "fs")
    inner.write("already", io.BytesIO(data))  # the store holds the blob; the cache does not
    store = CachedArtifactStore(inner, directory=tmp_path / "c")
    ref = store.put("dup", make_file(data), filename="w.pt")
    assert ref.digest in store.cache  # cached although no blob was uploaded
    fresh = b"fresh bytes" * 400  # > INLINE_LIMIT: a blob, so there is something to cache
    store.write("new", io.BytesIO(fresh))
    assert Digest.of_bytes(fresh) in store.cache
    assert read_all(inner.open_reader("new")) == fresh  # went through
    assert len(list(inner.content.iter_blobs())) == 2

    # Content kept inside its ref has no blob: nothing to cache, and the ref serves it.
    store.write("tiny", io.BytesIO(b"fresh bytes"))
    assert Digest.of_bytes(b"fresh bytes") not in store.cache
    assert read_all(inner.open_reader("tiny")) == b"fresh bytes"
    assert len(list(inner.content.iter_blobs())) == 2

    off = CachedArtifactStore(inner, directory=tmp_path / "c-off", cache_uploads=False)
    off.write("x", io.BytesIO(b"not cached" * 500))
    assert len(off.cache) == 0


def test_backoff_around_the_cache_keeps_reading_through_it(tmp_path: Path) -> None:
    cached = CachedArtifactStore(MemoryArtifactStore(), directory=tmp_path / "c")
    store = Backoff(cached, min_delay=0.01)
    data = b"abc" * 2000  # > INLINE_LIMIT: read from a blob, so through the cache
    store.write("a", io.BytesIO(data))
    for _ in range(2):
        assert read_all(store.open_reader("a")) == data
    assert cached.cache.info().hits == 2


def test_removed_artifact_is_not_readable_through_the_ref_memory(tmp_path: Path) -> None:
    store = CachedArtifactStore(MemoryArtifactStore(), directory=tmp_path / "c")
    store.write("a", io.BytesIO(b"v1"))
    assert read_all(store.open_reader("a")) == b"v1"
    store.remove("a")
    with pytest.raises(ArtifactNotFound, match="'a'"):
        store.open_reader("a")
    with pytest.raises(ArtifactNotFound):
        store.get_ref("a")
    store.write("a", io.BytesIO(b"v2"))
    assert read_all(store.open_reader("a")) == b"v2"


def test_cache_failure_falls_back_to_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CachedArtifactStore(MemoryArtifactStore(), directory=tmp_path / "c")

    def disk_full(root: str) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_files, "new_temp", disk_full)
    payload = b"payload" * 1000  # > INLINE_LIMIT: a blob, which the cache tries to keep
    store.write("a", io.BytesIO(payload))  # the upload does not fail
    assert read_all(store.open_reader("a")) == payload
    optuna_cas.download_artifact(
        artifact_store=store, file_path=str(tmp_path / "o"), artifact_id="a"
    )
    assert (tmp_path / "o").read_bytes() == payload
    assert len(store.cache) == 0


def test_info_clear_prune(tmp_path: Path) -> None:
    cache = DiskBlobCache(tmp_path / "c", size_limit=64 * MiB)
    blobs = [CountingFetch(random_bytes(256 * KiB, seed=20 + i)) for i in range(6)]
    for blob in blobs:
        read_all(cache.open(blob.digest, blob))
    read_all(cache.open(blobs[0].digest, blobs[0]))  # most recently used now
    info = cache.info()
    assert (info.entries, info.hits, info.misses) == (6, 1, 6)
    assert info.directory == tmp_path / "c" and info.size_limit == 64 * MiB
    assert 6 * 256 * KiB <= info.size_bytes == cache.volume() < 64 * MiB

    evicted = cache.prune(info.size_bytes - 600 * KiB)  # needs three entries gone
    assert evicted == 3 and len(cache) == 3
    assert cache.volume() <= info.size_bytes - 600 * KiB
    assert [b.digest in cache for b in blobs] == [True, False, False, False, True, True]
    with pytest.raises(ValueError):
        cache.prune(-1)

    stale = tmp_path / "c" / "tmp" / "fill-dead.partial"
    stale.write_bytes(b"left by a killed process")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert cache.clear() == 3
    assert len(cache) == 0 and entry_files(tmp_path / "c") == [] and not stale.exists()
    assert cache.info().hits == 1  # counters survive clear
    cache.close()


def test_no_home_directory_for_the_default_cache_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Containers with a random UID have no $HOME and no passwd entry: Path.home() raises
    # RuntimeError, which the CLI's "go on uncached" fallback did not expect.

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    for name in ("OPTUNA_CAS_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.raises(StoreConfigError, match="no home directory for the default cache"):
        default_cache_dir()
