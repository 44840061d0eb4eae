"""Records a newer optuna-cas wrote: reads fail loudly, maintenance moves and deletes none of it.

During a rolling upgrade old and new workers share a store. A probe ran older releases'
``verify --quarantine`` on stores newer ones wrote: a pack with one damaged byte in bytes no
live file read was moved aside because the old release could not see (could not parse) the
files whose sound ranges it served, and those files became unreadable. This release must not
do the same to a later one: what it cannot read it reports, and leaves in place.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import blake3
import pytest

from optuna_cas import gc, verify
from optuna_cas.backends.local import LocalBackend
from optuna_cas.chunks.layout import index_key, manifest_key
from optuna_cas.cli import main
from optuna_cas.content import ContentStore
from optuna_cas.exceptions import IntegrityError, NewerFormatError
from optuna_cas.stores.base import ContentAddressedArtifactStore

THRESHOLD = 256 * 1024
BACKBONE = random.Random("backbone").randbytes(1024 * 1024)
TAIL_A = random.Random("a").randbytes(300 * 1024)
FILES = {"a": BACKBONE + TAIL_A, "b": b"header" + BACKBONE + random.Random("b").randbytes(9000)}


@pytest.fixture
def store(tmp_path: Path) -> ContentAddressedArtifactStore:
    backend = LocalBackend(tmp_path / "store")
    store = ContentAddressedArtifactStore(ContentStore(backend, chunk_threshold=THRESHOLD))
    for name, data in FILES.items():
        store.write(name, io.BytesIO(data))
    return store


def _set_version(store: ContentAddressedArtifactStore, key: str, version: bytes) -> None:
    backend = store.content.backend
    with backend.open_reader(key) as reader:
        data = reader.read()
    backend.write(key, io.BytesIO(data[:7] + version + data[8:]))


def _manifest_of(store: ContentAddressedArtifactStore, name: str) -> str:
    return manifest_key(store.get_ref(name).digest)


def _read(store: ContentAddressedArtifactStore, name: str) -> bytes:
    store.content.forget_ref(name)  # no memory of an earlier read
    with store.open_reader(name) as reader:
        return reader.read()


def test_a_newer_manifest_is_reported_and_left_in_place(
    store: ContentAddressedArtifactStore,
) -> None:
    key = _manifest_of(store, "b")
    _set_version(store, key, b"2")
    report = verify(store, quarantine=True)
    assert report.newer_format == [key] and key not in report.corrupt
    assert "newer optuna-cas" in report.reasons[key]
    assert not report.ok  # nothing vouched for b
    assert report.quarantined == [] and store.content.backend.exists(key)
    with pytest.raises(NewerFormatError, match="upgrade optuna-cas"):
        _read(store, "b")
    assert _read(store, "a") == FILES["a"]


def test_a_damaged_pack_a_newer_manifest_may_use_is_not_quarantined(
    store: ContentAddressedArtifactStore,
) -> None:
    """The probe's finding, one release on: b (newer format here) reads sound ranges of a's
    pack, whose bytes only a uses are damaged. Without the rule a fails, b cannot be parsed
    and so counts as no user, and the pack was quarantined: b lost."""
    pack = next(
        p for p in store.content.chunks.iter_packs() if p.size > len(BACKBONE)
    )  # a's: the backbone and a's tail
    backend = store.content.backend
    with backend.open_reader(pack.key) as reader:
        data = bytearray(reader.read())
    data[-1000] ^= 1  # in a's tail: b never reads it
    backend.write(pack.key, io.BytesIO(bytes(data)))
    key = _manifest_of(store, "b")
    _set_version(store, key, b"2")

    report = verify(store, quarantine=True)
    assert report.corrupt == [pack.key] and pack.key not in report.quarantined
    assert "a manifest in a newer format" in report.reasons[pack.key]
    assert pack.key not in report.orphans  # b's manifest may name it: gc leaves it too
    assert backend.exists(pack.key)
    with pytest.raises(IntegrityError):
        _read(store, "a")  # its own damage: a is lost either way

    gc(store, grace_period=0, allow_short_grace=True)
    assert backend.exists(pack.key)
    _set_version(store, key, b"1")  # what the newer release reads
    assert _read(store, "b") == FILES["b"]


def test_a_newer_index_object_is_reported_harmless_and_kept(
    store: ContentAddressedArtifactStore,
) -> None:
    backend = store.content.backend
    source = next(store.content.chunks.iter_indexes())
    with backend.open_reader(source.key) as reader:
        data = reader.read()
    newer = data[:7] + b"2" + data[8:]
    key = index_key(blake3.blake3(newer).hexdigest())
    backend.write(key, io.BytesIO(newer))
    report = verify(store, quarantine=True)
    assert report.newer_format == [key] and report.ok  # hints only
    assert report.bad_index_objects == [] and backend.exists(key)


def test_the_cli_names_a_newer_manifest_and_exits_1(
    store: ContentAddressedArtifactStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _manifest_of(store, "b")
    _set_version(store, key, b"2")
    assert main(["--store", str(tmp_path / "store"), "verify", "--quarantine"]) == 1
    out = capsys.readouterr().out
    assert f"NEWER    {key}" in out
    assert "1 object in a newer format than this release reads" in out
    assert store.content.backend.exists(key)


def test_a_pack_an_older_release_quarantined_is_named_and_can_be_moved_back(
    store: ContentAddressedArtifactStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What older builds' quarantine did (above): the copy under quarantine/ still holds the
    ranges b reads. verify names it, and moving it back lets verify --quarantine save b."""
    backend = store.content.backend
    pack = next(p for p in store.content.chunks.iter_packs() if p.size > len(BACKBONE))
    with backend.open_reader(pack.key) as reader:
        data = bytearray(reader.read())
    data[-1000] ^= 1  # in a's tail
    backend.remove(pack.key)
    backend.write("quarantine/" + pack.key, io.BytesIO(bytes(data)))

    report = verify(store, deep=False)
    assert {(m.problem, m.quarantined) for m in report.missing_packs} == {
        ("missing", "quarantine/" + pack.key)
    }
    assert main(["--store", str(tmp_path / "store"), "verify", "--fast"]) == 1
    assert f"a copy is at quarantine/{pack.key}" in capsys.readouterr().out

    (tmp_path / "store" / pack.key).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "store" / "quarantine" / pack.key).rename(tmp_path / "store" / pack.key)
    verify(store, quarantine=True)
    gc(store, grace_period=0, allow_short_grace=True)
    assert _read(store, "b") == FILES["b"]
    assert verify(store).missing_packs == []


def test_a_version_this_format_never_had_is_damage_not_a_newer_release(
    store: ContentAddressedArtifactStore,
) -> None:
    """A flipped bit can turn "1" into "0": no release wrote version 0, so it is corrupt and
    quarantined, not left in place with advice to upgrade (found in review)."""
    key = _manifest_of(store, "b")
    _set_version(store, key, b"0")
    report = verify(store, quarantine=True)
    assert report.newer_format == [] and report.corrupt == [key]
    assert report.quarantined == [key]
