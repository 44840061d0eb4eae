"""Key and artifact-ID checks: the one-regex fast path accepts nothing the full rules refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optuna_cas._validation import _segment_problem, validate_artifact_id, validate_key
from optuna_cas.exceptions import InvalidKeyError

# Characters around every rule's edge: dots (".", "..", ".tmp-"), separators, controls, non-ASCII.
_ALPHABET = st.sampled_from(list("ab-_.tmpZ9/\\\x00\x1f\x7fé"))


def _accepted_by_the_full_rules(key: str) -> bool:
    return all(_segment_problem(segment) is None for segment in key.split("/"))


@given(st.text(_ALPHABET, max_size=12))
def test_validate_key_agrees_with_the_segment_rules(key: str) -> None:
    try:
        validate_key(key)
    except InvalidKeyError:
        accepted = False
    else:
        accepted = True
    assert accepted == _accepted_by_the_full_rules(key), key


@pytest.mark.parametrize("length", [62, 63, 64, 255, 256])
def test_long_segments_follow_the_length_rule(length: int) -> None:
    key = "blobs/" + "a" * length
    if length <= 255:
        assert validate_key(key) == key
    else:
        with pytest.raises(InvalidKeyError, match="longer than 255 bytes"):
            validate_key(key)


# One ID breaking each rule of validate_artifact_id, and an ID Optuna's S3/GCS stores accept.
_REFUSED_IDS = {
    "": "it is empty",
    "..": "it is a relative path component",
    "runs/1/model.pt": "it contains a path separator",
    "a\\b": "it contains a path separator",
    "a\x00b": "it contains a NUL or control character",
    "é" * 128: "it is longer than 255 bytes",
    ".tmp-x": "names starting with '.tmp-' are reserved for temporary files",
}


@pytest.mark.parametrize("artifact_id", list(_REFUSED_IDS), ids=repr)
def test_a_refused_id_is_named_with_its_rule(artifact_id: str) -> None:
    with pytest.raises(InvalidKeyError) as caught:
        validate_artifact_id(artifact_id)
    assert str(caught.value) == (
        f"Invalid artifact_id: {artifact_id!r} ({_REFUSED_IDS[artifact_id]})"
    )


def test_the_documented_id_rules_are_the_enforced_ones() -> None:
    # Optuna's S3 and GCS stores accept any object key; ours refuse these IDs (refs/<id> must
    # be one segment). docs/concepts.md lists the differences: every rule, in its own words.
    docs = (Path(__file__).resolve().parents[1] / "docs" / "concepts.md").read_text()
    section = docs[docs.index("## Deliberate differences from `optuna.artifacts`") :]
    missing = {rule for rule in _REFUSED_IDS.values() if rule not in " ".join(section.split())}
    assert not missing, f"docs/concepts.md does not state: {sorted(missing)}"
