"""Section 20: what one more version costs late in a long series of small changes.

A worker that saves a checkpoint every few minutes writes hundreds of versions of one file,
each changing a few bytes. Every version is stored as deltas of the ones before, so the cost
of an upload or a download late in the series, against one early in it, is what the series
costs the user beyond its stored bytes. Measured in CPU seconds of this process (uploads and
reads are CPU-bound on a local store; wall time swings with the VM's neighbours).
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import optuna_cas
from benchmarks._util import Config, Row, Section, mib

WINDOW = 50  # versions per window: medians of the first and of the last
CHANGE = 64  # bytes rewritten in place per version
# The last window against the first, with gc between. Reads also pay per manifest entry
# (each piece is verified on its own), and a delta adds two entries that gc does not merge.
TARGETS = {"upload": 1.25, "download": 1.5}


def _series(cfg: Config, root: Path, gc_every: int) -> tuple[list[float], list[float], int]:
    """Upload and read back each version; CPU seconds of each, and packs the last names."""
    store = optuna_cas.FileSystemArtifactStore(root)
    rng = random.Random(20)
    data = bytearray(rng.randbytes(cfg.series_size))
    source = root.parent / f"{root.name}.bin"
    ups, downs = [], []
    for v in range(cfg.series_versions + 1):
        if v:
            at = rng.randrange(len(data) - CHANGE)
            data[at : at + CHANGE] = rng.randbytes(CHANGE)
        source.write_bytes(data)
        started = time.process_time()
        with open(source, "rb") as f:
            store.write(f"v{v}", f)
        ups.append(time.process_time() - started)
        started = time.process_time()
        with store.open_reader(f"v{v}") as reader:
            same = reader.read() == data
        downs.append(time.process_time() - started)
        if not same:
            raise AssertionError(f"version {v} did not read back")
        if gc_every and v % gc_every == gc_every - 1:
            for _ in range(2):  # the second run deletes the packs the first merged
                optuna_cas.gc(store, grace_period=0, allow_short_grace=True)
    last = store.content.get_ref(f"v{cfg.series_versions}").digest
    return ups[1:], downs[1:], len(store.content.chunks.manifest(last).packs)


def run_series(cfg: Config, data: Path) -> list[Section]:
    data.mkdir(parents=True, exist_ok=True)
    n, size = cfg.series_versions, cfg.series_size
    rows = []
    for gc_every in (0, WINDOW):
        ups, downs, packs = _series(cfg, data / f"gc-{gc_every}", gc_every)
        how = f"gc every {gc_every} versions" if gc_every else "no gc"
        for what, times in (("upload", ups), ("download", downs)):
            first = statistics.median(times[:WINDOW])
            last = statistics.median(times[-WINDOW:])
            ratio = last / first
            rows.append(
                Row(
                    f"{what}, {how} (last names {packs} packs)",
                    f"{last * 1e3:.0f} ms (versions {n - WINDOW + 1}-{n})",
                    f"{first * 1e3:.0f} ms (versions 1-{WINDOW})",
                    f"{ratio:.2f}x",
                    f"≤ {TARGETS[what]}x" if gc_every else "—",
                    ratio <= TARGETS[what] if gc_every else None,
                )
            )
    return [
        Section(
            f"20. A long series: {n} versions of {mib(size)}, {CHANGE} bytes changed each, local",
            rows,
            [
                f"CPU time of this process per upload (`store.write` from an open file) and per "
                f"read back (`open_reader(...).read()`, compared with the source), medians of "
                f"the first and of the last {WINDOW} versions. Each version rewrites {CHANGE} "
                "random bytes in place, so each stores a delta of the one before.",
                "Without gc every version's changed bytes are in a pack of their own, and the "
                "last version's manifest names a pack per version: an upload looks at each, a "
                "read opens each. gc merges small packs once there are 16 of them "
                "(`MERGE_SMALL_AT`), so with gc the count stays near the versions since the "
                "last run. Reads also pay per manifest entry (each piece of a delta is verified "
                "on its own), and the entries grow by up to two per version until a changed "
                "chunk is stored whole again: hence the looser download target.",
            ],
        )
    ]
