"""Small files kept inside their ref (docs/concepts.md, "Small files live inside their ref")."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import optuna
import pytest

import optuna_cas
from optuna_cas import FileSystemArtifactStore, MemoryArtifactStore
from optuna_cas.blobstore import blob_key
from optuna_cas.digest import Digest
from optuna_cas.exceptions import IntegrityError
from optuna_cas.refs import INLINE_LIMIT, ArtifactRef

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("size", [0, 1, INLINE_LIMIT])
def test_a_small_file_is_one_ref_and_no_blob(tmp_path: Path, size: int) -> None:
    store = FileSystemArtifactStore(tmp_path / "store")
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    source = tmp_path / "small.json"
    source.write_bytes(data)
    ref = store.put("a1", source, filename="small.json")
    assert ref.inline == data and ref.digest == Digest.of_bytes(data)
    assert _files(tmp_path / "store") == ["refs/a1"]
    stored = json.loads((tmp_path / "store/refs/a1").read_bytes())
    assert stored["version"] == 2 and base64.b64decode(stored["inline"]) == data
    assert store.open_reader("a1").read() == data
    target = tmp_path / "out.json"
    optuna_cas.download_artifact(artifact_store=store, file_path=str(target), artifact_id="a1")
    assert target.read_bytes() == data


def test_one_byte_over_the_limit_is_a_blob(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path / "store")
    data = b"y" * (INLINE_LIMIT + 1)
    ref = store.put("a1", io.BytesIO(data))
    assert ref.inline is None
    assert (tmp_path / "store" / blob_key(ref.digest)).read_bytes() == data
    assert json.loads((tmp_path / "store/refs/a1").read_bytes())["version"] == 1


@pytest.mark.parametrize("kind", ["bytesio", "file", "buffered"])
def test_streams_are_left_at_their_end_or_where_they_were(tmp_path: Path, kind: str) -> None:
    store = MemoryArtifactStore()
    for size in (10, INLINE_LIMIT + 10):
        data = b"p" * 3 + bytes(size)
        path = tmp_path / f"{size}.bin"
        path.write_bytes(data)
        stream = (
            io.BytesIO(data)
            if kind == "bytesio"
            else open(path, "rb", buffering=0)  # noqa: SIM115
            if kind == "file"
            else open(path, "rb")  # noqa: SIM115
        )
        with stream:
            stream.read(3)  # uploads start at the stream's position, as Optuna's do
            ref = store.put(f"s{size}", stream)
            assert stream.tell() == len(data)
        assert (ref.inline is not None) == (size <= INLINE_LIMIT)
        assert store.open_reader(f"s{size}").read() == data[3:]


def test_inline_limit_none_keeps_every_file_a_blob() -> None:
    store = MemoryArtifactStore(inline_limit=None)
    ref = store.put("a", io.BytesIO(b"tiny"))
    assert ref.inline is None and store.content.has_blob(ref.digest)
    with pytest.raises(
        ValueError, match="inline_limit must be None or between 0 and 4096, got 5000"
    ):
        MemoryArtifactStore(inline_limit=5000)


def test_a_proc_file_is_read_whole_whatever_its_size_says(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path / "store")
    ref = store.put("proc", "/proc/self/stat")  # stat says 0 bytes
    assert ref.size > 0 and ref.inline is not None
    assert store.open_reader("proc").read() == ref.inline


def _tamper(path: Path, change: dict[str, object]) -> None:
    record = json.loads(path.read_bytes())
    record.update(change)
    path.write_text(json.dumps(record))


def test_a_tampered_inline_ref_is_refused_never_served(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path / "store")
    store.put("a1", io.BytesIO(b"the real bytes"))
    ref_path = tmp_path / "store/refs/a1"
    _tamper(ref_path, {"inline": base64.b64encode(b"the evil bytes").decode()})
    fresh = FileSystemArtifactStore(tmp_path / "store")
    with pytest.raises(IntegrityError, match="inline content does not match"):
        fresh.open_reader("a1")
    target = tmp_path / "out"
    with pytest.raises(IntegrityError):
        optuna_cas.download_artifact(artifact_store=fresh, file_path=str(target), artifact_id="a1")
    assert not target.exists()
    report = optuna_cas.verify(fresh)
    assert not report.ok and report.malformed_refs == ["a1"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inline": "not base64!"}, "inline content is not base64"),
        ({"inline": "A" * 8000}, "inline content longer than 4096 bytes"),
        ({"inline": 7}, "'inline'"),
        ({"version": 3}, "format version 3 is not one this release reads"),
        ({"version": True}, "format version True"),
    ],
)
def test_malformed_inline_refs_name_the_problem(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    store = FileSystemArtifactStore(tmp_path / "store")
    store.put("a1", io.BytesIO(b"abc"))
    _tamper(tmp_path / "store/refs/a1", change)
    with pytest.raises(IntegrityError, match=message):
        FileSystemArtifactStore(tmp_path / "store").get_ref("a1")


def test_version_one_refs_written_before_stay_readable(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path / "store", inline_limit=None)
    store.put("old", io.BytesIO(b"old bytes"))
    record = json.loads((tmp_path / "store/refs/old").read_bytes())
    del record["version"]  # the earliest refs
    (tmp_path / "store/refs/old").write_text(json.dumps(record))
    assert FileSystemArtifactStore(tmp_path / "store").open_reader("old").read() == b"old bytes"


def test_sync_moves_the_ref_with_its_content_and_gc_verify_stats_agree(tmp_path: Path) -> None:
    src = FileSystemArtifactStore(tmp_path / "a")
    dst = FileSystemArtifactStore(tmp_path / "b")
    src.put("small", io.BytesIO(b"s" * 100))
    src.put("large", io.BytesIO(b"L" * 10_000))
    report = optuna_cas.sync(src, dst)
    assert sorted(report.refs_copied) == ["large", "small"]
    assert report.blobs_copied == 1 and report.bytes_copied == 10_000
    assert dst.open_reader("small").read() == b"s" * 100
    assert optuna_cas.verify(dst, deep=True).ok
    assert optuna_cas.gc(dst, grace_period=0, allow_short_grace=True).deleted_count == 0
    figures = optuna_cas.stats(dst)
    assert (figures.inline_bytes, figures.blob_bytes, figures.stored_bytes) == (100, 10_000, 10_100)
    dst.remove("small")  # the content goes with its ref
    assert _files(tmp_path / "b") == [f"{blob_key(dst.get_ref('large').digest)}", "refs/large"]


def test_upload_and_download_through_optuna_functions(tmp_path: Path) -> None:
    """Optuna's own functions on our store: one ref per upload, bytes verified on the way out."""
    store = FileSystemArtifactStore(tmp_path / "store")
    study = optuna.create_study()
    source = tmp_path / "params.json"
    source.write_text('{"lr": 0.1}')
    artifact_id = optuna.artifacts.upload_artifact(
        artifact_store=store, file_path=str(source), study_or_trial=study
    )
    assert _files(tmp_path / "store") == [f"refs/{artifact_id}"]
    target = tmp_path / "copy.json"
    optuna.artifacts.download_artifact(
        artifact_store=store, file_path=str(target), artifact_id=artifact_id
    )
    assert target.read_text() == '{"lr": 0.1}'


def test_the_ref_record_itself_round_trips() -> None:
    ref = ArtifactRef("a", Digest.of_bytes(b"hi"), filename="h.txt", inline=b"hi")
    assert ArtifactRef.from_json(ref.to_json(), "a") == ref
    with pytest.raises(IntegrityError, match="inline content does not match"):
        ArtifactRef("a", Digest.of_bytes(b"hi"), inline=b"ho")
