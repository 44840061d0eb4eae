"""``sync`` of a whole blob larger than S3's part limit allows at the configured part size.

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
from pathlib import Path

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
