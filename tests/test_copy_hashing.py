"""A copy checked by a hasher trailing it on a second thread (`_verified_copy.hash_behind_copy`)."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from optuna_cas._fileio import COPY_STEP, copy_range
from optuna_cas._verified_copy import copy_holds, hash_behind_copy
from optuna_cas.digest import Digest, new_blake3
from tests.conftest import random_bytes

SIZE = 2 * COPY_STEP + 3 * 1024 * 1024 + 17  # three kernel copy steps, hashed behind them


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[int, int, bytes]]:
    data = random_bytes(SIZE, seed=11)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    yield src, out, data
    os.close(src)
    os.close(out)


def _copy(src: int, out: int, limit: int) -> Callable[..., int]:
    return functools.partial(copy_range, src, out, 0, 0, limit)


def _hashing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "optuna-cas-hash"]


@pytest.mark.parametrize("size", [5, SIZE])  # hashed after the copy, and behind it
def test_a_copy_holds_its_source(tmp_path: Path, size: int) -> None:
    data = random_bytes(size, seed=size)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert copy_holds(_copy(src, out, size + 1), out, Digest.of_bytes(data)) == (size, True)
    finally:
        os.close(src)
        os.close(out)
    assert (tmp_path / "out").read_bytes() == data


def test_the_hasher_follows_the_copy_step_by_step(files: tuple[int, int, bytes]) -> None:
    src, out, data = files
    hasher = new_blake3(0)
    seen: list[int] = []

    def copy(stop: threading.Event, progress: Callable[[int], None]) -> int:
        return copy_range(src, out, 0, 0, SIZE, stop, lambda n: (seen.append(n), progress(n)))

    assert hash_behind_copy(copy, out, hasher) == (SIZE, SIZE)
    assert len(seen) > 1 and seen[-1] == SIZE
    assert hasher.hexdigest() == Digest.of_bytes(data).hexdigest


def test_bytes_changed_in_the_copy_fail_the_check(files: tuple[int, int, bytes]) -> None:
    src, out, data = files

    def copy_then_flip(stop: threading.Event, progress: Callable[[int], None]) -> int:
        copied = copy_range(src, out, 0, 0, SIZE, stop, progress)
        os.pwrite(out, bytes([data[-1] ^ 1]), SIZE - 1)  # after the hasher may have read it
        return copied

    _, holds = copy_holds(copy_then_flip, out, Digest.of_bytes(data))
    # The last step is hashed after the copy returns, so the flip is always seen.
    assert holds is False


def test_a_short_copy_fails_the_check(files: tuple[int, int, bytes]) -> None:
    src, out, data = files
    assert copy_holds(_copy(src, out, SIZE - 1), out, Digest.of_bytes(data)) == (SIZE - 1, False)


def test_a_source_longer_than_named_fails_the_check(files: tuple[int, int, bytes]) -> None:
    src, out, data = files
    named = Digest.of_bytes(data[:-1])  # what a cache entry one byte too long claims to be
    assert copy_holds(_copy(src, out, named.size + 1), out, named) == (SIZE, False)


def test_a_failing_copy_raises_and_leaves_no_hashing_thread(
    files: tuple[int, int, bytes],
) -> None:
    src, out, _ = files

    def copy_then_fail(stop: threading.Event, progress: Callable[[int], None]) -> int:
        copy_range(src, out, 0, 0, SIZE // 2, stop, progress)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        hash_behind_copy(copy_then_fail, out, new_blake3(0))
    assert _hashing_threads() == []


def test_a_failing_hasher_stops_the_copy_and_raises(files: tuple[int, int, bytes]) -> None:
    src, out, _ = files

    class Broken:
        def update(self, data: object) -> None:
            raise MemoryError("hasher failed")

    steps: list[bool] = []

    def copy(stop: threading.Event, progress: Callable[[int], None]) -> int:
        copied = 0
        while copied < SIZE:
            if stop.wait(0.2 if copied else 0):  # give the hasher time to fail
                break
            step = min(1024 * 1024, SIZE - copied)
            copied += copy_range(src, out, copied, copied, step)
            steps.append(True)
            progress(copied)
        return copied

    with pytest.raises(MemoryError, match="hasher failed"):
        hash_behind_copy(copy, out, Broken())
    assert len(steps) < SIZE // (1024 * 1024)  # the copy gave up early
    assert _hashing_threads() == []
