"""``verify``: check that every ref has its blob and every blob has the bytes its name says."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from optuna_cas.content import QUARANTINE_PREFIX, BlobInfo
from optuna_cas.digest import CHUNK_SIZE, Digest, Hasher, readinto
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.operations._progress import Progress, ProgressCallback
from optuna_cas.refs import ArtifactRef
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["MissingBlob", "VerifyReport", "verify"]


@dataclass(frozen=True)
class MissingBlob:
    """A ref whose blob is absent or of the wrong size.

    Attributes:
        artifact_id: The ref.
        digest: The blob it names.
        problem: ``"missing"`` or ``"size <n>"`` (the stored size).
    """

    artifact_id: str
    digest: str
    problem: str


@dataclass
class VerifyReport:
    """What :func:`verify` found.

    Attributes:
        deep: Blobs were re-hashed (else only presence and size were checked).
        refs_checked: Refs read.
        blobs_checked: Blobs listed.
        bytes_hashed: Bytes read and hashed (deep mode).
        corrupt: Keys of blobs whose bytes do not match their name.
        missing: Refs whose blob is absent or of the wrong size.
        orphans: Keys of blobs no ref points at (gc reclaims them).
        quarantined: Keys of corrupt blobs moved under ``quarantine/``.
        malformed_refs: IDs of refs that could not be parsed.

    Example:
        >>> VerifyReport(deep=True).ok
        True
    """

    deep: bool
    refs_checked: int = 0
    blobs_checked: int = 0
    bytes_hashed: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[MissingBlob] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    malformed_refs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No corrupt blob, no missing blob, no malformed ref (orphans are harmless).

        Example:
            >>> VerifyReport(deep=False, orphans=["blobs/x"]).ok
            True
        """
        return not (self.corrupt or self.missing or self.malformed_refs)


def verify(
    store: ContentAddressedArtifactStore,
    *,
    deep: bool = True,
    quarantine: bool = False,
    workers: int = 4,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Check a store: refs to missing blobs, corrupt blobs (deep), orphan blobs.

    Args:
        store: Any optuna-cas store (also behind ``Backoff``; a cache is bypassed: the
            backend's own bytes are checked).
        deep: Re-hash every blob (reads everything); else check presence and size only.
        quarantine: Move corrupt blobs to ``quarantine/...``, so that the next upload of the
            same bytes writes a good copy (and reads fail as missing, not as corrupt).
        workers: Blobs hashed in parallel (BLAKE3 and I/O release the GIL).
        progress: Called as ``progress(task, done, total)``; ``total`` is in bytes when deep.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is False if anything is wrong.

    Example:
        >>> import io
        >>> from optuna_cas import MemoryArtifactStore
        >>> store = MemoryArtifactStore(); store.write("a", io.BytesIO(b"abc"))
        >>> verify(store).ok
        True
    """
    content = store.content
    report = VerifyReport(deep=deep)
    blobs: dict[str, BlobInfo] = {}
    for info in content.iter_blobs():
        blobs[info.hexdigest] = info
        report.blobs_checked += 1
    expected_size: dict[str, int] = {}

    def read(artifact_id: str) -> ArtifactRef | str | None:
        try:
            return content.get_ref(artifact_id)
        except ArtifactNotFound:
            return None  # removed while we listed
        except IntegrityError:
            return artifact_id  # malformed

    ids = list(content.iter_ref_ids())
    with ThreadPoolExecutor(max_workers=max(1, workers) * 2) as pool:  # ~5 ms requests remotely
        ref_results = list(pool.map(read, ids))
    for result in ref_results:
        if result is None:
            continue
        if isinstance(result, str):
            report.malformed_refs.append(result)
            continue
        ref = result
        report.refs_checked += 1
        hexdigest = ref.digest.hexdigest
        expected_size[hexdigest] = ref.size
        stored = blobs.get(hexdigest)
        if stored is None:
            report.missing.append(MissingBlob(ref.artifact_id, str(ref.digest), "missing"))
        elif stored.stored_size != ref.size:
            report.missing.append(
                MissingBlob(ref.artifact_id, str(ref.digest), f"size {stored.stored_size}")
            )
    report.orphans = sorted(info.key for h, info in blobs.items() if h not in expected_size)

    if deep:
        todo = list(blobs.values())
        bar = Progress("verify: hashing blobs", sum(i.stored_size for i in todo), progress)

        def check(info: BlobInfo) -> bool:
            return _blob_matches(store, info, bar)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(pool.map(check, todo))
        report.bytes_hashed = bar.done
        report.corrupt = sorted(
            info.key for info, good in zip(todo, results, strict=True) if not good
        )
    if quarantine:
        for key in report.corrupt:
            _quarantine(store, key)
            report.quarantined.append(key)
    return report


def _blob_matches(store: ContentAddressedArtifactStore, info: BlobInfo, bar: Progress) -> bool:
    """Re-hash one blob straight from the backend (never from a cache)."""
    hasher = Hasher()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    try:
        with store.content.backend.open_reader(info.key) as reader:
            while n := readinto(reader, view):
                hasher.update(view[:n])
                bar.advance(n)
    except ArtifactNotFound:
        return True  # deleted (by gc) while we looked: nothing corrupt left behind
    got = hasher.digest()
    return got == Digest(info.hexdigest, got.size, info.algorithm)


def _quarantine(store: ContentAddressedArtifactStore, key: str) -> None:
    backend = store.content.backend
    try:
        with backend.open_reader(key) as reader:
            backend.write(QUARANTINE_PREFIX + key, reader)
        backend.remove(key)
    except ArtifactNotFound:
        pass
