"""A file with more chunks than one manifest may name is stored whole, never left unreadable.

Found by a probe: readers reject a manifest over MAX_TABLE_BYTES (64 MiB, some 107 GiB of
random bytes) as malformed, but uploads wrote one anyway. The upload was acknowledged and the
file never read back; ``verify --quarantine`` then set the manifest aside and gc deleted every
pack. Here the cap is lowered so that a few MiB reach it.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from optuna_cas.backends.local import LocalBackend
from optuna_cas.chunks.layout import manifest_key
from optuna_cas.content import ContentStore, blob_key
from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.streams import random_bytes

CAP = 2048  # bytes of manifest: some 40 entries


@pytest.mark.parametrize("source", ["path", "stream"])
def test_a_file_over_the_manifest_cap_is_stored_whole_and_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    monkeypatch.setattr("optuna_cas.chunks.store.MAX_TABLE_BYTES", CAP)
    monkeypatch.setattr("optuna_cas.chunks.table.MAX_TABLE_BYTES", CAP)  # what readers accept
    backend = LocalBackend(tmp_path / "store")
    store = ContentAddressedArtifactStore(ContentStore(backend, chunk_threshold=64 * 1024))
    data = random_bytes(6 * 1024 * 1024, seed=9)  # ~80 chunks: a manifest over the cap
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    if source == "path":
        store.content.put_artifact("big", path)
    else:
        store.write("big", io.BytesIO(data))

    digest = store.get_ref("big").digest
    assert backend.stat(blob_key(digest)).size == len(data)  # stored whole
    with pytest.raises(FileNotFoundError):
        backend.stat(manifest_key(digest))  # and no manifest readers would refuse
    with store.open_reader("big") as reader:
        assert reader.read() == data
