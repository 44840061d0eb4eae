"""A store whose credentials refuse some operations: read-only keys, CI keys that may not
delete, a gc role that may not touch. Shared by the tests of partial permissions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from optuna_cas.backends.memory import MemoryBackend


class RefusingBackend(MemoryBackend):
    """A memory store that refuses the operations named in ``refuse`` on keys under ``prefix``.

    ``refuse`` (a set of ``"write"``, ``"touch"``, ``"remove"``) may be changed at any time:
    fill the store first, then lock it. A refusal is ``PermissionError("<reason>: <op> <key>")``,
    as a denied request reads.
    """

    def __init__(
        self, refuse: Iterable[str] = (), *, prefix: str = "", reason: str = "AccessDenied"
    ) -> None:
        super().__init__()
        self.refuse = set(refuse)
        self._prefix, self._reason = prefix, reason

    def write(self, key: str, data: Any, *, if_absent: bool = False) -> None:
        self._check("write", key)
        super().write(key, data, if_absent=if_absent)

    def touch(self, key: str) -> None:
        self._check("touch", key)
        super().touch(key)

    def remove(self, key: str) -> None:
        self._check("remove", key)
        super().remove(key)

    def _check(self, operation: str, key: str) -> None:
        if operation in self.refuse and key.startswith(self._prefix):
            raise PermissionError(f"{self._reason}: {operation} {key}")
