"""The benchmark report's charts, drawn from a small made-up result set (no benchmark runs)."""

from __future__ import annotations

import datetime as dt
import re
import struct
from pathlib import Path

from benchmarks import charts
from benchmarks._util import GiB, MemoryPoint, MiB, Row, Section, StoredBytes, Throughput


def _sections() -> list[Section]:
    local = Section(
        "1-2. Upload",
        [Row("Fresh upload", "1 s", "cp: 1 s", "1.0x", "≥ 0.8x cp", True)],
        throughput=[
            Throughput("Upload 1 GiB, local", {"optuna-cas": 2.3e9, "Optuna": 1.9e9, "cp": 2.0e9}),
            Throughput("Upload 1 GiB again, local", {"optuna-cas": 1.1e12, "Optuna": 1.9e9}),
        ],
    )
    memory = Section(
        "5. Peak RSS",
        memory=[
            MemoryPoint(series, size, peak)
            for size in (64 * MiB, 256 * MiB, GiB)
            for series, peak in (
                ("optuna-cas upload", 80 * MiB),
                ("Optuna upload", 75 * MiB),
                ("optuna-cas download", 78 * MiB),
                ("Optuna download", 75 * MiB + size // 64),
            )
        ],
        baselines={"import optuna_cas + study": 75 * MiB},
    )
    return [local, memory]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _has_colour(path: Path, hex_colour: str) -> bool:
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(path)[..., :3]
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return bool((np.abs(pixels - rgb).max(axis=-1) < 0.02).sum() > 50)


def test_charts_are_pngs_with_every_contender(tmp_path: Path) -> None:
    written = charts.write_charts(_sections(), tmp_path / "img")
    assert [c.path.name for c in written] == [charts.THROUGHPUT_PNG, charts.MEMORY_PNG]
    for chart in written:
        width, height = _png_size(chart.path)
        assert width >= 500 and height >= 250
    throughput, memory = (c.path for c in written)
    for contender in ("optuna-cas", "Optuna", "cp"):  # a bar of each colour was drawn
        assert _has_colour(throughput, charts.COLOURS[contender]), contender
    for contender in ("optuna-cas", "Optuna"):  # and a line of each in the memory chart
        assert _has_colour(memory, charts.COLOURS[contender]), contender


def test_no_figures_no_charts(tmp_path: Path) -> None:
    assert charts.write_charts([Section("lifecycle only")], tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_report_embeds_the_charts_relative_to_itself(tmp_path: Path) -> None:
    from benchmarks.run import _report

    output = tmp_path / "docs" / "benchmarks.md"
    text = _report(_sections(), "python -m benchmarks.run", dt.datetime.now(dt.UTC), 60, output)
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert links == [f"img/{charts.THROUGHPUT_PNG}", f"img/{charts.MEMORY_PNG}"]
    for link in links:
        _png_size(output.parent / link)
    assert text.index("### At a glance") < text.index("### 1-2. Upload")


def test_stored_chart_draws_all_three_bars(tmp_path: Path) -> None:
    section = Section(
        "14. Store cost",
        stored=[
            StoredBytes("frozen, safetensors", 100 * MiB, 104 * MiB, 640 * MiB),
            StoredBytes("full, raw", 640 * MiB, 641 * MiB, 640 * MiB),
        ],
    )
    (chart,) = charts.write_charts([section], tmp_path)
    assert chart.path.name == charts.STORED_PNG
    width, height = _png_size(chart.path)
    assert width >= 500 and height >= 150
    for _label, _attribute, colour in charts.STORED_BARS:
        assert _has_colour(chart.path, colour), colour
