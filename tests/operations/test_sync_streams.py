"""How ``sync`` reads what it copies: once, and so that a destination can size its parts.

A whole blob larger than S3's part limit allows at the configured part size:

S3 takes at most 10,000 parts per upload, so at 8 MiB parts an object over 78 GiB needs larger
parts. An upload from a file sizes its parts from the file's length; sync read the source
blob through a counting wrapper that could not seek, so the destination could not ask the
length, kept 8 MiB parts and failed once the upload passed 78 GiB. A stream that cannot tell
its length still fails there, saying so. Files that large are stored whole when they have more
chunks than one manifest may name, so this is what syncing a 80 GiB checkpoint met.

10,000 parts are too many to reach here; the backend's limit is lowered to 2 instead.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import FileSystemArtifactStore, MemoryArtifactStore
from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.s3 import S3Backend
from optuna_cas.content import ContentStore
from optuna_cas.operations.sync import sync
from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.streams import random_bytes
from tests.support.s3 import TEST_PART_SIZE


def test_sync_sizes_parts_for_a_blob_beyond_the_part_limit(
    tmp_path: Path, s3_backend: S3Backend
) -> None:
    data = random_bytes(2 * TEST_PART_SIZE + 123_456, seed=11)  # 3 parts at the part size
    source = ContentAddressedArtifactStore(
        ContentStore(LocalBackend(tmp_path / "src"), chunk_threshold=None)
    )
    source.write("huge", io.BytesIO(data))
    s3_backend._max_parts = 2  # S3's is 10,000: far too many parts to send in a test
    target = ContentAddressedArtifactStore(ContentStore(s3_backend, chunk_threshold=None))

    report = sync(source, target)

    assert report.failed == [] and report.refs_copied == ["huge"]
    with target.open_reader("huge") as reader:
        assert reader.read() == data


def test_an_object_optunas_store_wrote_is_read_once_and_progress_never_goes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counting wrapper passing seeks through let the destination hash such an object,
    rewind and read it again (2-3 reads, and a progress bar running backwards; found in
    review): it is spooled from one read, as before."""
    read = [0]
    opened = LocalBackend.open_reader

    def counting_open(self: LocalBackend, key: str, **kwargs: Any) -> Any:
        reader = opened(self, key, **kwargs)
        if "/" in key:  # our own objects; Optuna's sit at the store's top
            return reader
        original = reader.readinto
        reader.readinto = lambda buffer: _add(read, original(buffer))
        return reader

    monkeypatch.setattr(LocalBackend, "open_reader", counting_open)
    data = random_bytes(3 * 1024 * 1024, seed=12)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / str(uuid.uuid4())).write_bytes(data)  # as Optuna's own store writes
    seen: list[int] = []
    report = sync(
        FileSystemArtifactStore(str(tmp_path / "src")),
        MemoryArtifactStore(),
        progress=lambda task, done, total: seen.append(done),
    )
    assert report.ok and len(report.legacy_copied) == 1
    assert read[0] == len(data)
    assert seen == sorted(seen) and seen[-1] == len(data)


def _add(total: list[int], n: int | None) -> int | None:
    total[0] += n or 0
    return n
