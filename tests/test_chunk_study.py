"""The chunk study's measurements on tiny series (benchmarks/chunk_study.py); no timing."""

from __future__ import annotations

from pathlib import Path

from benchmarks.checkpoints import KiB, generate
from benchmarks.chunk_study import MARKER, measure_series, write_report

AVG = 16 * KiB


def test_all_new_files_store_every_byte_once(tmp_path: Path) -> None:
    series = generate("full", "raw", tmp_path, versions=3, size=256 * KiB)
    result = measure_series(series, [AVG])
    assert result.stored[AVG] == series.total_bytes
    assert result.added[AVG] == list(series.file_bytes)
    assert result.ratio(AVG) == 1.0


def test_a_repeated_backbone_is_stored_once(tmp_path: Path) -> None:
    series = generate("frozen", "safetensors", tmp_path, versions=4, size=512 * KiB)
    result = measure_series(series, [AVG])
    # Every new byte lands in a new chunk; the backbone is not stored again.
    assert series.unique_bytes <= result.stored[AVG] < 0.5 * series.total_bytes
    assert result.added[AVG][0] == series.file_bytes[0]
    assert all(added < series.file_bytes[0] / 4 for added in result.added[AVG][1:])
    assert result.chunks[AVG] >= sum(series.file_bytes) // (4 * AVG)


def test_rerun_keeps_the_hand_written_recommendation(tmp_path: Path) -> None:
    report = tmp_path / "chunk-study.md"
    write_report("# Tables, run 1", report)
    assert report.read_text().rstrip().endswith(MARKER)
    report.write_text(report.read_text() + "\nUse 64 KiB.\n")
    write_report("# Tables, run 2", report)
    text = report.read_text()
    assert text.startswith("# Tables, run 2")
    assert "run 1" not in text
    assert text.rstrip().endswith(f"{MARKER}\n\nUse 64 KiB.")
