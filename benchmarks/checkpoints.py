"""Deterministic checkpoint series for the chunk-dedup study and benchmarks (issue 13).

A *series* is N versions of one model checkpoint, written as ``v000.<ext>``, ``v001.<ext>``, ...
in one directory, in one of three formats:

- ``safetensors``: 8-byte little-endian header length, a JSON header (dtype, shape,
  data_offsets of every tensor, and a ``__metadata__`` whose training history grows every
  version, so the header length, and the offset of every tensor byte, changes between versions),
  then the tensor bytes;
- ``zip``: the layout of ``torch.save`` (``archive/data.pkl`` first, one STORED member
  ``archive/data/<i>`` per tensor, data aligned to 64 bytes, then ``archive/version``); the
  pickle records the step, so it too changes length every version;
- ``raw``: the tensor bytes concatenated, nothing else.

Workloads:

- ``frozen``: a frozen backbone with a tuned head: the head tensors are new every version
  (default 5% of the bytes), everything else identical;
- ``lora``: every version is the same base with its own low-rank delta merged into a few
  attention q/v matrices (default ~7% of the bytes; ``W + scale * B @ A`` in float32);
- ``embedding``: a big embedding matrix (~90% of the bytes) of which every version rewrites 1% of
  the rows, either in a few contiguous runs (``clustered``) or uniformly at random
  (``scattered``);
- ``full``: every version all-new bytes (full fine-tuning, optimizer state).

Everything is drawn from generators seeded by ``(seed, content key, block)``, so the same
arguments give the same bytes, and any block of any tensor can be produced on its own: files are
written block by block (about 1 MiB), never built in memory.

``Series.unique_bytes`` is computed from the generation plan, not from chunking: the tensor bytes
of every version that no earlier version held at the same tensor and row (the first axis; a 1-D
tensor's rows are its elements). Container bytes (headers, zip structures, the pickle) are not
counted, which makes a ratio against it slightly stricter. Changed rows come from fresh random
streams, so they equal an earlier row only with negligible probability (tests check the count
against a byte comparison).

CLI::

    python -m benchmarks.checkpoints --workload frozen --format safetensors \\
        --versions 10 --size 128MiB OUTDIR
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import pickle
import random
import re
import struct
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

FORMATS = ("safetensors", "zip", "raw")
WORKLOADS = ("frozen", "lora", "embedding", "full")
PATTERNS = ("clustered", "scattered")
EXTENSIONS = {"safetensors": ".safetensors", "zip": ".pt", "raw": ".bin"}

_BLOCK_BYTES = 1 * MiB  # rows generated and written at a time: the memory bound
_ITEM = 4  # every tensor is float32 ("F32")
_ZIP_ALIGN = 64  # torch.save aligns every storage to 64 bytes
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip timestamps: the same bytes on every run


# -- generation plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class Lora:
    """A low-rank delta ``scale * B @ A`` merged into a 2-D tensor; ``key`` seeds B and A."""

    key: str
    rank: int = 8
    scale: float = 0.5


@dataclass(frozen=True)
class RowPatch:
    """Rows ``[start, stop)`` of each run overwritten with fresh values seeded by ``key``."""

    key: str
    runs: tuple[tuple[int, int], ...]  # sorted, disjoint

    @property
    def rows(self) -> int:
        return sum(stop - start for start, stop in self.runs)


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of one version: base content, then the LoRA delta, then row patches in order."""

    name: str
    shape: tuple[int, ...]
    base: str  # content key: equal keys give equal bytes
    lora: Lora | None = None
    patches: tuple[RowPatch, ...] = ()

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_elems(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEM


@dataclass(frozen=True)
class VersionPlan:
    tensors: tuple[TensorPlan, ...]
    metadata: dict[str, str]


def new_bytes(previous: TensorPlan | None, current: TensorPlan) -> int:
    """Bytes of ``current`` that the same tensor did not hold in the previous version.

    Keys are never reused by the workloads, so a new base or LoRA key means all rows are new,
    and otherwise only the rows of the patches added since ``previous`` are.
    """
    if (
        previous is None
        or previous.base != current.base
        or previous.lora != current.lora
        or previous.shape != current.shape
    ):
        return current.nbytes
    if current.patches[: len(previous.patches)] != previous.patches:
        raise ValueError(f"patches of {current.name!r} do not extend the previous version's")
    rows: set[int] = set()
    for patch in current.patches[len(previous.patches) :]:
        for start, stop in patch.runs:
            rows.update(range(start, stop))
    return len(rows) * current.row_elems * _ITEM


# -- values -----------------------------------------------------------------------------------


def _rng(seed: int, key: str, *index: int) -> np.random.Generator:
    key_int = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, key_int, *index])))


def _weights(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` float32 values with the byte pattern of trained weights.

    Random sign and mantissa, exponent in a narrow band (|x| in [2^-9, 2^-1)): the high byte of
    every value takes few distinct values, as in real checkpoints, unlike uniform random bytes.
    Generated from raw 64-bit draws with integer ops: about 1 GB/s.
    """
    bits = rng.bit_generator.random_raw((count + 1) // 2).view(np.uint32)[:count]
    exponent = bits >> np.uint32(23)
    exponent &= np.uint32(7)
    exponent += np.uint32(118)
    exponent <<= np.uint32(23)
    bits &= np.uint32(0x807FFFFF)
    bits |= exponent
    return bits.view(np.float32)


def _block_rows(plan: TensorPlan) -> int:
    return max(1, _BLOCK_BYTES // (plan.row_elems * _ITEM))


def tensor_blocks(plan: TensorPlan, seed: int) -> Iterator[np.ndarray]:
    """The tensor's bytes as float32 blocks of whole rows (about 1 MiB each), in order."""
    per_block = _block_rows(plan)
    lora_a = None
    if plan.lora is not None:
        if len(plan.shape) != 2:
            raise ValueError(f"LoRA needs a 2-D tensor, {plan.name!r} has shape {plan.shape}")
        lora_a = _weights(_rng(seed, plan.lora.key, 0), plan.lora.rank * plan.row_elems)
        lora_a = lora_a.reshape(plan.lora.rank, plan.row_elems)
    for block, start in enumerate(range(0, plan.rows, per_block)):
        stop = min(start + per_block, plan.rows)
        values = _weights(_rng(seed, plan.base, block), (stop - start) * plan.row_elems)
        values = values.reshape(stop - start, plan.row_elems)
        if plan.lora is not None and lora_a is not None:
            lora_b = _weights(_rng(seed, plan.lora.key, 1, block), (stop - start) * plan.lora.rank)
            delta = lora_b.reshape(stop - start, plan.lora.rank) @ lora_a
            values += np.float32(plan.lora.scale) * delta
        for patch in plan.patches:
            _apply_patch(values, patch, start, stop, seed)
        yield values


def _apply_patch(values: np.ndarray, patch: RowPatch, start: int, stop: int, seed: int) -> None:
    # Runs are sorted and disjoint: begin at the last run starting at or before ``start``.
    first = max(0, bisect.bisect_right(patch.runs, (start, sys.maxsize)) - 1)
    for run_start, run_stop in patch.runs[first:]:
        if run_start >= stop:
            break
        for row in range(max(run_start, start), min(run_stop, stop)):
            # One stream per row, so a row's value does not depend on where blocks fall.
            values[row - start] = _weights(_rng(seed, patch.key, row), values.shape[1])


# -- formats ----------------------------------------------------------------------------------


def _write_tensors(out: BinaryIO, plan: TensorPlan, seed: int) -> None:
    for block in tensor_blocks(plan, seed):
        out.write(memoryview(block).cast("B"))


def _safetensors_header(version: VersionPlan) -> bytes:
    header: dict[str, object] = {"__metadata__": version.metadata}
    offset = 0
    for t in version.tensors:
        header[t.name] = {
            "dtype": "F32",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    # Like the safetensors library: pad with spaces so the tensor data starts 8-byte aligned.
    return raw + b" " * (-len(raw) % 8)


def write_safetensors(path: Path, version: VersionPlan, seed: int) -> None:
    header = _safetensors_header(version)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header)))
        out.write(header)
        for t in version.tensors:
            _write_tensors(out, t, seed)


def _torch_pickle(version: VersionPlan) -> bytes:
    # torch.save pickles the state dict with a persistent id per storage; a plain dict naming the
    # storage members plays that part here (torch is not needed to read or write it).
    state = {
        "state_dict": {
            t.name: {"storage": str(i), "dtype": "float32", "shape": t.shape}
            for i, t in enumerate(version.tensors)
        },
        "metadata": version.metadata,
    }
    return pickle.dumps(state, protocol=2)


def _stored(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED
    return info


def write_torch_zip(path: Path, version: VersionPlan, seed: int) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_stored("archive/data.pkl"), _torch_pickle(version))
        zf.writestr(_stored("archive/byteorder"), b"little")
        for i, t in enumerate(version.tensors):
            info = _stored(f"archive/data/{i}")
            info.file_size = t.nbytes
            # As torch does: pad the local header's extra field so the data is 64-byte aligned.
            assert zf.fp is not None
            data_at = zf.fp.tell() + 30 + len(info.filename.encode()) + 4
            pad = -data_at % _ZIP_ALIGN
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            with zf.open(info, "w") as member:
                _write_tensors(member, t, seed)  # type: ignore[arg-type]
        zf.writestr(_stored("archive/version"), b"3\n")


def write_raw(path: Path, version: VersionPlan, seed: int) -> None:
    with open(path, "wb") as out:
        for t in version.tensors:
            _write_tensors(out, t, seed)


_WRITERS = {"safetensors": write_safetensors, "zip": write_torch_zip, "raw": write_raw}


# -- workloads --------------------------------------------------------------------------------


def _dim(size: int) -> int:
    """Hidden size: a power of two, so a transformer layer is about 1/24 of the model or less."""
    d = 1 << int(math.log2(max(1.0, math.sqrt(size / (24 * _ITEM)))))
    return max(16, min(1024, d))


def _layer(i: int, d: int, key: str) -> list[TensorPlan]:
    shapes = {
        "attn.q.weight": (d, d),
        "attn.k.weight": (d, d),
        "attn.v.weight": (d, d),
        "attn.o.weight": (d, d),
        "mlp.up.weight": (4 * d, d),
        "mlp.down.weight": (d, 4 * d),
        "norm.weight": (d,),
    }
    return [
        TensorPlan(f"layers.{i}.{name}", shape, f"{key}/layers.{i}.{name}")
        for name, shape in shapes.items()
    ]


def _layer_bytes(d: int) -> int:
    return (12 * d * d + d) * _ITEM


def _backbone(size: int, d: int, key: str, layer_share: float) -> list[TensorPlan]:
    """Embedding plus transformer layers (``layer_share`` of ``size``), about ``size`` bytes."""
    n_layers = max(1, int(layer_share * size // _layer_bytes(d)))
    vocab = max(1, (size - n_layers * _layer_bytes(d)) // (d * _ITEM))
    tensors = [TensorPlan("embed.weight", (vocab, d), f"{key}/embed.weight")]
    for i in range(n_layers):
        tensors.extend(_layer(i, d, key))
    return tensors


def _metadata(k: int, rng: random.Random, history: list[str]) -> dict[str, str]:
    # The history grows by 9 characters a version (more than the 8-byte padding), so the header
    # is longer in every version and every later byte moves.
    history.append(f"{rng.uniform(0.1, 2.5):.6f}")
    return {
        "format": "pt",
        "step": str((k + 1) * 500),
        "trial": str(k),
        "lr": f"{10 ** rng.uniform(-5, -2):.6e}",  # fixed width: only the history grows
        "loss_history": ",".join(history),
    }


def _runs(
    rows: int, count: int, pattern: str, n_runs: int, rng: np.random.Generator
) -> tuple[tuple[int, int], ...]:
    """``count`` distinct rows of ``rows`` as sorted disjoint runs."""
    if pattern == "scattered":
        picked = np.sort(rng.choice(rows, size=count, replace=False))
        runs: list[tuple[int, int]] = []
        for row in picked.tolist():
            if runs and runs[-1][1] == row:
                runs[-1] = (runs[-1][0], row + 1)
            else:
                runs.append((row, row + 1))
        return tuple(runs)
    if pattern != "clustered":
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    n_runs = max(1, min(n_runs, count))
    lengths = [count // n_runs + (1 if i < count % n_runs else 0) for i in range(n_runs)]
    # Stars and bars: sorted gaps in the free rows, then each run shifts by the runs before it.
    gaps = np.sort(rng.integers(0, rows - count + 1, size=n_runs)).tolist()
    result, before = [], 0
    for gap, length in zip(gaps, lengths, strict=True):
        result.append((gap + before, gap + before + length))
        before += length
    return tuple(result)


@dataclass(frozen=True)
class WorkloadOptions:
    """Knobs of the workloads; the defaults are the ones the study measures."""

    head_share: float = 0.05  # frozen: head bytes / file bytes
    lora_share: float = 0.07  # lora: target matrices / file bytes
    lora_rank: int = 8
    row_share: float = 0.01  # embedding: rows rewritten per version
    pattern: str = "clustered"  # embedding: "clustered" or "scattered"
    runs: int = 4  # embedding, clustered: contiguous runs per version
    dim: int | None = None  # hidden size / embedding row length (default: from the size)


def plan_series(
    workload: str, *, versions: int, size: int, seed: int, options: WorkloadOptions | None = None
) -> list[VersionPlan]:
    """The tensors and metadata of every version of a series of about ``size`` bytes each."""
    opts = options or WorkloadOptions()
    if versions < 1 or size < 4 * KiB:
        raise ValueError(f"need versions >= 1 and size >= 4 KiB, got {versions}, {size}")
    d = opts.dim or _dim(size)
    meta_rng = random.Random(seed)
    history: list[str] = []
    result: list[VersionPlan] = []
    if workload == "frozen":
        head_rows = max(1, int(opts.head_share * size) // (d * _ITEM))
        backbone = _backbone(size - head_rows * d * _ITEM, d, "backbone", 0.7)
        for k in range(versions):
            head = [
                TensorPlan("head.weight", (head_rows, d), f"head.weight/v{k}"),
                TensorPlan("head.bias", (head_rows,), f"head.bias/v{k}"),
            ]
            result.append(VersionPlan((*backbone, *head), _metadata(k, meta_rng, history)))
    elif workload == "lora":
        base = _backbone(size, d, "base", 0.8)
        candidates = [t.name for t in base if t.name.endswith((".q.weight", ".v.weight"))]
        n_targets = max(1, min(len(candidates), round(opts.lora_share * size / (d * d * _ITEM))))
        picks = {
            candidates[i]
            for i in np.linspace(0, len(candidates) - 1, n_targets).round().astype(int).tolist()
        }
        for k in range(versions):
            tensors = tuple(
                TensorPlan(t.name, t.shape, t.base, Lora(f"lora/v{k}/{t.name}", opts.lora_rank))
                if t.name in picks
                else t
                for t in base
            )
            result.append(VersionPlan(tensors, _metadata(k, meta_rng, history)))
    elif workload == "embedding":
        tower_n = max(1, round(0.1 * size / (d * d * _ITEM)))
        vocab = max(1, (size - tower_n * d * d * _ITEM) // (d * _ITEM))
        tower = [TensorPlan(f"tower.{i}.weight", (d, d), f"tower.{i}") for i in range(tower_n)]
        row_rng = np.random.default_rng([seed, 1])
        count = max(1, round(opts.row_share * vocab))
        patches: tuple[RowPatch, ...] = ()
        for k in range(versions):
            if k > 0:
                runs = _runs(vocab, count, opts.pattern, opts.runs, row_rng)
                patches = (*patches, RowPatch(f"embed/v{k}", runs))
            embed = TensorPlan("embed.weight", (vocab, d), "embed", patches=patches)
            result.append(VersionPlan((embed, *tower), _metadata(k, meta_rng, history)))
    elif workload == "full":
        for k in range(versions):
            tensors = tuple(_backbone(size, d, f"full/v{k}", 0.7))
            result.append(VersionPlan(tensors, _metadata(k, meta_rng, history)))
    else:
        raise ValueError(f"unknown workload {workload!r}; expected one of {WORKLOADS}")
    return result


# -- series -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """A written series: its files, and the bytes each version added."""

    workload: str
    fmt: str
    paths: tuple[Path, ...]
    new_tensor_bytes: tuple[int, ...]  # per version, see the module docstring
    tensor_bytes: tuple[int, ...]  # per version: all tensor bytes of that version
    file_bytes: tuple[int, ...]  # per version: size of the file

    @property
    def unique_bytes(self) -> int:
        """Tensor bytes of the whole series that no earlier version held at the same place."""
        return sum(self.new_tensor_bytes)

    @property
    def total_bytes(self) -> int:
        return sum(self.file_bytes)


def series_name(workload: str, options: WorkloadOptions | None = None) -> str:
    if workload == "embedding":
        return f"embedding-{(options or WorkloadOptions()).pattern}"
    return workload


def plan_unique(plans: Sequence[VersionPlan]) -> list[int]:
    """Per version: tensor bytes no earlier version held at the same tensor and row."""
    result = []
    previous: dict[str, TensorPlan] = {}
    for version in plans:
        result.append(sum(new_bytes(previous.get(t.name), t) for t in version.tensors))
        previous = {t.name: t for t in version.tensors}
    return result


def generate(
    workload: str,
    fmt: str,
    outdir: Path,
    *,
    versions: int,
    size: int,
    seed: int = 0,
    options: WorkloadOptions | None = None,
) -> Series:
    """Write a series to ``outdir`` (created if missing) and return what it holds.

    Example::

        series = generate("frozen", "safetensors", tmp, versions=3, size=1 * MiB)
        series.unique_bytes  # backbone + 3 heads
    """
    if fmt not in _WRITERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    plans = plan_series(workload, versions=versions, size=size, seed=seed, options=options)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, version in enumerate(plans):
        path = outdir / f"v{k:03d}{EXTENSIONS[fmt]}"
        _WRITERS[fmt](path, version, seed)
        paths.append(path)
    return Series(
        workload=series_name(workload, options),
        fmt=fmt,
        paths=tuple(paths),
        new_tensor_bytes=tuple(plan_unique(plans)),
        tensor_bytes=tuple(sum(t.nbytes for t in v.tensors) for v in plans),
        file_bytes=tuple(p.stat().st_size for p in paths),
    )


# -- CLI --------------------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "b": 1,
    "kib": KiB,
    "kb": 1000,
    "mib": MiB,
    "mb": 1000**2,
    "gib": GiB,
    "gb": 1000**3,
}


def parse_size(text: str) -> int:
    """``"128MiB"`` -> 134217728; plain numbers are bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4MiB, 128MiB, 1GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.checkpoints", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workload", choices=WORKLOADS, default="frozen")
    parser.add_argument("--pattern", choices=PATTERNS, default="clustered", help="embedding rows")
    parser.add_argument("--format", choices=FORMATS, default="safetensors", dest="fmt")
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--size", type=parse_size, default=64 * MiB, help="bytes per version")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    series = generate(
        args.workload,
        args.fmt,
        args.outdir,
        versions=args.versions,
        size=args.size,
        seed=args.seed,
        options=WorkloadOptions(pattern=args.pattern),
    )
    summary = {
        "workload": series.workload,
        "format": series.fmt,
        "files": [str(p) for p in series.paths],
        "file_bytes": list(series.file_bytes),
        "total_bytes": series.total_bytes,
        "new_tensor_bytes": list(series.new_tensor_bytes),
        "unique_bytes": series.unique_bytes,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
