"""A hostile cache directory (DESIGN invariant 13: local state is untrusted input).

Each test plants one attack in a real cache directory: an index row edited with ``sqlite3`` on
``cache.db`` so that it names a file outside the cache, a value file swapped for a symlink, a
directory, a FIFO or a device node, or a value file edited in place after it was checked.
Reads must still return the right bytes (refetched from the store), nothing outside the cache
may be touched or hard-linked, and nothing may block, leak descriptors or report a descriptor
number instead of the cache key.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import multiprocessing
import multiprocessing.synchronize
import os
import re
import resource
import signal
import sqlite3
import stat
import time
import uuid
from pathlib import Path
from typing import BinaryIO

import pytest

from optuna_cas import DiskBlobCache
from optuna_cas.digest import Digest
from optuna_cas.exceptions import IntegrityError, MalformedRecordWarning, StoreConfigError
from tests.conftest import random_bytes

pytestmark = pytest.mark.reliability

KiB = 1024
MiB = 1024 * KiB
# A descriptor number where a name belongs: "<_io.BufferedReader name=7>", "Is a directory: 7".
_FD_NUMBER = re.compile(r"(?:name=|: )\d+\b")


class CountingFetch:
    """The store's side of a fill: fixed bytes, counting how often they are fetched."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.digest = Digest.of_bytes(data)
        self.calls = 0

    def __call__(self) -> BinaryIO:
        self.calls += 1
        return io.BytesIO(self.data)


def read_through(cache: DiskBlobCache, blob: CountingFetch, via: str, out_dir: Path) -> bytes:
    if via == "open":
        with cache.open(blob.digest, blob) as reader:
            return reader.read()
    target = out_dir / f"download-{uuid.uuid4().hex}"
    cache.materialize(blob.digest, target, blob)
    return target.read_bytes()


def value_filename(cache_dir: Path, key: str | None = None) -> str:
    """The filename the index holds for the value file of ``key`` (default: the only one)."""
    where, args = ("key = ?", (key,)) if key is not None else ("filename IS NOT NULL", ())
    with contextlib.closing(sqlite3.connect(cache_dir / "cache.db", timeout=30)) as con:
        ((filename,),) = con.execute(f"SELECT filename FROM Cache WHERE {where}", args).fetchall()
    return str(filename)


def set_value_filename(cache_dir: Path, filename: str, key: str | None = None) -> None:
    """Tamper with the index: make the value row of ``key`` (default: the only one) name
    ``filename``."""
    where, args = ("key = ?", (key,)) if key is not None else ("filename IS NOT NULL", ())
    with contextlib.closing(sqlite3.connect(cache_dir / "cache.db", timeout=30)) as con, con:
        con.execute(f"UPDATE Cache SET filename = ? WHERE {where}", (filename, *args))


# -- rows naming files outside the cache ---------------------------------------------------------


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_an_entry_planted_where_a_value_subdirectory_goes_is_skipped_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    from optuna_cas.middleware._cache_files import ConfinedDisk

    cache_dir = tmp_path / "cache"
    cache = DiskBlobCache(cache_dir, size_limit=64 * MiB)
    outside = tmp_path / "outside"
    outside.mkdir()
    if planted == "symlink":
        (cache_dir / "ab").symlink_to(outside, target_is_directory=True)
    else:
        (cache_dir / "ab").write_bytes(b"not a directory")
    # diskcache draws value-file names at random; make the first draw land under the plant.
    draws = iter([f"ab/cd/{'0' * 28}.val"])
    real_filename = ConfinedDisk.filename

    def filename(self: ConfinedDisk, key: object = None, value: object = None) -> object:
        name = next(draws, None)
        if name is None:
            return real_filename(self, key, value)
        return name, str(cache_dir / name)

    monkeypatch.setattr(ConfinedDisk, "filename", filename)
    blob = CountingFetch(random_bytes(200 * KiB, seed=3))
    for _ in range(2):
        assert read_through(cache, blob, "open", tmp_path) == blob.data
    assert blob.calls == 1  # cached by the first read, under another name
    assert list(outside.iterdir()) == []
    assert not value_filename(cache_dir).startswith("ab/")


@pytest.mark.parametrize("via", ["open", "materialize"])
@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlinked-subdirectory"])
def test_row_naming_a_file_outside_is_never_opened_or_deleted(
    tmp_path: Path, where: str, via: str
) -> None:
    cache_dir = tmp_path / "cache"
    cache = DiskBlobCache(cache_dir, size_limit=64 * MiB)
    blob = CountingFetch(random_bytes(200 * KiB, seed=1))
    assert read_through(cache, blob, "open", tmp_path) == blob.data  # filled

    outside = tmp_path / "outside"
    if where == "dotdot":
        victim, filename = tmp_path / "victim.val", "../victim.val"
    elif where == "absolute":
        victim = tmp_path / "victim.val"
        filename = str(victim)
    else:  # a value-file name of the right shape, through a planted symlink to a directory
        first = next(f"{i:02x}" for i in range(256) if not (cache_dir / f"{i:02x}").exists())
        (cache_dir / first).symlink_to(outside, target_is_directory=True)
        name = f"0d/{'0' * 28}.val"
        victim, filename = outside / name, f"{first}/{name}"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"precious bytes outside the cache")
    set_value_filename(cache_dir, filename)

    for _ in range(2):
        assert read_through(cache, blob, via, tmp_path) == blob.data
    assert victim.read_bytes() == b"precious bytes outside the cache"
    assert blob.calls == 2  # refetched once; the healed entry served the second read
    assert value_filename(cache_dir) != filename


def test_symlinked_entry_is_never_hard_linked(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = DiskBlobCache(cache_dir, size_limit=64 * MiB, materialize="hardlink")
    blob = CountingFetch(random_bytes(200 * KiB, seed=2))
    assert read_through(cache, blob, "open", tmp_path) == blob.data
    # Someone else's file with the right bytes today (and any bytes tomorrow).
    outside = tmp_path / "someone-elses.bin"
    outside.write_bytes(blob.data)
    entry = cache_dir / value_filename(cache_dir)
    entry.unlink()
    entry.symlink_to(outside)

    target = tmp_path / "download.bin"
    cache.materialize(blob.digest, target, blob)
    assert target.read_bytes() == blob.data
    assert not os.path.samefile(target, outside)
    assert os.stat(outside).st_nlink == 1 and outside.read_bytes() == blob.data
    assert os.path.samefile(target, cache_dir / value_filename(cache_dir))  # the refetched entry


# -- an entry edited after it was checked --------------------------------------------------------


def flip_middle_byte(path: Path) -> None:
    os.chmod(path, 0o644)  # cache files are read-only
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, io.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("how", ["read", "chunks"])
def test_entry_edited_after_its_check_is_never_served(tmp_path: Path, how: str) -> None:
    cache_dir = tmp_path / "cache"
    cache = DiskBlobCache(cache_dir, size_limit=64 * MiB)
    blob = CountingFetch(random_bytes(3 * MiB + 17, seed=3))
    assert read_through(cache, blob, "open", tmp_path) == blob.data
    reader = cache.open(blob.digest, blob)  # a hit: the entry is checked now
    flip_middle_byte(cache_dir / value_filename(cache_dir))  # ... and edited after the check
    with reader, pytest.raises(IntegrityError, match=blob.digest.hexdigest):
        if how == "read":
            reader.read()
        else:
            for _chunk in iter(functools.partial(reader.read, 64 * KiB), b""):
                pass  # a streaming consumer must never reach a clean EOF
    for via in ("open", "materialize", "open"):
        assert read_through(cache, blob, via, tmp_path) == blob.data


# -- directories, FIFOs and devices at a value path ----------------------------------------------


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _plant(path: Path, kind: str) -> None:
    """Put a ``kind`` special file where the value file ``path`` is (if not there already)."""
    mode = os.lstat(path).st_mode
    if kind == "directory" and stat.S_ISDIR(mode):
        return
    if kind == "fifo" and stat.S_ISFIFO(mode):
        return
    if kind == "device" and stat.S_ISCHR(mode):
        return
    path.unlink()
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.mknod(path, stat.S_IFCHR | 0o444, os.makedev(1, 5))  # what /dev/zero is


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


def _special_file_reads(cache_dir: str, kind: str, result: str) -> None:
    """In a child: 50 reads, each finding ``kind`` at the value path; report what happened."""
    # An endless copy (a device read to EOF) must fail, not fill the disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * MiB, 256 * MiB))
    messages = _Messages()
    logging.getLogger("optuna_cas").addHandler(messages)
    directory = Path(cache_dir)
    out = directory.parent / "out"
    out.mkdir()
    cache = DiskBlobCache(directory, size_limit=64 * MiB)
    blob = CountingFetch(random_bytes(300 * KiB, seed=4))
    read_through(cache, blob, "open", out)  # warm up: database connection, loggers
    wrong = 0
    before = _fd_count()
    for i in range(50):
        _plant(directory / value_filename(directory), kind)
        try:
            wrong += read_through(cache, blob, "open" if i % 2 else "materialize", out) != blob.data
        except Exception as e:
            messages.texts.append(f"raised {type(e).__name__}: {e}")
            wrong += 1
    after = _fd_count()
    Path(result).write_text(
        json.dumps({"wrong": wrong, "leaked_fds": after - before, "messages": messages.texts})
    )


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_special_file_at_a_value_path_never_blocks_or_leaks(tmp_path: Path, kind: str) -> None:
    if kind == "device":
        try:
            os.mknod(tmp_path / "probe", stat.S_IFCHR | 0o444, os.makedev(1, 5))
        except PermissionError:
            pytest.skip("creating a device node needs CAP_MKNOD")
    result = tmp_path / "result.json"
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(
        target=_special_file_reads, args=(str(tmp_path / "cache"), kind, str(result))
    )
    child.start()
    child.join(120)  # a generous bound on 50 small reads: only a blocked read gets near it
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"a read blocked on a {kind} at a cache value path")
    assert child.exitcode == 0
    outcome = json.loads(result.read_text())
    assert outcome["wrong"] == 0, outcome["messages"][:3]
    assert outcome["leaked_fds"] <= 2, outcome
    # Every read reported the bad entry by its cache key, never by a descriptor number.
    digest_hex = Digest.of_bytes(random_bytes(300 * KiB, seed=4)).hexdigest
    assert len(outcome["messages"]) >= 50
    for text in outcome["messages"]:
        assert digest_hex in text and not _FD_NUMBER.search(text), text


def set_setting(cache_dir: Path, key: str, value: int) -> None:
    """Tamper with diskcache's running totals (its ``Settings`` table)."""
    with contextlib.closing(sqlite3.connect(cache_dir / "cache.db", timeout=30)) as con, con:
        con.execute("UPDATE Settings SET value = ? WHERE key = ?", (value, key))


def _fill_after_lying_totals(cache_dir: str, result: str) -> None:
    cache = DiskBlobCache(cache_dir, size_limit=1 * MiB)
    blob = CountingFetch(random_bytes(300 * KiB, seed=7))
    with cache.open(blob.digest, blob) as reader:  # a fill, and the eviction after it
        Path(result).write_bytes(reader.read())


@pytest.mark.parametrize("count", [2**40, 0, -5])
def test_totals_that_lie_never_keep_eviction_going(tmp_path: Path, count: int) -> None:
    """diskcache's count and size are numbers in a table anyone can edit: eviction must end."""
    cache_dir = tmp_path / "cache"
    cache = DiskBlobCache(cache_dir, size_limit=1 * MiB)
    read_through(cache, CountingFetch(random_bytes(300 * KiB, seed=6)), "open", tmp_path)
    cache.close()
    set_setting(cache_dir, "count", count)
    set_setting(cache_dir, "size", 2**62)
    result = tmp_path / "read.bin"
    child = multiprocessing.get_context("spawn").Process(
        target=_fill_after_lying_totals, args=(str(cache_dir), str(result))
    )
    child.start()
    child.join(120)  # one fill of 300 KiB: only an eviction that never ends gets near it
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"a fill never returned with the cache's count set to {count}")
    assert child.exitcode == 0
    assert result.read_bytes() == random_bytes(300 * KiB, seed=7)


def test_an_entry_whose_size_row_lies_cannot_lift_the_size_limit(tmp_path: Path) -> None:
    """A negative size in one row once made the total negative: the limit was never reached."""
    cache_dir = tmp_path / "cache"
    cache = DiskBlobCache(cache_dir, size_limit=1 * MiB)
    read_through(cache, CountingFetch(random_bytes(300 * KiB, seed=8)), "open", tmp_path)
    with contextlib.closing(sqlite3.connect(cache_dir / "cache.db", timeout=30)) as con, con:
        con.execute("UPDATE Cache SET size = ? WHERE filename IS NOT NULL", (-(2**40),))
        con.execute("UPDATE Settings SET value = value - ? WHERE key = 'size'", (2**40,))
    with pytest.warns(MalformedRecordWarning, match="recounted"):
        for seed in range(9, 19):  # 3 MiB through a 1 MiB cache
            blob = CountingFetch(random_bytes(300 * KiB, seed=seed))
            assert read_through(cache, blob, "open", tmp_path) == blob.data
    stored = sum(p.stat().st_size for p in cache_dir.rglob("*.val"))
    assert stored <= 1 * MiB
    assert 0 <= cache.info().size_bytes <= 1 * MiB + 1 * MiB  # values + the database itself


@pytest.mark.parametrize("key", ["size", "count", "hits", "misses"])
def test_a_null_counter_row_is_recounted_not_a_failure(tmp_path: Path, key: str) -> None:
    """A NULL size failed every later fill (diskcache's arithmetic raised TypeError), info()
    and clear(); through the CLI only deleting the directory helped (found by a probe)."""
    cache_dir = tmp_path / "cache"
    first = CountingFetch(random_bytes(100 * KiB, seed=20))
    read_through(DiskBlobCache(cache_dir), first, "open", tmp_path)
    with contextlib.closing(sqlite3.connect(cache_dir / "cache.db", timeout=30)) as con, con:
        con.execute("UPDATE Settings SET value = NULL WHERE key = ?", (key,))
    cache = DiskBlobCache(cache_dir)
    for seed in (20, 21, 22):
        blob = CountingFetch(random_bytes(100 * KiB, seed=seed))
        for via in ("open", "materialize"):
            assert read_through(cache, blob, via, tmp_path) == blob.data
    assert cache.info().entries == 3
    assert cache.clear() == 3


def test_a_settings_table_with_duplicate_rows_is_refused_by_name(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    DiskBlobCache(cache_dir).close()
    with contextlib.closing(sqlite3.connect(cache_dir / "cache.db", timeout=30)) as con, con:
        con.execute("CREATE TABLE Copy AS SELECT * FROM Settings")
        con.execute("DROP TABLE Settings")
        con.execute("CREATE TABLE Settings (key TEXT, value)")
        con.execute("INSERT INTO Settings SELECT * FROM Copy")
        con.execute("INSERT INTO Settings SELECT * FROM Copy")
    # A StoreConfigError (not a bare ValueError), which the CLI turns into a warning for
    # the default cache directory.
    with pytest.raises(StoreConfigError, match=re.escape(str(cache_dir))):
        DiskBlobCache(cache_dir)


def _hold_the_database(cache_dir: str, held: multiprocessing.synchronize.Event) -> None:
    con = sqlite3.connect(os.path.join(cache_dir, "cache.db"), isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # as a process stopped inside a write holds it
    held.set()
    signal.pause()


def test_a_database_held_by_another_process_costs_the_timeout_not_a_minute_per_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening waited diskcache's fixed 60 s whatever the timeout, then failed; once open,
    every read waited a timeout for its lookup and another for its fill (found by a probe:
    a worker stopped with Ctrl-Z)."""
    cache_dir = tmp_path / "cache"
    cache = DiskBlobCache(cache_dir, timeout=0.5)
    context = multiprocessing.get_context("spawn")
    held = context.Event()
    holder = context.Process(target=_hold_the_database, args=(str(cache_dir), held))
    holder.start()
    try:
        assert held.wait(60)
        started = time.monotonic()
        with pytest.raises(StoreConfigError, match=re.escape("held its database for over 0.5 s")):
            DiskBlobCache(cache_dir, timeout=0.5)
        assert time.monotonic() - started < 30
        blobs = [CountingFetch(random_bytes(50 * KiB, seed=seed)) for seed in range(30, 34)]
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="optuna_cas"):
            for blob in blobs:
                assert read_through(cache, blob, "open", tmp_path) == blob.data
        # One timeout, then the store alone for a minute (the reads before took 2 x 0.5 s
        # each; the margin is for a loaded machine, the count below is exact).
        assert time.monotonic() - started < 3
        rests = [r for r in caplog.records if "not used for 60 s" in r.getMessage()]
        assert len(rests) == 1
    finally:
        holder.kill()
        holder.join()
