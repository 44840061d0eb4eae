"""Key and artifact-ID checks: the one-regex fast path accepts nothing the full rules refuse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optuna_cas._validation import _segment_problem, validate_key
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
