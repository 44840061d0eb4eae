"""A file with more chunks than one manifest may name is stored whole, never left unreadable.

Found by a probe: readers reject a manifest over MAX_TABLE_BYTES (64 MiB, some 107 GiB of
random bytes) as malformed, but uploads wrote one anyway. The upload was acknowledged and the
file never read back; ``verify --quarantine`` then set the manifest aside and gc deleted every
pack. Here the cap is lowered so that a few MiB reach it.
"""

from __future__ import annotations

import io
import time
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, source: str
) -> None:
    monkeypatch.setattr("optuna_cas.chunks.table.MAX_TABLE_BYTES", CAP)  # uploads and readers
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
    # Said, not silent: the file gets no chunk-level dedup (a session-20 note left it silent).
    assert [r.getMessage() for r in caplog.records if "storing it whole" in r.getMessage()]
    assert backend.stat(blob_key(digest)).size == len(data)  # stored whole
    with pytest.raises(FileNotFoundError):
        backend.stat(manifest_key(digest))  # and no manifest readers would refuse
    with store.open_reader("big") as reader:
        assert reader.read() == data


def test_such_a_file_uploaded_again_is_not_cut_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memo of files stored looked only for a manifest at that size: every re-upload cut
    the file and wrote all its packs again before storing it whole (found in review)."""
    monkeypatch.setattr("optuna_cas.chunks.table.MAX_TABLE_BYTES", CAP)
    backend = LocalBackend(tmp_path / "store")
    store = ContentAddressedArtifactStore(ContentStore(backend, chunk_threshold=64 * 1024))
    path = tmp_path / "model.bin"
    path.write_bytes(random_bytes(6 * 1024 * 1024, seed=10))
    time.sleep(2.1)  # the memo remembers only files settled for 2 s (see FileDigestMemo)
    store.content.put_artifact("first", path)
    packs = {p: p.stat().st_ino for p in (tmp_path / "store" / "packs").rglob("*") if p.is_file()}
    store.content.put_artifact("again", path)
    after = {p: p.stat().st_ino for p in (tmp_path / "store" / "packs").rglob("*") if p.is_file()}
    assert packs and after == packs  # no pack written again (a new one is a new inode)


def test_the_cap_leaves_room_for_every_chunk_in_a_pack_of_its_own() -> None:
    """A sync's destination or a repack may scatter a manifest's chunks over many packs (40
    bytes each in the manifest): an upload refused only by its own packs' count left copies
    that readers refuse (found in review)."""
    from optuna_cas.chunks.table import largest_manifest_bytes

    assert largest_manifest_bytes(1_000) == 56 + 1_000 * (40 + 48)
