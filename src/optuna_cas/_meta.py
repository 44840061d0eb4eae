"""``ArtifactMeta`` and its JSON form in Optuna's system attributes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from optuna_cas._json import (
    created_field,
    loads_bounded,
    optional_size_field,
    optional_str_field,
    require_object,
    str_field,
)

__all__ = ["ARTIFACTS_ATTR_PREFIX", "DEFAULT_MIME_TYPE", "ArtifactMeta", "is_tombstone"]

ARTIFACTS_ATTR_PREFIX = "artifacts:"
DEFAULT_MIME_TYPE = "application/octet-stream"


@dataclass
class ArtifactMeta:
    """What Optuna's storage records about an artifact: Optuna's four fields, then three more.

    The JSON keeps Optuna's field names, so Optuna's ``get_all_artifact_meta`` and
    optuna-dashboard read entries written by optuna-cas (the extra keys are ignored by them).

    Attributes:
        artifact_id: The per-upload ID.
        filename: Base name of the uploaded file (None only in entries other tools wrote so).
        mimetype: MIME type (None only in entries other tools wrote so).
        encoding: Content encoding, or None.
        digest: ``"blake3:<hex>"`` of the content (None for entries written by Optuna itself).
        size: Length in bytes (None for entries written by Optuna itself).
        created: Upload time, epoch seconds (None for entries written by Optuna itself); used
            to list artifacts in upload order on every storage (RDB storages return system
            attributes in key order).

    Example:
        >>> meta = ArtifactMeta("id1", "model.pt", "application/octet-stream", None, None, 3, 0.5)
        >>> ArtifactMeta.from_json(meta.to_json()) == meta
        True
    """

    artifact_id: str
    filename: str | None
    mimetype: str | None
    encoding: str | None
    digest: str | None = None
    size: int | None = None
    created: float | None = None

    def to_json(self) -> str:
        """Optuna's JSON string form, with our three extra keys: digest, size and created.

        Example:
            >>> ArtifactMeta("i", "f", "text/plain", None).to_json()[:20]
            '{"artifact_id": "i",'
        """
        # A literal dict, not dataclasses.asdict (which deep-copies): this runs once per upload.
        return json.dumps(
            {
                "artifact_id": self.artifact_id,
                "filename": self.filename,
                "mimetype": self.mimetype,
                "encoding": self.encoding,
                "digest": self.digest,
                "size": self.size,
                "created": self.created,
            }
        )

    @classmethod
    def from_json(cls, text: str, *, what: str = "artifact metadata") -> ArtifactMeta:
        """Parse Optuna's JSON form; keys optuna-cas adds are optional.

        The text is untrusted (anyone with the Optuna storage can write it): its size and
        nesting are bounded and every field's type is checked. Optuna's four keys must be
        present; ``created`` that is not a number (or a numeric string) counts as unknown.

        Args:
            text: The attribute's value.
            what: Names the record in error messages.

        Raises:
            MalformedRecordError: ``text`` is not such a record; the message starts with
                ``what`` and says why.

        Example:
            >>> ArtifactMeta.from_json('{"artifact_id": "i", "filename": "f", '
            ...     '"mimetype": "m", "encoding": null}').digest is None
            True
            >>> ArtifactMeta.from_json('{"artifact_id": "i"}', what="attribute 'artifacts:i'")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.MalformedRecordError: attribute 'artifacts:i': missing field 'filename'
        """
        record = require_object(loads_bounded(text, what), what)
        return cls(
            artifact_id=str_field(record, "artifact_id", what),
            filename=optional_str_field(record, "filename", what, required=True),
            mimetype=optional_str_field(record, "mimetype", what, required=True),
            encoding=optional_str_field(record, "encoding", what, required=True),
            digest=optional_str_field(record, "digest", what),
            size=optional_size_field(record, "size", what),
            created=created_field(record.get("created")),
        )


def is_tombstone(value: Any) -> bool:
    """Whether an ``artifacts:<id>`` attribute value marks a deleted artifact.

    optuna-dashboard and :func:`optuna_cas.delete_artifact` overwrite the entry with the JSON
    text ``null``; an absent or Python ``None`` value means the same. Decided without parsing
    (the text is exactly ``null`` between JSON whitespace), so any value can be asked about.

    Example:
        >>> is_tombstone("null"), is_tombstone(None), is_tombstone('{"artifact_id": "a"}')
        (True, True, False)
    """
    return value is None or (isinstance(value, str) and value.strip(" \t\n\r") == "null")
