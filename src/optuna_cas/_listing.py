"""What ``optuna-cas ls`` lists: everything a store serves, or everything a study records.

A store serves two kinds of artifacts: those with a ref (uploaded through optuna-cas) and
the flat objects Optuna's own stores wrote at the store's root before the switch, which
:meth:`~optuna_cas.content.ContentStore.open_artifact` still reads (without a digest to check).
A study records artifacts at study level and on each of its trials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from optuna_cas._list_artifact_meta import get_all_artifact_meta
from optuna_cas._meta import ArtifactMeta
from optuna_cas.content import ContentStore
from optuna_cas.exceptions import ArtifactNotFound, MalformedRecordError
from optuna_cas.refs import ArtifactRef

__all__ = ["ListedArtifact", "list_store_artifacts", "list_study_artifacts", "with_refs"]

#: ``origin`` of an artifact uploaded through optuna-cas (it has a ref and a digest).
OPTUNA_CAS = "optuna-cas"
#: ``origin`` of an object Optuna's own store wrote (no ref: no filename, no digest).
OPTUNA_STORE = "optuna-store"


@dataclass(frozen=True)
class ListedArtifact:
    """One row of a listing.

    Attributes:
        artifact_id: The artifact's ID.
        filename: Recorded file name (None for objects Optuna's own store wrote).
        mimetype: Recorded MIME type, or None.
        encoding: Recorded content encoding, or None.
        digest: ``blake3:<hex>``, or None when nothing records one.
        size: Bytes, or None when unknown.
        created: Upload time (epoch seconds), or None when unknown.
        origin: ``"optuna-cas"`` (a ref or metadata with a digest) or ``"optuna-store"``
            (an object of Optuna's own store, or metadata Optuna wrote).
        trial: The trial's number for a trial's artifact in a study listing, else None.

    Example:
        >>> ListedArtifact("id", "m.pt", None, None, None, 3, None, "optuna-cas").size
        3
    """

    artifact_id: str
    filename: str | None
    mimetype: str | None
    encoding: str | None
    digest: str | None
    size: int | None
    created: float | None
    origin: str
    trial: int | None = None

    @classmethod
    def of_ref(cls, ref: ArtifactRef) -> ListedArtifact:
        """A row for an artifact with a ref.

        Example:
            >>> from optuna_cas.digest import Digest
            >>> ref = ArtifactRef(artifact_id="a", digest=Digest.of_bytes(b"x"), filename="x.txt")
            >>> ListedArtifact.of_ref(ref).origin
            'optuna-cas'
        """
        return cls(
            artifact_id=ref.artifact_id,
            filename=ref.filename,
            mimetype=ref.mimetype,
            encoding=ref.encoding,
            digest=str(ref.digest),
            size=ref.size,
            created=ref.created,
            origin=OPTUNA_CAS,
        )

    @classmethod
    def of_meta(cls, meta: ArtifactMeta, trial: int | None) -> ListedArtifact:
        """A row for an entry of a study's or trial's Optuna metadata.

        Example:
            >>> meta = ArtifactMeta("a", "x.txt", "text/plain", None)
            >>> ListedArtifact.of_meta(meta, trial=3).origin   # no digest: Optuna wrote it
            'optuna-store'
        """
        return cls(
            artifact_id=meta.artifact_id,
            filename=meta.filename,
            mimetype=meta.mimetype,
            encoding=meta.encoding,
            digest=meta.digest,
            size=meta.size,
            created=meta.created,
            origin=OPTUNA_CAS if meta.digest is not None else OPTUNA_STORE,
            trial=trial,
        )


def with_refs(rows: list[ListedArtifact], content: ContentStore) -> list[ListedArtifact]:
    """``rows`` of a study listing, those without a digest completed from the store's refs.

    Optuna's own ``upload_artifact`` and optuna-dashboard's web upload write metadata without
    digest or size, but through one of our stores the content has a ref: its digest, size
    (and file name, where the metadata has none) fill the row. Rows with no readable ref stay.

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> content = ContentStore(MemoryBackend())
        >>> _ = content.put_artifact("a", io.BytesIO(b"abc"))
        >>> row = ListedArtifact("a", "x.txt", None, None, None, None, None, OPTUNA_STORE)
        >>> [(r.size, r.filename, r.origin) for r in with_refs([row], content)]
        [(3, 'x.txt', 'optuna-cas')]
    """
    done = []
    for row in rows:
        if row.digest is None:
            try:
                ref = content.get_ref(row.artifact_id)
            except (ArtifactNotFound, MalformedRecordError):
                ref = None
            if ref is not None:
                row = dataclasses.replace(
                    row,
                    filename=row.filename or ref.filename,
                    digest=str(ref.digest),
                    size=ref.size,
                    created=row.created if row.created is not None else ref.created,
                    origin=OPTUNA_CAS,
                )
        done.append(row)
    return done


def list_store_artifacts(content: ContentStore) -> list[ListedArtifact]:
    """Every artifact the store serves: refs in upload order, then Optuna's own objects.

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> content = ContentStore(MemoryBackend())
        >>> _ = content.put_artifact("new", io.BytesIO(b"x"), filename="x.txt")
        >>> content.backend.write("old", io.BytesIO(b"written by Optuna"))
        >>> [(row.artifact_id, row.origin) for row in list_store_artifacts(content)]
        [('new', 'optuna-cas'), ('old', 'optuna-store')]
    """
    refs = sorted(content.iter_refs(), key=lambda ref: ref.created)
    rows = [ListedArtifact.of_ref(ref) for ref in refs]
    with_ref = {ref.artifact_id for ref in refs}
    legacy = list(_optuna_store_objects(content, with_ref))
    rows.extend(sorted(legacy, key=lambda row: (row.created or 0.0, row.artifact_id)))
    return rows


def _optuna_store_objects(content: ContentStore, with_ref: set[str]) -> Iterator[ListedArtifact]:
    """Objects at the root that Optuna's own store could have written under an ID without a ref."""
    for info in content.iter_optuna_store_objects(without=with_ref):
        yield ListedArtifact(
            artifact_id=info.key,
            filename=None,
            mimetype=None,
            encoding=None,
            digest=None,
            size=info.size,
            created=info.modified,
            origin=OPTUNA_STORE,
        )


def list_study_artifacts(study: Any, trial_number: int | None = None) -> list[ListedArtifact]:
    """A study's artifacts: study-level ones, then each trial's in trial order.

    With ``trial_number``, only that trial's.

    Raises:
        KeyError: The study has no trial of that number.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> list_study_artifacts(optuna.create_study())
        []
    """
    storage = study._storage
    if trial_number is None:
        rows = [ListedArtifact.of_meta(meta, None) for meta in get_all_artifact_meta(study)]
        trials = study.get_trials(deepcopy=False)
    else:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, trial_number)
        rows, trials = [], [storage.get_trial(trial_id)]
    for trial in trials:
        metas = get_all_artifact_meta(trial, storage=storage)
        rows.extend(ListedArtifact.of_meta(meta, trial.number) for meta in metas)
    return rows
