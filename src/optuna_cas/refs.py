"""Ref records: what an artifact ID points at.

A ref is a small JSON object stored at ``refs/<artifact_id>`` beside the blobs, so any process
that can reach the store (Optuna's own functions, optuna-dashboard) can resolve an artifact ID
without the Optuna storage.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import Any

from optuna_cas._json import (
    created_field,
    loads_bounded,
    optional_str_field,
    require_object,
    size_field,
    str_field,
)
from optuna_cas._terminal import clip
from optuna_cas._validation import validate_artifact_id
from optuna_cas.digest import Digest
from optuna_cas.exceptions import IntegrityError, MalformedRecordError

__all__ = ["INLINE_LIMIT", "REF_FORMAT_VERSION", "ArtifactRef"]

# Version 2 refs may carry the content itself (``inline``); version 1 refs never do. A ref
# without content is still written as version 1, so stores stay readable by older releases
# wherever they can be.
REF_FORMAT_VERSION = 2
_PLAIN_REF_VERSION = 1
# Content of at most this many bytes is kept inside its ref: one object to write and one to
# read, where a separate blob costs a second file (or two more requests) for a few bytes. A
# 4 KiB file's ref is then about 5.8 KiB of JSON.
INLINE_LIMIT = 4 * 1024
# json.dumps(..., sort_keys=True) builds a new encoder per call; one shared encoder gives the
# same bytes (encode() keeps no state between calls, so threads can share it).
_ENCODER = json.JSONEncoder(sort_keys=True)


@dataclass(frozen=True)
class ArtifactRef:
    """An artifact ID and the blob it names, with the file's descriptive metadata.

    Attributes:
        artifact_id: The per-upload ID (a UUID string for uploads made by this library).
        digest: The blob's digest and size.
        filename: Base name of the uploaded file, if known.
        mimetype: MIME type, if known.
        encoding: Content encoding (e.g. ``"gzip"``), if any.
        created: Upload time, seconds since the epoch.
        inline: The content itself, for small files kept inside the ref (no blob); checked
            against ``digest`` whenever a ref is built or parsed.

    Example:
        >>> from optuna_cas.digest import Digest
        >>> ref = ArtifactRef("a1", Digest.of_bytes(b"x"), filename="x.txt", mimetype="text/plain")
        >>> ArtifactRef.from_json(ref.to_json(), "a1") == ref
        True
    """

    artifact_id: str
    digest: Digest
    filename: str | None = None
    mimetype: str | None = None
    encoding: str | None = None
    created: float = field(default_factory=time.time)
    inline: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        validate_artifact_id(self.artifact_id)
        if self.inline is not None and Digest.of_bytes(self.inline) != self.digest:
            raise IntegrityError(
                f"ref {self.artifact_id!r}: its inline content does not match {self.digest}"
            )

    @property
    def size(self) -> int:
        """The artifact's length in bytes.

        Example:
            >>> from optuna_cas.digest import Digest
            >>> ArtifactRef("a", Digest.of_bytes(b"abc")).size
            3
        """
        return self.digest.size

    def to_json(self) -> bytes:
        """Serialise for storage.

        Example:
            >>> from optuna_cas.digest import Digest
            >>> b'"size": 0' in ArtifactRef("a", Digest.of_bytes(b"")).to_json()
            True
        """
        record: dict[str, Any] = {
            "version": _PLAIN_REF_VERSION if self.inline is None else REF_FORMAT_VERSION,
            "artifact_id": self.artifact_id,
            "digest": str(self.digest),
            "size": self.digest.size,
            "filename": self.filename,
            "mimetype": self.mimetype,
            "encoding": self.encoding,
            "created": self.created,
        }
        # ASCII-only JSON: file names that are not valid UTF-8 (kept by Python as lone
        # surrogates) survive as \udcXX escapes instead of failing to encode.
        text = _ENCODER.encode(record)
        if self.inline is not None:
            # Base64 needs no escaping in JSON: spliced in, not scanned by the encoder one
            # character at a time (17 us for 4 KiB, more than the rest of the ref costs).
            inline = binascii.b2a_base64(self.inline, newline=False).decode("ascii")
            text = f'{text[:-1]}, "inline": "{inline}"}}'
        return text.encode("ascii")

    @classmethod
    def from_json(cls, data: bytes, artifact_id: str) -> ArtifactRef:
        """Parse a stored ref; ``artifact_id`` is where it was found and must match.

        Raises:
            IntegrityError: The record is not a valid ref for ``artifact_id``.

        Example:
            >>> ArtifactRef.from_json(b"{}", "a")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.IntegrityError: ref 'a' is malformed: missing field 'artifact_id'
        """
        what = f"ref {artifact_id!r} is malformed"
        try:
            record = require_object(loads_bounded(data, what), what)
            version = record.get("version", _PLAIN_REF_VERSION)
            if type(version) is not int or version not in (_PLAIN_REF_VERSION, REF_FORMAT_VERSION):
                raise MalformedRecordError(
                    f"{what}: format version {version!r:.40} is not one this release "
                    f"reads (1 or {REF_FORMAT_VERSION}); a newer optuna-cas may have written it"
                )
            created = created_field(record.get("created"))
            ref = cls(
                artifact_id=str_field(record, "artifact_id", what),
                digest=Digest.parse(
                    str_field(record, "digest", what),
                    size_field(record, "size", what),
                ),
                filename=optional_str_field(record, "filename", what),
                mimetype=optional_str_field(record, "mimetype", what),
                encoding=optional_str_field(record, "encoding", what),
                created=0.0 if created is None else created,
                inline=_inline_field(record, what),
            )
        except MalformedRecordError as e:
            raise IntegrityError(str(e)) from e
        except ValueError as e:  # a bad digest or artifact ID
            raise IntegrityError(f"{what}: {e}") from e
        if ref.artifact_id != artifact_id:
            raise IntegrityError(f"{what}: it names artifact {clip(ref.artifact_id)}")
        return ref


def _inline_field(record: dict[str, Any], what: str) -> bytes | None:
    """The ``inline`` content of a parsed ref (base64 text), or None if it has none."""
    text = optional_str_field(record, "inline", what)
    if text is None:
        return None
    if len(text) > 4 * (INLINE_LIMIT // 3 + 1):
        raise MalformedRecordError(f"{what}: inline content longer than {INLINE_LIMIT} bytes")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise MalformedRecordError(f"{what}: inline content is not base64") from e
