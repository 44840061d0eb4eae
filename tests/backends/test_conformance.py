"""The backend contract, run unchanged against every backend (memory, local, S3, GCS).

Each check reads what was really stored through a fresh reader, and the remote suites add
out-of-band checks with the raw SDK client in their own files.
"""

from __future__ import annotations

import io
import threading

import pytest

from optuna_cas.backends.base import Backend
from optuna_cas.exceptions import ArtifactNotFound, InvalidKeyError
from tests.conftest import random_bytes

BAD_KEYS = ["", "/abs", "a//b", "../x", "a/../b", "a/./b", "nul\x00", "a\\b", "ctl\x07", "a/"]


class NonSeekable(io.RawIOBase):
    """A pipe-like source: readable, not seekable."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        return self._inner.readinto(b)


def read_all(backend: Backend, key: str, offset: int = 0) -> bytes:
    with backend.open_reader(key, offset=offset) as reader:
        return reader.read()


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024 - 1, 1024 * 1024, 3 * 1024 * 1024 + 7])
def test_write_then_read_round_trips(any_backend: Backend, size: int) -> None:
    data = random_bytes(size, seed=size)
    any_backend.write("blobs/x/obj", io.BytesIO(data))
    assert read_all(any_backend, "blobs/x/obj") == data
    assert any_backend.stat("blobs/x/obj").size == size
    assert any_backend.exists("blobs/x/obj")


def test_large_object_round_trips(any_backend: Backend) -> None:
    # 20 MiB: multipart on S3, resumable on GCS, kernel copy locally.
    data = random_bytes(20 * 1024 * 1024, seed=20)
    any_backend.write("blobs/big", io.BytesIO(data))
    assert read_all(any_backend, "blobs/big") == data


def test_write_reads_from_current_position_and_keeps_stream_open(any_backend: Backend) -> None:
    source = io.BytesIO(b"skip-me:payload")
    source.seek(8)
    any_backend.write("k", source)
    assert read_all(any_backend, "k") == b"payload"
    assert not source.closed


def test_write_from_non_seekable_stream(any_backend: Backend) -> None:
    data = random_bytes(2 * 1024 * 1024 + 5, seed=3)
    any_backend.write("k", NonSeekable(data))  # type: ignore[arg-type]
    assert read_all(any_backend, "k") == data


def test_write_from_real_file(any_backend: Backend, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = random_bytes(1024 * 1024 + 3, seed=4)
    path = tmp_path / "src.bin"
    path.write_bytes(b"HEAD" + data)
    with open(path, "rb") as f:
        f.seek(4)
        any_backend.write("k", f)
        assert not f.closed
    assert read_all(any_backend, "k") == data


def test_overwrite_replaces_whole_object(any_backend: Backend) -> None:
    any_backend.write("k", io.BytesIO(b"first version, longer"))
    any_backend.write("k", io.BytesIO(b"second"))
    assert read_all(any_backend, "k") == b"second"


def test_if_absent_keeps_existing_object(any_backend: Backend) -> None:
    any_backend.write("k", io.BytesIO(b"original"), if_absent=True)
    any_backend.write("k", io.BytesIO(b"intruder"), if_absent=True)
    assert read_all(any_backend, "k") == b"original"


def test_open_reader_at_offset(any_backend: Backend) -> None:
    any_backend.write("k", io.BytesIO(b"0123456789"))
    assert read_all(any_backend, "k", offset=4) == b"456789"


def test_missing_key_raises_artifact_not_found(any_backend: Backend) -> None:
    for call in (
        lambda: any_backend.open_reader("refs/missing"),
        lambda: any_backend.stat("refs/missing"),
        lambda: any_backend.remove("refs/missing"),
    ):
        with pytest.raises(ArtifactNotFound, match="refs/missing"):
            call()
    assert not any_backend.exists("refs/missing")


def test_remove_deletes(any_backend: Backend) -> None:
    any_backend.write("refs/a", io.BytesIO(b"x"))
    any_backend.remove("refs/a")
    assert not any_backend.exists("refs/a")
    with pytest.raises(ArtifactNotFound):
        any_backend.open_reader("refs/a")


def test_list_by_prefix(any_backend: Backend) -> None:
    for key in ["refs/a", "refs/b", "blobs/blake3/ab/cd", "other"]:
        any_backend.write(key, io.BytesIO(key.encode()))
    assert sorted(i.key for i in any_backend.list("refs/")) == ["refs/a", "refs/b"]
    assert sorted(i.key for i in any_backend.list("blobs/")) == ["blobs/blake3/ab/cd"]
    assert sorted(i.key for i in any_backend.list()) == [
        "blobs/blake3/ab/cd",
        "other",
        "refs/a",
        "refs/b",
    ]
    sizes = {i.key: i.size for i in any_backend.list("refs/")}
    assert sizes == {"refs/a": 6, "refs/b": 6}


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_rejected_before_io(any_backend: Backend, key: str) -> None:
    with pytest.raises(InvalidKeyError, match="Invalid key"):
        any_backend.write(key, io.BytesIO(b"x"))
    for call in (any_backend.open_reader, any_backend.remove, any_backend.exists, any_backend.stat):
        with pytest.raises(InvalidKeyError):
            call(key)
    assert list(any_backend.list()) == []


def test_concurrent_writers_of_one_key_leave_one_whole_object(any_backend: Backend) -> None:
    payloads = [bytes([i]) * (512 * 1024) for i in range(4)]
    errors: list[BaseException] = []

    def put(data: bytes) -> None:
        try:
            any_backend.write("blobs/same", io.BytesIO(data), if_absent=True)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=put, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert read_all(any_backend, "blobs/same") in payloads


def test_describe_names_the_store(any_backend: Backend) -> None:
    assert "://" in any_backend.describe()


def test_reader_seeks(any_backend: Backend) -> None:
    data = random_bytes(300_000, seed=7)
    any_backend.write("k", io.BytesIO(data))
    with any_backend.open_reader("k", offset=10) as reader:
        assert reader.read(5) == data[10:15]
        assert reader.seek(200_000) == 200_000
        assert reader.read(7) == data[200_000:200_007]
        reader.seek(-3, io.SEEK_END)
        assert reader.read() == data[-3:]
        reader.seek(0)
        assert reader.read() == data
        assert reader.seek(len(data) + 5) == len(data) + 5
        assert reader.read() == b""


def test_if_absent_keeps_existing_large_object(any_backend: Backend) -> None:
    # 6 MiB: a multipart upload on S3 and a resumable one on GCS, refused when it publishes.
    first = random_bytes(6 * 1024 * 1024, seed=8)
    any_backend.write("blobs/big", io.BytesIO(first), if_absent=True)
    any_backend.write("blobs/big", io.BytesIO(random_bytes(len(first), seed=9)), if_absent=True)
    assert read_all(any_backend, "blobs/big") == first


class FailsAtEof(io.RawIOBase):
    """Delivers ``data``, then raises where EOF would be: a verifying reader on wrong bytes."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        count = self._inner.readinto(b)
        if not count and len(b):
            raise OSError("digest mismatch at EOF")
        return count


@pytest.mark.parametrize("if_absent", [False, True])
@pytest.mark.parametrize(
    "size",
    # small; GCS chunk and S3 part multiples (the last part is then empty); and ragged
    [100, 10 * 1024 * 1024, 6 * 1024 * 1024 + 12345],
)
def test_stream_failing_at_eof_publishes_nothing(
    any_backend: Backend, size: int, if_absent: bool
) -> None:
    source = FailsAtEof(random_bytes(size, seed=size))
    with pytest.raises(OSError, match="digest mismatch at EOF"):
        any_backend.write("blobs/bad", source, if_absent=if_absent)  # type: ignore[arg-type]
    assert not any_backend.exists("blobs/bad")
    assert list(any_backend.list("blobs/")) == []
