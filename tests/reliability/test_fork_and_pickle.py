"""Process models around a shared store and cache: forks mid-operation, pickled stores.

Found by a probe: a child forked while another thread evicted from the cache hung forever;
one forked while another thread was inside a cache database transaction waited out the
database timeout (60 s) on every cache call; stores could not be pickled for ``spawn``
workers, where Optuna's can. Each child here runs under an alarm, so a hang fails the test
instead of stalling the suite.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import diskcache
import pytest

from optuna_cas import Backoff, CachedArtifactStore, FileSystemArtifactStore
from optuna_cas.middleware import _cache_files

pytestmark = pytest.mark.reliability

DATA = bytes(range(256)) * 4096  # 1 MiB: a blob, not inline


def _cached(tmp_path: Path) -> CachedArtifactStore:
    store = CachedArtifactStore(
        FileSystemArtifactStore(tmp_path / "store"), directory=tmp_path / "cache"
    )
    store.write("a", io.BytesIO(DATA))
    return store


def _in_a_forked_child(work: Callable[[], bool], seconds: int = 30) -> str:
    """Fork; the child runs ``work`` under an alarm. Returns how the child ended."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(seconds)
        try:
            os._exit(0 if work() else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)} (hung)"
    return {0: "ok", 3: "wrong bytes", 4: "raised"}.get(os.waitstatus_to_exitcode(status), "?")


def _reads_a(store: CachedArtifactStore) -> Callable[[], bool]:
    def work() -> bool:
        store.cache.clear()  # a miss: fill, adopt, evict: every step of the cache
        with store.open_reader("a") as reader:
            return reader.read() == DATA

    return work


def test_a_fork_during_eviction_leaves_the_child_a_working_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _cached(tmp_path)
    real = _cache_files.evict_lru
    evicting = threading.Event()

    def slow_eviction(*args: object, **kwargs: object) -> int:
        evicting.set()
        time.sleep(1.5)  # a long pass over many entries, held open for the fork
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_cache_files, "evict_lru", slow_eviction)
    thread = threading.Thread(target=store.cache.prune, args=(0,))
    thread.start()
    evicting.wait()
    outcome = _in_a_forked_child(_reads_a(store))
    thread.join()
    assert outcome == "ok"


def test_a_fork_during_a_cache_transaction_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _cached(tmp_path)
    real_get = diskcache.Cache.get
    inside = threading.Event()

    def get_in_a_long_transaction(self: diskcache.Cache, *args: object, **kw: object) -> object:
        if threading.current_thread().name != "holder":
            return real_get(self, *args, **kw)
        with self.transact():
            inside.set()
            time.sleep(1.5)
            return real_get(self, *args, **kw)

    monkeypatch.setattr(diskcache.Cache, "get", get_in_a_long_transaction)
    holder = threading.Thread(target=store.cache._cache.get, args=("x",), name="holder")
    holder.start()
    inside.wait()
    started = time.monotonic()
    # Without the wait, each cache call in the child waited out the 60 s database timeout.
    outcome = _in_a_forked_child(_reads_a(store), seconds=20)
    holder.join()
    assert outcome == "ok"
    assert time.monotonic() - started < 20


def test_a_planted_locking_mode_row_blocks_no_other_process(tmp_path: Path) -> None:
    # diskcache applies every sqlite_* row of the database's Settings table as a pragma.
    _cached(tmp_path).close()
    database = sqlite3.connect(tmp_path / "cache" / "cache.db")
    with database:
        database.execute(
            "INSERT OR REPLACE INTO Settings VALUES ('sqlite_locking_mode', 'EXCLUSIVE')"
        )
    database.close()
    first = _cached(tmp_path)  # applies the planted row, were it trusted
    with first.open_reader("a") as reader:
        assert reader.read() == DATA
    outcome = _in_a_forked_child(lambda: _reads_a(_cached(tmp_path))())
    first.close()
    assert outcome == "ok"


def _read_a(store: object) -> bytes:
    with store.open_reader("a") as reader:  # type: ignore[attr-defined]
        return bytes(reader.read())


@pytest.mark.slow
def test_stores_pickle_for_spawn_workers(tmp_path: Path) -> None:
    # Optuna's FileSystemArtifactStore pickles; a drop-in must, or a spawn pool fails.
    local = FileSystemArtifactStore(tmp_path / "store")
    stores = [
        local,
        Backoff(local),
        _cached(tmp_path),
        Backoff(CachedArtifactStore(local, directory=tmp_path / "cache2")),
    ]
    for store in stores:
        copy = pickle.loads(pickle.dumps(store))
        assert _read_a(copy) == DATA
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_read_a, stores) == [DATA] * len(stores)
