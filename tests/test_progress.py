"""The one progress type: threads of one task advancing it at once lose no units."""

from __future__ import annotations

import os
import sys
import threading

import pytest

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


def test_a_bar_is_drawn_on_a_terminal_that_reports_no_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # `script -c` and some `docker exec -t` give a pseudo-terminal of 0 rows: tqdm took that
    # as its row count and drew nothing at all (found by a probe).
    import fcntl
    import pty
    import struct
    import termios

    from optuna_cas._bars import TerminalProgress

    main_fd, side_fd = pty.openpty()
    fcntl.ioctl(side_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 100, 0, 0))
    with os.fdopen(side_fd, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)  # tqdm sizes only stderr and stdout
        bar = TerminalProgress()
        assert bar.enabled
        with bar:
            bar("put model.pt", 512, 1024)
            terminal.flush()
            os.set_blocking(main_fd, False)  # nothing drawn must fail, not wait
            try:
                drawn = os.read(main_fd, 4096)
            except BlockingIOError:
                drawn = b""
    os.close(main_fd)
    assert b"put model.pt" in drawn and b"1.0 KiB" in drawn  # the total, in binary units
