"""The report's charts: throughput per workload, peak memory over file size, and the store cost
of chunked checkpoint series (PNG files).

Drawn with matplotlib's Agg canvas (no display, no pyplot state) from the figures the
benchmark sections collect (``Section.throughput``, ``Section.memory``, ``Section.baselines``,
``Section.stored``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._util import GiB, MemoryPoint, MiB, Section, StoredBytes, Throughput

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

THROUGHPUT_PNG = "bench-throughput.png"
MEMORY_PNG = "bench-memory.png"
STORED_PNG = "bench-chunks-stored.png"
MEMORY_TARGET = 100 * MiB  # issue 2's "< 100 MiB" for a local upload or download

# One colour per contender, the same in every chart.
COLOURS = {"optuna-cas": "#1f77b4", "Optuna": "#ff7f0e", "cp": "#7f7f7f"}


@dataclass(frozen=True)
class Chart:
    """A written chart: its path and the sentence the report shows with it."""

    path: Path
    alt: str
    caption: str


def write_charts(sections: Sequence[Section], directory: Path) -> list[Chart]:
    """Draw every chart the sections have figures for into ``directory``; return them."""
    directory.mkdir(parents=True, exist_ok=True)
    charts = []
    throughput = [t for s in sections for t in s.throughput]
    if throughput:
        charts.append(throughput_chart(throughput, directory / THROUGHPUT_PNG))
    memory = [m for s in sections for m in s.memory]
    if memory:
        baselines = {k: v for s in sections for k, v in s.baselines.items()}
        charts.append(memory_chart(memory, baselines, directory / MEMORY_PNG))
    stored = [b for s in sections for b in s.stored]
    if stored:
        charts.append(stored_chart(stored, directory / STORED_PNG))
    return charts


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _size(n: int) -> str:
    return f"{n / GiB:g} GiB" if n >= GiB else f"{n / MiB:g} MiB"


def _rate(bytes_per_s: float) -> str:
    if bytes_per_s >= 1e9:
        return (
            f"{bytes_per_s / 1e9:,.2f} GB/s"
            if bytes_per_s < 1e11
            else f"{bytes_per_s / 1e9:,.0f} GB/s"
        )
    return (
        f"{bytes_per_s / 1e6:,.0f} MB/s" if bytes_per_s >= 1e7 else f"{bytes_per_s / 1e6:.2f} MB/s"
    )


def throughput_chart(items: Sequence[Throughput], path: Path) -> Chart:
    """Horizontal bars, one group per workload, one bar per contender (log scale)."""
    contenders = [c for c in COLOURS if any(c in t.bytes_per_s for t in items)]
    height = 0.8 / len(contenders)
    figure, axes = _figure(9, 1.0 + 0.22 * len(items) * len(contenders) + 0.3 * len(items))
    for index, contender in enumerate(contenders):
        ys, xs = [], []
        for row, item in enumerate(items):
            if contender in item.bytes_per_s:
                ys.append(row + (index - (len(contenders) - 1) / 2) * height)
                xs.append(item.bytes_per_s[contender])
        bars = axes.barh(ys, xs, height=height * 0.9, color=COLOURS[contender], label=contender)
        axes.bar_label(bars, labels=[_rate(x) for x in xs], padding=3, fontsize=7)
    axes.set_yticks(range(len(items)), [t.workload for t in items], fontsize=8)
    axes.invert_yaxis()  # first workload on top, as in the report
    axes.set_xscale("log")
    low = min(x for t in items for x in t.bytes_per_s.values())
    high = max(x for t in items for x in t.bytes_per_s.values())
    axes.set_xlim(low / 3, high * 30)  # room for the labels right of the bars
    axes.set_xlabel("throughput, bytes per second (log scale; longer is better)")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(axis="x", which="major", alpha=0.3)
    figure.savefig(path)
    return Chart(
        path,
        "Throughput per workload: optuna-cas, Optuna and cp",
        "Throughput per workload (medians of the runs below; the same bytes over each "
        "contender's time). On a repeat upload Optuna and `cp` write the whole file again, "
        "so their bars repeat their first upload; optuna-cas stores no second copy.",
    )


def memory_chart(points: Sequence[MemoryPoint], baselines: dict[str, int], path: Path) -> Chart:
    """Peak RSS over file size, one line per operation and contender, log-scaled sizes."""
    figure, axes = _figure(7, 4.2)
    series = sorted({p.series for p in points}, key=lambda s: (not s.startswith("optuna-cas"), s))
    for name in series:
        mine = sorted((p for p in points if p.series == name), key=lambda p: p.file_size)
        contender = "optuna-cas" if name.startswith("optuna-cas") else "Optuna"
        axes.plot(
            [p.file_size / MiB for p in mine],
            [p.peak_rss / MiB for p in mine],
            marker="o" if "upload" in name else "s",
            linestyle="-" if "upload" in name else "--",
            color=COLOURS[contender],
            label=name,
        )
    for label, value in sorted(baselines.items(), key=lambda kv: kv[1]):
        axes.axhline(
            value / MiB, color="#2ca02c", linestyle=":", label=f"{label} ({value / MiB:.0f} MiB)"
        )
    axes.axhline(
        MEMORY_TARGET / MiB, color="#d62728", linestyle="-.", linewidth=1, label="target: < 100 MiB"
    )
    sizes = sorted({p.file_size for p in points})
    axes.set_xscale("log", base=2)
    axes.set_xticks([s / MiB for s in sizes], [_size(s) for s in sizes])
    axes.minorticks_off()
    top = max([p.peak_rss for p in points] + [MEMORY_TARGET, *baselines.values()])
    axes.set_ylim(0, top / MiB * 1.45)  # room for the legend above the lines
    axes.set_xlabel("file size")
    axes.set_ylabel("peak RSS of the process, MiB (VmHWM)")
    axes.legend(loc="upper left", fontsize=8, ncols=2)
    axes.grid(alpha=0.3)
    figure.savefig(path)
    return Chart(
        path,
        "Peak RSS over file size, local filesystem",
        "Peak RSS of a process that uploads or downloads one file on the local filesystem, "
        "by file size (section 5): flat lines mean memory does not grow with the file.",
    )


# Bars of the store-cost chart, bottom to top within a series: what must be kept, what is.
STORED_BARS = (
    ("unique bytes", "unique", "#2ca02c"),
    ("optuna-cas, chunked", "stored", COLOURS["optuna-cas"]),
    ("whole-file dedup", "whole_file", "#7f7f7f"),
)


def stored_chart(items: Sequence[StoredBytes], path: Path) -> Chart:
    """Horizontal bars per checkpoint series: unique bytes, chunked store, whole-file dedup."""
    height = 0.8 / len(STORED_BARS)
    figure, axes = _figure(9, 1.2 + 0.55 * len(items))
    for index, (label, attribute, colour) in enumerate(STORED_BARS):
        ys = [row + (index - (len(STORED_BARS) - 1) / 2) * height for row in range(len(items))]
        xs = [getattr(item, attribute) / MiB for item in items]
        bars = axes.barh(ys, xs, height=height * 0.9, color=colour, label=label)
        axes.bar_label(bars, labels=[f"{x:,.0f}" for x in xs], padding=3, fontsize=7)
    ticks = [f"{item.series}\n{item.stored / item.unique:.2f}x unique" for item in items]
    axes.set_yticks(range(len(items)), ticks, fontsize=8)
    axes.invert_yaxis()  # first series on top, as in the report
    top = max(max(item.whole_file, item.stored) for item in items) / MiB
    axes.set_xlim(0, top * 1.15)  # room for the labels right of the bars
    axes.set_xlabel("MiB stored for the whole series (shorter is better)")
    # Above the plot: every series' bars reach to the right somewhere.
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    figure.savefig(path)
    return Chart(
        path,
        "Store cost of checkpoint series: unique bytes, chunked store, whole-file dedup",
        "Bytes a local store holds for each checkpoint series (section 14): the series' unique "
        "bytes (what any store must keep), optuna-cas with chunk-level dedup, and whole-file "
        "dedup (one blob per distinct file, as before chunking).",
    )
