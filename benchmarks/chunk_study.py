"""Issue 13: choose the chunk size and the chunking threshold by measurement.

Usage::

    python -m benchmarks.chunk_study                    # about 2-3 min on 2 cores
    python -m benchmarks.chunk_study --size 256MiB --output .bench-data/chunk-study-256.md

For every workload x format of ``benchmarks.checkpoints`` and every average chunk size
(FastCDC, min = avg/4, max = avg*4, BLAKE3 per chunk) it measures the bytes a chunk store would
hold (the sum of the distinct chunks of the series) against the series' unique bytes; the chunk
count per GiB; the chunk+hash throughput against plain BLAKE3 of the same file, in the same run;
and, for whole files of 64 KiB to 16 MiB, what chunking costs and saves against one blob.

The report goes to stdout and to ``docs/chunk-study.md`` (``--output``). Everything from the
line ``<!-- recommendation -->`` on in an existing report is kept: the conclusions are written
by hand, from the numbers, below the tables that a rerun replaces.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import blake3
from pyfastcdc import FastCDC

from benchmarks._util import Contender
from benchmarks.checkpoints import (
    FORMATS,
    GiB,
    KiB,
    MiB,
    Series,
    WorkloadOptions,
    generate,
    parse_size,
)

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = REPO / ".bench-data" / "chunk-study"
MARKER = "<!-- recommendation -->"

AVG_SIZES = tuple(k * KiB for k in (16, 32, 64, 128, 256, 512, 1024))
THRESHOLD_SIZES = tuple(k * KiB for k in (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384))
# (workload, options) in table order; the target is the issue's
SERIES: tuple[tuple[str, WorkloadOptions], ...] = (
    ("frozen", WorkloadOptions()),
    ("lora", WorkloadOptions()),
    ("embedding", WorkloadOptions(pattern="clustered")),
    ("embedding", WorkloadOptions(pattern="scattered")),
    ("full", WorkloadOptions()),
)
TARGET_UNIQUE = 1.15  # stored / unique bytes (frozen, lora, embedding)
TARGET_FULL = 1.03  # stored / whole-file dedup (fully changed files)


def chunker(avg: int) -> FastCDC:
    """The chunker under study: FastCDC with min = avg/4, max = avg*4 (pyfastcdc's defaults)."""
    return FastCDC(avg, min_size=avg // 4, max_size=avg * 4)


def label(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB and size % MiB == 0 else f"{size // KiB} KiB"


# -- dedup of the series ----------------------------------------------------------------------


@dataclass
class SeriesResult:
    """What chunk dedup stores of one series, per average chunk size."""

    name: str
    fmt: str
    unique: int  # bytes no earlier version held (from the generator)
    total: int  # sum of the file sizes = whole-file dedup (no two versions are equal)
    new: tuple[int, ...]  # per version: new tensor bytes
    stored: dict[int, int] = field(default_factory=dict)  # avg -> distinct chunk bytes
    chunks: dict[int, int] = field(default_factory=dict)  # avg -> chunks cut (all versions)
    added: dict[int, list[int]] = field(default_factory=dict)  # avg -> per version: new chunks

    def ratio(self, avg: int) -> float:
        """The issue's measure: against unique bytes, or whole-file dedup for all-new files."""
        base = self.total if self.name == "full" else self.unique
        return self.stored[avg] / base

    def target(self) -> float:
        return TARGET_FULL if self.name == "full" else TARGET_UNIQUE

    def excess(self, avg: int) -> float:
        """Mean bytes a later version stores beyond its new tensor bytes."""
        later = list(zip(self.added[avg][1:], self.new[1:], strict=True))
        return sum(added - new for added, new in later) / max(1, len(later))


def _chunk_digests(path: Path, cdc: FastCDC) -> Iterator[tuple[bytes, int]]:
    for chunk in cdc.cut_file(path):  # mmap: the same cut points as cut_stream, faster here
        yield blake3.blake3(chunk.data).digest(), chunk.length


def measure_series(series: Series, avg_sizes: Sequence[int]) -> SeriesResult:
    result = SeriesResult(
        series.workload,
        series.fmt,
        series.unique_bytes,
        series.total_bytes,
        series.new_tensor_bytes,
    )
    for avg in avg_sizes:
        cdc, seen = chunker(avg), set()
        stored = count = 0
        added = []
        for path in series.paths:
            before = stored
            for digest, length in _chunk_digests(path, cdc):
                count += 1
                if digest not in seen:
                    seen.add(digest)
                    stored += length
            added.append(stored - before)
        result.stored[avg], result.chunks[avg], result.added[avg] = stored, count, added
    return result


# -- throughput -------------------------------------------------------------------------------


def cpu_times(contenders: Sequence[Contender], reps: int, *, warmup: int = 1) -> dict[str, float]:
    """The fastest of ``reps`` rounds of each contender, in CPU seconds of this process.

    Like ``benchmarks._util.measure`` (order rotated every round, warm-up discarded) but on
    ``time.process_time``: everything timed here is single-threaded and CPU-bound, and on the
    shared cores wall-clock time mostly measures the other jobs. The fastest round is the one
    least disturbed by them (caches, frequency).
    """
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for round_ in range(warmup + reps):
        shift = round_ % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            start = time.process_time()
            contender.run()
            elapsed = time.process_time() - start
            if round_ >= warmup:
                times[contender.name].append(elapsed)
    return {name: min(values) for name, values in times.items()}


def _plain_blake3(path: Path) -> bytes:
    hasher, buffer = blake3.blake3(), bytearray(MiB)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            hasher.update(view[:n])
    return hasher.digest()


def _cut(path: Path, cdc: FastCDC, *, chunk_hash: bool, whole_hash: bool) -> int:
    whole, count = blake3.blake3(), 0
    with open(path, "rb", buffering=0) as f:  # cut_stream uses readinto
        for chunk in cdc.cut_stream(f):
            count += 1
            if chunk_hash:
                blake3.blake3(chunk.data).digest()
            if whole_hash:
                whole.update(chunk.data)
    return count


@dataclass
class Throughput:
    size: int
    blake3: float  # CPU seconds, fastest round
    cut: dict[int, float] = field(default_factory=dict)
    cut_hash: dict[int, float] = field(default_factory=dict)
    cut_hash_whole: dict[int, float] = field(default_factory=dict)


def measure_throughput(path: Path, avg_sizes: Sequence[int], reps: int) -> Throughput:
    contenders = [Contender("blake3", lambda: _plain_blake3(path))]
    for avg in avg_sizes:
        cdc = chunker(avg)
        for name, chunk_hash, whole_hash in (
            ("cut", False, False),
            ("cut_hash", True, False),
            ("cut_hash_whole", True, True),
        ):
            contenders.append(
                Contender(
                    f"{name}/{avg}",
                    lambda cdc=cdc, c=chunk_hash, w=whole_hash: _cut(
                        path, cdc, chunk_hash=c, whole_hash=w
                    ),
                )
            )
    times = cpu_times(contenders, reps)
    result = Throughput(path.stat().st_size, times["blake3"])
    for avg in avg_sizes:
        result.cut[avg] = times[f"cut/{avg}"]
        result.cut_hash[avg] = times[f"cut_hash/{avg}"]
        result.cut_hash_whole[avg] = times[f"cut_hash_whole/{avg}"]
    return result


# -- small files: where chunking stops paying -------------------------------------------------


@dataclass
class SmallFile:
    """One file size: a frozen-backbone pair (v0, v1) as safetensors."""

    size: int  # nominal; file_bytes is v1's actual size
    file_bytes: int
    blob_seconds: float  # whole-file BLAKE3 of v1, per file
    chunk_seconds: dict[int, float] = field(default_factory=dict)  # + cut + per-chunk BLAKE3
    chunks: dict[int, int] = field(default_factory=dict)  # chunks of v1
    second: dict[int, int] = field(default_factory=dict)  # bytes v1 adds once v0 is stored
    new: int = 0  # v1's new tensor bytes (the head)


def _chunked_digest(data: bytes, cdc: FastCDC) -> int:
    blake3.blake3(data).digest()  # the artifact's identity stays the whole-file digest
    count = 0
    for chunk in cdc.cut_buf(data):
        blake3.blake3(chunk.data).digest()
        count += 1
    return count


def measure_small(
    root: Path, avg_sizes: Sequence[int], sizes: Sequence[int], reps: int
) -> list[SmallFile]:
    results = []
    for size in sizes:
        series = generate("frozen", "safetensors", root / f"small-{size}", versions=2, size=size)
        v0, v1 = (p.read_bytes() for p in series.paths)
        small = SmallFile(size, len(v1), 0.0, new=series.new_tensor_bytes[1])
        repeat = max(1, 16 * MiB // size)  # about 16 MiB hashed per timing
        contenders = [
            Contender(
                "blob", lambda v1=v1, r=repeat: [blake3.blake3(v1).digest() for _ in range(r)]
            )
        ]
        for avg in avg_sizes:
            cdc = chunker(avg)
            held = {blake3.blake3(c.data).digest() for c in cdc.cut_buf(v0)}
            v1_chunks = [(blake3.blake3(c.data).digest(), c.length) for c in cdc.cut_buf(v1)]
            small.chunks[avg] = len(v1_chunks)
            small.second[avg] = sum({d: n for d, n in v1_chunks if d not in held}.values())
            contenders.append(
                Contender(
                    str(avg),
                    lambda v1=v1, cdc=cdc, r=repeat: [_chunked_digest(v1, cdc) for _ in range(r)],
                )
            )
        times = cpu_times(contenders, reps)
        small.blob_seconds = times["blob"] / repeat
        for avg in avg_sizes:
            small.chunk_seconds[avg] = times[str(avg)] / repeat
        shutil.rmtree(root / f"small-{size}")
        results.append(small)
    return results


# -- report -----------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return [*lines, ""]


def _gbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e9:.2f}"


def render(
    args: argparse.Namespace,
    dedup: list[SeriesResult],
    speed: Throughput,
    small: list[SmallFile],
    elapsed: float,
) -> str:
    avgs = args.avg
    cols = [label(a) for a in avgs]
    out = [
        "# Chunk study: chunk size and chunking threshold (issue 13)",
        "",
        # Inline code, not a fence: the docs test runs every fenced block (tests/test_docs.py).
        f"Reproduce: `python -m benchmarks.chunk_study{args.command_tail}` from the repository "
        "root (rewrites the tables, keeps the recommendation below them).",
        "",
        f"- Machine: {os.cpu_count()} CPUs, {_cpu()}; Python {platform.python_version()}, "
        + ", ".join(f"{n} {metadata.version(n)}" for n in ("pyfastcdc", "blake3", "numpy")),
        f"- Series: {args.versions} versions of {label(args.size)} each, seed {args.seed}; "
        f"FastCDC min = avg/4, max = avg*4, normalized chunking 1; BLAKE3 per chunk. "
        f"Run time {elapsed:.0f} s.",
        "- *Unique bytes*: the tensor bytes of every version that no earlier version held at the "
        "same tensor and row (from the generator, not from chunking; headers not counted). "
        "*Stored*: the sum of the distinct chunks of the whole series.",
        "",
        "## 1. Stored bytes / unique bytes",
        "",
        f"Target: ≤ {TARGET_UNIQUE} (frozen, lora, embedding); fully changed: stored / whole-file "
        f"dedup ≤ {TARGET_FULL}. A ✗ marks a miss. *Whole file*: what whole-file dedup stores, "
        "over unique bytes.",
        "",
    ]
    rows = []
    for r in dedup:
        cells = [f"{r.ratio(a):.3f}" + ("" if r.ratio(a) <= r.target() else " ✗") for a in avgs]
        rows.append([r.name, r.fmt, f"{r.total / r.unique:.2f}", *cells])
    out += _table(["Workload", "Format", "Whole file", *cols], rows)
    out += [
        "## 2. What a later version stores beyond its new bytes",
        "",
        "Mean over versions 1..N-1 of (new chunk bytes - new tensor bytes), in KiB: the cost of "
        "the chunks that straddle a change (and the header chunk). It bounds what version k+1 "
        "uploads or downloads beyond its changed bytes (issue target: ≤ 1.3 x changed + 2 MiB). "
        "New tensor bytes per version: "
        + "; ".join(f"{r.name} {r.new[1] / MiB:.2f} MiB" for r in dedup if r.fmt == FORMATS[0])
        + ".",
        "",
    ]
    rows = [[r.name, r.fmt, *(f"{r.excess(a) / KiB:,.0f}" for a in avgs)] for r in dedup]
    out += _table(["Workload", "Format", *cols], rows)
    logical = sum(r.total for r in dedup)
    out += [
        "## 3. Chunk count and throughput",
        "",
        f"Chunks per GiB and mean chunk size over all {logical / GiB:.1f} GiB of the series above "
        "(pyfastcdc: the mean is about avg + min). Throughput on one "
        f"{label(speed.size)} file in the page cache, one thread, in bytes per CPU-second of "
        f"this process (`time.process_time`), fastest of {args.reps} rounds with the "
        "contenders' order rotated every round: the cores are shared with other jobs, and "
        "wall-clock time would mostly measure them. *cut* = `cut_stream` over the file "
        "with `readinto`; *+chunk BLAKE3* also hashes every chunk; *+whole* also feeds the "
        "whole-file hasher (the artifact's digest), as an upload must. Plain BLAKE3 of the same "
        f"file, same run: **{_gbps(speed.size, speed.blake3)} GB/s**.",
        "",
    ]
    rows = []
    for a in avgs:
        count = sum(r.chunks[a] for r in dedup)
        rows.append(
            [
                label(a),
                f"{count / (logical / GiB):,.0f}",
                f"{logical / count / KiB:,.0f} KiB",
                _gbps(speed.size, speed.cut[a]),
                _gbps(speed.size, speed.cut_hash[a]),
                _gbps(speed.size, speed.cut_hash_whole[a]),
                f"{speed.blake3 / speed.cut_hash_whole[a]:.2f}",
            ]
        )
    out += _table(
        [
            "Avg",
            "Chunks / GiB",
            "Mean chunk",
            "cut GB/s",
            "+chunk BLAKE3 GB/s",
            "+whole GB/s",
            "+whole / plain BLAKE3",
        ],
        rows,
    )
    out += [
        "## 4. Small files: chunking against one blob",
        "",
        "A frozen-backbone pair (v0, v1) as safetensors at each size (5% head, header length "
        "changing). *v1 adds*: the bytes v1 stores once v0 is stored, as a share of the file "
        "(one blob: 100%); the head alone is about 5%. *CPU*: time to hash v1 chunked (whole-"
        "file BLAKE3 + cut + BLAKE3 per chunk, in memory) over one whole-file BLAKE3, CPU time, fastest of the same rounds; "
        "*chunks*: chunks of v1 (each also costs a manifest entry, ~40 bytes).",
        "",
    ]
    rows = []
    for s in small:
        rows.append(
            [
                label(s.size),
                *(f"{s.second[a] / s.file_bytes:.0%} ({s.chunks[a]})" for a in avgs),
            ]
        )
    out += ["v1 adds, share of the file (chunks of v1):", ""]
    out += _table(["File", *cols], rows)
    rows = []
    for s in small:
        rows.append(
            [
                label(s.size),
                f"{s.blob_seconds * 1e6:,.0f} µs",
                *(f"{s.chunk_seconds[a] / s.blob_seconds:.2f}" for a in avgs),
            ]
        )
    out += ["CPU, chunked / blob:", ""]
    out += _table(["File", "blob BLAKE3", *cols], rows)
    return "\n".join(out)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_report(text: str, output: Path) -> None:
    """Write ``text`` to ``output``, keeping the hand-written part from MARKER on."""
    kept = ""
    if output.exists():
        old = output.read_text()
        if MARKER in old:
            kept = old[old.index(MARKER) :]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text.rstrip("\n") + "\n\n" + (kept or MARKER + "\n"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chunk_study", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=64 * MiB, help="bytes per version")
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--avg", type=parse_size, nargs="+", default=list(AVG_SIZES))
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--throughput-size", type=parse_size, default=128 * MiB)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "chunk-study.md")
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    args.command_tail = "".join(f" {a}" for a in given)

    start = time.perf_counter()
    shutil.rmtree(DATA_ROOT, ignore_errors=True)
    DATA_ROOT.mkdir(parents=True)
    try:
        dedup = []
        for workload, options in SERIES:
            for fmt in args.formats:
                series_dir = DATA_ROOT / "series"
                series = generate(
                    workload,
                    fmt,
                    series_dir,
                    versions=args.versions,
                    size=args.size,
                    seed=args.seed,
                    options=options,
                )
                dedup.append(measure_series(series, args.avg))
                shutil.rmtree(series_dir)
                print(
                    f"# {series.workload} {fmt}: {time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                )
        speed_file = generate(
            "full", "raw", DATA_ROOT / "speed", versions=1, size=args.throughput_size, seed=1
        ).paths[0]
        speed = measure_throughput(speed_file, args.avg, args.reps)
        print(f"# throughput: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        small = measure_small(DATA_ROOT, args.avg, THRESHOLD_SIZES, args.reps)
    finally:
        shutil.rmtree(DATA_ROOT, ignore_errors=True)
    text = render(args, dedup, speed, small, time.perf_counter() - start)
    print(text)
    write_report(text, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
