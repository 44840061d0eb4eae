"""Backoff and the cache compose in either order with identical behaviour.

Both wrappers only replace parts of one content store (the backend behind retries, a blob
cache and remembered refs in front), assembled in ``ContentStore.with_parts``; these tests
pin that ``Backoff(CachedArtifactStore(x))`` and ``CachedArtifactStore(Backoff(x))`` send the
same requests: for a cached read, after a dedup-hit upload, and under faults.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote

import pytest

from optuna_cas import Backoff, CachedArtifactStore, download_artifact
from optuna_cas.backends.base import Backend, ObjectInfo
from optuna_cas.backends.local import LocalBackend
from optuna_cas.content import ContentStore
from optuna_cas.refs import INLINE_LIMIT
from optuna_cas.stores.base import ContentAddressedArtifactStore
from tests.conftest import random_bytes
from tests.stores.test_faults import gcs_through_proxy, s3_through_proxy  # noqa: F401

ORDERS = ["backoff-outside", "cache-outside"]


def _stack(order: str, inner: ContentAddressedArtifactStore, cache_dir: Path) -> Any:
    def backoff(store: Any) -> Backoff:
        return Backoff(store, min_delay=0.01, max_delay=0.05, seed=0)

    def cached(store: Any) -> CachedArtifactStore:
        return CachedArtifactStore(store, directory=cache_dir, size_limit=256 * 1024 * 1024)

    return backoff(cached(inner)) if order == "backoff-outside" else cached(backoff(inner))


class CountingBackend:
    """A plain decorator counting the operations a local backend receives."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner
        self.calls: list[tuple[str, str]] = []

    @property
    def inner(self) -> Backend:
        return self._inner

    def _note(self, op: str, key: str) -> None:
        self.calls.append((op, key.split("/", 1)[0]))

    def open_reader(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        self._note("get", key)
        return self._inner.open_reader(key, offset=offset, length=length)

    def write(self, key: str, content_body: BinaryIO, *, if_absent: bool = False) -> None:
        self._note("put", key)
        self._inner.write(key, content_body, if_absent=if_absent)

    def remove(self, key: str) -> None:
        self._note("delete", key)
        self._inner.remove(key)

    def exists(self, key: str) -> bool:
        self._note("head", key)
        return self._inner.exists(key)

    def stat(self, key: str) -> ObjectInfo:
        self._note("head", key)
        return self._inner.stat(key)

    def touch(self, key: str) -> None:
        self._note("touch", key)
        self._inner.touch(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._note("list", prefix)
        return self._inner.list(prefix)

    def describe(self) -> str:
        return self._inner.describe()


@pytest.fixture(params=["local", "s3", "gcs"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _world(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Any, Callable[[], list[tuple[str, str]]], Callable[[], None], Any]:
    """(inner store, requests so far, reset the log, fault proxy or None)."""
    if kind == "local":
        counting = CountingBackend(LocalBackend(tmp_path / "store"))
        inner = ContentAddressedArtifactStore(ContentStore(counting))
        return inner, lambda: list(counting.calls), counting.calls.clear, None
    proxy, inner = request.getfixturevalue(f"{kind}_through_proxy")

    def requests() -> list[tuple[str, str]]:
        out = []
        for record in proxy.requests:
            path = unquote(record.path)
            area = "blobs" if "blobs/" in path else "refs" if "refs/" in path else "other"
            out.append((record.method, area))
        return out

    return inner, requests, proxy.reset_log, proxy


def _run(kind: str, order: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    inner, requests, reset, proxy = _world(kind, request, tmp_path / order)
    (tmp_path / order).mkdir(exist_ok=True)
    store = _stack(order, inner, tmp_path / order / "cache")
    # Fresh bytes per order: both runs share one server, and must both start from scratch.
    seed = ORDERS.index(order) * 10
    big = random_bytes(6 * 1024 * 1024 + 3, seed=seed + 1)  # multipart / resumable
    # Above INLINE_LIMIT: a blob, so the reads below could fetch it (or find it in the cache).
    small = random_bytes(INLINE_LIMIT + 1000, seed=seed + 2)
    observed: dict[str, Any] = {}

    store.write(f"first-{order}", io.BytesIO(small))
    reset()
    download_artifact(
        artifact_store=store, file_path=str(tmp_path / order / "a"), artifact_id=f"first-{order}"
    )
    download_artifact(
        artifact_store=store, file_path=str(tmp_path / order / "b"), artifact_id=f"first-{order}"
    )
    observed["cached reads"] = requests()

    inner.write(f"elsewhere-{order}", io.BytesIO(big))  # the bytes are in the store already
    reset()
    store.write(f"dedup-hit-{order}", io.BytesIO(big))
    observed["dedup-hit upload"] = requests()
    reset()
    with store.open_reader(f"dedup-hit-{order}") as reader:
        assert reader.read() == big
    observed["read after dedup hit"] = requests()

    if proxy is not None:
        proxy.fail_next("503", 2, methods={"PUT", "POST"})
        reset()
        store.write(f"faulty-{order}", io.BytesIO(random_bytes(6 * 1024 * 1024 + 5, seed=seed + 3)))
        observed["upload under faults"] = requests()
    return observed


def test_backoff_and_cache_compose_in_either_order(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    outside, inside = (_run(kind, order, request, tmp_path) for order in ORDERS)
    assert outside == inside
    # And the behaviour is the right one, not merely the same:
    assert not [r for r in outside["cached reads"] if r[1] == "blobs" and r[0] in ("GET", "get")]
    assert not [
        r for r in outside["read after dedup hit"] if r[1] == "blobs" and r[0] in ("GET", "get")
    ]
    if kind != "local":  # one retry per injected fault, of that request alone
        sends = [r for r in outside["upload under faults"] if r[0] in ("PUT", "POST")]
        assert len(sends) >= 4
