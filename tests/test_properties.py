"""Hypothesis: round trips of any size, and a stateful model of the artifact store."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import optuna
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from optuna_cas import FileSystemArtifactStore, download_artifact, gc, upload_artifact
from optuna_cas.digest import CHUNK_SIZE
from optuna_cas.exceptions import ArtifactNotFound
from optuna_cas.refs import INLINE_LIMIT

CHUNK_EDGES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 4096, 4097]
# Content up to INLINE_LIMIT lives inside its ref; the model also needs blobs (dedup, gc), so
# part of its content is padded past the limit. Distinct tails keep distinct contents apart.
_BLOB_PAD = b"\x00" * (INLINE_LIMIT + 1)


def _inline_or_blob(max_size: int) -> st.SearchStrategy[bytes]:
    tail = st.binary(max_size=max_size)
    return tail | tail.map(lambda t: _BLOB_PAD + t)


def sized_bytes() -> st.SearchStrategy[bytes]:
    edge = st.sampled_from(CHUNK_EDGES).flatmap(
        lambda n: st.binary(min_size=min(n, 64), max_size=min(n, 64)).map(
            lambda head: (head * (n // max(len(head), 1) + 1))[:n] if head else b"\x00" * n
        )
    )
    large = st.integers(0, 3 * 1024 * 1024).flatmap(
        lambda n: st.randoms(use_true_random=False).map(lambda r: r.randbytes(n))
    )
    return st.one_of(st.binary(max_size=512), edge, large)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=sized_bytes())
def test_upload_download_round_trip(data: bytes) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = FileSystemArtifactStore(root / "store")
        source = root / "in.bin"
        source.write_bytes(data)
        trial = optuna.create_study().ask()
        artifact_id = upload_artifact(
            artifact_store=store, file_path=str(source), study_or_trial=trial
        )
        target = root / "out.bin"
        download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact_id)
        assert target.read_bytes() == data
        with store.open_reader(artifact_id) as reader:
            assert reader.read() == data


class ArtifactStoreModel(RuleBasedStateMachine):
    """write/overwrite/open/remove/gc against a dict of artifact ID -> bytes."""

    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        self.store = FileSystemArtifactStore(self._tmp.name)
        self.model: dict[str, bytes] = {}
        self.counter = 0

    def teardown(self) -> None:
        self._tmp.cleanup()

    @rule(
        target=ids,
        data=st.sampled_from([b"", b"a", b"checkpoint", b"x" * 5000]) | _inline_or_blob(3000),
    )
    def write(self, data: bytes) -> str:
        self.counter += 1
        artifact_id = f"art-{self.counter}"
        self.store.write(artifact_id, io.BytesIO(data))
        self.model[artifact_id] = data
        return artifact_id

    @rule(artifact_id=ids, data=_inline_or_blob(100))
    def overwrite(self, artifact_id: str, data: bytes) -> None:
        self.store.write(artifact_id, io.BytesIO(data))
        self.model[artifact_id] = data

    @rule(artifact_id=ids)
    def read(self, artifact_id: str) -> None:
        if artifact_id in self.model:
            with self.store.open_reader(artifact_id) as reader:
                assert reader.read() == self.model[artifact_id]
        else:
            try:
                self.store.open_reader(artifact_id)
            except ArtifactNotFound:
                pass
            else:
                raise AssertionError(f"{artifact_id} readable after remove")

    @rule(artifact_id=ids)
    def remove(self, artifact_id: str) -> None:
        if artifact_id in self.model:
            self.store.remove(artifact_id)
            del self.model[artifact_id]
        else:
            try:
                self.store.remove(artifact_id)
            except ArtifactNotFound:
                pass
            else:
                raise AssertionError("second remove succeeded")

    @rule()
    def collect_garbage(self) -> None:
        gc(self.store, grace_period=0, allow_short_grace=True)
        live = self._live_blobs()
        stored = {info.hexdigest for info in self.store.content.iter_blobs()}
        assert stored == live  # exactly the referenced blobs survive

    def _live_blobs(self) -> set[str]:
        """Digests of the live artifacts kept as blobs (content above INLINE_LIMIT)."""
        refs = [self.store.get_ref(i) for i in self.model]
        return {ref.digest.hexdigest for ref in refs if ref.inline is None}

    @invariant()
    def one_blob_per_distinct_live_content(self) -> None:
        stored = {info.hexdigest for info in self.store.content.iter_blobs()}
        assert self._live_blobs() <= stored  # removed refs leave blobs for gc; live ones stay
        assert sorted(self.store.content.iter_ref_ids()) == sorted(self.model)

    @invariant()
    def small_content_lives_in_its_ref_and_large_in_a_blob(self) -> None:
        for artifact_id, data in self.model.items():
            inline = self.store.get_ref(artifact_id).inline
            assert inline == (data if len(data) <= INLINE_LIMIT else None), artifact_id


TestArtifactStoreModel = ArtifactStoreModel.TestCase
TestArtifactStoreModel.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
