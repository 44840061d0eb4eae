"""What :func:`optuna_cas.reconcile` reports: one list of findings per kind of agreement."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CATEGORIES", "Finding", "ReconcileReport"]


@dataclass(frozen=True)
class Finding:
    """One artifact ID and what was found (or done) about it.

    Attributes:
        artifact_id: The ID (from the attribute's key; may be any text someone wrote there).
        trial_number: The trial's number within the study; None for a study-level artifact
            or a ref that no metadata names.
        reason: What is the matter, in words.
    """

    artifact_id: str
    trial_number: int | None
    reason: str


@dataclass
class ReconcileReport:
    """What :func:`reconcile` found and, with ``repair=True``, did.

    Attributes:
        repair: Repairs were made.
        entries_checked: Metadata entries read (tombstones and recorded deletions excluded).
        refs_listed: Refs in the store.
        consistent: Entries whose artifact downloads (ref matching the recorded digest, or an
            object Optuna's own store wrote).
        repairable: No ref (or a damaged one), but the recorded blob is stored: ``repair``
            writes the ref again from the metadata.
        lost: No ref and no blob (or no digest recorded): the bytes are gone. ``repair``
            records the deletion.
        missing_blobs: The ref is there but its blob is not: the bytes are gone and the ref
            stays (``optuna-cas verify`` reports it too); not repaired.
        conflicts: The ref names other content than the metadata recorded, or is damaged
            with nothing to rebuild it from; not repaired.
        malformed: Entries that cannot be read, each with the reason; not repaired.
        unreferenced: Refs no live metadata of this study names. Reported only: they may
            belong to another study sharing the store.
        rebuilt: Refs written again from the metadata by ``repair``.
        deleted: Deletions recorded by ``repair``.

    Example:
        >>> ReconcileReport(repair=False).ok
        True
    """

    repair: bool
    entries_checked: int = 0
    refs_listed: int = 0
    consistent: list[Finding] = field(default_factory=list)
    repairable: list[Finding] = field(default_factory=list)
    lost: list[Finding] = field(default_factory=list)
    missing_blobs: list[Finding] = field(default_factory=list)
    conflicts: list[Finding] = field(default_factory=list)
    malformed: list[Finding] = field(default_factory=list)
    unreferenced: list[Finding] = field(default_factory=list)
    rebuilt: list[Finding] = field(default_factory=list)
    deleted: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing dangles, conflicts or is malformed (unreferenced refs are not a fault).

        Example:
            >>> ReconcileReport(repair=False, lost=[Finding("a", 0, "gone")]).ok
            False
        """
        problems = (self.repairable, self.lost, self.missing_blobs, self.conflicts)
        return not (any(problems) or self.malformed)

    @property
    def counts(self) -> dict[str, int]:
        """The number of findings in each list, by the list's name.

        Example:
            >>> ReconcileReport(repair=False).counts["lost"]
            0
        """
        return {name: len(getattr(self, name)) for name in CATEGORIES}


# The report's lists, in the order the CLI prints them.
CATEGORIES = (
    "repairable",
    "lost",
    "missing_blobs",
    "conflicts",
    "malformed",
    "rebuilt",
    "deleted",
    "unreferenced",
    "consistent",
)
