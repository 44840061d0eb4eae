"""stats over chunked artifacts: logical, whole-file-dedup and stored bytes, split by kind."""

from __future__ import annotations

import io
import random

from optuna_cas import gc, stats
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.content import ContentStore
from optuna_cas.refs import INLINE_LIMIT
from optuna_cas.stores.base import ContentAddressedArtifactStore


def test_stats_show_what_chunk_dedup_saves_beyond_whole_files() -> None:
    store = ContentAddressedArtifactStore(ContentStore(MemoryBackend(), chunk_threshold=256 * 1024))
    backbone = random.Random(1).randbytes(2 * 1024 * 1024)
    versions = [backbone + random.Random(10 + i).randbytes(100_000) for i in range(4)]
    for i, data in enumerate(versions):
        store.write(f"v{i}", io.BytesIO(data))
    store.write("v0-again", io.BytesIO(versions[0]))  # a whole-file duplicate
    note = b"n" * (INLINE_LIMIT + 1)  # a whole blob: above the inline limit, below chunking
    store.write("note", io.BytesIO(note))
    store.write("tiny", io.BytesIO(b"small"))  # kept inside its ref

    s = stats(store)
    objects = [
        *store.content.chunks.iter_packs(),
        *store.content.chunks.iter_manifests(),
        *store.content.chunks.iter_indexes(),
    ]
    assert (s.artifacts, s.unique_blobs, s.chunked_files, s.packs) == (7, 1, 4, 4)
    assert s.logical_bytes == 2 * len(versions[0]) + sum(map(len, versions[1:])) + len(note) + 5
    assert s.whole_file_bytes == sum(map(len, versions)) + len(note) + 5
    assert (s.blob_bytes, s.chunked_bytes, s.inline_bytes) == (
        len(note),
        sum(obj.size for obj in objects),
        5,
    )
    assert s.stored_bytes == s.blob_bytes + s.chunked_bytes + s.inline_bytes
    # The backbone is stored once: about a third of what whole-file dedup keeps.
    assert s.stored_bytes < 0.5 * s.whole_file_bytes and s.chunk_dedup_ratio > 2
    assert s.dedup_ratio == s.logical_bytes / s.stored_bytes

    for name in ["v1", "v2"]:
        store.remove(name)
    assert stats(store).unreferenced_chunked_files == 2
    gc(store, grace_period=0, allow_short_grace=True)
    after = stats(store)
    assert (after.chunked_files, after.unreferenced_chunked_files) == (2, 0)
    assert after.chunked_bytes < s.chunked_bytes
