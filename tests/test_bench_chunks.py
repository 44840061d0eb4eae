"""Issue 13's benchmark section: what it counts as stored, and a gc it cannot measure."""

from __future__ import annotations

from pathlib import Path

from benchmarks._util import QUICK, ChildResult, GiB, MiB
from benchmarks.chunks import _Gc, _gc_section, ingest_note, rss_note, stored_bytes


def test_stored_bytes_counts_content_objects_not_refs(tmp_path: Path) -> None:
    for key, size in {
        "packs/blake3/ab/cd": 10,
        "manifests/blake3/ab/cd": 4,
        "chunk-index/ef": 2,
        "blobs/blake3/01/23": 3,
        "refs/artifact": 100,
        "quarantine/x": 50,
    }.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x" * size)
    assert stored_bytes(tmp_path) == 19


def _gc(dead_manifests: int, after: int) -> _Gc:
    return _Gc("frozen", 2, 1, 100 * MiB, 150 * MiB, [after, after], True, dead_manifests)


def test_gc_that_left_removed_manifests_is_reported_not_measured() -> None:
    section = _gc_section(QUICK, [_gc(dead_manifests=1, after=150 * MiB)])
    (row,) = section.rows
    assert row.ours == "not measured: gc of chunks not available"
    assert row.met is None
    assert any("frozen 1 of 1" in note for note in section.notes)


def test_gc_that_collected_is_measured_against_live_unique() -> None:
    good, bad = (_gc_section(QUICK, [_gc(0, after)]).rows[0] for after in (110 * MiB, 130 * MiB))
    assert good.met is True and good.ratio.startswith("1.100x")
    assert bad.met is False


def test_rss_note_gives_growth_per_gib_of_file() -> None:
    def child(anon_mib: float) -> ChildResult:
        return ChildResult(peak_rss=0, peak_anon=int(anon_mib * MiB), seconds=1.0)

    results = {
        512 * MiB: {"upload": child(54.0), "download": child(30.0)},
        4 * GiB: {"upload": child(68.0), "download": child(30.0)},
    }
    note = rss_note(512 * MiB, 4 * GiB, results)
    assert "upload 4.0 MiB per GiB" in note and "download 0.0 MiB per GiB" in note


def test_ingest_note_bounds_the_upload_by_its_cpu_time() -> None:
    times = {"cp": 0.5, "chunk": 2.0, "chunked": 3.0, "hash": 0.4, "whole": 1.0}
    times["two workers"] = 1.25
    note = ingest_note(times, cpu=4.0, cores=2)
    assert "less than 2.00 s, 0.25x `cp`'s throughput" in note and "4.0x `cp`'s time" in note
    assert "1.3 cores busy" in note
    assert "the same pieces took 1.250 s, 0.40x `cp`'s throughput" in note
