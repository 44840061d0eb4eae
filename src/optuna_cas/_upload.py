"""``upload_artifact``: blob, then ref, then Optuna metadata."""

from __future__ import annotations

import contextlib
import functools
import mimetypes
import os
import reprlib
import stat
import time
import uuid
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from optuna_cas._fileio import open_regular_file
from optuna_cas._meta import ARTIFACTS_ATTR_PREFIX, DEFAULT_MIME_TYPE, ArtifactMeta
from optuna_cas._optuna import import_optuna, refuse_a_finished_trial, resolve_target
from optuna_cas._validation import check_optional_text
from optuna_cas.exceptions import ArtifactNotFound, not_found_as_ours
from optuna_cas.stores.base import ContentAddressedArtifactStore, content_store_of

if TYPE_CHECKING:  # optuna is an extra: imported for the annotations only
    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial, Trial

    from optuna_cas.stores.base import ArtifactStore


__all__ = ["upload_artifact"]

F = TypeVar("F", bound=Callable[..., Any])
_POSITIONAL_NAMES = ("study_or_trial", "file_path", "artifact_store")
# From this size on, an upload for a live Trial first asks the storage whether the trial has
# finished (Optuna refuses the metadata then): a few ms saved from sending a large file that
# would be refused after, not worth a storage read per small file.
_ASK_STORAGE_FROM = 1024 * 1024


def _accept_deprecated_positional(func: F) -> F:
    """Accept Optuna's deprecated positional call, warning as Optuna does.

    Optuna < 4 took ``(study_or_trial, file_path, artifact_store)`` positionally; Optuna 4-5
    still accept it with a ``FutureWarning`` (removal planned in 6.0), and so do we.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if args:
            if len(args) > len(_POSITIONAL_NAMES):
                raise TypeError(
                    f"{func.__name__}() takes at most {len(_POSITIONAL_NAMES)} positional "
                    f"arguments ({len(args)} given)"
                )
            warnings.warn(
                f"Positional arguments {list(_POSITIONAL_NAMES)} in {func.__name__}() have "
                "been deprecated since v4.0.0. They will be replaced with the corresponding "
                "keyword arguments in v6.0.0, so please use the keyword specification instead.",
                FutureWarning,
                stacklevel=2,
            )
            for name, value in zip(_POSITIONAL_NAMES, args, strict=False):
                if name in kwargs:
                    raise TypeError(f"{func.__name__}() got multiple values for {name!r}")
                kwargs[name] = value
        return func(**kwargs)

    return wrapper  # type: ignore[return-value]


@_accept_deprecated_positional
def upload_artifact(
    *,
    artifact_store: ArtifactStore,
    file_path: str | bytes | os.PathLike[str],
    study_or_trial: Trial | FrozenTrial | Study,
    storage: BaseStorage | None = None,
    mimetype: str | None = None,
    encoding: str | None = None,
) -> str:
    """Upload a file as an artifact of a trial or study; returns a new artifact ID.

    Same signature and behaviour as ``optuna.artifacts.upload_artifact``, except that the
    content is stored once per distinct bytes, and the order is safe: the blob, then the ref,
    then the Optuna metadata (Optuna writes metadata first and can leave it dangling). If the
    metadata cannot be written (e.g. the trial has finished), the ref is removed again,
    unless the write may have happened (an interrupt, a dropped connection): then it stays.

    Args:
        artifact_store: Any store with Optuna's protocol; optuna-cas stores also record
            filename, mimetype, encoding and digest in the ref.
        file_path: The file to upload.
        study_or_trial: A ``Trial``, ``FrozenTrial`` or ``Study``.
        storage: Required only for a ``FrozenTrial``.
        mimetype: Defaults to a guess from the file name, else ``application/octet-stream``.
        encoding: Defaults to a guess from the file name (e.g. ``gzip`` for ``.gz``).

    Returns:
        A fresh UUID4 string, also for content uploaded before.

    Raises:
        FileNotFoundError: ``file_path`` does not exist.
        IsADirectoryError: ``file_path`` is a directory.
        UnsupportedSourceError: ``file_path`` is a FIFO, device or socket (a ``ValueError``).
        IntegrityError: The file changed while it was uploaded; nothing is recorded.
        ValueError: A ``FrozenTrial`` without ``storage``.
        TypeError: ``artifact_store``, ``storage``, ``mimetype`` or ``encoding`` is of the
            wrong kind (the message names it); raised before anything is stored.
        optuna.exceptions.UpdateFinishedTrialError: The trial has finished: Optuna allows no
            new artifacts on it. Raised before the upload for a ``FrozenTrial``, or a file of
            1 MiB or more; else by Optuna after it, and the ref just written is removed again.

    Example:
        >>> import optuna, tempfile, os
        >>> from optuna_cas import FileSystemArtifactStore, upload_artifact
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> store = FileSystemArtifactStore(tempfile.mkdtemp())
        >>> path = os.path.join(tempfile.mkdtemp(), "model.txt")
        >>> _ = open(path, "w").write("weights")
        >>> study = optuna.create_study()
        >>> trial = study.ask()
        >>> len(upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial))
        36
    """
    if not callable(getattr(artifact_store, "write", None)):
        raise TypeError(
            "artifact_store must be an artifact store (such as FileSystemArtifactStore), got "
            f"{type(artifact_store).__name__}: {reprlib.repr(artifact_store)}"
        )
    check_optional_text(mimetype=mimetype, encoding=encoding)
    path = os.fsdecode(file_path)  # bytes too, as download_artifact takes them
    # One stat for both checks (os.path.isdir and os.path.exists took one each).
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # what os.path.exists reports as absent
        raise FileNotFoundError(f"No such file to upload: {path!r}") from None
    if stat.S_ISDIR(st.st_mode):  # Optuna raises IsADirectoryError here too (from open())
        raise IsADirectoryError(f"Cannot upload a directory as an artifact: {path!r}")
    target = resolve_target(study_or_trial, storage)
    refuse_a_finished_trial(study_or_trial, target, asking=st.st_size >= _ASK_STORAGE_FROM)

    filename = os.path.basename(path)
    guessed_mimetype, guessed_encoding = mimetypes.guess_type(filename)
    artifact_id = str(uuid.uuid4())
    meta = ArtifactMeta(
        artifact_id=artifact_id,
        filename=filename,
        mimetype=mimetype or guessed_mimetype or DEFAULT_MIME_TYPE,
        encoding=encoding or guessed_encoding,
    )

    # Not isinstance: Backoff is one whether or not the store it wraps is content-addressed.
    if content_store_of(artifact_store) is not None:
        ref = cast(ContentAddressedArtifactStore, artifact_store).put(
            artifact_id,
            path,
            filename=meta.filename,
            mimetype=meta.mimetype,
            encoding=meta.encoding,
        )
        meta.digest, meta.size, meta.created = str(ref.digest), ref.size, ref.created
    else:
        # Optuna's own stores get the same safe open: FIFOs and devices are refused first.
        with os.fdopen(open_regular_file(path), "rb") as f:
            artifact_store.write(artifact_id, f)
        meta.created = time.time()

    key = ARTIFACTS_ATTR_PREFIX + artifact_id
    try:
        target.set_system_attr(key, meta.to_json())
    except BaseException as error:
        # No metadata will point at this artifact: do not leave an orphan ref behind either.
        # (A foreign store's "already gone" is Optuna's class: made ours to be ignored too.)
        if _surely_not_recorded(target, key, error):
            try:
                with contextlib.suppress(ArtifactNotFound), not_found_as_ours(artifact_id):
                    artifact_store.remove(artifact_id)
            except Exception as cleanup:  # the metadata error is the one to raise
                error.add_note(
                    f"The stored artifact {artifact_id!r} could not be removed ({cleanup}); "
                    "no metadata names it"
                )
        raise
    return artifact_id


def _surely_not_recorded(target: Any, key: str, error: BaseException) -> bool:
    """Whether the metadata write that raised ``error`` certainly left no entry at ``key``.

    A write can fail after it happened: a ``KeyboardInterrupt`` lands as the database's
    commit returns, a connection drops before the answer (found by a probe: 5-12% of
    interrupted uploads left metadata naming a ref that had been removed). Unless the entry
    is seen absent, the ref stays: an orphan ref costs only space, ``reconcile`` reports it.
    """
    optuna = import_optuna()
    if isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
        return True  # Optuna refuses before it writes
    try:
        return key not in target.system_attrs()
    except Exception:
        return False
