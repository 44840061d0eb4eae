"""What a chunked upload keeps in memory: a few bytes per chunk, no part buffers (issue 11).

Structural checks, not RSS measurements: tracemalloc counts the Python allocations a chunk
record costs (deterministic), and the parts an S3 upload sends are told apart by type (a
buffer, or a range of a sealed file). benchmarks/s3.py measures the resident memory itself.
"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from optuna_cas._fileio import pwrite_all
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.backends.remote_io import FilePart, Part
from optuna_cas.backends.s3 import S3Backend
from optuna_cas.chunks import packer
from optuna_cas.chunks.chunker import Chunker
from optuna_cas.chunks.digest_index import DigestIndex, Records
from optuna_cas.chunks.index import KnownChunks
from optuna_cas.chunks.layout import pack_key
from optuna_cas.chunks.packer import PackWriter
from optuna_cas.chunks.store import ChunkStore
from optuna_cas.chunks.table import ENTRY, INDEX_MAGIC, MANIFEST_MAGIC, ChunkTable, TableBuilder
from optuna_cas.digest import Digest
from optuna_cas.exceptions import IntegrityError
from tests.support.s3 import TEST_PART_SIZE

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CHUNKS = 3 * 16384  # whole blocks of records, so block slack does not blur the count


def _digests(n: int, seed: int = 0) -> list[bytes]:
    import random

    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def _traced_growth(action: Any) -> int:
    """Bytes of Python allocations ``action()`` leaves alive (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = action()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def test_an_upload_keeps_under_100_bytes_per_new_chunk() -> None:
    # Before: an index entry and a manifest entry of 48 bytes each plus a dict entry of a
    # 32-byte key and an int (~140 bytes): ~236 bytes a chunk, 12 MiB for a 4 GiB file.
    writer = PackWriter(MemoryBackend())
    digests = _digests(CHUNKS + 1)
    byte = memoryview(b"x")
    writer.add_new(Digest(digests[0].hex(), 1), byte)  # the pack and its buffers exist now

    def add() -> PackWriter:
        for raw in digests[1:]:
            writer.add_new(Digest(raw.hex(), 1), byte)
        return writer

    try:
        per_chunk = _traced_growth(add) / CHUNKS
    finally:
        writer.abort()
    assert per_chunk < 100, f"{per_chunk:.0f} bytes per new chunk"


def test_a_chunk_repeated_in_the_upload_is_stored_once_and_named_twice() -> None:
    backend = MemoryBackend()
    writer = PackWriter(backend)
    a, b = (Digest.of_bytes(x) for x in (b"first", b"second"))
    for chunk, data in ((a, b"first"), (b, b"second"), (a, b"first")):
        writer.add_new(chunk, memoryview(data))
    writer.finish()
    assert writer.bytes_written == len(b"first") + len(b"second")
    manifest = [(e.chunk.hex(), e.offset) for e in writer.manifest.as_table()]
    assert manifest == [(a.hexdigest, 0), (b.hexdigest, 5), (a.hexdigest, 0)]


def test_a_manifest_by_reference_serialises_like_one_written_out() -> None:
    index = TableBuilder(INDEX_MAGIC, findable=True)
    by_reference = TableBuilder(MANIFEST_MAGIC, source=index)
    written_out = TableBuilder(MANIFEST_MAGIC)
    pack, old_pack = Digest.of_bytes(b"pack"), Digest.of_bytes(b"old pack" * 10)
    index.pack_number(pack)
    for table in (by_reference, written_out):
        table.pack_number(old_pack)
        table.pack_number(pack)
    for row, raw in enumerate(_digests(40_000, seed=1)):
        if row % 3:
            index.add_raw(raw, 1, 0, row)
            by_reference.add_from_source(len(index) - 1, 1)
        else:
            by_reference.add_raw(raw, 1, 0, row)
        written_out.add_raw(raw, 1, 0 if row % 3 == 0 else 1, row)
    file = Digest("ab" * 32, 40_000)
    assert by_reference.to_bytes(file) == written_out.to_bytes(file)
    assert by_reference.entry(39_998) == written_out.entry(39_998)


def test_the_store_knows_a_chunk_in_under_64_bytes() -> None:
    # Before: a dict of 32-byte keys and int places, ~140 bytes a chunk, kept for the life of
    # the store (every chunk an upload adds is learned at its end).
    packs = (Digest.of_bytes(b"p"),)
    digests = _digests(CHUNKS, seed=2)
    entries = b"".join(ENTRY.pack(raw, 0, 1, row) for row, raw in enumerate(digests))
    table = ChunkTable(INDEX_MAGIC, None, packs, entries)
    known = KnownChunks(MemoryBackend())

    def learn() -> KnownChunks:
        known.add_table(table)
        return known

    per_chunk = _traced_growth(learn) / CHUNKS
    assert per_chunk < 64, f"{per_chunk:.0f} bytes per known chunk"
    assert known.find(Digest(digests[12345].hex(), 1)) == (packs[0], 12345)


def test_a_forgotten_pack_s_chunks_are_learned_again_from_another_index() -> None:
    old, new = Digest.of_bytes(b"old"), Digest.of_bytes(b"new")
    raw = _digests(1)[0]
    known = KnownChunks(MemoryBackend())
    known.add_table(ChunkTable(INDEX_MAGIC, None, (old,), ENTRY.pack(raw, 0, 1, 7)))
    known.forget_pack(old)
    assert known.find(Digest(raw.hex(), 1)) is None
    known.add_table(ChunkTable(INDEX_MAGIC, None, (new,), ENTRY.pack(raw, 0, 1, 9)))
    assert known.find(Digest(raw.hex(), 1)) == (new, 9)


def test_digest_index_finds_every_row_across_growth_and_blocks() -> None:
    records, layout = Records(40), struct.Struct("32s8x")
    index = DigestIndex(records)
    digests = _digests(40_000, seed=3)
    for raw in digests:
        records.pack(layout, raw)
        index.add_next(raw)
    assert [index.find(raw) for raw in digests[::997]] == list(range(0, 40_000, 997))
    assert all(index.find(raw) is None for raw in _digests(100, seed=4))
    assert b"".join(records.pieces()) == b"".join(raw + bytes(8) for raw in digests)


# ---- S3: one set of part buffers for all the packs of an upload ----------------------------


class _WatchedS3(S3Backend):
    """An S3 backend that remembers every part it sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Part] = []
        self.in_one: list[str] = []  # objects sent in one request from a sealed file
        self.in_parts: list[str] = []

    def _put_file(self, name: str, part: FilePart, *, if_absent: bool) -> None:
        self.sent.append(part)
        self.in_one.append(name)
        super()._put_file(name, part, if_absent=if_absent)

    def _start_upload(self, name: str, *, if_absent: bool) -> Any:
        self.in_parts.append(name)
        upload = super()._start_upload(name, if_absent=if_absent)
        send_part = upload.send_part

        def watched(number: int, offset: int, data: Part) -> None:
            self.sent.append(data)
            send_part(number, offset, data)

        upload.send_part = watched  # type: ignore[method-assign]
        return upload


@pytest.fixture
def watched_s3(s3_client: S3Client, s3_bucket: str) -> Iterator[_WatchedS3]:
    yield _WatchedS3(
        s3_bucket,
        client=s3_client,
        part_size=TEST_PART_SIZE,
        multipart_threshold=TEST_PART_SIZE,
        max_concurrency=2,
    )


@pytest.mark.s3
def test_the_packs_of_a_chunked_upload_are_sent_from_their_spool_files(
    watched_s3: _WatchedS3,
) -> None:
    # Before: each pack's parts were read into part buffers (4 x 8 MiB by default, 32 of the
    # 43.5 MiB an S3 upload of 512 MiB added to the process). Now a pack is its private spool
    # file, read as it is sent: in one PutObject each (no parts, no completion).
    data = os.urandom(4 * (TEST_PART_SIZE + 300_000))
    writer = PackWriter(watched_s3, pack_target=TEST_PART_SIZE + 200_000)
    try:
        for chunk, view in Chunker(io.BytesIO(data)):
            writer.add_new(chunk, view)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    packs = writer.manifest.as_table().packs
    assert len(packs) >= 3
    assert watched_s3.sent and all(isinstance(part, FilePart) for part in watched_s3.sent)
    assert sorted(watched_s3.in_one) == sorted(pack_key(p) for p in packs)
    assert watched_s3.in_parts == []
    store = ChunkStore(watched_s3)
    assert store.open(store.put(io.BytesIO(data))).read() == data  # all dedup hits now
    # A plain stream still goes through part buffers (nobody promised it stays as it is).
    watched_s3.sent.clear()
    watched_s3.write("blobs/plain", io.BytesIO(data))
    assert watched_s3.sent and all(isinstance(part, bytearray) for part in watched_s3.sent)
    assert watched_s3.in_parts == ["blobs/plain"]


def test_a_spool_file_that_does_not_hold_its_pack_is_never_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The spool is checked against the pack's digest before it is sealed and sent: a write
    # that went wrong (here: one byte changed on its way to the file) fails the upload.
    def damaging(fd: int, view: memoryview, offset: int) -> None:
        damaged = bytearray(view)
        damaged[len(damaged) // 2] ^= 1
        pwrite_all(fd, memoryview(damaged), offset)

    monkeypatch.setattr(packer, "pwrite_all", damaging)
    backend = MemoryBackend()
    writer = PackWriter(backend, pack_target=300_000)
    with pytest.raises(IntegrityError, match=r"pack blake3:\w+.*does not match"):
        try:
            for chunk, view in Chunker(io.BytesIO(os.urandom(600_000))):
                writer.add_new(chunk, view)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    assert [info.key for info in backend.list("packs/")] == []
