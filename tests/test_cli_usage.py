"""The CLI's answers to what a new user types wrong: exit codes, messages, quiet output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optuna_cas.cli import main


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s4://bucket/x", "unsupported scheme 's4'"),
        ("gs://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("file://relative/x", "must not name a host"),
        ("file://", "names no directory"),
        ("s3://b/p#frag", "fragments"),
        ("s3://b/p?x=1", "query strings"),
        ("s3://[", "Invalid store URL"),
        ("memory://", "survive"),
    ],
)
def test_a_malformed_store_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    assert main(["--store", url, "--json", "ls"]) == 2
    out, err = capsys.readouterr()
    assert message in err
    assert json.loads(out)["error"]["kind"] == "usage"
    assert "memory" not in err.split("give", 1)[-1]  # only schemes the CLI takes are offered


def test_an_unsupported_scheme_lists_only_what_the_cli_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--store", "s4://bucket/x", "stats"]) == 2
    err = capsys.readouterr().err
    assert "--store 's4://bucket/x'" in err and "gcs://" in err and "memory" not in err


def test_a_malformed_sync_destination_is_named_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "src").mkdir()
    assert main(["sync", str(tmp_path / "src"), "gs://"]) == 2
    assert "DST: Store URL 'gs://' names no bucket" in capsys.readouterr().err


def test_an_explicitly_empty_store_is_a_usage_error_not_the_default_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "default").mkdir()
    monkeypatch.setenv("OPTUNA_CAS_STORE", str(tmp_path / "default"))
    assert main(["--store", "", "ls"]) == 2
    assert "--store is empty" in capsys.readouterr().err
    assert main(["ls"]) == 0  # without --store, the variable is the store
