"""Hypothesis: a stateful model of chunked artifacts through writes, removes, gc, sync and a cache.

The model of ``tests/test_properties.py`` covers blobs; this one covers what chunked storage
adds: versions of a file that share most chunks (a header of changing length, a changed
region), packs that gc deletes or repacks once enough of their chunks are dead, ``sync`` moving
only missing chunks into a second store, and a small read-through cache whose entries are
evicted and refilled. After every step each live artifact of both stores must read back
exactly; the ``read`` rule also reads through the cache and downloads to a file, and the
``verify_both`` rule requires ``verify(deep=True)`` to find nothing wrong.
"""

from __future__ import annotations

import io
import random
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from optuna_cas import FileSystemArtifactStore, download_artifact, gc, sync, verify
from optuna_cas.exceptions import ArtifactNotFound
from optuna_cas.middleware.cache import CachedArtifactStore

# Small enough that a test file of a few hundred KiB is cut into several chunks.
_THRESHOLD = 64 * 1024
_BASES = [random.Random(seed).randbytes(320 * 1024) for seed in range(3)]
# A version: which base, a header of this length in front, and a changed region (offset
# and length, in KiB) filled from a seed. Large changes leave a removed version's pack mostly
# dead while a later version still uses some of its chunks: what gc repacks.
_versions = st.tuples(
    st.integers(0, len(_BASES) - 1),
    st.integers(0, 3000),
    st.integers(0, 300),
    st.integers(0, 256),
    st.integers(0, 2**16),
)


def _content(version: tuple[int, int, int, int, int]) -> bytes:
    base, header, offset, length, seed = version
    rng = random.Random(seed)
    data = bytearray(_BASES[base])
    data[offset * 1024 : (offset + length) * 1024] = rng.randbytes(length * 1024)
    return rng.randbytes(header) + bytes(data)


class ChunkedStoreModel(RuleBasedStateMachine):
    """Two chunked local stores and a cache over the first, against dicts of ID -> bytes."""

    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        root = Path(self._tmp.name)
        self.store = FileSystemArtifactStore(root / "src", chunk_threshold=_THRESHOLD)
        self.dest = FileSystemArtifactStore(root / "dst", chunk_threshold=_THRESHOLD)
        # 1 MiB: a few files' packs, so reads evict and refill entries.
        self.cached = CachedArtifactStore(self.store, directory=root / "cache", size_limit=2**20)
        self.out = root / "out.bin"
        self.model: dict[str, bytes] = {}
        self.dest_model: dict[str, bytes] = {}
        self.counter = 0

    def teardown(self) -> None:
        self.cached.cache.close()
        self._tmp.cleanup()

    @rule(target=ids, version=_versions, through_cache=st.booleans())
    def write(self, version: tuple[int, int, int, int, int], through_cache: bool) -> str:
        return self.write_bytes(_content(version), through_cache)

    def write_bytes(self, data: bytes, through_cache: bool) -> str:
        self.counter += 1
        artifact_id = f"art-{self.counter}"
        (self.cached if through_cache else self.store).write(artifact_id, io.BytesIO(data))
        self.model[artifact_id] = data
        return artifact_id

    @rule(artifact_id=ids, version=_versions)
    def overwrite(self, artifact_id: str, version: tuple[int, int, int, int, int]) -> None:
        # Through the cache, which remembers ID -> digest for what it wrote itself.
        data = _content(version)
        self.cached.write(artifact_id, io.BytesIO(data))
        self.model[artifact_id] = data

    @rule(target=ids, artifact_id=ids, offset=st.integers(0, 300), seed=st.integers(0, 2**16))
    def replace_with_next_version(self, artifact_id: str, offset: int, seed: int) -> str:
        # A training loop's next checkpoint that changed most of the file, the last one then
        # deleted: the old pack keeps a few live chunks, so gc repacks it.
        if artifact_id not in self.model:
            return artifact_id
        data = bytearray(self.model[artifact_id])
        data[offset * 1024 : (offset + 200) * 1024] = random.Random(seed).randbytes(200 * 1024)
        new_id = self.write_bytes(bytes(data), through_cache=False)
        self.remove(artifact_id)
        return new_id

    @rule(artifact_id=ids)
    def remove(self, artifact_id: str) -> None:
        if artifact_id in self.model:
            self.cached.remove(artifact_id)
            del self.model[artifact_id]

    @rule(artifact_id=ids)
    def read(self, artifact_id: str) -> None:
        for store in (self.store, self.cached):
            if artifact_id not in self.model:
                try:
                    store.open_reader(artifact_id).close()
                except ArtifactNotFound:
                    continue
                raise AssertionError(f"{artifact_id} readable after remove")
            with store.open_reader(artifact_id) as reader:
                assert reader.read() == self.model[artifact_id]
            self.out.unlink(missing_ok=True)
            download_artifact(
                artifact_store=store, file_path=str(self.out), artifact_id=artifact_id
            )
            assert self.out.read_bytes() == self.model[artifact_id]

    @rule()
    def collect_garbage(self) -> None:
        report = gc(self.store, grace_period=0, allow_short_grace=True)
        assert not report.bad_refs and not report.bad_manifests

    @rule()
    def sync_to_second_store(self) -> None:
        report = sync(self.store, self.dest, workers=2)
        expected_conflicts = set()
        for artifact_id, data in self.model.items():
            if self.dest_model.get(artifact_id, data) != data:
                expected_conflicts.add(artifact_id)
            else:
                self.dest_model[artifact_id] = data
        assert not report.failed
        assert {artifact_id for artifact_id, _ in report.conflicts} == expected_conflicts

    @rule()
    def collect_garbage_at_destination(self) -> None:
        gc(self.dest, grace_period=0, allow_short_grace=True)

    @rule()
    def verify_both(self) -> None:
        for store in (self.store, self.dest):
            report = verify(store, deep=True, workers=2)
            assert report.ok, report

    @invariant()
    def every_live_artifact_reads_back(self) -> None:
        for store, model in ((self.store, self.model), (self.dest, self.dest_model)):
            assert sorted(store.content.iter_ref_ids()) == sorted(model)
            for artifact_id, data in model.items():
                with store.open_reader(artifact_id) as reader:
                    assert reader.read() == data, artifact_id


TestChunkedStoreModel = ChunkedStoreModel.TestCase
TestChunkedStoreModel.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)
