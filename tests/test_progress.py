"""The one progress type: threads of one task advancing it at once lose no units."""

from __future__ import annotations

import sys
import threading

from optuna_cas.progress import Progress


def test_threads_advancing_one_task_lose_no_units() -> None:
    # Deep verify hashes on several threads, each advancing one Progress: `done + amount`
    # then a store of it lost updates between threads (found in review), so the
    # reported bytes hashed undercounted and the bar never reached its total.
    seen: list[int] = []
    progress = Progress("hash", 8 * 2000, lambda task, done, total: seen.append(done))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        threads = [
            threading.Thread(target=lambda: [progress.advance(1) for _ in range(2000)])
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert progress.done == 8 * 2000
    assert seen == sorted(seen) and seen[-1] == 8 * 2000  # never backwards
