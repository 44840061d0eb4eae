"""``verify``: check that every ref has its blob and every blob has the bytes its name says."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from optuna_cas.content import BlobInfo
from optuna_cas.digest import CHUNK_SIZE, Digest, Hasher, readinto
from optuna_cas.exceptions import ArtifactNotFound, IntegrityError
from optuna_cas.operations._bad_records import BadRecords
from optuna_cas.progress import Progress, ProgressCallback
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
        quarantined: Keys of corrupt blobs moved under ``quarantine/`` (an entry that is not
            a file, such as a FIFO, holds no bytes to keep and is removed).
        malformed_refs: IDs of refs that could not be read: malformed or oversized records,
            records naming another ID, FIFOs, sockets or directories at a ref key.
        reasons: Why each malformed ref (by ID) and each corrupt blob (by key) is bad.

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
    reasons: dict[str, str] = field(default_factory=dict)

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
    """Check a store: bad refs, refs to missing blobs, corrupt blobs (deep), orphan blobs.

    Every problem is reported with its reason (``report.reasons``) and the check goes on; a
    FIFO, socket or device planted at a key is reported (as a malformed ref or a corrupt
    blob), never read from, so verify cannot hang on one.

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
    # Files stored as chunks have a manifest instead of a blob (see optuna_cas.chunks).
    chunked = set(content.chunks.manifest_hexdigests())
    expected_size: dict[str, int] = {}
    bad = BadRecords()
    # ~5 ms requests remotely: read refs with more threads than blobs are hashed with.
    for ref in content.iter_refs(workers=max(1, workers) * 2, on_bad=bad):
        report.refs_checked += 1
        hexdigest = ref.digest.hexdigest
        expected_size[hexdigest] = ref.size
        stored = blobs.get(hexdigest)
        if stored is None and hexdigest in chunked:
            if not content.chunks.has_manifest(ref.digest, with_packs=True):
                report.missing.append(MissingBlob(ref.artifact_id, str(ref.digest), "pack missing"))
        elif stored is None:
            report.missing.append(MissingBlob(ref.artifact_id, str(ref.digest), "missing"))
        elif stored.stored_size != ref.size:
            report.missing.append(
                MissingBlob(ref.artifact_id, str(ref.digest), f"size {stored.stored_size}")
            )
    report.malformed_refs = sorted(bad.reasons)
    report.reasons.update(bad.reasons)
    report.orphans = sorted(info.key for h, info in blobs.items() if h not in expected_size)

    if deep:
        todo = list(blobs.values())
        bar = Progress("verify: hashing blobs", sum(i.stored_size for i in todo), progress)

        def check(info: BlobInfo) -> str | None:
            return _blob_problem(store, info, bar)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            problems = list(pool.map(check, todo))
        report.bytes_hashed = bar.done
        for info, problem in zip(todo, problems, strict=True):
            if problem is not None:
                report.corrupt.append(info.key)
                report.reasons[info.key] = problem
        report.corrupt.sort()
    if quarantine:
        by_key = {info.key: info for info in blobs.values()}
        for key in report.corrupt:
            content.quarantine_blob(by_key[key])
            report.quarantined.append(key)
    return report


def _blob_problem(
    store: ContentAddressedArtifactStore, info: BlobInfo, bar: Progress
) -> str | None:
    """Re-hash one blob straight from the backend (never from a cache); None if it is good."""
    hasher = Hasher()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    try:
        with store.content.open_stored_blob(info) as reader:
            while n := readinto(reader, view):
                hasher.update(view[:n])
                bar.advance(n)
    except ArtifactNotFound:
        return None  # deleted (by gc) while we looked: nothing corrupt left behind
    except IntegrityError as e:
        return str(e)  # not a stored object at all: a FIFO, socket or device at the key
    got = hasher.digest()
    if got != Digest(info.hexdigest, got.size, info.algorithm):
        return f"content hashes to {got}, not the digest its key names"
    return None
