"""Conformance tests of a backend's normal operation: writes, reads, keys and listings."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from optuna_cas.backends.base import Backend, SealedFile
from optuna_cas.exceptions import ArtifactNotFound, InvalidKeyError
from optuna_cas.testing._backend_hooks import MULTIPART, BackendHooks, MiB, read_all
from optuna_cas.testing.streams import NonSeekable, OnEof, random_bytes

#: Keys every backend must refuse before any I/O.
BAD_KEYS = ("", "/abs", "a//b", "../x", "a/../b", "a/./b", "nul\x00", "a\\b", "ctl\x07", "a/")


class BackendIOTests(BackendHooks):
    """Round trips, positions, create-if-absent, missing keys, listing, prefixes, bad keys."""

    # ---- writing and reading back ---------------------------------------------------------

    @pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, 3 * MiB + 7])
    def test_write_then_read_round_trips(self, backend: Backend, size: int) -> None:
        data = random_bytes(size, seed=size)
        backend.write("blobs/x/obj", io.BytesIO(data))
        assert read_all(backend, "blobs/x/obj") == data
        assert self.raw_read("blobs/x/obj") == data
        assert backend.stat("blobs/x/obj").size == size
        assert backend.exists("blobs/x/obj")

    def test_large_object_round_trips(self, backend: Backend) -> None:
        # 20 MiB: multipart on S3, resumable on GCS, kernel copy locally.
        data = random_bytes(20 * MiB, seed=20)
        backend.write("blobs/big", io.BytesIO(data))
        assert read_all(backend, "blobs/big", piece=3 * MiB + 7) == data
        assert self.raw_read("blobs/big") == data
        assert self.raw_unfinished() == []

    @pytest.mark.parametrize("size", [0, 10, 5 * MiB, 5 * MiB + 1, MULTIPART])
    def test_write_reads_from_current_position_and_keeps_stream_open(
        self, backend: Backend, size: int
    ) -> None:
        data = b"skip" + random_bytes(self.sized(size), seed=3)
        source = io.BytesIO(data)
        source.seek(4)
        backend.write("k", source)
        assert not source.closed
        assert source.tell() == len(data)
        assert self.raw_read("k") == data[4:]

    @pytest.mark.parametrize("size", [100, 2 * MiB + 5, MULTIPART])
    def test_write_from_non_seekable_stream(self, backend: Backend, size: int | str) -> None:
        data = random_bytes(self.sized(size), seed=3)
        source = NonSeekable(data)
        backend.write("k", source)  # type: ignore[arg-type]
        assert not source.closed
        assert self.raw_read("k") == data

    def test_write_from_real_file(self, backend: Backend, tmp_path: Path) -> None:
        data = random_bytes(MiB + 3, seed=4)
        path = tmp_path / "src.bin"
        path.write_bytes(b"HEAD" + data)
        with open(path, "rb") as f:
            f.seek(4)
            backend.write("k", f)
            assert not f.closed
        assert self.raw_read("k") == data

    @pytest.mark.parametrize("size", [0, 100, MULTIPART])
    def test_write_from_sealed_file(self, backend: Backend, tmp_path: Path, size: int) -> None:
        # Remote backends send a sealed file's parts straight from the file (no buffers).
        data = random_bytes(self.sized(size), seed=5)
        with open(tmp_path / "spool", "w+b") as f:
            f.write(b"HEAD" + data)
            f.seek(4)
            backend.write("k", SealedFile.of(f))  # type: ignore[arg-type]
            assert not f.closed
        assert self.raw_read("k") == data

    def test_overwrite_replaces_whole_object(self, backend: Backend) -> None:
        backend.write("k", io.BytesIO(b"first version, longer"))
        backend.write("k", io.BytesIO(b"second"))
        assert read_all(backend, "k") == b"second"
        assert self.raw_read("k") == b"second"

    # ---- create-if-absent -----------------------------------------------------------------

    @pytest.mark.parametrize("size", [0, 100, MULTIPART])
    def test_if_absent_never_overwrites(self, backend: Backend, size: int | str) -> None:
        first = random_bytes(self.sized(size), seed=8)
        backend.write("blobs/k", io.BytesIO(first), if_absent=True)
        version = self.raw_version("blobs/k")
        second = random_bytes(len(first), seed=9) + b"!"
        backend.write("blobs/k", io.BytesIO(second), if_absent=True)
        assert self.raw_version("blobs/k") == version  # not even rewritten with equal bytes
        assert self.raw_read("blobs/k") == first
        assert read_all(backend, "blobs/k") == first
        assert self.raw_unfinished() == []

        backend.write("blobs/k", io.BytesIO(b"new"))  # without if_absent: overwrite
        assert self.raw_read("blobs/k") == b"new"

    @pytest.mark.parametrize("size", [100, MULTIPART])
    def test_if_absent_loses_a_race_quietly(self, backend: Backend, size: int | str) -> None:
        # Another writer stores the key after the backend read the whole body and before it
        # publishes: theirs stays, ours is dropped without an error.
        data = random_bytes(self.sized(size), seed=10)
        backend.write("k", OnEof(data, lambda: self.raw_write("k", b"theirs")), if_absent=True)
        assert self.raw_read("k") == b"theirs"
        assert self.raw_unfinished() == []

    def test_concurrent_writers_of_one_key_leave_one_whole_object(self, backend: Backend) -> None:
        payloads = [bytes([i]) * (512 * 1024) for i in range(4)]
        errors: list[BaseException] = []

        def put(data: bytes) -> None:
            try:
                backend.write("blobs/same", io.BytesIO(data), if_absent=True)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=put, args=(p,)) for p in payloads]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert read_all(backend, "blobs/same") in payloads
        assert self.raw_keys() == ["blobs/same"]

    # ---- readers --------------------------------------------------------------------------

    def test_open_reader_at_offsets(self, backend: Backend) -> None:
        data = random_bytes(2 * MiB + 1000, seed=11)
        self.raw_write("k", data)
        size = len(data)
        for offset in (0, 1, 4, MiB - 1, MiB, MiB + 1, size - 1, size, size + 5, size + MiB):
            assert read_all(backend, "k", offset=offset, piece=77_777) == data[offset:], offset

    @pytest.mark.parametrize("size", [0, 100])
    def test_offset_at_or_past_the_end_reads_nothing(self, backend: Backend, size: int) -> None:
        backend.write("k", io.BytesIO(b"x" * size))
        for offset in (size, size + 1, size + MiB):
            assert read_all(backend, "k", offset=offset) == b""

    def test_negative_offset_is_refused(self, backend: Backend) -> None:
        backend.write("k", io.BytesIO(b"abc"))
        with pytest.raises(ValueError, match="negative"):
            backend.open_reader("k", offset=-1)

    def test_readinto_fills_a_reused_buffer(self, backend: Backend) -> None:
        data = random_bytes(3 * MiB + 17, seed=12)
        backend.write("k", io.BytesIO(data))
        out = bytearray()
        buffer = bytearray(MiB)
        with backend.open_reader("k", offset=10) as reader:
            while count := reader.readinto(buffer):  # type: ignore[attr-defined]
                out += buffer[:count]
        assert out == data[10:]

    def test_reader_seeks(self, backend: Backend) -> None:
        if not self.readers_seek:
            pytest.skip(f"{type(self).__name__}: readers do not seek")
        data = random_bytes(300_000, seed=7)
        backend.write("k", io.BytesIO(data))
        with backend.open_reader("k", offset=10) as reader:
            assert reader.read(5) == data[10:15]
            assert reader.seek(200_000) == 200_000
            assert reader.read(7) == data[200_000:200_007]
            reader.seek(-3, io.SEEK_END)
            assert reader.read() == data[-3:]
            reader.seek(0)
            assert reader.read() == data
            assert reader.seek(len(data) + 5) == len(data) + 5
            assert reader.read() == b""

    def test_reader_is_closed_by_its_context(self, backend: Backend) -> None:
        backend.write("k", io.BytesIO(b"abc"))
        with backend.open_reader("k") as reader:
            assert reader.read(1) == b"a"
        assert reader.closed
        with pytest.raises(ValueError):
            reader.read()

    # ---- missing keys, remove, touch, stat ------------------------------------------------

    def test_missing_key_raises_artifact_not_found(self, backend: Backend) -> None:
        where = backend.describe()
        for call in (
            lambda: backend.open_reader("refs/missing"),
            lambda: backend.open_reader("refs/missing", offset=5),
            lambda: backend.stat("refs/missing"),
            lambda: backend.remove("refs/missing"),
            lambda: backend.touch("refs/missing"),
        ):
            with pytest.raises(ArtifactNotFound, match="refs/missing") as info:
                call()
            assert where in str(info.value)
            assert isinstance(info.value, FileNotFoundError)
            # Translated at the boundary: no SDK exception reaches the caller for a missing key.
            assert type(info.value).__module__.startswith("optuna_cas")
        assert not backend.exists("refs/missing")

    def test_remove_deletes(self, backend: Backend) -> None:
        backend.write("refs/a", io.BytesIO(b"x"))
        backend.write("refs/b", io.BytesIO(b"y"))
        backend.remove("refs/a")
        assert not backend.exists("refs/a")
        assert self.raw_read("refs/a") is None
        assert self.raw_keys() == ["refs/b"]
        with pytest.raises(ArtifactNotFound):
            backend.open_reader("refs/a")

    def test_touch_renews_the_time_and_keeps_the_bytes(self, backend: Backend) -> None:
        data = random_bytes(1000, seed=13)
        backend.write("blobs/t", io.BytesIO(data))
        aged = self.raw_backdate("blobs/t", 3600)
        before = backend.stat("blobs/t")
        backend.touch("blobs/t")
        after = backend.stat("blobs/t")
        # Where the storage lets us age the object, the touch must visibly renew it.
        assert after.modified > before.modified if aged else after.modified >= before.modified
        assert after.size == len(data)
        assert self.raw_read("blobs/t") == data

    def test_stat_and_list_agree(self, backend: Backend) -> None:
        backend.write("blobs/aa/1", io.BytesIO(b"abc"))
        backend.write("blobs/ab/2", io.BytesIO(b""))
        backend.write("refs/r", io.BytesIO(b"r"))
        infos = {i.key: i for i in backend.list("blobs/a")}
        assert set(infos) == {"blobs/aa/1", "blobs/ab/2"}
        assert infos["blobs/aa/1"].size == 3 and infos["blobs/ab/2"].size == 0
        for key, info in infos.items():
            assert info.modified > 1e9  # seconds since the epoch, not a placeholder
            assert backend.stat(key) == info

    # ---- listing and prefixes -------------------------------------------------------------

    def test_list_by_prefix(self, backend: Backend) -> None:
        for key in ["refs/a", "refs/b", "blobs/blake3/ab/cd", "other"]:
            backend.write(key, io.BytesIO(key.encode()))
        assert sorted(i.key for i in backend.list("refs/")) == ["refs/a", "refs/b"]
        assert sorted(i.key for i in backend.list("blobs/")) == ["blobs/blake3/ab/cd"]
        everything = sorted(i.key for i in backend.list())
        assert everything == ["blobs/blake3/ab/cd", "other", "refs/a", "refs/b"]
        assert everything == self.raw_keys()
        sizes = {i.key: i.size for i in backend.list("refs/")}
        assert sizes == {"refs/a": 6, "refs/b": 6}

    def test_list_skips_names_that_are_not_valid_keys(self, backend: Backend) -> None:
        if not self.invalid_raw_names:
            pytest.skip(f"{type(self).__name__}: no invalid names to plant")
        for name in self.invalid_raw_names:
            self.raw_write(name, b"x")
        backend.write("refs/ok", io.BytesIO(b""))
        assert [i.key for i in backend.list()] == ["refs/ok"]

    def test_prefix_isolation(self, backend: Backend) -> None:
        a, ab = self.backend_at("a"), self.backend_at("ab")
        if a is None or ab is None:
            pytest.skip(f"{type(self).__name__}: no prefixes")
        a.write("refs/1", io.BytesIO(b"from a"))
        ab.write("refs/1", io.BytesIO(b"from ab"))
        ab.write("refs/2", io.BytesIO(b"only ab"))

        # "a" is a string prefix of "ab/...": a's listing must still stop at "a/".
        assert self.raw_keys() == ["a/refs/1", "ab/refs/1", "ab/refs/2"]
        assert self.raw_read("a/refs/1") == b"from a"
        assert read_all(ab, "refs/1") == b"from ab"
        assert [i.key for i in a.list()] == ["refs/1"]
        assert sorted(i.key for i in ab.list("refs/")) == ["refs/1", "refs/2"]
        assert not a.exists("refs/2") and ab.exists("refs/2")
        with pytest.raises(ArtifactNotFound):
            a.remove("refs/2")
        a.remove("refs/1")
        assert read_all(ab, "refs/1") == b"from ab"
        root = backend.describe().rstrip("/")
        assert (a.describe(), ab.describe()) == (f"{root}/a", f"{root}/ab")

    # ---- keys -----------------------------------------------------------------------------

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_bad_keys_rejected_before_io(self, backend: Backend, key: str) -> None:
        sent = self.requests_sent()
        with pytest.raises(InvalidKeyError, match="Invalid key"):
            backend.write(key, io.BytesIO(b"x"))
        for call in (
            backend.open_reader,
            backend.remove,
            backend.exists,
            backend.stat,
            backend.touch,
        ):
            with pytest.raises(InvalidKeyError):
                call(key)
        assert self.requests_sent() == sent  # refused before any request
        assert self.raw_keys() == [] and self.raw_unfinished() == []

    def test_describe_names_the_store(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)
        assert "://" in backend.describe()
