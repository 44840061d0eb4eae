"""Conformance tests of a backend under failure: bad sources, missing buckets, broken networks."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from optuna_cas.backends.base import Backend, SealedFile
from optuna_cas.exceptions import ArtifactNotFound, BackendError, TransientBackendError
from optuna_cas.middleware.backoff import RetryingBackend
from optuna_cas.middleware.retry import Retrier, RetryPolicy
from optuna_cas.testing._backend_hooks import MULTIPART, BackendHooks, MiB, read_all
from optuna_cas.testing.faults import FaultProxy
from optuna_cas.testing.servers import free_port
from optuna_cas.testing.streams import FailsAfter, FailsAtEof, PatternSource, random_bytes

#: A sealed file's parts are read from the file as they go out: what an SDK reads at a time,
#: per part in flight, never a part's size (measured: S3, 4 parts of 5 MiB in flight, where
#: botocore's checksum and signature read 1 MiB at a time, 7.2-8.2 MiB; GCS 0.1 MiB).
SEALED_WRITE_BOUND = 12 * MiB


class BackendFaultTests(BackendHooks):
    """Sources that fail, memory under a large stream, and (remote backends) network faults."""

    # ---- the caller's stream fails --------------------------------------------------------

    @pytest.mark.parametrize("if_absent", [False, True])
    # small; GCS chunk and S3 part multiples (the last part is then empty); and ragged
    @pytest.mark.parametrize("size", [100, 10 * MiB, 6 * MiB + 12345])
    def test_stream_failing_at_eof_publishes_nothing(
        self, backend: Backend, size: int, if_absent: bool
    ) -> None:
        source = FailsAtEof(random_bytes(size, seed=size))
        with pytest.raises(OSError, match="digest mismatch at EOF"):
            backend.write("blobs/bad", source, if_absent=if_absent)  # type: ignore[arg-type]
        assert not backend.exists("blobs/bad")
        assert list(backend.list("blobs/")) == []
        assert self.raw_keys() == [] and self.raw_unfinished() == []

    @pytest.mark.parametrize("good", [0, 2 * MiB, MULTIPART])
    def test_source_error_propagates_unchanged_and_publishes_nothing(
        self, backend: Backend, good: int | str
    ) -> None:
        source = FailsAfter(self.sized(good), ConnectionResetError("caller's source broke"))
        with pytest.raises(ConnectionResetError) as info:
            backend.write("k", source)  # type: ignore[arg-type]
        # The caller's own error, not translated into (nor retried as) a backend error.
        assert info.value is source.error
        assert not backend.exists("k")
        assert self.raw_keys() == [] and self.raw_unfinished() == []

    # ---- memory ---------------------------------------------------------------------------

    def test_memory_stays_bounded_both_ways(self, backend: Backend) -> None:
        bound = self.memory_bound
        if bound is None:
            pytest.skip(f"{type(self).__name__}: memory is not measured (memory_bound is None)")
        target = self.backend_for_memory_test(backend)
        size = 64 * MiB
        source = PatternSource(size, random_bytes(MiB + 7, seed=15))  # odd: parts all differ
        digest = hashlib.sha256()
        buffer = bytearray(256 * 1024)
        tracemalloc.start()
        try:
            target.write("blobs/huge", source)  # type: ignore[arg-type]
            _, write_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            with target.open_reader("blobs/huge") as reader:
                while n := reader.readinto(buffer):  # type: ignore[attr-defined]
                    digest.update(memoryview(buffer)[:n])
            _, read_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert target.stat("blobs/huge").size == size
        assert digest.digest() == source.sha256.digest()
        # Buffering the whole stream (or parts without a bound) would pass 64 MiB.
        assert write_peak < bound, f"write peak {write_peak / MiB:.1f} MiB"
        assert read_peak < bound, f"read peak {read_peak / MiB:.1f} MiB"

    def test_a_sealed_file_is_sent_without_part_buffers(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        if self.memory_bound is None:
            pytest.skip(f"{type(self).__name__}: memory is not measured (memory_bound is None)")
        target = self.backend_for_memory_test(backend)
        size = 24 * MiB
        with open(tmp_path / "spool", "w+b") as f:
            shutil.copyfileobj(PatternSource(size, random_bytes(MiB + 7, seed=19)), f, MiB)
            f.seek(0)
            tracemalloc.start()
            try:
                target.write("blobs/sealed", SealedFile.of(f))  # type: ignore[arg-type]
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert target.stat("blobs/sealed").size == size
        assert peak < SEALED_WRITE_BOUND, f"write peak {peak / MiB:.1f} MiB"

    # ---- the service refuses or cannot be reached -----------------------------------------

    def _every_operation(self, backend: Backend) -> list[Callable[[], object]]:
        big = self.multipart_size
        return [
            lambda: backend.exists("k"),
            lambda: backend.stat("k"),
            lambda: backend.open_reader("k"),
            lambda: backend.remove("k"),
            lambda: backend.write("k", io.BytesIO(b"small"), if_absent=True),
            lambda: backend.write("k", io.BytesIO(random_bytes(big))),
            lambda: list(backend.list()),
        ]

    def test_unknown_bucket_is_a_backend_error_naming_it(self, backend: Backend) -> None:
        found = self.missing_container()
        if found is None:
            pytest.skip(f"{type(self).__name__}: no bucket that can be missing")
        missing, name = found
        for call in self._every_operation(missing):
            with pytest.raises(BackendError, match=rf"{re.escape(name)}.*does not exist") as info:
                call()
            assert not isinstance(info.value, ArtifactNotFound)

    def test_unreachable_server_is_transient(self, backend: Backend) -> None:
        if self.upstream() is None:
            pytest.skip(f"{type(self).__name__}: not a networked backend (no upstream hook)")
        unreachable = self.backend_via(f"http://127.0.0.1:{free_port()}")
        for call in self._every_operation(unreachable):
            with pytest.raises(TransientBackendError) as info:
                call()
            assert unreachable.describe() in str(info.value)
            assert "connection" in str(info.value)

    @pytest.mark.parametrize("mode", ["503", "reset", "drop_response"])
    def test_a_failed_request_is_transient(
        self, proxied: tuple[Backend, FaultProxy], mode: str
    ) -> None:
        via, proxy = proxied
        self.raw_write("k", b"hello")
        calls: list[Callable[[], object]] = [
            lambda: via.exists("k"),
            lambda: via.stat("k"),
            lambda: read_all(via, "k"),
            lambda: via.write("k2", io.BytesIO(b"x")),
            lambda: list(via.list()),
        ]
        for call in calls:
            # Every request fails while the call runs, not just the next one: an SDK may send
            # side requests of its own (google-cloud-storage fetches bucket metadata in a
            # thread) and a one-off fault could land on one of those.
            proxy.set_faults(1.0, [mode])
            try:
                with pytest.raises(TransientBackendError):
                    call()
            finally:
                proxy.clear_faults()
        assert {r.fault for r in proxy.requests} == {mode}
        assert len(proxy.requests) >= len(calls)
        assert read_all(via, "k") == b"hello"  # nothing stays broken

    # (offset, length): to the end, from an offset, and a bounded window inside the object
    @pytest.mark.parametrize("window", [(0, None), (1000, None), (1000, 600_000)])
    def test_a_cut_body_is_an_error_never_short_data(
        self, proxied: tuple[Backend, FaultProxy], window: tuple[int, int | None]
    ) -> None:
        via, proxy = proxied
        offset, length = window
        data = random_bytes(MiB, seed=16)
        self.raw_write("k", data)
        expected = data[offset:] if length is None else data[offset : offset + length]

        def read_cut(piece: int, *, cut_from_open: bool) -> bytes | None:
            """What the reader returned, or None if it raised (after a true prefix)."""
            got = bytearray()
            if cut_from_open:
                proxy.set_faults(1.0, ["truncate"], methods=["GET"])
            try:
                with via.open_reader("k", offset=offset, length=length) as reader:
                    proxy.set_faults(1.0, ["truncate"], methods=["GET"])
                    while chunk := reader.read(piece):
                        got += chunk
                        if piece < 0:
                            break
            except TransientBackendError:
                assert expected.startswith(bytes(got))
                return None
            finally:
                proxy.clear_faults()
            return bytes(got)

        for piece in (-1, 64 * 1024):
            # Every GET cut, the first included: the body cannot arrive whole, so it must raise.
            assert read_cut(piece, cut_from_open=True) is None
            # Every GET after the open cut: a reader that got the body in the open's response
            # returns it whole, one that fetches more (ranges) must raise; never short data.
            assert read_cut(piece, cut_from_open=False) in (None, expected)
        assert any(r.fault == "truncate" for r in proxy.requests)

    def test_a_failed_part_publishes_nothing(self, proxied: tuple[Backend, FaultProxy]) -> None:
        via, proxy = proxied
        proxy.fail_next("503", methods={"PUT"})  # the first part or chunk
        with pytest.raises(TransientBackendError):
            via.write("k", io.BytesIO(random_bytes(self.multipart_size, seed=17)))
        assert [r.fault for r in proxy.requests if r.fault] == ["503"]
        assert not via.exists("k")
        assert self.raw_keys() == [] and self.raw_unfinished() == []

    def test_sealed_file_parts_are_read_again_for_each_retry(
        self, proxied: tuple[Backend, FaultProxy], tmp_path: Path
    ) -> None:
        # A sealed file's part is no buffer: each attempt (and a resend from the middle of a
        # GCS chunk) reads its range from the file again.
        via, proxy = proxied
        retrying = RetryingBackend(via, Retrier(RetryPolicy(min_delay=0.01, max_delay=0.05)))
        data = random_bytes(2 * self.multipart_size, seed=18)
        with open(tmp_path / "spool", "w+b") as f:
            f.write(data)
            proxy.set_faults(0.3, ["503", "reset", "drop_response"], methods=["PUT"])
            try:
                for key, first in zip("abc", ("503", "reset", "drop_response"), strict=True):
                    # At least one fault per write, whether it goes in parts or (S3's packs)
                    # in one request.
                    proxy.fail_next(first, methods=["PUT"])
                    f.seek(0)
                    retrying.write(key, SealedFile.of(f), if_absent=True)  # type: ignore[arg-type]
            finally:
                proxy.clear_faults()
        assert any(r.fault for r in proxy.requests)
        for key in ("a", "b", "c"):
            assert self.raw_read(key) == data, key
        assert self.raw_unfinished() == []
