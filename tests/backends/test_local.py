"""The backend contract on LocalBackend (bare and behind retries), checked against its files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from optuna_cas.backends.base import Backend, ObjectInfo, move_aside, mover_of
from optuna_cas.backends.local import TEMP_PREFIX, LocalBackend
from optuna_cas.backends.memory import MemoryBackend
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, InvalidKeyError
from optuna_cas.middleware.backoff import RetryingBackend
from optuna_cas.middleware.retry import Retrier, RetryPolicy
from optuna_cas.testing.backend import BackendConformance
from optuna_cas.testing.raw import DirectoryView

MiB = 1024 * 1024


class TestLocalBackend(BackendConformance):
    # A few copy buffers: measured 2 MiB writing, 1 MiB reading; a whole object would be 64.
    memory_bound = 8 * MiB

    def local(self, tmp_path: Path) -> LocalBackend:
        self.raw = DirectoryView(tmp_path / "store")
        return LocalBackend(tmp_path / "store")

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return self.local(tmp_path)

    def backend_at(self, sub: str) -> Backend:
        assert isinstance(self.raw, DirectoryView)
        return LocalBackend(self.raw.root / sub)


class TestRetryingLocalBackend(TestLocalBackend):
    """The same contract through RetryingBackend, as Backoff wraps a local store."""

    readers_seek = False  # ResumingReader streams forward only

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        retrier = Retrier(RetryPolicy(min_delay=0.01, max_delay=0.05))
        return RetryingBackend(self.local(tmp_path), retrier)

    def backend_at(self, sub: str) -> Backend:
        retrier = Retrier(RetryPolicy(min_delay=0.01, max_delay=0.05))
        return RetryingBackend(super().backend_at(sub), retrier)


def _staged_with(backend: LocalBackend, data: bytes):  # type: ignore[no-untyped-def]
    staged = backend.stage("blobs")
    os.write(staged.fd, data)
    return staged


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_commit_new_publishes_when_nothing_is_there(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    staged = _staged_with(backend, b"payload")
    assert staged.commit_new("blobs/ab/cd") is None
    assert (backend.root / "blobs/ab/cd").read_bytes() == b"payload"
    assert _temps(backend.root / "blobs") == []


def test_commit_new_leaves_a_stored_object_alone_and_keeps_the_file_staged(
    tmp_path: Path,
) -> None:
    backend = LocalBackend(tmp_path / "s")
    _staged_with(backend, b"first").commit_new("blobs/ab/cd")
    staged = _staged_with(backend, b"second!")
    info = staged.commit_new("blobs/ab/cd")
    assert info is not None and info.size == len(b"first")
    assert (backend.root / "blobs/ab/cd").read_bytes() == b"first"
    staged.commit("blobs/ab/cd")  # the caller may still repair it
    assert (backend.root / "blobs/ab/cd").read_bytes() == b"second!"
    assert _temps(backend.root / "blobs") == []


def test_commit_new_replaces_a_symlink_at_the_key_without_following_it(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    outside = tmp_path / "outside"
    outside.write_bytes(b"not ours")
    (backend.root / "blobs/ab").mkdir(parents=True)
    (backend.root / "blobs/ab/cd").symlink_to(outside)
    assert _staged_with(backend, b"payload").commit_new("blobs/ab/cd") is None
    assert not (backend.root / "blobs/ab/cd").is_symlink()
    assert (backend.root / "blobs/ab/cd").read_bytes() == b"payload"
    assert outside.read_bytes() == b"not ours"


def test_a_directory_symlinked_out_of_the_store_holds_nothing_and_takes_no_write(
    tmp_path: Path,
) -> None:
    # Hostile local state: a fan-out directory replaced by a symlink to one elsewhere. What
    # lies there is not stored here (uploads store the bytes again, verify reports them
    # missing); nothing is ever written or removed through it.
    backend = LocalBackend(tmp_path / "s")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cd").write_bytes(b"not ours")
    (backend.root / "packs").mkdir()
    (backend.root / "packs/ab").symlink_to(elsewhere)
    key = "packs/ab/cd"
    seen = ObjectInfo(key=key, size=8, modified=(elsewhere / "cd").stat().st_mtime)
    for call in (backend.stat, backend.open_reader, backend.touch, backend.remove):
        with pytest.raises(ArtifactNotFound, match="is a symlink"):
            call(key)
    assert not backend.exists(key)
    assert not backend.remove_if_unchanged(key, seen)
    with pytest.raises(InvalidKeyError, match="is a symlink"):
        backend.write(key, io.BytesIO(b"payload"))
    assert (elsewhere / "cd").read_bytes() == b"not ours"
    assert sorted(os.listdir(elsewhere)) == ["cd"]


def test_a_directory_symlinked_back_into_the_store_is_not_followed_either(tmp_path: Path) -> None:
    # refs/ -> moved/refs (inside the store): reads and writes went through the link while
    # listings skipped it, so gc saw no refs and deleted the blobs of acknowledged uploads
    # (found by a probe). Now no symlinked directory is followed: the upload is refused.
    backend = LocalBackend(tmp_path / "s")
    (backend.root / "moved/refs").mkdir(parents=True)
    (backend.root / "refs").symlink_to(backend.root / "moved/refs")
    with pytest.raises(InvalidKeyError, match="is a symlink"):
        backend.write("refs/a1", io.BytesIO(b"{}"))
    (backend.root / "moved/refs/a1").write_bytes(b"{}")
    with pytest.raises(ArtifactNotFound, match="is a symlink"):
        backend.stat("refs/a1")
    with pytest.raises(InvalidKeyError, match="is a symlink"):  # no listing that misses it
        list(backend.list("refs/"))


def test_listing_through_a_symlinked_directory_is_refused_so_gc_deletes_nothing(
    tmp_path: Path,
) -> None:
    # A store whose refs/ is a link (made before links were refused, or by hand): gc listed
    # no refs and deleted every blob they name; verify passed blobs no read could open (found
    # in review). A listing through the link now raises, and gc stops before deleting.
    from optuna_cas import FileSystemArtifactStore, gc

    root = tmp_path / "s"
    store = FileSystemArtifactStore(str(root))
    store.write("a1", io.BytesIO(b"x" * 10_000))
    blobs = [info.key for info in store.content.backend.list("blobs/")]
    (root / "moved").mkdir()
    os.rename(root / "refs", root / "moved/refs")
    (root / "refs").symlink_to(root / "moved/refs")
    with pytest.raises(InvalidKeyError, match="is a symlink"):
        list(store.content.backend.list("refs/"))
    with pytest.raises(InvalidKeyError, match="is a symlink"):
        gc(store, grace_period=0, allow_short_grace=True)
    assert [info.key for info in store.content.backend.list("blobs/")] == blobs


@pytest.mark.parametrize("prefix", ["../", "refs/../../", "./"])
def test_a_listing_prefix_is_a_key_prefix_never_a_path_out(tmp_path: Path, prefix: str) -> None:
    # The symlink check replaced the prefix's validation for a commit: list("../") walked the
    # store's parent (found in review).
    (tmp_path / "secret.txt").write_bytes(b"secret")
    backend = LocalBackend(tmp_path / "s")
    with pytest.raises(InvalidKeyError):
        list(backend.list(prefix))


def test_move_aside_renames_a_sparse_file_instead_of_writing_out_its_holes(tmp_path: Path) -> None:
    # verify --quarantine copied a 2 GiB sparse file planted at a pack key (9 MiB on disk)
    # into quarantine/, which then took 2 GiB of disk (found by a probe); a terabyte one fills
    # the disk. Behind retries too: the rename is the local layer's.
    local = LocalBackend(tmp_path / "s")
    backend = RetryingBackend(local, Retrier(RetryPolicy(min_delay=0.01, max_delay=0.05)))
    assert mover_of(backend) is local
    path = local.root / "packs/ab/cd"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"payload")
    os.truncate(path, 2**30)
    inode = path.stat().st_ino
    assert move_aside(backend, "packs/ab/cd", "quarantine/", limit=100) == 0  # all of it kept
    moved = local.root / "quarantine/packs/ab/cd"
    assert not path.exists() and moved.stat().st_ino == inode  # renamed, not copied
    assert moved.stat().st_size == 2**30 and moved.stat().st_blocks * 512 < MiB
    move_aside(backend, "packs/ab/cd", "quarantine/")  # gone meanwhile: nothing to do


def test_move_refuses_a_destination_through_a_symlink_out_of_the_store(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    backend.write("packs/ab/cd", io.BytesIO(b"payload"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (backend.root / "quarantine").symlink_to(elsewhere)
    with pytest.raises(InvalidKeyError, match="is a symlink"):
        move_aside(backend, "packs/ab/cd", "quarantine/")
    assert os.listdir(elsewhere) == [] and backend.exists("packs/ab/cd")  # nothing moved


@pytest.mark.parametrize("planted", ["symlink back into the store", "hard link"])
def test_move_onto_the_object_itself_is_refused_not_reported_done(
    tmp_path: Path, planted: str
) -> None:
    # rename() onto the same file does nothing: quarantine/ -> . made quarantine report a
    # corrupt pack moved aside while it stayed where it was (found in review).
    backend = LocalBackend(tmp_path / "s")
    backend.write("packs/ab/cd", io.BytesIO(b"corrupt"))
    if planted == "hard link":
        (backend.root / "q/packs/ab").mkdir(parents=True)
        os.link(backend.root / "packs/ab/cd", backend.root / "q/packs/ab/cd")
        prefix = "q/"
    else:
        (backend.root / "quarantine").symlink_to(".")
        prefix = "quarantine/"
    with pytest.raises(InvalidKeyError, match="itself" if planted == "hard link" else "symlink"):
        move_aside(backend, "packs/ab/cd", prefix)
    assert backend.exists("packs/ab/cd")


def test_move_takes_stored_objects_only(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    with pytest.raises(ArtifactNotFound):
        backend.move("packs/ab/cd", "q/packs/ab/cd")
    (backend.root / "packs/ab").mkdir(parents=True)
    os.mkfifo(backend.root / "packs/ab/cd")
    with pytest.raises(IntegrityError, match="is a FIFO"):
        backend.move("packs/ab/cd", "q/packs/ab/cd")
    move_aside(backend, "packs/ab/cd", "q/")  # a FIFO holds no bytes to keep: removed
    assert os.listdir(backend.root / "packs/ab") == [] and not (backend.root / "q").exists()
    (backend.root / "packs/ab/cd").symlink_to(tmp_path)
    with pytest.raises(ArtifactNotFound):  # a symlink stores nothing
        backend.move("packs/ab/cd", "q/packs/ab/cd")


def test_move_aside_keeps_at_most_limit_bytes_where_it_must_copy() -> None:
    # A backend that cannot rename copies: an object longer than anything of its kind (a
    # 40 GiB "pack") keeps only the bytes a good one could hold.
    backend = MemoryBackend()
    backend.write("packs/ab/cd", io.BytesIO(b"0123456789"))
    assert move_aside(backend, "packs/ab/cd", "quarantine/", limit=4) == 6
    assert not backend.exists("packs/ab/cd")
    assert backend.open_reader("quarantine/packs/ab/cd").read() == b"0123"
    backend.write("k", io.BytesIO(b"abc"))
    assert move_aside(backend, "k", "quarantine/", limit=4) == 0
    assert backend.open_reader("quarantine/k").read() == b"abc"


def test_a_discard_cut_short_as_close_returns_never_closes_the_number_again(
    tmp_path: Path,
) -> None:
    # A KeyboardInterrupt as os.close returned left fd set, and the caller's cleanup closed
    # that number again: EBADF, or another thread's new descriptor (found by a probe).
    import sys

    staged = LocalBackend(tmp_path / "s").stage("blobs")

    def interrupt(frame: object, event: str, arg: object) -> None:
        if event == "c_return" and arg is os.close:
            sys.setprofile(None)
            raise KeyboardInterrupt

    sys.setprofile(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            staged.discard()
    finally:
        sys.setprofile(None)
    reused = os.open(tmp_path / "other", os.O_CREAT | os.O_RDWR)  # likely that very number
    try:
        staged.discard()
        os.fstat(reused)  # still open
    finally:
        os.close(reused)


def test_move_onto_a_symlink_to_the_object_replaces_the_symlink(tmp_path: Path) -> None:
    # The refusal above must not take a symlink entry at the target for the object (review).
    backend = LocalBackend(tmp_path / "s")
    backend.write("packs/ab/cd", io.BytesIO(b"corrupt"))
    (backend.root / "q/packs/ab").mkdir(parents=True)
    (backend.root / "q/packs/ab/cd").symlink_to(backend.root / "packs/ab/cd")
    move_aside(backend, "packs/ab/cd", "q/")
    assert not backend.exists("packs/ab/cd")
    assert (backend.root / "q/packs/ab/cd").read_bytes() == b"corrupt"
    assert not (backend.root / "q/packs/ab/cd").is_symlink()
