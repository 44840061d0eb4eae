"""Conformance tests of bounded reads: ``open_reader(key, offset=o, length=n)``.

Chunk-level dedup keeps chunks in large pack objects and reads back only the ranges it lacks,
so a bounded read must yield exactly the window and, on a remote backend, fetch exactly the
window in one request: no byte of the rest of the pack may cross the wire.
"""

from __future__ import annotations

import io

import pytest

from optuna_cas.backends.base import Backend
from optuna_cas.exceptions import ArtifactNotFound
from optuna_cas.middleware.backoff import RetryingBackend
from optuna_cas.middleware.retry import Retrier, RetryPolicy
from optuna_cas.testing._backend_hooks import BackendHooks, MiB, read_all
from optuna_cas.testing.faults import FaultProxy, RequestRecord
from optuna_cas.testing.streams import random_bytes

#: ``(offset, length)`` windows of a ``2 MiB + 1000``-byte object, all inside it.
WINDOWS = ((0, 1), (0, 100), (5, 1000), (MiB - 1, 2), (MiB, MiB), (MiB + 7, MiB + 993), (0, 0))


class BackendRangeTests(BackendHooks):
    """Bounded reads: the window, its edges, seeks inside it, requests and bytes on the wire."""

    def _stored(self, backend: Backend, size: int = 2 * MiB + 1000, seed: int = 21) -> bytes:
        data = random_bytes(size, seed=seed)
        backend.write("packs/p", io.BytesIO(data))
        return data

    @pytest.mark.parametrize("piece", [-1, 1, 77_777])
    def test_a_bounded_read_yields_exactly_the_window(self, backend: Backend, piece: int) -> None:
        data = self._stored(backend)
        for offset, length in WINDOWS:
            if piece == 1 and length > 1000:
                continue  # byte by byte only where it stays quick
            got = read_all(backend, "packs/p", offset=offset, length=length, piece=piece)
            assert got == data[offset : offset + length], (offset, length)

    def test_a_window_past_the_end_stops_at_the_end(self, backend: Backend) -> None:
        data = self._stored(backend)
        size = len(data)
        for offset, length in ((size - 10, 100), (size - 1, MiB), (0, size + 1), (5, 10 * size)):
            got = read_all(backend, "packs/p", offset=offset, length=length)
            assert got == data[offset:], offset

    @pytest.mark.parametrize("size", [0, 100])
    def test_an_offset_past_the_end_with_a_length_reads_nothing(
        self, backend: Backend, size: int
    ) -> None:
        backend.write("packs/p", io.BytesIO(b"x" * size))
        for offset in (size, size + 1, size + MiB):
            for length in (0, 1, 10, MiB):
                got = read_all(backend, "packs/p", offset=offset, length=length)
                assert got == b"", (offset, length)
        if size == 0:  # an empty object: a window at its start reads nothing either
            assert read_all(backend, "packs/p", offset=0, length=10) == b""

    def test_length_zero_reads_nothing(self, backend: Backend) -> None:
        data = self._stored(backend, size=1000)
        for offset in (0, 1, 999, 1000, 5000):
            with backend.open_reader("packs/p", offset=offset, length=0) as reader:
                assert reader.read() == b""
                assert reader.read(10) == b""
        assert read_all(backend, "packs/p", offset=0, length=1000) == data  # nothing was disturbed

    def test_a_bounded_reader_fills_a_reused_buffer(self, backend: Backend) -> None:
        data = self._stored(backend, size=3 * MiB + 17)
        out = bytearray()
        buffer = bytearray(MiB // 3)
        with backend.open_reader("packs/p", offset=10, length=2 * MiB + 5) as reader:
            while count := reader.readinto(buffer):  # type: ignore[attr-defined]
                out += buffer[:count]
        assert out == data[10 : 10 + 2 * MiB + 5]

    def test_seeks_stay_inside_the_window(self, backend: Backend) -> None:
        if not self.readers_seek:
            pytest.skip(f"{type(self).__name__}: readers do not seek")
        data = self._stored(backend, size=300_000)
        start, stop = 1000, 201_000
        with backend.open_reader("packs/p", offset=start, length=stop - start) as reader:
            assert reader.tell() == start  # positions are the object's, as without a length
            assert reader.read(10) == data[start : start + 10]
            assert reader.seek(150_000) == 150_000
            assert reader.read(5) == data[150_000:150_005]
            assert reader.seek(-5, io.SEEK_CUR) == 150_000
            assert reader.read(3) == data[150_000:150_003]
            assert reader.seek(-4, io.SEEK_END) == stop - 4  # SEEK_END: the window's end
            assert reader.read() == data[stop - 4 : stop]
            assert reader.seek(start) == start
            assert reader.read() == data[start:stop]
            assert reader.seek(stop) == stop
            assert reader.read() == b""
            for outside in (start - 1, 0, stop + 1):
                with pytest.raises(ValueError, match=str(outside)):
                    reader.seek(outside)
            assert reader.seek(start + 2) == start + 2  # still usable after a refused seek
            assert reader.read(2) == data[start + 2 : start + 4]

    def test_seek_end_of_a_window_cut_by_the_object_end(self, backend: Backend) -> None:
        if not self.readers_seek:
            pytest.skip(f"{type(self).__name__}: readers do not seek")
        data = self._stored(backend, size=5000)
        with backend.open_reader("packs/p", offset=4990, length=100) as reader:
            assert reader.seek(-3, io.SEEK_END) == 4997
            assert reader.read() == data[-3:]
            assert reader.seek(5090) == 5090  # inside the window, past the object: nothing
            assert reader.read() == b""

    def test_a_bounded_read_of_a_missing_key_raises_artifact_not_found(
        self, backend: Backend
    ) -> None:
        for offset, length in ((0, 10), (5, 10), (0, 0), (MiB, 1)):
            with pytest.raises(ArtifactNotFound, match="refs/missing") as info:
                backend.open_reader("refs/missing", offset=offset, length=length)
            assert backend.describe() in str(info.value)

    @pytest.mark.parametrize("length", [-1, -MiB])
    def test_a_negative_length_is_refused_naming_it(self, backend: Backend, length: int) -> None:
        backend.write("k", io.BytesIO(b"abc"))
        sent = self.requests_sent()
        with pytest.raises(ValueError, match=rf"length.*{length}"):
            backend.open_reader("k", length=length)
        assert self.requests_sent() == sent  # refused before any request

    # ---- on the wire (remote backends, seen by the fault proxy) ---------------------------

    def _downloads(self, proxy: FaultProxy) -> list[RequestRecord]:
        return [r for r in proxy.requests if self.is_download(r.method, r.path)]

    def test_a_bounded_read_is_one_request_for_exactly_the_window(
        self, proxied: tuple[Backend, FaultProxy]
    ) -> None:
        via, proxy = proxied
        data = random_bytes(MiB, seed=22)
        self.raw_write("packs/p", data)
        size = len(data)
        cases = [(100_000, 300_000, -1), (100_000, 300_000, 4096), (0, 5, -1), (size - 9, MiB, -1)]
        for offset, length, piece in cases:
            proxy.reset_log()
            got = read_all(via, "packs/p", offset=offset, length=length, piece=piece)
            assert got == data[offset : offset + length]
            downloads = self._downloads(proxy)
            assert len(downloads) == 1, (offset, length, downloads)
            # Only the window crossed the wire, not the rest of the object.
            assert downloads[0].response_bytes == len(got), (offset, length)

    def test_a_seek_inside_the_window_fetches_only_the_rest_of_it(
        self, proxied: tuple[Backend, FaultProxy]
    ) -> None:
        if not self.readers_seek:
            pytest.skip(f"{type(self).__name__}: readers do not seek")
        via, proxy = proxied
        data = random_bytes(3 * MiB, seed=25)
        self.raw_write("packs/p", data)
        start, stop, target = 100_000, 2_600_000, 2_000_000  # past any read buffer
        with via.open_reader("packs/p", offset=start, length=stop - start) as reader:
            assert reader.read(10) == data[start : start + 10]
            proxy.reset_log()
            assert reader.seek(target) == target
            assert reader.read() == data[target:stop]
        # The request after the seek starts there and still ends at the window's end.
        assert [r.response_bytes for r in self._downloads(proxy)] == [stop - target]

    def test_length_zero_fetches_no_bytes(self, proxied: tuple[Backend, FaultProxy]) -> None:
        via, proxy = proxied
        self.raw_write("packs/p", random_bytes(1000, seed=23))
        proxy.reset_log()
        for offset in (0, 500, 5000):
            assert read_all(via, "packs/p", offset=offset, length=0) == b""
        assert self._downloads(proxy) == []

    def test_a_body_cut_mid_window_resumes_inside_the_window(
        self, proxied: tuple[Backend, FaultProxy]
    ) -> None:
        via, proxy = proxied
        data = random_bytes(MiB, seed=24)
        self.raw_write("packs/p", data)
        offset, length = 100_000, 600_000
        retrying = RetryingBackend(via, Retrier(RetryPolicy(min_delay=0, max_delay=0)))
        proxy.reset_log()
        proxy.fail_next("truncate", matching=self.is_download)
        got = read_all(retrying, "packs/p", offset=offset, length=length, piece=64 * 1024)
        assert got == data[offset : offset + length]
        downloads = self._downloads(proxy)
        assert [r.fault for r in downloads[:1]] == ["truncate"]
        assert all(r.fault is None for r in downloads[1:])
        # The reopen asked for the rest of the window only: without its end it would fetch up
        # to the object's end (at least size - offset - length / 2 = 648 KB here).
        resent = sum(r.response_bytes for r in downloads[1:])
        assert 0 < resent <= length
        assert downloads[0].response_bytes + resent >= length
