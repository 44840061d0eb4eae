"""Refs: the small records that map an artifact ID to its content's digest.

A ref is JSON at ``refs/<artifact_id>`` beside the blobs (see :mod:`optuna_cas.refs`), so any
process that reaches the store can resolve an ID. This module reads, writes, lists and checks
them; one bad ref (malformed, oversized, a FIFO at its key) is reported and skipped, never
allowed to hide the others.
"""

from __future__ import annotations

import collections
import io
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from optuna_cas._forksafe import ForkSafeLock
from optuna_cas._validation import validate_artifact_id
from optuna_cas.backends.base import Backend, read_at_most
from optuna_cas.exceptions import (
    ArtifactNotFound,
    IntegrityError,
    InvalidKeyError,
    MalformedRecordWarning,
)
from optuna_cas.refs import ArtifactRef

__all__ = ["MAX_REF_BYTES", "REF_PREFIX", "BadRefCallback", "RefStore"]

REF_PREFIX = "refs/"
# Refs are tiny JSON records; refuse to parse anything absurdly large found at a ref key.
MAX_REF_BYTES = 1024 * 1024
# on_bad(artifact_id, reason): a ref that could not be read as one (see RefStore.iter_refs).
BadRefCallback = Callable[[str, str], None]
_MAX_REMEMBERED_REFS = 4096


class RefStore:
    """Refs on top of any :class:`~optuna_cas.backends.base.Backend`.

    Args:
        backend: Where refs live.
        remember_refs: Keep the refs read or written by this object in memory (they never
            change for an ID in Optuna's model), saving one small request per repeated read.
            A removal made by *another* process then goes unnoticed by this one.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> from optuna_cas.digest import Digest
        >>> store = RefStore(MemoryBackend())
        >>> store.put_ref(ArtifactRef("a1", Digest.of_bytes(b"x")))
        >>> [ref.artifact_id for ref in store.iter_refs()]
        ['a1']
    """

    def __init__(self, backend: Backend, *, remember_refs: bool = False) -> None:
        self._backend = backend
        self._memo: collections.OrderedDict[str, ArtifactRef] | None = (
            collections.OrderedDict() if remember_refs else None
        )
        self._memo_lock = ForkSafeLock()

    def describe(self) -> str:
        """The backend's URL-like name, for messages."""
        return self._backend.describe()

    def _remember(self, ref: ArtifactRef) -> None:
        if self._memo is None:
            return
        with self._memo_lock:
            self._memo[ref.artifact_id] = ref
            self._memo.move_to_end(ref.artifact_id)
            while len(self._memo) > _MAX_REMEMBERED_REFS:
                self._memo.popitem(last=False)

    def forget_ref(self, artifact_id: str) -> None:
        """Drop a remembered ref (e.g. its blob turned out to be missing).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> RefStore(MemoryBackend(), remember_refs=True).forget_ref("a")
        """
        if self._memo is not None:
            with self._memo_lock:
                self._memo.pop(artifact_id, None)

    def ref_now(self, artifact_id: str) -> ArtifactRef | None:
        """The ref as stored now, read afresh (not remembered); None if there is none.

        For a look again at a ref read earlier, which another process may have removed or
        replaced since.

        Raises:
            IntegrityError: As :meth:`get_ref`.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> RefStore(MemoryBackend(), remember_refs=True).ref_now("a") is None
            True
        """
        self.forget_ref(artifact_id)
        try:
            return self.get_ref(artifact_id)
        except ArtifactNotFound:
            return None

    @staticmethod
    def ref_key(artifact_id: str) -> str:
        """The key of an artifact's ref; validates the ID.

        Example:
            >>> RefStore.ref_key("a1")
            'refs/a1'
        """
        return REF_PREFIX + validate_artifact_id(artifact_id)

    def put_ref(self, ref: ArtifactRef) -> None:
        """Store a ref. Its blob must already be stored (blob before ref).

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.digest import Digest
            >>> store = RefStore(MemoryBackend()); d = Digest.of_bytes(b"x")
            >>> store.put_ref(ArtifactRef("a1", d)); store.get_ref("a1").digest == d
            True
        """
        self._backend.write(self.ref_key(ref.artifact_id), io.BytesIO(ref.to_json()))
        self._remember(ref)

    def get_ref(self, artifact_id: str) -> ArtifactRef:
        """Look up an artifact's ref.

        Raises:
            ArtifactNotFound: No such artifact (the message names the ID and the store).
            IntegrityError: The stored ref is malformed, or is not a stored object (a FIFO,
                socket or device planted at its key).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> RefStore(MemoryBackend()).get_ref("nope")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.ArtifactNotFound: Artifact 'nope' not found in memory://
        """
        key = self.ref_key(artifact_id)
        if self._memo is not None:
            with self._memo_lock:
                remembered = self._memo.get(artifact_id)
                if remembered is not None:
                    self._memo.move_to_end(artifact_id)
                    return remembered
        try:
            data = read_at_most(self._backend, key, MAX_REF_BYTES)
        except ArtifactNotFound as e:
            raise self._not_found(artifact_id) from e
        if len(data) > MAX_REF_BYTES:
            raise IntegrityError(f"ref {artifact_id!r} is larger than {MAX_REF_BYTES} bytes")
        try:
            ref = ArtifactRef.from_json(data, artifact_id)
        except (RecursionError, ArithmeticError) as e:
            # Deeply nested JSON or a number too large for a float: the record is bad, and
            # the callers that skip bad refs must see IntegrityError, not a crash.
            raise IntegrityError(f"ref {artifact_id!r} is malformed: {type(e).__name__}") from e
        self._remember(ref)
        return ref

    def read_raw_ref(self, artifact_id: str) -> bytes | None:
        """The stored bytes at an artifact's ref key (at most ``MAX_REF_BYTES``), unparsed.

        For recovery: gc keeps blobs a damaged ref still names. None if there is nothing
        readable there (absent, a FIFO, an invalid ID).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> RefStore(MemoryBackend()).read_raw_ref("a") is None
            True
        """
        try:
            return read_at_most(self._backend, self.ref_key(artifact_id), MAX_REF_BYTES)[
                :MAX_REF_BYTES
            ]
        except (ArtifactNotFound, IntegrityError, InvalidKeyError):
            return None

    def has_ref(self, artifact_id: str) -> bool:
        """Whether an artifact ID has a ref.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> RefStore(MemoryBackend()).has_ref("a")
            False
        """
        return self._backend.exists(self.ref_key(artifact_id))

    def remove_ref(self, artifact_id: str) -> None:
        """Delete an artifact's ref (its blob stays until :func:`optuna_cas.gc`).

        Raises:
            ArtifactNotFound: No such artifact.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> RefStore(MemoryBackend()).remove_ref("a")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.ArtifactNotFound: Artifact 'a' not found in memory://
        """
        self.forget_ref(artifact_id)
        try:
            self._backend.remove(self.ref_key(artifact_id))
        except ArtifactNotFound as e:
            raise self._not_found(artifact_id) from e

    def _not_found(self, artifact_id: str) -> ArtifactNotFound:
        return ArtifactNotFound(f"Artifact {artifact_id!r} not found in {self.describe()}")

    def iter_ref_ids(self) -> Iterator[str]:
        """IDs of every ref in the store (one listing, no reads).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> list(RefStore(MemoryBackend()).iter_ref_ids())
            []
        """
        for info in self._backend.list(REF_PREFIX):
            artifact_id = info.key[len(REF_PREFIX) :]
            if "/" not in artifact_id:
                yield artifact_id

    def iter_refs(
        self,
        artifact_ids: Iterable[str] | None = None,
        *,
        workers: int = 8,
        on_bad: BadRefCallback | None = None,
    ) -> Iterator[ArtifactRef]:
        """Every ref in the store (or those of ``artifact_ids``); absent refs are skipped.

        A ref that cannot be read as one (malformed or oversized JSON, a record naming another
        ID, a FIFO, socket or directory at its key, an ID that is not a valid artifact ID) is
        a bad record: it is passed to ``on_bad(artifact_id, reason)`` and skipped, so it
        never hides the good ones. Without ``on_bad``, each is reported with a
        :class:`~optuna_cas.exceptions.MalformedRecordWarning`. Errors of the backend itself
        (network, permissions) still propagate: skipping those would make refs vanish.

        Refs are read ``workers`` at a time: on S3 or GCS each is one ~5 ms request, and gc,
        verify, sync and stats read them all.

        Args:
            artifact_ids: Read only these (default: list every ref).
            workers: Parallel reads.
            on_bad: Called with the ID and the reason for each bad ref.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> from optuna_cas.digest import Digest
            >>> backend = MemoryBackend(); store = RefStore(backend)
            >>> store.put_ref(ArtifactRef("good", Digest.of_bytes(b"x")))
            >>> backend.write("refs/bad", io.BytesIO(b"{not json"))
            >>> bad = []
            >>> [r.artifact_id for r in store.iter_refs(on_bad=lambda i, why: bad.append(i))]
            ['good']
            >>> bad
            ['bad']
        """
        report = on_bad if on_bad is not None else self._warn_bad_ref
        if artifact_ids is None:
            ids, nested = self._list_ref_ids()
            for name in nested:
                report(name, f"{REF_PREFIX}{name} is a directory, not a ref")
        else:
            ids = list(artifact_ids)
        if workers <= 1 or len(ids) < 2:
            for artifact_id in ids:
                yield from self._ref_or_report(artifact_id, self._read_ref(artifact_id), report)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="optuna-cas-refs") as pool:
            # Bounded look-ahead: batches keep memory flat on stores with millions of refs.
            for start in range(0, len(ids), 256):
                batch = ids[start : start + 256]
                # Reports are made here, in the caller's thread, not in the pool's.
                for artifact_id, result in zip(batch, pool.map(self._read_ref, batch), strict=True):
                    yield from self._ref_or_report(artifact_id, result, report)

    def _list_ref_ids(self) -> tuple[list[str], list[str]]:
        """IDs of the refs, and names under ``refs/`` that hold keys of their own.

        Nothing this library writes nests below ``refs/<id>/``: such an entry is foreign (a
        directory planted where a ref should be) and is reported rather than ignored.
        """
        ids: list[str] = []
        nested: dict[str, None] = {}
        for info in self._backend.list(REF_PREFIX):
            name = info.key[len(REF_PREFIX) :]
            head, slash, _ = name.partition("/")
            if slash:
                nested[head] = None
            else:
                ids.append(name)
        return ids, list(nested)

    def _read_ref(self, artifact_id: str) -> ArtifactRef | str | None:
        """The ref, the reason it is bad, or None when it is absent (removed meanwhile)."""
        try:
            return self.get_ref(artifact_id)
        except ArtifactNotFound:
            return None
        except (IntegrityError, InvalidKeyError) as e:
            return str(e)

    @staticmethod
    def _ref_or_report(
        artifact_id: str, result: ArtifactRef | str | None, report: BadRefCallback
    ) -> Iterator[ArtifactRef]:
        if isinstance(result, str):
            report(artifact_id, result)
        elif result is not None:
            yield result

    def _warn_bad_ref(self, artifact_id: str, reason: str) -> None:
        hint = "" if "optuna-cas verify" in reason else " (run 'optuna-cas verify')"
        warnings.warn(
            f"skipped bad ref {artifact_id!r} in {self.describe()}: {reason}{hint}",
            MalformedRecordWarning,
            stacklevel=4,
        )
