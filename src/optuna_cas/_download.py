"""``download_artifact``: verified, atomic, never overwriting."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from optuna_cas._fileio import materialize, naming_full_disk
from optuna_cas._json import loads_bounded
from optuna_cas._meta import ARTIFACTS_ATTR_PREFIX
from optuna_cas._optuna import resolve_target
from optuna_cas.digest import CHUNK_SIZE, Digest, VerifyingReader
from optuna_cas.exceptions import (
    ArtifactNotFound,
    IntegrityError,
    MalformedRecordError,
    not_found_as_ours,
)
from optuna_cas.stores.base import content_store_of

if TYPE_CHECKING:  # optuna is an extra: imported for the annotations only
    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial, Trial

    from optuna_cas.stores.base import ArtifactStore


__all__ = ["download_artifact"]

# An "artifacts:<id>" entry is a few hundred characters; refuse to parse absurd ones.
MAX_META_CHARS = 64 * 1024


def download_artifact(
    *,
    artifact_store: ArtifactStore,
    file_path: str | bytes | os.PathLike[str],
    artifact_id: str,
    study_or_trial: Trial | FrozenTrial | Study | None = None,
    storage: BaseStorage | None = None,
) -> None:
    """Download an artifact to a new file.

    Same signature as ``optuna.artifacts.download_artifact``. Improved: bytes go to a temporary
    file beside ``file_path``, the digest is checked while streaming, and only a complete,
    verified file is given the name ``file_path``. On any failure nothing is left there.

    With ``study_or_trial`` (same rules as :func:`~optuna_cas.upload_artifact`), the artifact
    must be recorded in that trial's or study's Optuna metadata, and the digest recorded there
    at upload is checked against the store: a ref that was swapped to other content (even of
    the same size) is refused before anything is created. Entries written by Optuna itself
    carry no digest; then only the store's own digest is checked.

    Args:
        artifact_store: The store holding the artifact.
        file_path: Where to create the file (``str``, ``bytes`` or path-like, as Optuna's
            ``open`` takes); it must not exist, not even as a dangling symlink.
        artifact_id: The artifact's ID.
        study_or_trial: Optional ``Trial``, ``FrozenTrial`` or ``Study`` the artifact belongs
            to, whose metadata is checked.
        storage: Required only for a ``FrozenTrial``.

    Raises:
        FileExistsError: ``file_path`` exists (checked first, as Optuna does), also as a
            dangling symlink, which Optuna would write through (docs/concepts.md,
            "Deliberate differences").
        ArtifactNotFound: No such artifact, or not one of ``study_or_trial`` (before anything
            is created).
        FileNotFoundError: The directory ``file_path`` names does not exist (it is not
            created).
        IntegrityError: The stored bytes do not match their digest, or the store's digest
            differs from the one in Optuna's metadata, or that metadata is malformed.

    Example:
        >>> import io, os, tempfile
        >>> from optuna_cas import MemoryArtifactStore, download_artifact
        >>> store = MemoryArtifactStore(); store.write("a1", io.BytesIO(b"weights"))
        >>> target = os.path.join(tempfile.mkdtemp(), "model.pt")
        >>> download_artifact(artifact_store=store, file_path=target, artifact_id="a1")
        >>> open(target, "rb").read()
        b'weights'

        Checked against the digest Optuna's storage recorded at upload:

        >>> import optuna
        >>> from optuna_cas import upload_artifact
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study()
        >>> artifact_id = upload_artifact(
        ...     artifact_store=store, file_path=target, study_or_trial=study)
        >>> copy = os.path.join(tempfile.mkdtemp(), "copy.pt")
        >>> download_artifact(
        ...     artifact_store=store, file_path=copy, artifact_id=artifact_id,
        ...     study_or_trial=study)
        >>> open(copy, "rb").read()
        b'weights'
    """
    # Optuna's os.path.exists and open take a bytes path as well as a str or PathLike.
    path = os.fsdecode(file_path)
    if not path or (os.path.basename(path) in ("", ".", "..") and not os.path.lexists(path)):
        # Path("") is ".", which exists; and Path() drops a trailing "/" or "/.", which wrote
        # a file where a directory was meant. Optuna looks the artifact up (ArtifactNotFound),
        # then its open() fails as the system does: no such directory, or not one.
        with not_found_as_ours(artifact_id), artifact_store.open_reader(artifact_id):
            pass
        if not path:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), file_path)
        _refuse_as_open_would(path)
    target = Path(path)
    if os.path.lexists(target):
        raise FileExistsError(f"File already exists: {path}")
    recorded = (
        None if study_or_trial is None else _recorded_digest(study_or_trial, storage, artifact_id)
    )
    with naming_full_disk(path):
        _download(artifact_store, target, artifact_id, recorded)


def _refuse_as_open_would(path: str) -> NoReturn:
    """Raise what ``open(path, "wb")`` raises for a path that names no file it could create.

    The system says which (not a directory, no such directory, or a directory): such a
    path never names a new file, so the exclusive create below cannot make one.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    os.close(fd)  # not on Linux; refused all the same, and nothing left
    os.unlink(path)
    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)


def _download(
    artifact_store: Any, target: Path, artifact_id: str, recorded: tuple[str, int | None] | None
) -> None:
    content = content_store_of(artifact_store)
    if content is not None:
        try:
            ref = artifact_store.get_ref(artifact_id)
        except ArtifactNotFound:
            ref = None  # maybe a file Optuna's own store left: open_reader knows how to look
        if ref is not None:
            if recorded is not None and not _same_content(recorded, ref.digest):
                raise IntegrityError(
                    f"Artifact {artifact_id!r}: the store's ref names {ref.digest} (size "
                    f"{ref.size}) but Optuna's metadata recorded {recorded[0]} (size "
                    f"{'unknown' if recorded[1] is None else recorded[1]}) at upload; "
                    "refusing to download"
                )
            content.materialize_artifact(ref, target)
            return
    # A foreign store (Optuna's own, a third party's) raises Optuna's ArtifactNotFound.
    with not_found_as_ours(artifact_id), artifact_store.open_reader(artifact_id) as reader:
        if recorded is not None and recorded[1] is not None:
            # No ref (an object Optuna's own store wrote, say): the metadata's digest is the
            # only one there is, so check the bytes against it.
            expected = Digest.parse(recorded[0], recorded[1])
            name = f"artifact {artifact_id!r} (digest from Optuna's metadata)"
            checked = VerifyingReader(reader, expected, name=name, close_source=False)
            materialize(io.BufferedReader(checked, CHUNK_SIZE), target)
        else:
            materialize(reader, target)


def _recorded_digest(
    study_or_trial: Any, storage: Any, artifact_id: str
) -> tuple[str, int | None] | None:
    """``(digest, size)`` from the artifact's Optuna metadata; None if it records no digest.

    Raises:
        ArtifactNotFound: The trial or study records no such artifact.
        IntegrityError: The entry is malformed.
    """
    target = resolve_target(study_or_trial, storage)
    value = target.system_attrs().get(ARTIFACTS_ATTR_PREFIX + artifact_id)
    where = "trial" if target.trial_id is not None else "study"
    if value is None:
        raise ArtifactNotFound(f"Artifact {artifact_id!r} is not recorded in this {where}")
    record = _parse_meta(value, artifact_id)
    if record is None:  # optuna-dashboard's tombstone: deleted
        raise ArtifactNotFound(f"Artifact {artifact_id!r} was deleted from this {where}")
    digest, size = record.get("digest"), record.get("size")
    if digest is None:
        return None  # written by Optuna or optuna-dashboard: nothing recorded to compare
    if not isinstance(digest, str) or not (size is None or _is_size(size)):
        raise IntegrityError(
            f"Optuna metadata of artifact {artifact_id!r} is malformed: digest {digest!r}, "
            f"size {size!r}"
        )
    try:
        Digest.parse(digest, size or 0)
    except ValueError as e:
        raise IntegrityError(
            f"Optuna metadata of artifact {artifact_id!r} is malformed: {e}"
        ) from e
    return digest, size


def _parse_meta(value: Any, artifact_id: str) -> dict[str, Any] | None:
    """The metadata entry as a dict (None for JSON null), parsed within bounds."""
    what = f"Optuna metadata of artifact {artifact_id!r}"
    try:
        record = loads_bounded(value, what, max_size=MAX_META_CHARS)
    except MalformedRecordError as e:
        raise IntegrityError(f"{e}") from e
    if record is not None and not isinstance(record, dict):
        raise IntegrityError(f"{what} is malformed: expected a JSON object")
    parsed: dict[str, Any] | None = record
    return parsed


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _same_content(recorded: tuple[str, int | None], digest: Digest) -> bool:
    text, size = recorded
    return text == str(digest) and (size is None or size == digest.size)
