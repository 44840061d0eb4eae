"""``ArtifactMeta`` and its JSON form in Optuna's system attributes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ARTIFACTS_ATTR_PREFIX", "DEFAULT_MIME_TYPE", "ArtifactMeta"]

ARTIFACTS_ATTR_PREFIX = "artifacts:"
DEFAULT_MIME_TYPE = "application/octet-stream"


@dataclass
class ArtifactMeta:
    """What Optuna's storage records about an artifact: Optuna's four fields plus digest and size.

    The JSON keeps Optuna's field names, so Optuna's ``get_all_artifact_meta`` and
    optuna-dashboard read entries written by optuna-cas (the extra keys are ignored by them).

    Attributes:
        artifact_id: The per-upload ID.
        filename: Base name of the uploaded file.
        mimetype: MIME type.
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
    filename: str
    mimetype: str
    encoding: str | None
    digest: str | None = None
    size: int | None = None
    created: float | None = None

    def to_json(self) -> str:
        """Optuna's JSON string form (with our two extra keys).

        Example:
            >>> ArtifactMeta("i", "f", "text/plain", None).to_json()[:20]
            '{"artifact_id": "i",'
        """
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ArtifactMeta:
        """Parse Optuna's JSON form; keys optuna-cas adds are optional.

        Example:
            >>> ArtifactMeta.from_json('{"artifact_id": "i", "filename": "f", '
            ...     '"mimetype": "m", "encoding": null}').digest is None
            True
        """
        record: dict[str, Any] = json.loads(text)
        return cls(
            artifact_id=record["artifact_id"],
            filename=record["filename"],
            mimetype=record["mimetype"],
            encoding=record["encoding"],
            digest=record.get("digest"),
            size=record.get("size"),
            created=record.get("created"),
        )
