"""What a gc run found and did (filled in by :mod:`optuna_cas.operations.gc` and its helpers)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GcReport"]


@dataclass
class GcReport:
    """What a gc run found and did.

    Attributes:
        dry_run: Nothing was deleted or written.
        blobs_scanned: Blobs listed.
        refs_scanned: Refs listed.
        deleted: Keys of blobs deleted (in a dry run: that a real run would delete).
        bytes_freed: Size of everything deleted: blobs, manifests, packs and index objects.
        kept_young: Unreferenced blobs spared because they are younger than the grace period.
        temp_files_removed: Leftovers of interrupted local writes removed.
        bad_refs: IDs of refs that could not be read (skipped; ``optuna-cas verify`` says
            why). Blobs and manifests whose digest appears in their bytes are kept.
        manifests_scanned: Manifests (of chunked files) listed.
        packs_scanned: Packs listed.
        index_objects_scanned: Index objects listed.
        manifests_deleted: Keys of manifests deleted: no ref names their file and they are
            older than the grace period.
        packs_deleted: Keys of packs deleted: no kept manifest uses them and they are older
            than the grace period.
        packs_repacked: Keys of mostly dead packs whose live chunks were copied into new packs
            (the old pack itself goes in a later run, once unused: see the gc module).
        manifests_rewritten: Manifests pointed at the new packs.
        bytes_repacked: Live chunk bytes copied into new packs.
        index_objects_deleted: Old index objects replaced by one consolidated index.
        bad_manifests: Keys of manifests gc needed but could not read: packs and index
            objects were then left alone (``optuna-cas verify`` says why).

    Example:
        >>> GcReport(dry_run=True).deleted_count
        0
    """

    dry_run: bool
    blobs_scanned: int = 0
    refs_scanned: int = 0
    deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_young: int = 0
    temp_files_removed: int = 0
    bad_refs: list[str] = field(default_factory=list)
    manifests_scanned: int = 0
    packs_scanned: int = 0
    index_objects_scanned: int = 0
    manifests_deleted: list[str] = field(default_factory=list)
    packs_deleted: list[str] = field(default_factory=list)
    packs_repacked: list[str] = field(default_factory=list)
    manifests_rewritten: int = 0
    bytes_repacked: int = 0
    index_objects_deleted: int = 0
    bad_manifests: list[str] = field(default_factory=list)

    @property
    def deleted_count(self) -> int:
        """Number of blobs deleted (or to delete, in a dry run).

        Example:
            >>> GcReport(dry_run=False, deleted=["blobs/x"]).deleted_count
            1
        """
        return len(self.deleted)
