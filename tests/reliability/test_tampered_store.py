"""Scenario: a tampered local store. Hostile entries sit beside good artifacts.

Every kind of entry a local store can be made to hold is planted at ref, blob and legacy
keys: a FIFO, a socket, a character device (where the machine lets us make one), a
directory, symlinks to files outside, truncated and garbage refs, a ref naming another ID, a
huge ref and a deeply nested one. Then every operation runs over the store: downloads (with
and without the study), verify, gc (no grace), stats and sync to a second store. Each must
finish (a watchdog fails the scenario if one hangs), every good artifact must survive
byte-exact in both stores, every bad entry the store lists must be reported by name, and
nothing outside the store may change.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import threading
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import pytest

from optuna_cas import (
    FileSystemArtifactStore,
    download_artifact,
    gc,
    stats,
    sync,
    upload_artifact,
    verify,
)
from optuna_cas.content import blob_key
from optuna_cas.digest import Digest
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError, MalformedRecordWarning
from optuna_cas.refs import ArtifactRef
from tests.reliability._common import record

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

WATCHDOG_SECONDS = 60.0


def bounded(label: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; fail (not hang) if it has not returned within the watchdog."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # handed back to the caller below
            outcome["error"] = e

    worker = threading.Thread(target=run, name=f"tampered-{label}", daemon=True)
    worker.start()
    worker.join(WATCHDOG_SECONDS)
    assert not worker.is_alive(), f"{label} still running after {WATCHDOG_SECONDS:g}s: it hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path below ``root`` (links not followed) with type, size, mtime and content."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                found[path] = ("file", st.st_mtime_ns, Path(path).read_bytes())
            else:
                found[path] = (stat.S_IFMT(st.st_mode), st.st_mtime_ns)
    return found


class Tampered:
    """A local store with good artifacts and the hostile entries planted in it."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "store"
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        self.store = FileSystemArtifactStore(self.root)
        self.study = optuna.create_study()
        self.good: dict[str, bytes] = {}
        self.bad_refs: dict[str, str] = {}  # planted under refs/: ID -> kind
        self.bad_blobs: dict[str, str] = {}  # planted at blob keys: key -> kind
        self.unreadable: dict[str, str] = {}  # IDs whose download must fail: ID -> kind
        self.skipped: list[str] = []  # kinds this machine cannot plant

    def upload_good(self, tmp_path: Path) -> None:
        sources = tmp_path / "sources"
        sources.mkdir()
        # Up to INLINE_LIMIT bytes the content lives in the ref; above it, in a blob.
        shared = b"shared bytes" * 400
        payloads = [b"", b"x", os.urandom(1000), os.urandom(300_000), shared]
        payloads.append(shared)  # a dedup pair: two artifacts, one blob
        trial = self.study.ask()
        for i, data in enumerate(payloads):
            path = sources / f"good-{i}.bin"
            path.write_bytes(data)
            target = trial if i % 2 else self.study
            artifact_id = upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=target
            )
            self.good[artifact_id] = data
        # Garbage for gc to collect: an artifact whose ref was removed.
        self.store.write("removed", io.BytesIO(b"garbage to collect" * 300))  # a blob
        self.garbage_key = blob_key(self.store.get_ref("removed").digest)
        self.store.remove("removed")

    def ref_path(self, artifact_id: str) -> Path:
        return self.root / "refs" / artifact_id

    def plant(self) -> None:
        some_good = next(iter(self.good))
        good_ref = self.ref_path(some_good).read_bytes()
        (self.outside / "secret").write_bytes(b"do not touch")
        (self.outside / "ref-copy").write_bytes(good_ref)

        # Special files at ref keys.
        os.mkfifo(self.ref_path("fifo-ref"))
        self.bad_refs["fifo-ref"] = "FIFO"
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(self.ref_path("socket-ref")))
            self.bad_refs["socket-ref"] = "socket"
        except OSError:  # a path too long for a socket address
            self.skipped.append("socket at a ref key")
        finally:
            sock.close()
        try:
            os.mknod(self.ref_path("device-ref"), stat.S_IFCHR | 0o600, os.makedev(1, 5))
            self.bad_refs["device-ref"] = "device"  # /dev/zero's numbers: reading never ends
        except OSError:  # not allowed to make device nodes here
            self.skipped.append("device at a ref key")
        (self.ref_path("dir-ref")).mkdir()
        (self.ref_path("dir-ref") / "inside").write_bytes(good_ref)
        self.bad_refs["dir-ref"] = "directory"

        # Refs whose content is bad.
        self.ref_path("truncated-ref").write_bytes(good_ref[: len(good_ref) // 2])
        self.ref_path("garbage-ref").write_bytes(os.urandom(300))
        self.ref_path("other-id-ref").write_bytes(good_ref)  # names another artifact
        self.ref_path("huge-ref").write_bytes(b"{" + b" " * (3 * 1024 * 1024) + b"}")
        self.ref_path("deep-ref").write_bytes(b"[" * 200_000 + b"]" * 200_000)
        for kind in ["truncated", "garbage", "other-id", "huge", "deep"]:
            self.bad_refs[f"{kind}-ref"] = kind

        # A symlink at a ref key, to a valid ref outside: never followed (and not listed).
        os.symlink(self.outside / "ref-copy", self.ref_path("symlink-ref"))
        self.unreadable["symlink-ref"] = "symlink at ref key"

        # Blob keys: a stray FIFO, and valid refs whose blob is a FIFO, a symlink to a file
        # outside holding the very bytes, or a directory.
        stray = self.root / blob_key(Digest.of_bytes(b"stray"))
        stray.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(stray)
        self.bad_blobs[blob_key(Digest.of_bytes(b"stray"))] = "FIFO"
        for kind in ["fifo", "symlink", "directory"]:
            data = f"content whose blob became a {kind}".encode()
            digest = Digest.of_bytes(data)
            artifact_id = f"{kind}-blob"
            self.store.content.put_ref(ArtifactRef(artifact_id, digest))
            path = self.root / blob_key(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "fifo":
                os.mkfifo(path)
                self.bad_blobs[blob_key(digest)] = "FIFO"
            elif kind == "symlink":
                (self.outside / "blob-copy").write_bytes(data)
                os.symlink(self.outside / "blob-copy", path)
            else:
                path.mkdir()
                (path / "inside").write_bytes(data)
            self.unreadable[artifact_id] = f"{kind} at blob key"

        # Legacy keys (where Optuna's own store puts an artifact): FIFO, symlink, directory.
        os.mkfifo(self.root / "legacy-fifo")
        os.symlink(self.outside / "secret", self.root / "legacy-symlink")
        (self.root / "legacy-dir").mkdir()
        for kind in ["fifo", "symlink", "dir"]:
            self.unreadable[f"legacy-{kind}"] = f"{kind} at legacy key"
        self.unreadable.update({artifact_id: kind for artifact_id, kind in self.bad_refs.items()})


def test_tampered_store(tmp_path: Path) -> None:
    t = Tampered(tmp_path)
    t.upload_good(tmp_path)
    t.plant()
    good_refs = [t.store.get_ref(artifact_id) for artifact_id in t.good]
    good_blobs = {blob_key(ref.digest) for ref in good_refs if ref.inline is None}
    assert len(good_blobs) == 2  # the large file and the dedup pair; the others are inline
    outside_before = snapshot(t.outside)
    outcomes: dict[str, Any] = {}
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    study_level = _study_level(t)

    def download_all(store: FileSystemArtifactStore, tag: str) -> None:
        for n, (artifact_id, data) in enumerate(t.good.items()):
            plain = downloads / f"{tag}-plain-{n}"
            bounded("download", partial(download, store, plain, artifact_id))
            assert plain.read_bytes() == data
            # And checked against the digest the study or trial recorded at upload.
            owner = t.study if artifact_id in study_level else t.study.trials[0]
            checked = downloads / f"{tag}-checked-{n}"
            bounded(
                "download with study",
                partial(download, store, checked, artifact_id, owner, t.study._storage),
            )
            assert checked.read_bytes() == data

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        # 1. Every good artifact downloads byte-exact; every bad one fails cleanly.
        download_all(t.store, "before")
        for artifact_id, kind in t.unreadable.items():
            target = downloads / f"bad-{artifact_id}"
            with pytest.raises((IntegrityError, ArtifactNotFound)) as error:
                bounded(f"download of {kind}", partial(download, t.store, target, artifact_id))
            assert not target.exists()
            outcomes[f"download {kind}"] = type(error.value).__name__

        # 2. verify names every bad ref and special blob, with a reason.
        report = bounded("verify", lambda: verify(t.store))
        assert set(report.malformed_refs) == set(t.bad_refs)
        assert set(report.reasons) >= set(t.bad_refs) | set(t.bad_blobs)
        assert set(report.corrupt) == set(t.bad_blobs)
        assert {m.artifact_id for m in report.missing} == {
            "fifo-blob",
            "symlink-blob",
            "directory-blob",
        }
        assert not report.ok
        outcomes["verify"] = {"malformed_refs": report.reasons, "corrupt": report.corrupt}

        # 3. gc (no grace) reports the bad refs, deletes only garbage, keeps every good blob.
        collected = bounded("gc", lambda: gc(t.store, grace_period=0, allow_short_grace=True))
        assert set(collected.bad_refs) == set(t.bad_refs)
        assert collected.deleted == [t.garbage_key]
        assert good_blobs <= {info.key for info in t.store.content.iter_blobs()}
        outcomes["gc"] = {"bad_refs": collected.bad_refs, "deleted": collected.deleted}

        # 4. stats counts them instead of failing.
        figures = bounded("stats", lambda: stats(t.store))
        assert figures.bad_refs == len(t.bad_refs)
        assert figures.artifacts == len(t.good) + 3  # + the three refs whose blob is bad
        outcomes["stats"] = {"artifacts": figures.artifacts, "bad_refs": figures.bad_refs}

        # 5. sync copies every good artifact and reports every bad one (the FIFO at a legacy
        # key included: it is listed as an object Optuna's store could have written).
        second = FileSystemArtifactStore(tmp_path / "second")
        synced = bounded("sync", lambda: sync(t.store, second))
        failed = {artifact_id for artifact_id, _ in synced.failed}
        bad_content = {"fifo-blob", "symlink-blob", "directory-blob", "legacy-fifo"}
        assert failed == set(t.bad_refs) | bad_content
        assert set(synced.refs_copied) == set(t.good)
        assert bounded("verify second", lambda: verify(second)).ok
        again = bounded("sync again", lambda: sync(t.store, second))
        assert (again.refs_copied, again.bytes_copied) == ([], 0)
        outcomes["sync"] = dict(synced.failed)

        # 6. Afterwards: both stores still hold every good artifact, byte-exact.
        download_all(t.store, "after")
        download_all(second, "second")

    # gc, stats and sync each warned once, naming the count (verify's report names them all).
    warned = [str(w.message) for w in caught if w.category is MalformedRecordWarning]
    for operation, what in [("gc", "refs"), ("stats", "refs"), ("sync", "artifacts")]:
        count = len(t.bad_refs) + (4 if operation == "sync" else 0)
        expected = f"{operation}: skipped {count} bad {what}"
        assert any(message.startswith(expected) for message in warned), expected
    assert snapshot(t.outside) == outside_before, "something outside the store changed"
    record(
        "tampered_store",
        {
            "command": "pytest -m reliability tests/reliability/test_tampered_store.py",
            "good_artifacts": len(t.good),
            "bad_refs": t.bad_refs,
            "bad_blobs": t.bad_blobs,
            "not_plantable_here": t.skipped,
            "outcomes": outcomes,
        },
    )


def download(
    store: Any,
    path: Path,
    artifact_id: str,
    study_or_trial: Any = None,
    storage: Any = None,
) -> None:
    download_artifact(
        artifact_store=store,
        file_path=str(path),
        artifact_id=artifact_id,
        study_or_trial=study_or_trial,
        storage=storage,
    )


def _study_level(t: Tampered) -> set[str]:
    attrs = t.study._storage.get_study_system_attrs(t.study._study_id)
    return {key.removeprefix("artifacts:") for key in attrs if key.startswith("artifacts:")}


def test_a_directory_planted_at_an_object_key(tmp_path: Path) -> None:
    """At an index key (a hint) the upload goes on and warns; at a pack key it fails, naming it."""
    from optuna_cas.backends.local import LocalBackend
    from optuna_cas.chunks.layout import index_key
    from optuna_cas.content import ContentStore
    from optuna_cas.stores.base import ContentAddressedArtifactStore

    def chunked(root: Path) -> ContentAddressedArtifactStore:
        return ContentAddressedArtifactStore(
            ContentStore(LocalBackend(root), chunk_threshold=64 * 1024)
        )

    data = os.urandom(300_000)
    # Where this upload will put its index object (its name is its bytes' digest).
    probe = chunked(tmp_path / "probe")
    probe.write("a", io.BytesIO(data))
    (index_name,) = [p.name for p in (tmp_path / "probe" / "chunk-index").rglob("*") if p.is_file()]
    pack_path = next(p for p in (tmp_path / "probe" / "packs").rglob("*") if p.is_file())

    store = chunked(tmp_path / "store")
    (tmp_path / "store" / index_key(index_name)).mkdir(parents=True)
    with pytest.warns(MalformedRecordWarning, match="a directory sits at 'chunk-index/"):
        store.write("a", io.BytesIO(data))
    with store.open_reader("a") as reader:
        assert reader.read() == data

    other = chunked(tmp_path / "other")
    planted = tmp_path / "other" / pack_path.relative_to(tmp_path / "probe")
    planted.mkdir(parents=True)
    with pytest.raises(IntegrityError, match=f"a directory sits at .*{planted.name}"):
        other.write("a", io.BytesIO(data))
    assert planted.is_dir() and not any(planted.iterdir())  # left as it was
