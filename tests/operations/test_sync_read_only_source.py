"""``sync`` from a store this process may only read (a teammate's bucket, read-only keys).

Found while adding the store clock: sync looked at each source file's manifest with the check
an upload uses, which touches a manifest older than 30 minutes so that gc spares it. On a
source that refuses writes that touch failed, and every chunked file older than half an hour
failed to copy. Sync now only looks at the source.
"""

from __future__ import annotations

import io

from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.content import ContentStore
from optuna_cas.operations.sync import sync
from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.streams import random_bytes
from tests.support.roles import RefusingBackend

THRESHOLD = 64 * 1024  # the chunked file below has a manifest and a pack


def test_sync_copies_old_files_from_a_source_it_may_only_read() -> None:
    backend = RefusingBackend()
    writer = ContentAddressedArtifactStore(ContentStore(backend, chunk_threshold=THRESHOLD))
    files = {"chunked": random_bytes(300_000, seed=3), "blob": random_bytes(10_000, seed=4)}
    for artifact_id, data in files.items():
        writer.write(artifact_id, io.BytesIO(data))
    for key, (data, modified) in list(backend._objects.items()):
        backend._objects[key] = (data, modified - 2 * 3600)  # saved two hours ago
    backend.refuse = {"write", "touch", "remove"}  # this role may only read
    source = ContentAddressedArtifactStore(ContentStore(backend, chunk_threshold=THRESHOLD))
    target = ContentAddressedArtifactStore(ContentStore(MemoryBackend(), chunk_threshold=THRESHOLD))

    report = sync(source, target)

    assert report.failed == [] and sorted(report.refs_copied) == sorted(files)
    for artifact_id, data in files.items():
        with target.open_reader(artifact_id) as reader:
            assert reader.read() == data
