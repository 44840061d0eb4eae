"""A file stored both whole and as chunks: a broken manifest is not hidden by the whole blob.

Found by a probe (helper-78). The same file may be stored whole (by a store with
``chunk_threshold=None``, an older release, or a fallback) and chunked. An upload that re-used
a pack which a concurrent gc then deleted wrote a manifest naming it; its last look ("is the
file still stored?") accepted the whole blob, so the upload was acknowledged. Readers take
the manifest over the blob, and both artifacts were unreadable. Now a broken manifest means
"not stored": the upload stores the file again, which replaces the manifest.

The gc runs in the middle of the upload (through ``ChunkStore.wrap_source``, the hook the
progress watch uses), after the objects it would take are made three hours old.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import FileSystemArtifactStore, gc
from optuna_cas.operations.sync import sync
from optuna_cas.testing.streams import random_bytes

MiB = 1024 * 1024


class _GcMidway(io.RawIOBase):
    """Reads ``inner``; once 13 MiB are in, ages the chunked objects and runs gc (once in all:
    ``fired`` is shared by the passes of the upload)."""

    def __init__(self, inner: Any, root: Path, fired: list[object]) -> None:
        self.inner, self.root, self.fired = inner, root, fired

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(self.inner.seekable())

    def seek(self, *args: Any) -> int:
        return int(self.inner.seek(*args))

    def tell(self) -> int:
        return int(self.inner.tell())

    def readinto(self, buffer: Any) -> int:
        if not self.fired and self.inner.tell() >= 13 * MiB:
            self.fired.append(True)
            old = time.time() - 3 * 3600
            for kind in ("packs", "manifests", "chunk-index"):
                for path in (self.root / kind).rglob("*"):
                    if path.is_file() and not path.name.startswith(".tmp-"):  # one being written
                        os.utime(path, (old, old))
            report = gc(FileSystemArtifactStore(str(self.root)))
            self.fired.append(report.packs_deleted)  # the pack the upload leans on
        return int(self.inner.readinto(buffer))


@pytest.mark.parametrize("source", ["path", "stream"])
def test_an_upload_leaning_on_a_pack_gc_took_is_stored_again_beside_a_whole_blob(
    tmp_path: Path, source: str
) -> None:
    root = tmp_path / "store"
    earlier = random_bytes(10 * MiB, seed=21)
    data = earlier[: 8 * MiB] + random_bytes(6 * MiB, seed=22)  # shares 8 MiB with earlier
    FileSystemArtifactStore(str(root)).write("a0", io.BytesIO(earlier))
    FileSystemArtifactStore(str(root), chunk_threshold=None).write("a1", io.BytesIO(data))
    FileSystemArtifactStore(str(root)).remove("a0")  # its pack is garbage once old
    uploader = FileSystemArtifactStore(str(root))
    fired: list[object] = []

    def wrap(stream: Any) -> Any:
        return io.BufferedReader(_GcMidway(stream, root, fired), MiB)

    uploader.content.chunks.wrap_source = wrap
    if source == "path":
        path = tmp_path / "model.pt"
        path.write_bytes(data)
        uploader.content.put_artifact("a2", path)
    else:
        uploader.write("a2", io.BytesIO(data))

    assert fired and fired[1]  # gc ran mid-upload and took the pack
    for artifact_id in ("a1", "a2"):
        with FileSystemArtifactStore(str(root)).open_reader(artifact_id) as reader:
            assert reader.read() == data


def test_sync_into_a_whole_blob_beside_a_broken_manifest_replaces_the_manifest(
    tmp_path: Path,
) -> None:
    """Found in review: the destination's whole blob made sync send nothing, and it reported
    an artifact copied that read as a missing pack. It now stores the file as chunks again
    (and a copy that still would not read back is reported failed)."""
    data = random_bytes(10 * MiB, seed=23)
    root = tmp_path / "dst"
    FileSystemArtifactStore(str(root)).write("chunked", io.BytesIO(data))
    FileSystemArtifactStore(str(root), chunk_threshold=None).write("whole", io.BytesIO(data))
    for pack in (root / "packs").rglob("*"):
        if pack.is_file():
            pack.unlink()  # the manifest now names a gone pack
    source = FileSystemArtifactStore(str(tmp_path / "src"), chunk_threshold=None)
    source.write("new", io.BytesIO(data))

    report = sync(source, FileSystemArtifactStore(str(root)))

    assert report.ok and report.refs_copied == ["new"]
    for artifact_id in ("chunked", "whole", "new"):
        with FileSystemArtifactStore(str(root)).open_reader(artifact_id) as reader:
            assert reader.read() == data
