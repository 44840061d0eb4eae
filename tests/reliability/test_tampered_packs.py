"""A hostile cache directory vs. downloads of chunked files assembled from cached packs.

The attacks of ``test_tampered_cache.py`` (DESIGN invariant 13), planted on one cached *pack*
of a chunked file, which a download copies run by run into a temp file beside the target
(:func:`~optuna_cas.chunks.assemble.assemble_from_cache`): the pack's value file edited,
truncated, extended or swapped for another pack, a symlink, a directory, a FIFO or a device
node; its index row edited to name a file outside the cache or another pack's file; the pack
edited between its opening and the copy, or between the copy and the check.

Every download must give exactly the right bytes and leave no temp file, nothing outside the
cache may change, nothing may block (each scenario runs in a child process with a deadline)
or leak a descriptor, no message may show a descriptor number, and the cache must heal: after
the attacked download (and one more, for an edit the check could not see), a download is
assembled from the cache again, with chunk-by-chunk reading made to fail.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import resource
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import optuna_cas._verified_copy as _verified_copy
import optuna_cas.chunks.assemble as assemble
import optuna_cas.chunks.store as chunk_store
from optuna_cas import (
    CachedArtifactStore,
    DiskBlobCache,
    FileSystemArtifactStore,
    download_artifact,
)
from optuna_cas.backends.local import LocalBackend
from optuna_cas.chunks.assemble import contiguous_runs
from optuna_cas.chunks.layout import pack_key
from optuna_cas.content import ContentStore
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound
from optuna_cas.stores.base import content_store_of
from tests.conftest import random_bytes
from tests.reliability.test_tampered_cache import (
    _FD_NUMBER,
    _fd_count,
    _Messages,
    _plant,
    set_value_filename,
    value_filename,
)
from tests.support.fds import new_fds, open_fds

pytestmark = pytest.mark.reliability

KiB = 1024
MiB = 1024 * KiB
THRESHOLD = 256 * KiB
SIZE = 3 * MiB + 5
ROUNDS = 4  # the attack is planted again each round, alternately on either pack
# Content and file-type attacks on the value file, index rows, and edits timed by hooks.
ATTACKS = [
    "flip",
    "truncate",
    "extend",
    "other-pack-bytes",
    "symlink-outside",
    "directory",
    "fifo",
    "device",
    "row-dotdot",
    "row-absolute",
    "row-symlinked-subdirectory",
    "row-names-other-pack",
    "edited-after-open",
    "truncated-after-open",
    "edited-after-copy",
]


def _versions() -> tuple[bytes, bytes]:
    """Two versions sharing their ends: the second's chunks lie in two packs."""
    v1 = random_bytes(SIZE, seed=21)
    return v1, v1[:MiB] + random_bytes(512 * KiB, seed=22) + v1[MiB + 512 * KiB :]


def _cache_key(pack: Digest) -> str:
    return f"{pack}:{pack.size}"  # DiskBlobCache's key of an entry


def _prepare(root: Path) -> None:
    """Upload both versions (no cache); put each pack's exact bytes outside the cache."""
    store = FileSystemArtifactStore(root / "store", chunk_threshold=THRESHOLD)
    v1, v2 = _versions()
    store.write("v1", io.BytesIO(v1))
    store.write("v2", io.BytesIO(v2))
    content = content_store_of(store)
    assert content is not None
    packs = content.chunks.manifest(Digest.of_bytes(v2)).packs
    assert len(packs) == 2
    (root / "outside" / "sub").mkdir(parents=True)
    for i, pack in enumerate(packs):
        with content.backend.open_reader(pack_key(pack)) as reader:
            data = reader.read()
        # The right bytes today: following a link to them would go unnoticed by a hash.
        (root / "outside" / f"pack{i}.bin").write_bytes(data)
        (root / "outside" / "sub" / f"{i:028x}.val").write_bytes(data)


def _snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Type, size, inode, links, mtime and content hash of everything under ``top``."""
    seen: dict[str, tuple[Any, ...]] = {}
    for path in sorted(top.rglob("*")):
        st = os.lstat(path)
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        seen[str(path)] = (st.st_mode, st.st_size, st.st_ino, st.st_nlink, st.st_mtime_ns, content)
    return seen


def _flip(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)  # cache files are read-only
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path: Path, size: int) -> None:
    os.chmod(path, 0o644)
    os.truncate(path, size)


class _Attacker:
    """Plants one attack on one cached pack; the hooks fire during the next assembly."""

    def __init__(self, root: Path, content: ContentStore, digest: Digest) -> None:
        self.root, self.cache_dir = root, root / "cache"
        self.table = content.chunks.manifest(digest)
        self.packs = self.table.packs
        self.on_open: dict[int, Callable[[], None]] = {}  # by inode: before the first copy
        self.on_check: list[Callable[[], None]] = []  # after the copy, before its check

    def value_path(self, number: int) -> Path:
        return self.cache_dir / value_filename(self.cache_dir, _cache_key(self.packs[number]))

    def used_offset(self, number: int) -> int:
        """An offset in pack ``number`` that the file's bytes come from."""
        _pack, offset, length = next(r for r in contiguous_runs(self.table) if r[0] == number)
        return offset + length // 2

    def plant(self, attack: str, number: int) -> None:
        key, path = _cache_key(self.packs[number]), self.value_path(number)
        other_name = value_filename(self.cache_dir, _cache_key(self.packs[1 - number]))
        outside = self.root / "outside"
        if attack == "flip":
            _flip(path, self.used_offset(number))
        elif attack == "truncate":
            _truncate(path, path.stat().st_size // 2)
        elif attack == "extend":
            os.chmod(path, 0o644)
            with open(path, "ab") as f:
                f.write(b"extra bytes")
        elif attack == "other-pack-bytes":
            os.chmod(path, 0o644)
            path.write_bytes((self.cache_dir / other_name).read_bytes())
        elif attack == "symlink-outside":
            path.unlink()
            path.symlink_to(outside / f"pack{number}.bin")
        elif attack in ("directory", "fifo", "device"):
            _plant(path, attack)
        elif attack == "row-dotdot":
            set_value_filename(self.cache_dir, f"../outside/pack{number}.bin", key)
        elif attack == "row-absolute":
            set_value_filename(self.cache_dir, str(outside / f"pack{number}.bin"), key)
        elif attack == "row-symlinked-subdirectory":
            # A value-file name of the right shape whose second directory is a planted
            # symlink (second level: diskcache picks that name for a fill 1 in 65536 times).
            first = value_filename(self.cache_dir, key).split("/")[0]
            second = next(
                f"{i:02x}"
                for i in range(256)
                if not os.path.lexists(self.cache_dir / first / f"{i:02x}")
            )
            (self.cache_dir / first / second).symlink_to(outside / "sub", target_is_directory=True)
            set_value_filename(self.cache_dir, f"{first}/{second}/{number:028x}.val", key)
        elif attack == "row-names-other-pack":
            set_value_filename(self.cache_dir, other_name, key)
        elif attack == "edited-after-open":
            offset = self.used_offset(number)
            self.on_open[path.stat().st_ino] = lambda: _flip(path, offset)
        elif attack == "truncated-after-open":
            self.on_open[path.stat().st_ino] = lambda: _truncate(path, 0)
        elif attack == "edited-after-copy":
            offset = self.used_offset(number)
            self.on_check.append(lambda: _flip(path, offset))
        else:
            raise AssertionError(attack)

    def install_hooks(self) -> None:
        copy_range, copy_holds = assemble.copy_range, _verified_copy.copy_holds

        def copying(source: int, *args: Any) -> int:
            edit = self.on_open.pop(os.fstat(source).st_ino, None)
            if edit is not None:
                edit()
            return copy_range(source, *args)

        def checking(copy: Any, fd: int, digest: Digest) -> tuple[Any, bool]:
            def copy_then_edit(*args: Any) -> Any:
                result = copy(*args)
                while self.on_check:
                    self.on_check.pop()()
                return result

            return copy_holds(copy_then_edit, fd, digest)

        assemble.copy_range = copying  # type: ignore[assignment]
        _verified_copy.copy_holds = checking  # type: ignore[assignment]


def _refuse_chunk_by_chunk(*args: object, **kwargs: object) -> None:
    raise AssertionError("read chunk by chunk: the cache was not healed")


def _attacked_downloads(root_name: str, attack: str, result: str) -> None:
    """In a child: ROUNDS times, plant ``attack`` on a cached pack and download the file."""
    # An endless copy (a device read to EOF) must fail, not fill the disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * MiB, 256 * MiB))
    messages = _Messages()
    logging.getLogger("optuna_cas").addHandler(messages)
    root = Path(root_name)
    out = root / "out"
    out.mkdir()
    store = CachedArtifactStore(
        FileSystemArtifactStore(root / "store", chunk_threshold=THRESHOLD),
        directory=root / "cache",
        size_limit=2**30,
    )
    content = content_store_of(store)
    assert content is not None
    data = _versions()[1]
    digest = Digest.of_bytes(data)
    failures: list[str] = []

    def download(name: str) -> None:
        target = out / name
        try:
            if name.startswith("public"):
                download_artifact(artifact_store=store, file_path=str(target), artifact_id="v2")
            else:
                content.materialize_blob(digest, target)
        except Exception as e:
            messages.texts.append(f"raised {type(e).__name__}: {e}")
            failures.append(f"{name}: raised {type(e).__name__}: {e}")
            return
        if target.read_bytes() != data:
            failures.append(f"{name}: wrong bytes")
        target.unlink()
        if leftovers := os.listdir(out):
            failures.append(f"{name}: left {leftovers} beside the target")

    download("public-fill")
    download("warm-up")  # database connection, loggers, manifest memo
    attacker = _Attacker(root, content, digest)
    attacker.install_hooks()
    chunked_reader = chunk_store.ChunkedReader
    # SQLite keeps the descriptor of the tampering connection (closed) open for reuse while
    # the cache's connection holds a lock on the same file: open it once before counting.
    value_filename(root / "cache", _cache_key(attacker.packs[0]))
    before = _fd_count()
    for round_ in range(ROUNDS):
        number = round_ % 2
        key = _cache_key(attacker.packs[number])
        attacker.plant(attack, number)
        planted = value_filename(root / "cache", key)
        download(f"public-attacked-{round_}" if round_ % 2 else f"attacked-{round_}")
        download(f"after-{round_}")  # finds an edit made after the first one's check
        if value_filename(root / "cache", key) == planted:
            failures.append(f"round {round_}: the tampered entry {planted!r} was kept")
        chunk_store.ChunkedReader = _refuse_chunk_by_chunk  # type: ignore[assignment,misc]
        try:
            download(f"public-healed-{round_}" if round_ % 2 else f"healed-{round_}")
        finally:
            chunk_store.ChunkedReader = chunked_reader  # type: ignore[misc]
    after = _fd_count()
    Path(result).write_text(
        json.dumps({"failures": failures, "leaked_fds": after - before, "messages": messages.texts})
    )


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_tampered_cached_pack_never_changes_a_download(tmp_path: Path, attack: str) -> None:
    if attack == "device":
        try:
            os.mknod(tmp_path / "probe", stat.S_IFCHR | 0o444, os.makedev(1, 5))
        except PermissionError:
            pytest.skip("creating a device node needs CAP_MKNOD")
        os.unlink(tmp_path / "probe")
    _prepare(tmp_path)
    untouchable = {top: _snapshot(tmp_path / top) for top in ("store", "outside")}
    result = tmp_path / "result.json"
    child = multiprocessing.get_context("spawn").Process(
        target=_attacked_downloads, args=(str(tmp_path), attack, str(result))
    )
    child.start()
    child.join(240)  # generous for 12 downloads of 3 MiB: only a blocked one gets near it
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"a download blocked on a cached pack attacked by {attack}")
    assert child.exitcode == 0
    outcome = json.loads(result.read_text())
    assert outcome["failures"] == []
    assert outcome["leaked_fds"] <= 0, outcome
    for text in outcome["messages"]:
        assert not _FD_NUMBER.search(text), text
    assert {top: _snapshot(tmp_path / top) for top in untouchable} == untouchable


def test_a_tampered_pack_lost_from_the_store_fails_cleanly(tmp_path: Path) -> None:
    """No right bytes anywhere: the download fails naming the pack, leaving nothing."""
    _prepare(tmp_path)
    store = ContentStore(
        LocalBackend(tmp_path / "store"),
        blob_cache=DiskBlobCache(tmp_path / "cache"),
        chunk_threshold=THRESHOLD,
    )
    data = _versions()[1]
    digest = Digest.of_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    store.materialize_blob(digest, out / "fill")
    attacker = _Attacker(tmp_path, store, digest)
    attacker.plant("flip", 1)
    store.backend.remove(pack_key(attacker.packs[1]))
    before = open_fds()
    with pytest.raises(ArtifactNotFound, match=str(attacker.packs[1])) as raised:
        store.materialize_blob(digest, out / "lost")
    assert new_fds(before) == set()
    assert not _FD_NUMBER.search(str(raised.value))
    assert os.listdir(out) == ["fill"]
