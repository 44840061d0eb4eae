"""``optuna-cas verify --storage URL --study NAME [--repair]``: the console script, in subprocesses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import optuna

from optuna_cas import FileSystemArtifactStore
from optuna_cas.refs import INLINE_LIMIT
from tests.test_cli import assert_no_raw_controls, run

# Above INLINE_LIMIT: blobs, which gc can take and a put can bring back. (A small file's
# content lives only in its ref: tests/operations/test_reconcile.py covers that case.)
KEPT = b"kept bytes" * (INLINE_LIMIT // 10 + 1)
LOST = b"lost bytes" * (INLINE_LIMIT // 10 + 1)


def dangling_study(tmp_path: Path, make_file: Callable[..., Path]) -> tuple[list[str], str, str]:
    """A study whose trial 1 lost one artifact's ref (blob kept) and another's bytes.

    Returns the arguments that name store, storage and study, and the two IDs.
    """
    db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    study = optuna.create_study(study_name="s", storage=db)
    study.ask(), study.ask()
    store = ["--store", str(tmp_path / "store")]
    trial = ["--storage", db, "--study", "s", "--trial", "1"]
    ids = [
        run(*store, "-q", "put", str(make_file(data, name=name)), *trial).stdout.split()[-1]
        for data, name in [(KEPT, "kept.txt"), (LOST, "lost.txt")]
    ]
    for artifact_id in ids:
        run(*store, "rm", artifact_id)  # no --trial: only the ref goes
    run(*store, "gc", "--grace", "0", "--allow-short-grace")  # both blobs go...
    run(*store, "put", str(make_file(KEPT)))  # ...and one comes back
    return [*store, "verify", "--storage", db, "--study", "s"], ids[0], ids[1]


def test_dangling_metadata_exits_1_then_repair_mends_it(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    verify, kept, lost = dangling_study(tmp_path, make_file)

    found = run(*verify, check=False)
    assert found.returncode == 1, found.stderr
    lines = found.stdout.splitlines()
    assert any(
        line.startswith("DANGLING") and kept in line and "(trial 1)" in line for line in lines
    )
    assert any(line.startswith("LOST") and lost in line and "(trial 1)" in line for line in lines)
    assert "other studies sharing the store may use them" in found.stdout
    assert "--repair" in found.stdout

    repaired = run(*verify, "--repair")
    lines = repaired.stdout.splitlines()
    assert any(
        line.startswith("REBUILT") and kept in line and "(trial 1)" in line for line in lines
    )
    assert any(
        line.startswith("DELETED") and lost in line and "(trial 1)" in line for line in lines
    )

    assert "0 dangling" in run(*verify).stdout  # exit 0: nothing left
    out = tmp_path / "out.txt"
    run("--store", str(tmp_path / "store"), "get", kept, str(out))
    assert out.read_bytes() == KEPT


def test_json_is_one_document(tmp_path: Path, make_file: Callable[..., Path]) -> None:
    verify, kept, lost = dangling_study(tmp_path, make_file)
    result = run(*verify, "--json", check=False)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False and document["study"] == "s"
    assert document["repairable"] == [
        {"artifact_id": kept, "trial_number": 1, "reason": document["repairable"][0]["reason"]}
    ]
    assert [f["artifact_id"] for f in document["lost"]] == [lost]
    assert document["counts"]["unreferenced"] == 1  # the plain put's ref

    repaired = json.loads(run(*verify, "--repair", "--json").stdout)
    assert repaired["ok"] is True
    assert [f["artifact_id"] for f in repaired["rebuilt"]] == [kept]
    assert [f["artifact_id"] for f in repaired["deleted"]] == [lost]


def test_malformed_entries_are_named_escaped(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    study = optuna.create_study(study_name="s", storage=db)
    trial_id = study.ask()._trial_id
    study._storage.set_trial_system_attr(trial_id, "artifacts:\x1b[2J\u202eevil", "{not json")
    FileSystemArtifactStore(tmp_path / "store")  # an empty store (read commands create none)
    verify = ["--store", str(tmp_path / "store"), "verify", "--storage", db, "--study", "s"]
    for extra in ([], ["--repair"]):  # repair leaves malformed entries alone
        result = run(*verify, *extra, check=False)
        assert result.returncode == 1
        assert_no_raw_controls(result.stdout + result.stderr)
        (line,) = [x for x in result.stdout.splitlines() if x.startswith("MALFORMED")]
        assert "\\x1b[2J\\u202eevil  (trial 0)" in line and "not valid JSON" in line


def test_repair_and_study_options_are_checked(tmp_path: Path) -> None:
    store = ["--store", str(tmp_path / "store")]
    FileSystemArtifactStore(tmp_path / "store")
    no_study = run(*store, "verify", "--repair", check=False)
    assert no_study.returncode == 2 and "--study" in no_study.stderr
    db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    optuna.create_study(study_name="s", storage=db)
    both = run(*store, "verify", "--fast", "--storage", db, "--study", "s", check=False)
    assert both.returncode == 2 and "without --study" in both.stderr
    missing = run(*store, "verify", "--storage", db, "--study", "nope", check=False)
    assert missing.returncode == 1 and "no study named 'nope'" in missing.stderr


def test_check_of_a_study_in_the_wrong_store_does_not_promise_a_repair(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    # None of the study's artifacts is in this store: --repair records nothing deleted (it is
    # more likely the wrong store), so the check without it must not say that it would.
    verify, _kept, lost = dangling_study(tmp_path, make_file)
    other = ["--store", str(tmp_path / "other")]
    run(*other, "put", str(make_file(b"unrelated")))
    found = run(*other, *verify[2:], check=False)
    assert found.returncode == 1, found.stderr
    line = next(line for line in found.stdout.splitlines() if lost in line)
    assert "repair records it deleted" not in line and "none of the study's artifacts" in line
    assert "run again with --repair" not in found.stdout
    repaired = run(*other, *verify[2:], "--repair", check=False)
    assert "0 deletions recorded" in repaired.stdout
