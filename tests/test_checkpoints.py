"""The checkpoint-series generators of the chunk-dedup study (benchmarks/checkpoints.py).

The expected bytes are computed here from the files themselves (parsing the headers and
comparing tensors row by row), independently of the generator's own plan.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from benchmarks.checkpoints import (
    FORMATS,
    KiB,
    MiB,
    WorkloadOptions,
    generate,
    main,
    parse_size,
)

SIZE = 256 * KiB
VERSIONS = 4
# (workload, pattern) of every series the study measures
SERIES = [
    ("frozen", "clustered"),
    ("lora", "clustered"),
    ("embedding", "clustered"),
    ("embedding", "scattered"),
    ("full", "clustered"),
]


def _series(tmp: Path, workload: str, fmt: str, pattern: str = "clustered", seed: int = 0):
    return generate(
        workload,
        fmt,
        tmp,
        versions=VERSIONS,
        size=SIZE,
        seed=seed,
        options=WorkloadOptions(pattern=pattern),
    )


def _read_safetensors(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse the file as a safetensors reader would; fail on any gap or overlap."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    metadata = header.pop("__metadata__")
    tensors, covered = {}, 0
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        start, stop = info["data_offsets"]
        assert start == covered, f"{name} starts at {start}, previous tensor ended at {covered}"
        assert info["dtype"] == "F32"
        assert stop - start == 4 * int(np.prod(info["shape"]))
        array = np.frombuffer(body[start:stop], dtype=np.float32)
        tensors[name] = array.reshape(info["shape"][0], -1)
        covered = stop
    assert covered == len(body), "tensor data does not reach the end of the file"
    return metadata, tensors


def _digests(series) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in series.paths]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("workload", "pattern"), SERIES)
def test_same_seed_same_bytes(tmp_path: Path, workload: str, pattern: str, fmt: str) -> None:
    first = _series(tmp_path / "a", workload, fmt, pattern)
    again = _series(tmp_path / "b", workload, fmt, pattern)
    other = _series(tmp_path / "c", workload, fmt, pattern, seed=1)
    assert _digests(first) == _digests(again)
    assert first.unique_bytes == again.unique_bytes
    assert set(_digests(first)).isdisjoint(_digests(other))
    assert len(set(_digests(first))) == VERSIONS  # no two versions are the same file


@pytest.mark.parametrize(("workload", "pattern"), SERIES)
def test_safetensors_parses_and_header_length_varies(
    tmp_path: Path, workload: str, pattern: str
) -> None:
    series = _series(tmp_path, workload, "safetensors", pattern)
    lengths = []
    for k, path in enumerate(series.paths):
        metadata, tensors = _read_safetensors(path)
        assert metadata["step"] == str((k + 1) * 500)
        assert len(metadata["loss_history"].split(",")) == k + 1
        assert sum(t.nbytes for t in tensors.values()) == series.tensor_bytes[k]
        lengths.append(struct.unpack("<Q", path.read_bytes()[:8])[0])
        assert lengths[-1] % 8 == 0
    # Every version shifts every tensor byte: the header grows each time.
    assert all(a < b for a, b in itertools.pairwise(lengths)), lengths


@pytest.mark.parametrize(("workload", "pattern"), SERIES)
def test_zip_is_a_stored_torch_archive_of_the_same_tensors(
    tmp_path: Path, workload: str, pattern: str
) -> None:
    zipped = _series(tmp_path / "zip", workload, "zip", pattern)
    raw = _series(tmp_path / "raw", workload, "raw", pattern)
    for zpath, rpath in zip(zipped.paths, raw.paths, strict=True):
        with zipfile.ZipFile(zpath) as zf:
            assert zf.testzip() is None  # every CRC matches
            infos = zf.infolist()
            names = [i.filename for i in infos]
            assert names[0] == "archive/data.pkl"
            assert names[-1] == "archive/version"
            members = [n for n in names if n.startswith("archive/data/")]
            assert members == [f"archive/data/{i}" for i in range(len(members))]
            assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
            # The members, in order, are the raw file: same tensors, same bytes.
            assert b"".join(zf.read(n) for n in members) == rpath.read_bytes()
            with zpath.open("rb") as f:
                for info in infos:
                    if info.filename.startswith("archive/data/"):
                        f.seek(info.header_offset + 26)
                        name_len, extra_len = struct.unpack("<HH", f.read(4))
                        data_at = info.header_offset + 30 + name_len + extra_len
                        assert data_at % 64 == 0, f"{info.filename} data at {data_at}"


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return _read_safetensors(path)[1]


def _changed(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, int]:
    """Per tensor, how many rows differ between two versions."""
    assert a.keys() == b.keys()
    counts = {}
    for name in a:
        rows = np.any(a[name].view(np.uint32) != b[name].view(np.uint32), axis=1)
        counts[name] = int(rows.sum())
    return counts


def test_frozen_versions_share_the_backbone(tmp_path: Path) -> None:
    series = _series(tmp_path, "frozen", "safetensors")
    versions = [_tensors(p) for p in series.paths]
    for k in range(VERSIONS - 1):
        changed = _changed(versions[k], versions[k + 1])
        head = {n for n in changed if n.startswith("head.")}
        assert head == {"head.weight", "head.bias"}
        assert all(changed[n] == versions[k][n].shape[0] for n in head)  # every head row new
        assert all(changed[n] == 0 for n in changed if n not in head)
        shared = sum(t.nbytes for n, t in versions[k].items() if n not in head)
        assert shared >= 0.9 * series.tensor_bytes[k]


def test_lora_changes_a_few_attention_matrices(tmp_path: Path) -> None:
    series = _series(tmp_path, "lora", "safetensors")
    versions = [_tensors(p) for p in series.paths]
    targets = None
    for k in range(VERSIONS - 1):
        changed = {n for n, c in _changed(versions[k], versions[k + 1]).items() if c}
        assert changed, "no tensor changed"
        assert all(n.endswith((".attn.q.weight", ".attn.v.weight")) for n in changed)
        assert targets in (None, changed)  # the same matrices in every version
        targets = changed
        share = sum(versions[k][n].nbytes for n in changed) / series.tensor_bytes[k]
        assert 0.03 <= share <= 0.12, share


@pytest.mark.parametrize("pattern", ["clustered", "scattered"])
def test_embedding_rewrites_one_percent_of_rows(tmp_path: Path, pattern: str) -> None:
    series = _series(tmp_path, "embedding", "safetensors", pattern)
    versions = [_tensors(p) for p in series.paths]
    vocab = versions[0]["embed.weight"].shape[0]
    assert versions[0]["embed.weight"].nbytes >= 0.85 * series.tensor_bytes[0]
    for k in range(VERSIONS - 1):
        changed = _changed(versions[k], versions[k + 1])
        assert changed.pop("embed.weight") == round(0.01 * vocab)
        assert not any(changed.values())
        a, b = versions[k]["embed.weight"], versions[k + 1]["embed.weight"]
        rows = np.flatnonzero(np.any(a.view(np.uint32) != b.view(np.uint32), axis=1))
        runs = 1 + int(np.count_nonzero(np.diff(rows) > 1))
        if pattern == "clustered":
            assert runs <= 4, rows
        else:
            assert runs > 4, rows


def test_full_changes_every_tensor(tmp_path: Path) -> None:
    series = _series(tmp_path, "full", "safetensors")
    versions = [_tensors(p) for p in series.paths]
    for k in range(VERSIONS - 1):
        changed = _changed(versions[k], versions[k + 1])
        assert all(changed[n] == versions[k][n].shape[0] for n in changed)
    assert series.unique_bytes == sum(series.tensor_bytes)


def _unique_by_comparison(paths: list[Path]) -> int:
    """Bytes of rows that no earlier version held at the same tensor and row index."""
    seen: dict[tuple[str, int], set[bytes]] = {}
    unique = 0
    for path in paths:
        for name, tensor in _tensors(path).items():
            for index, row in enumerate(tensor):
                held = seen.setdefault((name, index), set())
                if row.tobytes() not in held:
                    unique += row.nbytes
                    held.add(row.tobytes())
    return unique


@pytest.mark.parametrize(("workload", "pattern"), SERIES)
def test_unique_bytes_match_a_row_by_row_comparison(
    tmp_path: Path, workload: str, pattern: str
) -> None:
    series = _series(tmp_path, workload, "safetensors", pattern)
    assert series.unique_bytes == _unique_by_comparison(list(series.paths))
    # Not all versions are all-new, except in the fully changed series.
    assert (series.unique_bytes == sum(series.tensor_bytes)) == (workload == "full")


def test_writing_keeps_memory_bounded(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        series = generate("lora", "zip", tmp_path, versions=1, size=32 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert series.file_bytes[0] >= 32 * MiB - 64 * KiB
    assert peak < 8 * MiB, f"peak {peak} bytes for a {series.file_bytes[0]}-byte file"


def test_cli_writes_the_series_and_prints_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--workload", "frozen", "--format", "raw", "--versions", "2", "--size", "300KiB"]
    assert main([*argv, str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [Path(p).name for p in summary["files"]] == ["v000.bin", "v001.bin"]
    assert summary["unique_bytes"] == sum(summary["new_tensor_bytes"])
    assert summary["total_bytes"] == sum(p.stat().st_size for p in tmp_path.iterdir())
    assert parse_size("128MiB") == 128 * MiB
    with pytest.raises(Exception, match="not a size"):
        parse_size("12 parsecs")
