"""What :func:`optuna_cas.verify` found (filled in by it and its chunked-content checks)."""

from __future__ import annotations

from dataclasses import dataclass, field

from optuna_cas.chunks.layout import MANIFEST_PREFIX

__all__ = ["MissingBlob", "MissingPack", "VerifyReport"]


@dataclass(frozen=True)
class MissingBlob:
    """A ref whose content (blob or chunked file) is absent or of the wrong size.

    Attributes:
        artifact_id: The ref.
        digest: The content it names.
        problem: ``"missing"`` or ``"size <n>"`` (the stored size).

    Example:
        >>> MissingBlob("a1", "blake3:ab...", "missing").problem
        'missing'
    """

    artifact_id: str
    digest: str
    problem: str


@dataclass(frozen=True)
class MissingPack:
    """A pack a manifest names that is absent or of the wrong size.

    Attributes:
        manifest: The manifest's key.
        pack: The pack's digest (as the manifest names it).
        problem: ``"missing"`` or ``"size <n>"`` (the stored size).
        quarantined: A missing pack's key under ``quarantine/``, if a copy is there (moved
            by a ``verify --quarantine``, maybe an older release's): what to move back.

    Example:
        >>> MissingPack("manifests/blake3/ab/...", "blake3:cd...", "size 3").problem
        'size 3'
    """

    manifest: str
    pack: str
    problem: str
    quarantined: str | None = None


@dataclass
class VerifyReport:
    """What :func:`~optuna_cas.verify` found.

    Attributes:
        deep: Contents were re-hashed (else only presence and size were checked).
        refs_checked: Refs read.
        blobs_checked: Blobs listed.
        bytes_hashed: Bytes read and hashed (deep mode): blobs, packs, and each chunked file
            read through its manifest.
        corrupt: Keys of blobs and packs whose bytes do not match their name, and of
            manifests that are malformed or describe another file than their key names.
        missing: Refs whose content is absent or of the wrong size.
        orphans: Keys of blobs, manifests and packs nothing uses (gc reclaims them).
        quarantined: Keys of corrupt objects moved under ``quarantine/`` (an entry that is
            not a file, such as a FIFO, holds no bytes to keep and is removed).
        quarantine_failed: Keys of objects quarantine could not move aside (``reasons`` says
            why, e.g. ``quarantine/`` is a symlink): they stay where they are, and
            the other objects are still moved.
        malformed_refs: IDs of refs that could not be read: malformed or oversized records,
            records naming another ID, FIFOs, sockets or directories at a ref key.
        reasons: Why each malformed ref (by ID), corrupt object, unreadable chunked file and
            bad index object (by key) is bad.
        manifests_checked: Manifests (of chunked files) listed.
        packs_checked: Packs listed.
        index_objects_checked: Index objects listed.
        missing_packs: Packs that manifests name but that are absent or of the wrong size.
        bad_files: Keys of manifests whose file does not read back as its digest (deep mode;
            ``reasons`` names the chunk and pack).
        bad_index_objects: Keys of index objects that do not hash to their name or do not
            parse (harmless: uploaders skip them; gc replaces them), and, deep, those naming a
            chunk where a pack holds other bytes (a chunked file built from them is then in
            :attr:`bad_files`). Not counted in :attr:`ok` themselves.
        optuna_store_files: IDs of files Optuna's own store wrote (at the root, under an ID
            with no ref): they read as artifacts, but hold no digest to check against, so
            nothing was checked. Not counted in :attr:`ok`.
        newer_format: Keys of manifests and index objects in a format newer than this
            release reads: a newer optuna-cas wrote them (or their header is damaged). They
            are never quarantined, and while such a manifest exists no pack is quarantined
            or called an orphan (it may use any). Manifests among them count in :attr:`ok`
            (nothing vouched for their files; upgrade optuna-cas to check them), index
            objects do not (hints, as in :attr:`bad_index_objects`).

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
    quarantine_failed: list[str] = field(default_factory=list)
    malformed_refs: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    manifests_checked: int = 0
    packs_checked: int = 0
    index_objects_checked: int = 0
    missing_packs: list[MissingPack] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)
    bad_index_objects: list[str] = field(default_factory=list)
    optuna_store_files: list[str] = field(default_factory=list)
    newer_format: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing corrupt, missing or unreadable (orphans and bad index objects are harmless).

        Example:
            >>> VerifyReport(deep=False, orphans=["blobs/x"]).ok
            True
        """
        return (
            not (self.corrupt or self.missing or self.malformed_refs or self.missing_packs)
            and not self.bad_files
            and not self.newer_manifests()
        )

    def newer_manifests(self) -> bool:
        """Whether manifests in a newer format than this release reads were found.

        Example:
            >>> VerifyReport(deep=True, newer_format=["chunk-index/ab"]).newer_manifests()
            False
        """
        return any(key.startswith(MANIFEST_PREFIX) for key in self.newer_format)
