"""A sealed file found shorter than promised fails the write; it never publishes a short object."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from optuna_cas.backends.base import SealedFile
from optuna_cas.backends.local import LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.backends.remote_io import FilePart, FileParts


def test_reads_its_range_only(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.write_bytes(b"head" + b"body" + b"tail")
    with open(path, "rb") as f:
        sealed = SealedFile(f.fileno(), 4, 4)
        assert sealed.read() == b"body"
        assert sealed.seek(-2, io.SEEK_END) == 2 and sealed.read() == b"dy"
        assert f.tell() == 0  # the caller's position is never used or moved


@pytest.mark.parametrize("make", [MemoryBackend, "local"])
def test_a_truncated_sealed_file_fails_the_write(tmp_path: Path, make: object) -> None:
    backend = LocalBackend(str(tmp_path / "store")) if make == "local" else MemoryBackend()
    path = tmp_path / "spool"
    path.write_bytes(os.urandom(100_000))
    with open(path, "r+b") as f:
        sealed = SealedFile.of(f)
        f.truncate(60_000)  # what a sealed file must never see
        with pytest.raises(OSError, match="sealed file ended early: byte 60000 of 100000"):
            backend.write("blobs/k", sealed)  # type: ignore[arg-type]
    assert not backend.exists("blobs/k")


def test_file_parts_cover_the_range_once(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.write_bytes(bytes(range(256)) * 40)  # 10,240 bytes
    with open(path, "rb") as f:
        parts = FileParts(SealedFile(f.fileno(), 1000, 9000), 4096)
        got = []
        while True:
            part = parts.next()
            got.append((part.offset, len(part)))
            if parts.eof:
                break
        assert got == [(1000, 4096), (5096, 4096), (9192, 808)]
        bodies = [FilePart(f.fileno(), at, length).body().read() for at, length in got]
        assert b"".join(bodies) == path.read_bytes()[1000:10000]
        assert FilePart(f.fileno(), 1000, 4096).body(skip=96).read() == path.read_bytes()[1096:5096]
