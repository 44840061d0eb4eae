"""Shared helpers: timing with alternating order, test data, disk usage, child RSS, tables."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
REPO = Path(__file__).resolve().parent.parent


def _noop() -> None:
    pass


@dataclass
class Contender:
    """One thing to time: ``setup`` and ``teardown`` run untimed around each ``run``."""

    name: str
    run: Callable[[], object]
    setup: Callable[[], object] = _noop
    teardown: Callable[[], object] = _noop


def measure(
    contenders: Sequence[Contender],
    reps: int,
    *,
    warmup: int = 1,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Time each contender ``reps`` times, rotating the order every round.

    This VM's first touch of memory is slow and its speed drifts, so contenders are compared
    within one run, round by round, never against a lone earlier number. Warm-up rounds are
    run and discarded. With ``cpu``, each run's CPU time in this process (user + system, all
    threads) goes there too, by contender.
    """
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for round_ in range(warmup + reps):
        shift = round_ % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            contender.setup()
            used = _cpu_seconds()
            start = time.perf_counter()
            contender.run()
            elapsed = time.perf_counter() - start
            used = _cpu_seconds() - used
            contender.teardown()
            if round_ >= warmup:
                times[contender.name].append(elapsed)
                if cpu is not None:
                    cpu.setdefault(contender.name, []).append(used)
    return times


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt_times(values: Sequence[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def make_random_file(path: Path, size: int, seed: int) -> Path:
    """Write ``size`` pseudo-random (incompressible) bytes; numpy is ~10x faster than urandom."""
    import numpy as np

    rng = np.random.default_rng(seed)
    chunk = 16 * MiB
    with open(path, "wb") as out:
        remaining = size
        while remaining > 0:
            n = min(chunk, remaining)
            out.write(rng.bytes(n))
            remaining -= n
    return path


def warm_page_cache(path: Path) -> None:
    """Read a file once with one reused buffer so later reads come from the page cache."""
    buffer = bytearray(4 * MiB)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk below ``path`` (``du -s --block-size=1``; hard links once)."""
    if not path.is_dir():
        return path.lstat().st_blocks * 512
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for full in [dirpath, *(os.path.join(dirpath, name) for name in filenames)]:
            st = os.lstat(full)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def count_files(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def fingerprint(path: Path) -> set[tuple[str, int, int, int]]:
    """(path, inode, size, mtime) of every file below ``path``: any rewrite changes it.

    Not ``du``: the filesystem may allocate an extent block for a big file at writeback,
    seconds after it was written, which ``du`` would count as new bytes.
    """
    result = set()
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            result.add((os.path.join(dirpath, name), st.st_ino, st.st_size, st.st_mtime_ns))
    return result


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass
class ChildResult:
    """Peak memory of a child process."""

    peak_rss: int  # VmHWM: highest RSS of the child's address space, file-backed pages included
    peak_anon: int  # highest RssAnon sampled from /proc (heap, buffers; no page cache)
    seconds: float


def _rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * KiB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_child(*args: str) -> ChildResult:
    """Run ``python -m benchmarks._child ARGS`` and report its peak RSS.

    The child reports its own ``VmHWM``. Not ``ru_maxrss``: on Linux a child started by
    (v)fork + exec inherits the parent's high-water mark in ``ru_maxrss``, so every child
    would show this (large) benchmark process's peak.
    """
    with tempfile.NamedTemporaryFile(prefix="bench-peak-") as peak_file:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._child", *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "BENCH_PEAK_FILE": peak_file.name},
        )
        peak_anon = 0
        while proc.poll() is None:
            peak_anon = max(peak_anon, _rss_anon(proc.pid))
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"child {args!r} failed with exit code {proc.returncode}")
        peak_rss = int(Path(peak_file.name).read_text()) * KiB
    return ChildResult(peak_rss, peak_anon, elapsed)


# -- report -----------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: bool | None  # None: informational, no target


@dataclass
class Throughput:
    """One workload of the throughput chart: bytes per second of each contender that ran it."""

    workload: str
    bytes_per_s: dict[str, float]  # "optuna-cas", "Optuna", "cp" (the chart's colours)


@dataclass
class MemoryPoint:
    """One point of the memory chart: a process's peak RSS for one operation and file size."""

    series: str  # e.g. "optuna-cas upload"
    file_size: int
    peak_rss: int


@dataclass
class Section:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Figures for the charts (benchmarks/charts.py), besides the table.
    throughput: list[Throughput] = field(default_factory=list)
    memory: list[MemoryPoint] = field(default_factory=list)
    baselines: dict[str, int] = field(default_factory=dict)  # label -> peak RSS, flat lines
    stored: list[StoredBytes] = field(default_factory=list)  # issue 13's store cost chart


@dataclass
class StoredBytes:
    """One series of the store-cost chart: what chunked storage holds against two references."""

    series: str  # e.g. "frozen, safetensors"
    unique: int  # bytes no earlier version held (the generator's count)
    stored: int  # packs + manifests + index objects + blobs
    whole_file: int  # what whole-file dedup holds: the distinct files' sizes


def seconds(t: float, size: int | None = None) -> str:
    if size is None:
        return f"{t:.3f} s"
    return (
        f"{t:.3f} s ({size / t / 1e9:.2f} GB/s)"
        if size / t >= 1e9
        else (f"{t:.3f} s ({size / t / 1e6:.0f} MB/s)")
    )


def mib(n: int) -> str:
    return f"{n / MiB:,.1f} MiB"


def render_section(section: Section) -> str:
    lines = [
        f"### {section.title}",
        "",
        "| What | Ours | Baseline | Ratio | Target | Met? |",
        "|---|---|---|---|---|---|",
    ]
    for r in section.rows:
        met = "—" if r.met is None else ("**yes**" if r.met else "**NO**")
        lines.append(f"| {r.what} | {r.ours} | {r.baseline} | {r.ratio} | {r.target} | {met} |")
    lines.append("")
    lines.extend(f"- {note}" for note in section.notes)
    if section.notes:
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class Config:
    """Sizes and repetitions; ``QUICK`` is a smoke test, ``FULL`` the issues' targets."""

    big: int
    rss_sizes: tuple[int, ...]  # peak RSS over file size (section 5); big is measured too
    reps: int
    resaved: int  # the re-saved checkpoint (issue 11: new inode and mtime, same bytes)
    checkpoint: int
    checkpoint_uploads: int
    small_files: int
    small_size: int
    small_reps: int
    s3_file: int
    s3_reps: int
    s3_download_reps: int  # downloads take ~0.3 s each: more reps for a steadier median
    s3_rss_file: int
    s3_rss_large: int | None  # issue 11: the same extra memory at a much larger upload
    cache_file: int  # issue 4
    cache_reps: int
    cache_throttled_reps: int
    lifecycle_local: int  # issue 5: artifacts on the local store
    lifecycle_s3: int  # ... and on moto (~8 ms per request on 2 cores)
    lifecycle_reps: int
    sync_total: int
    sync_artifacts: int
    sync_reps: int
    startup_reps: int  # fresh interpreters per start-up contender
    # issue 13: chunk-level dedup (benchmarks/chunks.py)
    chunk_versions: int  # versions per checkpoint series
    chunk_version_size: int  # bytes per version (>= 8 MiB, so it is stored as chunks)
    chunk_ingest: int  # one random file ingested into a local store
    chunk_s3_version: int  # bytes per version of the S3 k -> k+1 series
    chunk_cold: int  # cold S3 download, chunked vs one blob
    chunk_cold_reps: int
    chunk_rss_sizes: tuple[int, int]  # peak RSS of a chunked upload/download at both sizes
    series_versions: int  # section 20: versions of one file, a few bytes changed each
    series_size: int


FULL = Config(
    big=GiB,
    rss_sizes=(64 * MiB, 256 * MiB),
    reps=7,
    resaved=512 * MiB,
    checkpoint=64 * MiB,
    checkpoint_uploads=20,
    small_files=1000,
    small_size=4 * KiB,
    small_reps=7,
    s3_file=256 * MiB,
    s3_reps=5,
    s3_download_reps=11,
    s3_rss_file=512 * MiB,
    s3_rss_large=4 * GiB,  # moto takes ~40-90 s for it: full runs only
    cache_file=256 * MiB,
    cache_reps=11,
    cache_throttled_reps=3,
    lifecycle_local=10_000,
    lifecycle_s3=2_000,
    lifecycle_reps=3,
    sync_total=GiB,
    sync_artifacts=100,
    sync_reps=3,
    startup_reps=10,
    chunk_versions=10,
    chunk_version_size=64 * MiB,
    chunk_ingest=GiB,
    chunk_s3_version=64 * MiB,
    chunk_cold=GiB,
    chunk_cold_reps=3,
    chunk_rss_sizes=(512 * MiB, 4 * GiB),
    series_versions=300,
    series_size=12 * MiB,
)
QUICK = Config(
    big=64 * MiB,
    rss_sizes=(16 * MiB, 32 * MiB),
    reps=2,
    resaved=32 * MiB,
    checkpoint=4 * MiB,
    checkpoint_uploads=20,
    small_files=100,
    small_size=4 * KiB,
    small_reps=1,
    s3_file=24 * MiB,
    s3_reps=1,
    s3_download_reps=1,
    s3_rss_file=32 * MiB,
    s3_rss_large=None,
    cache_file=24 * MiB,
    cache_reps=1,
    cache_throttled_reps=1,
    lifecycle_local=500,
    lifecycle_s3=200,
    lifecycle_reps=1,
    sync_total=40 * MiB,
    sync_artifacts=10,
    sync_reps=1,
    startup_reps=3,
    chunk_versions=3,
    chunk_version_size=10 * MiB,
    chunk_ingest=64 * MiB,
    chunk_s3_version=12 * MiB,
    chunk_cold=32 * MiB,
    chunk_cold_reps=1,
    chunk_rss_sizes=(16 * MiB, 64 * MiB),
    series_versions=120,
    series_size=12 * MiB,
)
