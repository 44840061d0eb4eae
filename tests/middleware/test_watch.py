"""TransferWatch: the bytes a watched backend moves, bounded reads included."""

from __future__ import annotations

import io

from optuna_cas import MemoryArtifactStore
from optuna_cas.content import blob_key
from optuna_cas.digest import Digest
from optuna_cas.middleware.watch import TransferWatch
from tests.conftest import random_bytes


def test_a_watched_bounded_read_counts_the_window_only() -> None:
    data = random_bytes(300_000, seed=5)
    store = MemoryArtifactStore()
    store.write("a", io.BytesIO(data))
    watch = TransferWatch("get", None)
    backend = watch.watch(store).content.backend
    with backend.open_reader(blob_key(Digest.of_bytes(data)), offset=1000, length=70_000) as f:
        assert f.read() == data[1000:71_000]
    assert watch.done == 70_000
