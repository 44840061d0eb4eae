"""Run by test_interrupts.py: interrupt one operation at each C call's return in turn.

``python interrupt_child.py WORKDIR KIND STRIDE OFFSET`` with KIND one of upload, download,
delete. CPython raises a pending ``KeyboardInterrupt`` (Ctrl-C) where a call returns; a
profile hook raises one at the n-th return of a C call on the main thread, for n = OFFSET+1,
OFFSET+1+STRIDE, ... After each, the process must go on as a notebook user's would: the same
operation again, a fork (a DataLoader), another connection taking the cache database's write
lock, and a deletion finished by deleting again. A hang trips faulthandler's watchdog (exit
1); any other failure exits non-zero with the interruption point that caused it.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import queue
import sqlite3
import sys
import threading
import traceback
from typing import Any

import optuna

from optuna_cas import (
    CachedArtifactStore,
    FileSystemArtifactStore,
    delete_artifact,
    download_artifact,
    get_all_artifact_meta,
    upload_artifact,
)
from optuna_cas.exceptions import ArtifactNotFound

# The interpreter's own windows: threading's Python-level locking (Condition.__enter__,
# Event.wait inside Thread.start) interrupted after its lock.acquire returned leaves that lock
# held. Those are CPython's, and what they hold is the interrupted operation's own (its
# thread's start, its queue): not what this checks, and they made the check flaky.
_INTERPRETER_OWN = {threading.__file__, queue.__file__}


class _InterruptAt:
    """A profile hook raising KeyboardInterrupt at the ``at``-th return of a C call."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event == "c_return" and frame.f_code.co_filename not in _INTERPRETER_OWN:
            self.seen += 1
            if self.seen == self.at:
                sys.setprofile(None)
                raise KeyboardInterrupt


def _threading_own_window(error: BaseException) -> bool:
    """Whether ``error`` is CPython's ``threading`` failing to handle the interrupt itself.

    ``Condition.wait`` interrupted as it releases its lock then releases it again
    (``RuntimeError: release unlocked lock``): the interpreter's window, not ours.
    """
    frames = traceback.extract_tb(error.__traceback__)
    return (
        isinstance(error.__context__, KeyboardInterrupt)
        and bool(frames)
        and frames[-1].filename == threading.__file__
    )


def main(workdir: str, kind: str, stride: int, offset: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna's in-memory storage: its RDB storage has interrupt windows of its own
    # (SQLAlchemy sessions), which are not what this checks.
    study = optuna.create_study()
    trial = study.ask()
    store = CachedArtifactStore(
        FileSystemArtifactStore(f"{workdir}/store", chunk_threshold=256 * 1024),
        directory=f"{workdir}/cache",
    )
    # One file stored as chunks (above the threshold set above), one as a whole blob.
    sources, out = {f"{workdir}/model.pt": 600_000, f"{workdir}/head.pt": 100_000}, f"{workdir}/out"
    for path, size in sources.items():
        with open(path, "wb") as f:
            f.write(os.urandom(size))
    source = next(iter(sources))
    os.mkdir(out)
    firsts = [
        upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial)
        for path in sources
    ]
    deleting: list[str] = []

    def operation(hook: _InterruptAt | None, tag: str) -> None:
        if kind == "delete":
            victim = upload_artifact(artifact_store=store, file_path=source, study_or_trial=trial)
            deleting.append(victim)
        elif kind == "download":
            store.cache.clear()  # a fill each time, not a hit
        sys.setprofile(hook)
        try:
            if kind == "upload":
                for path in sources:
                    upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial)
            elif kind == "download":
                for n, first in enumerate(firsts):
                    target = f"{out}/{tag}-{n}"
                    download_artifact(artifact_store=store, file_path=target, artifact_id=first)
            else:
                delete_artifact(artifact_store=store, artifact_id=victim, study_or_trial=trial)
        finally:
            sys.setprofile(None)

    counter = _InterruptAt(0)
    operation(counter, "count")
    for at in range(1 + offset, counter.seen + 1, stride):
        faulthandler.dump_traceback_later(30, exit=True)
        try:
            operation(_InterruptAt(at), f"i{at}")
        except KeyboardInterrupt:
            pass
        except BaseException as error:
            if not _threading_own_window(error):
                sys.exit(f"interrupt at {at}: raised instead:\n{traceback.format_exc()}")
        try:
            if kind == "delete":
                for victim in deleting:
                    try:  # again: finishes a deletion the interrupt cut short
                        delete_artifact(
                            artifact_store=store, artifact_id=victim, study_or_trial=trial
                        )
                    except ArtifactNotFound:
                        pass
                    try:
                        store.get_ref(victim)
                    except ArtifactNotFound:
                        continue
                    sys.exit(f"interrupt at {at}: the ref of deleted {victim} stays")
                deleting.clear()
            else:
                operation(None, f"again{at}")
            child = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
            child.start()
            child.join()
            database = sqlite3.connect(f"{workdir}/cache/cache.db", timeout=2, isolation_level=None)
            database.execute("BEGIN IMMEDIATE")
            database.execute("ROLLBACK")
            database.close()
        except BaseException:
            sys.exit(f"after an interrupt at {at}:\n{traceback.format_exc()}")
    # Every artifact the study records downloads; nothing half-written is left behind.
    for meta in get_all_artifact_meta(trial):
        target = f"{out}/final-{meta.artifact_id}"
        download_artifact(artifact_store=store, file_path=target, artifact_id=meta.artifact_id)
    left = [name for name in os.listdir(out) if name.endswith(".partial")]
    if left:
        sys.exit(f"temp files left in the download directory: {left}")
    faulthandler.dump_traceback_later(30, exit=True)  # until the process has exited
    print(f"{kind}: interrupted at {len(range(1 + offset, counter.seen + 1, stride))} points")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
