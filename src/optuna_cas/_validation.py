"""Checks on caller-supplied names, done before any I/O.

Artifact IDs become one path segment (``refs/<id>``) in every backend, so they must be a single
safe segment. Keys are ``/``-separated sequences of such segments.
"""

from __future__ import annotations

import re
import reprlib

from optuna_cas.exceptions import InvalidKeyError

# Longest single segment most filesystems accept (NAME_MAX on Linux, macOS, NTFS).
MAX_SEGMENT_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Keys this library builds (``blobs/blake3/ab/cd...``, ``refs/<uuid>``) pass in one match:
# short ASCII segments that do not start with a dot cannot hit any rule of _segment_problem.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}(?:/[A-Za-z0-9_-][A-Za-z0-9._-]{0,62})*")
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}")  # e.g. every UUID


def _segment_problem(segment: str) -> str | None:
    if segment == "":
        return "it is empty"
    if segment in (".", ".."):
        return "it is a relative path component"
    if "/" in segment or "\\" in segment:
        return "it contains a path separator"
    if _CONTROL.search(segment):
        return "it contains a NUL or control character"
    # A UTF-8 character takes at most 4 bytes: only long names need encoding to measure.
    if len(segment) * 4 > MAX_SEGMENT_BYTES and (
        len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES
    ):
        return f"it is longer than {MAX_SEGMENT_BYTES} bytes"
    if segment.startswith(".tmp-"):
        return "names starting with '.tmp-' are reserved for temporary files"
    return None


def validate_artifact_id(artifact_id: object) -> str:
    """Return ``artifact_id`` if it is a safe single path segment, else raise.

    Args:
        artifact_id: The value to check.

    Returns:
        The same string.

    Raises:
        InvalidKeyError: A ``ValueError`` whose message starts ``Invalid artifact_id``
            (Optuna's wording) and names the value.

    Example:
        >>> validate_artifact_id("0b6e1f9c-3f7e-4c53-9a39-2f1c9f5f0a11")
        '0b6e1f9c-3f7e-4c53-9a39-2f1c9f5f0a11'
        >>> validate_artifact_id("../etc")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.InvalidKeyError: Invalid artifact_id: '../etc' (it contains a path separator)
    """
    if not isinstance(artifact_id, str):
        raise InvalidKeyError(
            f"Invalid artifact_id: {artifact_id!r} (expected str, got {type(artifact_id).__name__})"
        )
    if _PLAIN_SEGMENT.fullmatch(artifact_id):
        return artifact_id  # checked three times per upload: one match instead of six tests
    problem = _segment_problem(artifact_id)
    if problem is not None:
        raise InvalidKeyError(f"Invalid artifact_id: {artifact_id!r} ({problem})")
    return artifact_id


def validate_key(key: object) -> str:
    """Return ``key`` if every ``/``-separated segment of it is safe, else raise.

    Args:
        key: A backend key such as ``"refs/0b6e..."``.

    Returns:
        The same string.

    Raises:
        InvalidKeyError: Naming the key and what is wrong with it.

    Example:
        >>> validate_key("blobs/blake3/ab/cdef")
        'blobs/blake3/ab/cdef'
        >>> validate_key("/abs")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.InvalidKeyError: Invalid key: '/abs' (segment '' : it is empty)
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"Invalid key: {key!r} (expected str, got {type(key).__name__})")
    if _PLAIN_KEY.fullmatch(key):
        return key
    for segment in key.split("/"):
        problem = _segment_problem(segment)
        if problem is not None:
            raise InvalidKeyError(f"Invalid key: {key!r} (segment {segment!r} : {problem})")
    return key


def validate_prefix(prefix: str) -> str:
    """Normalise a store prefix (``""`` or ``"a/b"``) and check its segments.

    Args:
        prefix: A key prefix, with or without surrounding slashes.

    Returns:
        The prefix without leading/trailing ``/``.

    Raises:
        InvalidKeyError: A segment is unsafe.

    Example:
        >>> validate_prefix("/team/run-1/")
        'team/run-1'
    """
    stripped = prefix.strip("/")
    if stripped:
        try:
            validate_key(stripped)
        except InvalidKeyError as e:
            raise InvalidKeyError(f"Invalid prefix: {prefix!r} ({e})") from None
    return stripped


def shorten_name(name: str, max_bytes: int) -> str:
    """Cut a file name to at most ``max_bytes`` bytes on disk, never inside a character.

    File-system limits count bytes (255 on Linux), not characters: ``"é" * 200`` is 400.
    Names that are not valid UTF-8 (Python keeps their bytes as surrogates) count as the
    bytes they came from.

    Example:
        >>> shorten_name("é" * 10, 5)
        'éé'
    """
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= max_bytes:
        return name
    return encoded[:max_bytes].decode("utf-8", "ignore")


def check_optional_text(**fields: object) -> None:
    """Raise ``TypeError`` naming the first field that is neither a string nor ``None``.

    A ref stores them as JSON strings and refuses anything else when read: an upload given
    ``mimetype=1`` returned an ID whose artifact could then not be read (found by a probe).

    Example:
        >>> check_optional_text(filename="a.txt", mimetype=None)
        >>> check_optional_text(mimetype=1)
        Traceback (most recent call last):
        ...
        TypeError: mimetype must be a str or None, got int: 1
    """
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise TypeError(
                f"{name} must be a str or None, got {type(value).__name__}: {reprlib.repr(value)}"
            )
