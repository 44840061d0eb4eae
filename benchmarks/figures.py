"""The charts' figures, kept beside them so a ``--merge`` run redraws every chart whole.

A chart draws figures from many sections (throughput from sections 1-2, 2c, 6-7 and 9, say);
a run with ``--only`` measures some of them only. Each run's figures are saved per section
number in ``img/bench-figures.json``; a merge replaces the sections it re-ran and draws the
charts from all of them, as a full run would have.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from benchmarks._util import MemoryPoint, Section, StoredBytes, Throughput

FIGURES_JSON = "bench-figures.json"


def section_number(section: Section) -> str:
    """``"1-2"`` for ``"1-2. Upload of ..."``."""
    return section.title.split(" ", 1)[0].rstrip(".")


def figures_to_draw(sections: list[Section], directory: Path, *, merge: bool) -> list[Section]:
    """Save these sections' figures in ``directory``; the sections whose figures to draw.

    Without ``merge`` the saved figures are these alone. With it, they replace the saved
    figures of the same section numbers, and every saved section is returned (in the order
    first saved; sections new to the file come last).
    """
    path = directory / FIGURES_JSON
    saved: dict[str, Any] = {}
    if merge and path.exists():
        saved = json.loads(path.read_text())
    for section in sections:
        saved[section_number(section)] = {
            "title": section.title,
            "throughput": [dataclasses.asdict(t) for t in section.throughput],
            "memory": [dataclasses.asdict(m) for m in section.memory],
            "baselines": section.baselines,
            "stored": [dataclasses.asdict(b) for b in section.stored],
        }
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1) + "\n")
    return [
        Section(
            figures["title"],
            throughput=[Throughput(**t) for t in figures["throughput"]],
            memory=[MemoryPoint(**m) for m in figures["memory"]],
            baselines=dict(figures["baselines"]),
            stored=[StoredBytes(**b) for b in figures["stored"]],
        )
        for figures in saved.values()
    ]
