"""Whether the packs an upload leans on are still stored: each looked at once, maybe ahead.

An upload that finds a chunk already stored refers to it in its pack instead of storing it
again, but only after making sure the pack is still there (gc may have deleted or repacked it
since the index object was read) and touching it if old, so that gc spares it (see
:mod:`optuna_cas.chunks.store`). On a remote store each such look is a request: one after the
other, in the chunk loop, they add a round trip per pack (tens of them for a large checkpoint
whose previous version is stored).

With ``background=True`` the first look at a pack is sent on a small thread pool and the
upload goes on as if the pack were there; :meth:`PackChecks.settle` then waits for every
answer before anything names the file. A pack found gone (rare: gc's race) makes the upload start
again from the source's beginning, with that pack known to be gone.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from optuna_cas.digest import Digest

__all__ = ["PackChecks"]

# Looks at once during an upload (HEAD requests on a remote store). With the backend's 4 part
# threads, which send S3's packs (one PUT each), this stays within boto3's default pool of 10
# connections (urllib3 warns beyond it).
UPLOAD_THREADS = 4


class PackChecks:
    """Each pack's presence asked once per upload, on the caller's thread or ahead of it.

    Args:
        present: Asks the store (and touches the pack if old); True if it is there.
        background: Ask on a thread pool and assume the answer is yes until :meth:`settle`.
        threads: The pool's size.

    Example:
        >>> checks = PackChecks(lambda pack: pack.size == 1, background=True)
        >>> a, b = Digest.of_bytes(b"a"), Digest.of_bytes(b"bb")
        >>> checks.assume(a), checks.assume(b)  # both assumed until the answers come
        (True, True)
        >>> missing, leaned = checks.settle(); [p.size for p in missing], leaned
        ([2], True)
        >>> checks.assume(b), checks.settle()  # known now, and reported once
        (False, ([], False))
        >>> checks.close()
    """

    def __init__(
        self,
        present: Callable[[Digest], bool],
        *,
        background: bool,
        threads: int = UPLOAD_THREADS,
    ) -> None:
        self._present = present
        self._answers: dict[Digest, bool | Future[bool]] = {}
        self._leaned: set[Digest] = set()  # assumed present before the answer came
        self._reported: set[Digest] = set()  # found missing and said so by settle()
        self._pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="optuna-cas-pack-check")
            if background
            else None
        )

    def assume(self, pack: Digest) -> bool:
        """Whether to lean on ``pack``: its answer if known, else True while it is asked."""
        answer = self._answers.get(pack)
        if answer is None:
            if self._pool is None:
                answer = self._answers[pack] = self._present(pack)
            else:
                answer = self._answers[pack] = self._pool.submit(self._present, pack)
        if isinstance(answer, bool):
            return answer
        if answer.done():
            return answer.result()
        self._leaned.add(pack)
        return True

    def usable(self, pack: Digest) -> bool:
        """Whether ``pack`` is stored, waiting for its answer (asking if nobody has)."""
        self.assume(pack)
        answer = self._answers[pack]
        return answer if isinstance(answer, bool) else answer.result()

    def settle(self) -> tuple[list[Digest], bool]:
        """Wait for every answer: the packs newly found missing, and whether one was leaned on.

        Each missing pack is reported once, however often this is called. An upload that
        leaned on a missing pack must not be named: it starts again, and this time
        :meth:`assume` says no for that pack.

        Raises:
            BackendError: A look failed (the upload fails: nothing names the file yet).
        """
        missing = [
            pack
            for pack in list(self._answers)
            if pack not in self._reported and not self.usable(pack)
        ]
        leaned = any(pack in self._leaned for pack in missing)
        self._leaned.clear()
        self._reported.update(missing)
        return missing, leaned

    def close(self) -> None:
        """Stop the thread pool (after the upload, whatever its outcome)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
