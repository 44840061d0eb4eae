"""Backoff: schedule, what is retried, exactly-once success, rewinding, resuming reads."""

from __future__ import annotations

import io
import logging
import os
from typing import Any, BinaryIO

import optuna.artifacts as oa
import pytest

from optuna_cas import Backoff, FileSystemArtifactStore, MemoryArtifactStore
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.content import ContentStore
from optuna_cas.exceptions import (
    ArtifactNotFound,
    BackendError,
    IntegrityError,
    InvalidKeyError,
    TransientBackendError,
)
from optuna_cas.middleware.backoff import RetryingBackend
from optuna_cas.middleware.retry import Retrier, RetryPolicy, is_transient
from optuna_cas.refs import INLINE_LIMIT
from optuna_cas.stores.base import ContentAddressedArtifactStore
from tests.conftest import random_bytes
from tests.support.stores import HandsOverBackend

# Content just over the inline limit: stored as a blob, so an upload asks whether the blob
# exists (stat) and streams the caller's bytes (write), the requests these tests fail.
BLOB_CONTENT = b"x" * (INLINE_LIMIT + 1)


class FlakyBackend(MemoryBackend):
    """Fails chosen calls with a given error; counts calls per method."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}
        self.plan: dict[str, list[BaseException | None]] = {}

    def _tick(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        queue = self.plan.get(method)
        if queue:
            error = queue.pop(0)
            if error is not None:
                raise error

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        self._tick("open_reader")
        return super().open_reader(key, offset=offset, length=length)

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        self._tick("write")
        content_body.read(3)  # consume some of the stream before failing, like a real upload
        self._tick("write_body")
        content_body.seek(-3, io.SEEK_CUR) if content_body.seekable() else None
        super().write(key, content_body, if_absent=if_absent)

    def remove(self, key: str) -> None:
        self._tick("remove")
        super().remove(key)

    def stat(self, key: str):  # type: ignore[no-untyped-def]
        self._tick("stat")
        return super().stat(key)


def make(backend: FlakyBackend, **kwargs: Any) -> tuple[Backoff, list[float]]:
    sleeps: list[float] = []
    store = Backoff(
        ContentAddressedArtifactStore(ContentStore(backend)), sleep=sleeps.append, **kwargs
    )
    return store, sleeps


def test_optuna_schedule_without_jitter() -> None:
    policy = RetryPolicy(jitter=False)
    assert [policy.delay(n) for n in range(10)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        6.4,
        12.8,
        25.6,
        30,
    ]


def test_jitter_stays_in_upper_half_and_varies() -> None:
    import random

    policy = RetryPolicy()
    rng = random.Random(0)
    delays = [policy.delay(3, rng) for _ in range(50)]
    assert all(0.4 <= d <= 0.8 for d in delays)
    assert len(set(delays)) > 40


@pytest.mark.parametrize(
    "bad",
    [dict(max_retries=0), dict(multiplier=0.5), dict(min_delay=-1), dict(min_delay=5, max_delay=1)],
)
def test_bad_policy_values_named(bad: dict[str, Any]) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        Backoff(MemoryArtifactStore(), **bad)


def test_transient_classification() -> None:
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(TransientBackendError("503"))
    for permanent in (
        ArtifactNotFound("x"),
        oa.exceptions.ArtifactNotFound("x"),
        InvalidKeyError("x"),
        IntegrityError("x"),
        BackendError("denied"),
        ValueError("x"),
        FileNotFoundError("x"),
    ):
        assert not is_transient(permanent), permanent


def test_write_retries_each_request_and_rewinds(caplog: pytest.LogCaptureFixture) -> None:
    backend = FlakyBackend()
    backend.plan["write_body"] = [ConnectionResetError("reset"), ConnectionResetError("reset")]
    store, sleeps = make(backend, jitter=False)
    payload = b"payload" * 1000  # > INLINE_LIMIT: the caller's stream itself is uploaded
    source = io.BytesIO(b"HDR:" + payload)
    source.seek(4)
    with caplog.at_level(logging.WARNING, logger="optuna_cas.retry"):
        store.write("a", source)
    assert store.open_reader("a").read() == payload
    assert sleeps == [0.1, 0.2]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "attempt 1 of 10" in caplog.records[0].getMessage()
    assert "attempt 2 of 10" in caplog.records[1].getMessage()


def test_gives_up_after_max_retries_with_original_error() -> None:
    backend = FlakyBackend()
    original = ConnectionResetError("the original")
    backend.plan["stat"] = [original] * 10
    store, sleeps = make(backend, max_retries=4, jitter=False)
    with pytest.raises(ConnectionResetError) as info:
        store.write("a", io.BytesIO(BLOB_CONTENT))
    assert info.value is original
    assert backend.calls["stat"] == 4
    assert len(sleeps) == 3


@pytest.mark.parametrize(
    "error", [InvalidKeyError("bad"), IntegrityError("bad"), BackendError("denied")]
)
def test_permanent_errors_are_not_retried(error: Exception) -> None:
    backend = FlakyBackend()
    backend.plan["stat"] = [error]
    store, sleeps = make(backend)
    with pytest.raises(type(error)):
        store.write("a", io.BytesIO(BLOB_CONTENT))
    assert backend.calls["stat"] == 1 and sleeps == []


def test_missing_artifact_is_not_retried() -> None:
    backend = FlakyBackend()
    store, sleeps = make(backend)
    with pytest.raises(ArtifactNotFound):
        store.open_reader("nope")
    # Two lookups, no retry: the ref, then the object Optuna's own store would have written.
    assert backend.calls["open_reader"] == 2 and sleeps == []


def test_remove_called_exactly_once_on_success() -> None:
    backend = FlakyBackend()
    store, _ = make(backend)
    store.write("a", io.BytesIO(b"x"))
    store.remove("a")
    assert backend.calls["remove"] == 1


def test_remove_whose_answer_was_lost_counts_as_done() -> None:
    class LosesAnswer(FlakyBackend):
        def remove(self, key: str) -> None:
            self._tick("remove")
            MemoryBackend.remove(self, key)
            if self.calls["remove"] == 1:
                raise ConnectionResetError("response lost after delete")

    backend = LosesAnswer()
    store, _ = make(backend)
    store.write("a", io.BytesIO(b"x"))
    store.remove("a")  # retry finds it gone: success, not ArtifactNotFound
    assert backend.calls["remove"] == 2


def test_read_resumes_mid_stream_at_offset() -> None:
    data = random_bytes(3 * 1024 * 1024 + 11)

    class CutsStreams(FlakyBackend):
        def __init__(self) -> None:
            super().__init__()
            self.offsets: list[int] = []

        def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
            reader = super().open_reader(key, offset=offset, length=length)
            if not key.startswith("blobs/"):
                return reader
            self.offsets.append(offset)
            budget = [1024 * 1024 + 5] if len(self.offsets) < 3 else [10**9]

            class Cut(io.RawIOBase):
                def readable(self) -> bool:
                    return True

                def readinto(self, b: Any) -> int:
                    if budget[0] <= 0:
                        raise ConnectionResetError("cut mid-body")
                    view = memoryview(b)[: budget[0]]
                    n = reader.readinto(view)
                    budget[0] -= n
                    return n

            return Cut()  # type: ignore[return-value]

    backend = CutsStreams()
    store, _ = make(backend)
    store.write("a", io.BytesIO(data))
    with store.open_reader("a") as reader:
        assert reader.read() == data
    assert backend.offsets[0] == 0 and backend.offsets[1] > 0 and len(backend.offsets) == 3


def test_a_bounded_read_resumes_at_the_cut_up_to_the_same_end() -> None:
    data = random_bytes(100_000, seed=3)

    class CutsTheFirstBody(MemoryBackend):
        """The first reader breaks after 30,000 bytes; every open is recorded."""

        def __init__(self) -> None:
            super().__init__()
            self.opens: list[tuple[int, int | None]] = []

        def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
            self.opens.append((offset, length))
            reader = super().open_reader(key, offset=offset, length=length)
            if len(self.opens) > 1:
                return reader
            budget = [30_000]

            class Cut(io.RawIOBase):
                def readable(self) -> bool:
                    return True

                def readinto(self, b: Any) -> int:
                    if budget[0] <= 0:
                        raise ConnectionResetError("cut mid-body")
                    n = reader.readinto(memoryview(b)[: budget[0]])  # type: ignore[attr-defined]
                    budget[0] -= n
                    return int(n)

            return Cut()  # type: ignore[return-value]

    backend = CutsTheFirstBody()
    backend.write("packs/p", io.BytesIO(data))
    retrying = RetryingBackend(backend, Retrier(RetryPolicy(), sleep=lambda s: None))
    with retrying.open_reader("packs/p", offset=10_000, length=50_000) as reader:
        got = b"".join(iter(lambda: reader.read(4096), b""))
    assert got == data[10_000:60_000]
    # Reopened where the cut body stopped, for the rest of the window only.
    assert backend.opens == [(10_000, 50_000), (40_000, 20_000)]


def test_a_raw_read_hands_over_the_sources_own_bytes_and_resumes() -> None:
    # The chunk reader reads its blocks from the raw stream (a remote body's read returns the
    # bytes the socket was read into): through Backoff too it gets the objects the backend's
    # stream returned, not copies, and a stream cut between two reads resumes.
    data = random_bytes(100_000, seed=5)

    backend = HandsOverBackend(cut_first_after=30_000)
    backend.write("packs/p", io.BytesIO(data))
    retrying = RetryingBackend(backend, Retrier(RetryPolicy(), sleep=lambda s: None))
    with retrying.open_reader("packs/p") as reader:
        raw = reader.raw  # type: ignore[attr-defined]
        pieces = list(iter(lambda: raw.read(20_000), b""))
    assert b"".join(pieces) == data
    handed = [h for stream in backend.streams for h in stream.handed]
    assert all(any(piece is h for h in handed) for piece in pieces)
    assert len(backend.streams) == 2  # reopened at byte 40,000 after the cut


def test_backoff_over_backoff_and_over_filesystem(tmp_path: Any) -> None:
    store = Backoff(Backoff(FileSystemArtifactStore(tmp_path)))
    store.write("a", io.BytesIO(b"x"))
    assert store.get_ref("a").size == 1


def test_foreign_store_retries_each_call_and_rewinds(tmp_path: Any) -> None:
    class FlakyOptunaStore:
        def __init__(self) -> None:
            self.inner = oa.FileSystemArtifactStore(str(tmp_path))
            self.failures = 2
            self.removes = 0

        def _maybe_fail(self) -> None:
            if self.failures:
                self.failures -= 1
                raise ConnectionResetError("flaky")

        def open_reader(self, artifact_id: str) -> BinaryIO:
            self._maybe_fail()
            return self.inner.open_reader(artifact_id)

        def write(self, artifact_id: str, content_body: BinaryIO) -> None:
            content_body.read(2)  # a partial send, then maybe the connection drops
            self._maybe_fail()
            content_body.seek(-2, io.SEEK_CUR)
            self.inner.write(artifact_id, content_body)

        def remove(self, artifact_id: str) -> None:
            self.removes += 1
            self.inner.remove(artifact_id)

    inner = FlakyOptunaStore()
    sleeps: list[float] = []
    store = Backoff(inner, sleep=sleeps.append)
    store.write("id1", io.BytesIO(b"whole payload"))
    with store.open_reader("id1") as r:
        assert r.read() == b"whole payload"
    store.remove("id1")
    assert inner.removes == 1 and len(sleeps) == 2


def test_over_optunas_store_a_reader_seeks_and_a_pipe_is_written(tmp_path: Any) -> None:
    # Optuna's own Backoff passes its store's file through (np.load seeks it) and writes a
    # stream that cannot seek in one attempt; ours refused both (found by a probe).
    store = Backoff(oa.FileSystemArtifactStore(str(tmp_path)), sleep=lambda s: None)
    read_end, write_end = os.pipe()
    os.write(write_end, b"from a pipe")
    os.close(write_end)
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        store.write("p", pipe)  # type: ignore[arg-type]
    with store.open_reader("p") as reader:
        assert reader.seekable() and reader.read(4) == b"from"
        assert reader.seek(-4, io.SEEK_END) == 7 and reader.read() == b"pipe"


def test_over_optunas_store_a_reader_is_buffered_like_its_file(tmp_path: Any) -> None:
    # Optuna's store hands out a buffered file (read1, peek); ours through Backoff lacked
    # both: AttributeError (found by a probe).
    store = Backoff(oa.FileSystemArtifactStore(str(tmp_path)), sleep=lambda s: None)
    store.write("t", io.BytesIO(b"line1\nline2\n"))
    with store.open_reader("t") as reader:
        assert reader.read1(5) == b"line1"  # type: ignore[attr-defined]
        assert reader.peek(1)[:1] == b"\n"  # type: ignore[attr-defined]
        assert reader.readline() == b"\n" and reader.readline() == b"line2\n"


def test_over_optunas_store_a_missing_artifact_raises_ours(tmp_path: Any) -> None:
    # After the import switch, `except optuna_cas.exceptions.ArtifactNotFound` must catch
    # what Optuna's own store raises under our Backoff.
    store = Backoff(oa.FileSystemArtifactStore(str(tmp_path)), sleep=lambda s: None)
    with pytest.raises(ArtifactNotFound):
        store.open_reader("nothing-here")
    with pytest.raises(ArtifactNotFound):
        store.remove("nothing-here")


def test_backoff_rejects_non_stores() -> None:
    with pytest.raises(TypeError, match="open_reader"):
        Backoff(object())  # type: ignore[arg-type]
