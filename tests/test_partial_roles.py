"""Roles with partial permissions: an upload's own error is the one raised.

Found by a probe with write-but-no-delete roles (common for CI keys): when an upload failed
after writing its ref, its clean-up (removing that ref) was refused, and the refusal replaced
the upload's error, which said what went wrong (Optuna's UpdateFinishedTrialError could no
longer be caught). Now the upload's error is raised, with a note naming the ref left behind.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import optuna
import pytest

from optuna_cas import delete_artifact, get_all_artifact_meta, upload_artifact
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.content import ContentStore
from optuna_cas.exceptions import IntegrityError
from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.streams import random_bytes
from tests.support.roles import RefusingBackend


class NoDeleteRacingGc(RefusingBackend):
    """A role that may write but not delete, while a gc (another role) takes every blob as
    soon as it is written."""

    def __init__(self) -> None:
        super().__init__(refuse={"remove"})

    def write(self, key: str, data: Any, *, if_absent: bool = False) -> None:
        super().write(key, data, if_absent=if_absent)
        if key.startswith(("refs/", "blobs/")):
            for stored in [k for k in self._objects if k.startswith("blobs/")]:
                del self._objects[stored]


def test_an_upload_that_cannot_store_its_blob_raises_its_own_error_under_no_delete() -> None:
    store = ContentAddressedArtifactStore(ContentStore(NoDeleteRacingGc()))
    with pytest.raises(IntegrityError, match="could not be stored whole") as caught:
        store.write("a1", io.BytesIO(random_bytes(6_000, seed=1)))
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "ref 'refs/a1' could not be removed" in notes and "AccessDenied" in notes


def test_upload_artifact_raises_optunas_error_when_the_ref_cannot_be_removed(
    tmp_path: Path,
) -> None:
    store = ContentAddressedArtifactStore(ContentStore(RefusingBackend(refuse={"remove"})))
    path = tmp_path / "model.bin"
    path.write_bytes(random_bytes(6_000, seed=2))
    study = optuna.create_study()
    trial = study.ask()
    study.tell(trial, 1.0)  # finished: its attributes can no longer be set
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError) as caught:
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "could not be removed" in notes and "AccessDenied" in notes


def test_a_repack_whose_touch_is_refused_leaves_every_manifest_as_it_was() -> None:
    from optuna_cas.chunks.layout import manifest_key
    from optuna_cas.operations.gc import gc

    # A gc role that may not refresh a pack's time (GCS without objects.update, say).
    backend = RefusingBackend(refuse={"touch"}, prefix="packs/")
    store = ContentAddressedArtifactStore(ContentStore(backend, chunk_threshold=64 * 1024))
    first = random_bytes(400_000, seed=5)
    second = first[:150_000] + random_bytes(250_000, seed=6)  # shares a third of the first
    store.write("first", io.BytesIO(first))
    store.write("second", io.BytesIO(second))
    store.remove("first")  # its pack is now less than half live: gc repacks it
    for key, (data, modified) in list(backend._objects.items()):
        backend._objects[key] = (data, modified - 3 * 3600)
    kept = manifest_key(store.get_ref("second").digest)
    before = backend._objects[kept][0]

    with pytest.raises(PermissionError, match="touch packs/"):
        gc(store)

    # Before the fix the manifests already named the new pack, and the old one kept its old
    # time: the next gc deleted it under readers holding the old manifest.
    assert backend._objects[kept][0] == before
    with store.open_reader("second") as reader:
        assert reader.read() == second


def test_a_local_touch_refused_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from optuna_cas.backends.local import LocalBackend

    backend = LocalBackend(tmp_path / "store")
    backend.write("blobs/ab/cd", io.BytesIO(b"shared"))

    def refused(path: object, *args: object, **kwargs: object) -> None:
        # What utime answers for a file another user owns (root is never refused).
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "utime", refused)
    with pytest.raises(PermissionError, match=r"refresh the time of .*blobs/ab/cd.*another user"):
        backend.touch("blobs/ab/cd")


def test_verify_quarantine_without_delete_says_where_the_copy_is() -> None:
    from optuna_cas.blob_maintenance import blob_key
    from optuna_cas.operations.verify import verify

    backend = RefusingBackend(refuse={"remove"})
    store = ContentAddressedArtifactStore(ContentStore(backend))
    digest = store.content.put_blob(io.BytesIO(random_bytes(6_000, seed=7)))
    key = blob_key(digest)
    data, modified = backend._objects[key]
    backend._objects[key] = (b"X" + data[1:], modified)  # one byte flipped on disk

    report = verify(store, deep=True, quarantine=True)

    assert report.quarantine_failed == [key]
    assert f"A copy of {key!r} is left at 'quarantine/{key}'" in report.reasons[key]
    assert f"quarantine/{key}" in {info.key for info in backend.list("quarantine/")}


class DeleteActsButAnswerIsLost(MemoryBackend):
    """A delete that reaches the server, whose answer is lost (a timeout, say)."""

    def remove(self, key: str) -> None:
        super().remove(key)
        if not key.startswith("quarantine/"):
            raise TimeoutError(f"remove {key}: no answer")


def test_move_aside_keeps_the_copy_when_the_original_is_gone_after_all() -> None:
    from optuna_cas.backends.base import move_aside

    backend = DeleteActsButAnswerIsLost()
    backend.write("packs/x", io.BytesIO(b"damaged"))
    with pytest.raises(TimeoutError) as caught:
        move_aside(backend, "packs/x", "quarantine/")
    assert [info.key for info in backend.list("")] == ["quarantine/packs/x"]  # the only copy
    assert "left at 'quarantine/packs/x'" in "\n".join(caught.value.__notes__)


def test_delete_artifact_under_no_delete_says_what_is_left_and_a_second_call_ends_it(
    tmp_path: Path,
) -> None:
    """The refusal was raised bare: nothing said that the study already records the artifact
    deleted while the store keeps it (session 20 left this)."""
    backend = RefusingBackend()
    store = ContentAddressedArtifactStore(ContentStore(backend))
    path = tmp_path / "model.bin"
    path.write_bytes(random_bytes(6_000, seed=3))
    study = optuna.create_study(study_name="roles")
    artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
    backend.refuse = {"remove"}
    with pytest.raises(PermissionError, match="AccessDenied") as caught:
        delete_artifact(artifact_store=store, artifact_id=artifact_id, study_or_trial=study)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "recorded as deleted on study 'roles'" in notes and "call delete_artifact again" in notes
    assert get_all_artifact_meta(study) == []
    backend.refuse = set()
    delete_artifact(artifact_store=store, artifact_id=artifact_id, study_or_trial=study)
    assert not backend.exists(f"refs/{artifact_id}")


def test_the_command_line_shows_an_errors_notes() -> None:
    """Notes say what a failure left behind (a ref, a copy): the CLI printed only the error."""
    from optuna_cas.cli import _describe

    error = PermissionError("AccessDenied: remove refs/a1")
    error.add_note("Artifact 'a1' is recorded as deleted on study 'roles'")
    assert _describe(error) == (
        "AccessDenied: remove refs/a1 Artifact 'a1' is recorded as deleted on study 'roles'"
    )
