"""Bad records met by a whole-store operation: collected for its report, warned about once."""

from __future__ import annotations

import warnings

from optuna_cas.exceptions import MalformedRecordWarning

__all__ = ["BadRecords"]

# The warning names this many records; the report has them all.
_NAMED_IN_WARNING = 5


class BadRecords:
    """Collects ``(name, reason)`` pairs (usable as ``iter_refs(on_bad=...)``) and warns once.

    Example:
        >>> import warnings
        >>> bad = BadRecords()
        >>> bad("a1", "ref 'a1' is malformed: ...")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     bad.warn("gc", "file:///store", "refs")
        >>> print(caught[0].message)
        gc: skipped 1 bad refs in file:///store: 'a1' (run 'optuna-cas verify' for the reasons)
    """

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def __call__(self, name: str, reason: str) -> None:
        """Record one bad record and why it is bad."""
        self.reasons[name] = reason

    def __bool__(self) -> bool:
        return bool(self.reasons)

    def warn(self, operation: str, where: str, what: str) -> None:
        """Issue one :class:`MalformedRecordWarning` naming the first few (if any)."""
        if not self.reasons:
            return
        names = list(self.reasons)
        shown = ", ".join(repr(name) for name in names[:_NAMED_IN_WARNING])
        more = (
            f" and {len(names) - _NAMED_IN_WARNING} more" if len(names) > _NAMED_IN_WARNING else ""
        )
        warnings.warn(
            f"{operation}: skipped {len(names)} bad {what} in {where}: {shown}{more} "
            "(run 'optuna-cas verify' for the reasons)",
            MalformedRecordWarning,
            stacklevel=3,
        )
