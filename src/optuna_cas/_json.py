"""Bounded parsing of JSON records that were stored by someone else: refs and Optuna attributes.

Everything read back from a store or an Optuna storage is untrusted (DESIGN.md invariant 13).
``json.loads`` recurses once per nesting level, so ``[[[[...]]]]`` a hundred thousand deep
raises ``RecursionError`` (not a ``ValueError``) from deep inside the parser, and a huge value
costs memory and time. :func:`loads_bounded` checks the size, then the nesting depth with one
linear scan, and only then parses: every failure is a :class:`MalformedRecordError` that names
the record. The field readers below check each value's type, so a record that parses but has a
list where a file name belongs is refused too, never passed on to crash a caller later.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from optuna_cas.exceptions import MalformedRecordError

__all__ = [
    "MAX_RECORD_DEPTH",
    "MAX_RECORD_SIZE",
    "created_field",
    "loads_bounded",
    "optional_size_field",
    "optional_str_field",
    "require_object",
    "size_field",
    "str_field",
]

# Our refs and metadata are flat objects well under a kilobyte; these bounds leave room for
# records written by other tools while keeping any single parse cheap and shallow.
MAX_RECORD_SIZE = 1024 * 1024
MAX_RECORD_DEPTH = 32

# One token at a time: a whole string (escapes included, possibly unterminated) or a bracket.
# Brackets inside strings are consumed with the string and so never counted.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")


def nesting_depth(text: str, *, stop_above: int | None = None) -> int:
    """The deepest bracket nesting in ``text``, ignoring brackets inside JSON strings.

    Linear in the length of ``text`` and never recursive, whatever the input. With
    ``stop_above``, the scan ends as soon as the depth exceeds it (and returns that depth).

    Example:
        >>> nesting_depth('{"a": [1, "]]]["], "b": {}}')
        2
        >>> nesting_depth("[" * 10**6, stop_above=3)
        4
    """
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        elif token in ("]", "}"):
            depth = max(depth - 1, 0)  # unbalanced: json.loads will refuse it
    return deepest


def loads_bounded(data: str | bytes, what: str, *, max_size: int = MAX_RECORD_SIZE) -> Any:
    """``json.loads`` for untrusted records: bounded size and depth, one error type.

    Args:
        data: The stored text (``bytes`` are decoded as UTF-8).
        what: Names the record; messages read ``"<what>: <reason>"``.
        max_size: Largest accepted length (characters for ``str``, bytes for ``bytes``).

    Returns:
        The parsed value (any JSON type).

    Raises:
        MalformedRecordError: ``data`` is too large, too deeply nested, not UTF-8, not JSON
            or not text at all. The message is ``"<what>: <reason>"``.

    Example:
        >>> loads_bounded('{"a": [1, 2]}', "example")
        {'a': [1, 2]}
        >>> loads_bounded("[" * 100_000, "attribute 'x'")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.MalformedRecordError: attribute 'x': nested deeper than 32 levels
    """
    if isinstance(data, bytes | bytearray):
        if len(data) > max_size:
            raise MalformedRecordError(f"{what}: larger than {max_size} bytes")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedRecordError(f"{what}: not UTF-8 ({e})") from e
    elif isinstance(data, str):
        if len(data) > max_size:
            raise MalformedRecordError(f"{what}: longer than {max_size} characters")
        text = data
    else:
        raise MalformedRecordError(f"{what}: not JSON text but {_a(data)}")
    if nesting_depth(text, stop_above=MAX_RECORD_DEPTH) > MAX_RECORD_DEPTH:
        raise MalformedRecordError(f"{what}: nested deeper than {MAX_RECORD_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        # ValueError covers JSONDecodeError and integers too long to convert. RecursionError
        # cannot happen within MAX_RECORD_DEPTH; caught anyway so that it can never escape.
        raise MalformedRecordError(f"{what}: not valid JSON ({e})") from e


def require_object(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a :class:`MalformedRecordError`.

    Example:
        >>> require_object([1], "ref 'a'")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.MalformedRecordError: ref 'a': not a JSON object but a list
    """
    if not isinstance(value, dict):
        raise MalformedRecordError(f"{what}: not a JSON object but {_a(value)}")
    return value


def str_field(record: dict[str, Any], name: str, what: str) -> str:
    """A required string field.

    Example:
        >>> str_field({"digest": 3}, "digest", "ref 'a'")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.MalformedRecordError: ref 'a': field 'digest' is an int, not a string
    """
    if name not in record:
        raise MalformedRecordError(f"{what}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, str):
        raise MalformedRecordError(f"{what}: field {name!r} is {_a(value)}, not a string")
    return value


def optional_str_field(
    record: dict[str, Any], name: str, what: str, *, required: bool = False
) -> str | None:
    """A field that is a string or null; absent counts as null unless ``required``.

    Example:
        >>> optional_str_field({}, "encoding", "ref 'a'") is None
        True
        >>> optional_str_field({}, "encoding", "meta", required=True)
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.MalformedRecordError: meta: missing field 'encoding'
    """
    if name not in record:
        if required:
            raise MalformedRecordError(f"{what}: missing field {name!r}")
        return None
    value = record[name]
    if value is not None and not isinstance(value, str):
        raise MalformedRecordError(f"{what}: field {name!r} is {_a(value)}, not a string or null")
    return value


def optional_size_field(record: dict[str, Any], name: str, what: str) -> int | None:
    """A byte count: an integer >= 0 (``true`` is not one); absent or null is None.

    Example:
        >>> optional_size_field({"size": -1}, "size", "ref 'a'")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.MalformedRecordError: ref 'a': field 'size' is -1, not an integer >= 0
    """
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        shown = repr(value) if isinstance(value, int) else _a(value)
        raise MalformedRecordError(f"{what}: field {name!r} is {shown}, not an integer >= 0")
    return value


def size_field(record: dict[str, Any], name: str, what: str) -> int:
    """A required byte count (see :func:`optional_size_field`).

    Example:
        >>> size_field({"size": 3}, "size", "ref 'a'")
        3
    """
    value = optional_size_field(record, name, what)
    if value is None:
        raise MalformedRecordError(f"{what}: missing field {name!r}")
    return value


def created_field(value: Any) -> float | None:
    """An upload time in epoch seconds, or None when it is unknown.

    Optuna never reads ``created``; only our listing order does. So a value that is not a
    finite number is not worth refusing a record for: a numeric string counts as its number,
    anything else (text, a list, ``true``, NaN) as unknown.

    Example:
        >>> created_field(12), created_field("12.5"), created_field("yesterday")
        (12.0, 12.5, None)
    """
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | float) and not (
        isinstance(value, str) and len(value) <= 64 and _NUMBER.fullmatch(value)
    ):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return number if math.isfinite(number) else None


def _a(value: Any) -> str:
    """``value``'s JSON type with an article, for messages."""
    name = type(value).__name__
    return ("an " if name[0] in "aeiou" else "a ") + name
