"""`make demo` runs optuna_cas.demo.main; this runs the same entry point, smaller."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from optuna_cas.demo import main


def test_demo_reports_the_dedup_it_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["--output", str(tmp_path / "demo"), "--trials", "8", "--checkpoint-kib", "256"]) == 0
    )
    out = capsys.readouterr().out
    match = re.search(r"dedup ratio\s+:\s+([0-9.]+)x", out)
    assert match is not None, out
    assert float(match.group(1)) > 1.0
    logical = re.search(r"logical bytes\s+:\s+([0-9.]+) (KiB|MiB)", out)
    stored = re.search(r"stored bytes\s+:\s+([0-9.]+) (KiB|MiB)", out)
    assert logical and stored
    assert "cold download through the cache" in out and "warm download through the cache" in out
    assert "1 hits" in out
    assert "OK" in out.splitlines()[-1]
