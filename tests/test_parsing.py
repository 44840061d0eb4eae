"""Bounded parsing of stored records: refs and Optuna's ``artifacts:<id>`` attributes.

Stored records are untrusted input (DESIGN.md invariant 13): whatever a ref or an attribute
holds, reading it ends in a result or one of our errors naming the record, never in a
``RecursionError`` or a bare ``KeyError``/``TypeError``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import (
    ArtifactMeta,
    ArtifactRef,
    Digest,
    FileSystemArtifactStore,
    MemoryArtifactStore,
    download_artifact,
)
from optuna_cas._json import MAX_RECORD_DEPTH, MAX_RECORD_SIZE, loads_bounded, nesting_depth
from optuna_cas.exceptions import IntegrityError, MalformedRecordError

DEEP = 100_000  # far beyond Python's recursion limit

DEEP_TEXTS = {
    "arrays": "[" * DEEP + "]" * DEEP,
    "objects": '{"a":' * DEEP + "1" + "}" * DEEP,
    "unclosed": "[" * DEEP,
    "inside an object": '{"artifact_id": "a", "digest": ' + "[" * DEEP + "]" * DEEP + "}",
}


# -- loads_bounded ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", DEEP_TEXTS.values(), ids=DEEP_TEXTS.keys())
def test_deep_nesting_is_refused_before_parsing(text: str) -> None:
    with pytest.raises(MalformedRecordError, match=r"^ref 'x': nested deeper than 32 levels"):
        loads_bounded(text, "ref 'x'")
    with pytest.raises(MalformedRecordError, match="nested deeper"):
        loads_bounded(text.encode(), "ref 'x'")


def test_depth_limit_is_exact() -> None:
    assert loads_bounded("[" * MAX_RECORD_DEPTH + "]" * MAX_RECORD_DEPTH, "x") is not None
    with pytest.raises(MalformedRecordError):
        too_deep = MAX_RECORD_DEPTH + 1
        loads_bounded("[" * too_deep + "]" * too_deep, "x")


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('"[[[["', 0),  # brackets inside a string do not count
        ('["\\"[[[[", "]"]', 1),  # nor after an escaped quote
        ('["\\\\", [[1]]]', 3),  # an escaped backslash ends the string before the quote
        ('{"a": "}}}}"}', 1),
        ('"unterminated [[[[', 0),
        ("]]]][[", 2),  # unbalanced: depth never goes below zero
    ],
)
def test_nesting_depth_ignores_strings_and_honours_escapes(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_brackets_in_strings_do_not_trip_the_depth_limit() -> None:
    text = json.dumps({"filename": "[" * 10_000, "mimetype": '\\"{' * 1000})
    assert loads_bounded(text, "x")["filename"] == "[" * 10_000


def test_size_is_capped_for_text_and_bytes() -> None:
    big = '"' + "x" * MAX_RECORD_SIZE + '"'
    with pytest.raises(MalformedRecordError, match="longer than"):
        loads_bounded(big, "attr 'k'")
    with pytest.raises(MalformedRecordError, match="larger than"):
        loads_bounded(big.encode(), "ref 'k'")
    assert loads_bounded("[1]", "x", max_size=3) == [1]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        ("not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("1" * 5000, "not valid JSON"),  # beyond Python's int-conversion limit
        ({"a": 1}, "not JSON text but a dict"),
        (7, "not JSON text but an int"),
        (None, "not JSON text but a NoneType"),
    ],
)
def test_every_failure_is_one_error_that_names_the_record(data: Any, reason: str) -> None:
    with pytest.raises(MalformedRecordError, match=f"^thing 'q': {reason}"):
        loads_bounded(data, "thing 'q'")


# -- refs -----------------------------------------------------------------------------------


def _plant_ref(store: FileSystemArtifactStore | MemoryArtifactStore, raw: bytes) -> None:
    store.content.backend.write("refs/a1", io.BytesIO(raw))


def _stores(tmp_path: Path) -> list[FileSystemArtifactStore | MemoryArtifactStore]:
    return [FileSystemArtifactStore(tmp_path / "store"), MemoryArtifactStore()]


@pytest.mark.parametrize("text", DEEP_TEXTS.values(), ids=DEEP_TEXTS.keys())
def test_deeply_nested_ref_is_an_integrity_error_everywhere(tmp_path: Path, text: str) -> None:
    for store in _stores(tmp_path):
        _plant_ref(store, text.encode())
        with pytest.raises(IntegrityError, match="ref 'a1' is malformed: nested deeper"):
            store.get_ref("a1")
        target = tmp_path / f"out-{type(store).__name__}"
        with pytest.raises(IntegrityError, match="ref 'a1'"):
            download_artifact(artifact_store=store, file_path=str(target), artifact_id="a1")
        assert not target.exists()
        with pytest.raises(IntegrityError), store.open_reader("a1"):
            pass


GOOD_DIGEST = str(Digest.of_bytes(b"abc"))
GOOD_REF = {"artifact_id": "a1", "digest": GOOD_DIGEST, "size": 3, "filename": "f.txt"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"filename": 3}, "field 'filename' is an int, not a string or null"),
        ({"mimetype": ["text/plain"]}, "field 'mimetype' is a list"),
        ({"encoding": {"a": 1}}, "field 'encoding' is a dict"),
        ({"digest": 5}, "field 'digest' is an int, not a string"),
        ({"size": True}, "field 'size' is True"),
        ({"size": -1}, "field 'size' is -1"),
        ({"size": "3"}, "field 'size' is a str"),
        ({"size": 3.0}, "field 'size' is a float"),
        ({"size": None}, "missing field 'size'"),
        ({"artifact_id": 1}, "field 'artifact_id' is an int"),
        ({"artifact_id": "a2"}, "it names artifact 'a2'"),
        ({"digest": "blake3:zz"}, "Invalid blake3 hex digest"),
        ({"size": 4}, None),  # a wrong size is for the verified read to find, not the parser
    ],
)
def test_ref_fields_are_type_checked(change: dict[str, Any], message: str | None) -> None:
    raw = json.dumps(GOOD_REF | change).encode()
    if message is None:
        assert ArtifactRef.from_json(raw, "a1").size == 4
        return
    with pytest.raises(IntegrityError, match=f"ref 'a1' is malformed: .*{message}"):
        ArtifactRef.from_json(raw, "a1")


@pytest.mark.parametrize("raw", [b"[]", b"null", b'"ref"', b"3"])
def test_ref_that_is_not_an_object(raw: bytes) -> None:
    with pytest.raises(IntegrityError, match="ref 'a1' is malformed: not a JSON object"):
        ArtifactRef.from_json(raw, "a1")


@pytest.mark.parametrize(
    ("created", "expected"),
    [(12.5, 12.5), (7, 7.0), ("12.5", 12.5), ("yesterday", 0.0), ([1], 0.0), (None, 0.0)],
)
def test_ref_created_that_is_not_a_number_is_unknown(created: Any, expected: float) -> None:
    raw = json.dumps(GOOD_REF | {"created": created}).encode()
    assert ArtifactRef.from_json(raw, "a1").created == expected


# -- ArtifactMeta ----------------------------------------------------------------------------


META = {"artifact_id": "i", "filename": "f", "mimetype": "m", "encoding": None}


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        ("12.5", 12.5),
        (" 3e2 ", 300.0),
        ("yesterday", None),
        ("nan", None),
        ("1e999", None),
        (float("inf"), None),
        (True, None),
        ({"t": 1}, None),
        pytest.param(10**400, None, id="int-beyond-float"),
        (5, 5.0),
    ],
)
def test_meta_created_that_is_not_a_number_is_unknown(created: Any, expected: float | None) -> None:
    assert ArtifactMeta.from_json(json.dumps(META | {"created": created})).created == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"filename": 3}, "field 'filename' is an int"),
        ({"size": False}, "field 'size' is False"),
        ({"size": "7"}, "field 'size' is a str"),
        ({"digest": []}, "field 'digest' is a list"),
        ({"encoding": 1.5}, "field 'encoding' is a float"),
    ],
)
def test_meta_fields_are_type_checked(change: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedRecordError, match=f"^attr 'k': {message}"):
        ArtifactMeta.from_json(json.dumps(META | change), what="attr 'k'")


@pytest.mark.parametrize("missing", ["artifact_id", "filename", "mimetype", "encoding"])
def test_meta_needs_optunas_four_keys(missing: str) -> None:
    record = {k: v for k, v in META.items() if k != missing}
    with pytest.raises(MalformedRecordError, match=f"missing field '{missing}'"):
        ArtifactMeta.from_json(json.dumps(record))


def test_meta_accepts_null_filename_and_mimetype_as_optuna_does() -> None:
    meta = ArtifactMeta.from_json(json.dumps(META | {"filename": None, "mimetype": None}))
    assert (meta.filename, meta.mimetype) == (None, None)


def test_a_chunk_table_listing_more_packs_than_entries_is_refused() -> None:
    """Every listed pack costs the reader a Digest: a table of packs alone only costs memory."""
    import struct

    from optuna_cas.chunks.table import INDEX_MAGIC, parse_table
    from optuna_cas.exceptions import IntegrityError

    packs = b"".join(bytes([i]) * 32 + struct.pack("<Q", 1000) for i in range(3))
    table = INDEX_MAGIC + struct.pack("<II", 3, 0) + packs
    with pytest.raises(IntegrityError, match="index x is malformed: 3 packs for 0 entries"):
        parse_table(table, "index x", INDEX_MAGIC)
