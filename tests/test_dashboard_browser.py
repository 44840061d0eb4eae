"""``optuna-cas dashboard`` in a real browser: headless Chromium (Debian's ``chromium``).

``make test`` installs Chromium where it is missing (``make ensure-chromium``); without it this
test fails rather than skips, so a machine without a browser cannot pass by accident.
"""

from __future__ import annotations

import queue
import shutil
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

import optuna_cas

SCRIPT = Path(sys.executable).with_name("optuna-cas")
RED = (255, 0, 0)
SIDE = 64  # the artifact is a SIDE x SIDE solid red PNG


def make_png(width: int, height: int, rgb: tuple[int, int, int], comment: bytes = b"") -> bytes:
    """A solid-colour 8-bit RGB PNG, built by hand (no imaging library needed).

    ``comment`` goes into a tEXt chunk, which viewers ignore.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + (chunk(b"tEXt", b"Comment\x00" + comment) if comment else b"")
        + chunk(b"IEND", b"")
    )


def decode_png(data: bytes) -> tuple[int, int, list[bytes], int]:
    """Width, height, unfiltered rows and bytes per pixel of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, bpp = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, up_left = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                line[i] = (line[i] + predictor) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows, bpp


def largest_red_square(screenshot: bytes) -> int:
    """Side of the largest square of exactly-RED pixels in the screenshot."""
    width, height, rows, bpp = decode_png(screenshot)
    # Classic dynamic programme: side[x] = largest red square ending at (x, y).
    best, side = 0, [0] * (width + 1)
    for y in range(height):
        row, new = rows[y], [0] * (width + 1)
        for x in range(width):
            if tuple(row[x * bpp : x * bpp + 3]) == RED:
                new[x + 1] = 1 + min(side[x], side[x + 1], new[x])
                best = max(best, new[x + 1])
        side = new
    return best


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed: run 'make ensure-chromium' (Debian package 'chromium')")


def screenshot(chromium: str, url: str, out: Path) -> bytes:
    profile = out.with_suffix(".profile")
    command = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={out}",
        "--window-size=1280,900",
        # Virtual time waits for the page's own requests: the single-page app fetches the
        # study, then the artifact, before the picture is taken.
        "--virtual-time-budget=8000",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert out.exists(), f"no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    print(f"screenshot: {out}")
    return out.read_bytes()


@dataclass
class Dashboard:
    url: str
    study: optuna.Study
    store: optuna_cas.FileSystemArtifactStore
    artifacts: list[str]  # one artifact per trial, identical bytes
    png: bytes


def _read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Past 4 KiB with a comment, so that the two trials share one blob (smaller files live
    # inside their refs).
    png = make_png(SIDE, SIDE, RED, comment=b"padding " * 700)
    source = tmp_path / "red.png"
    source.write_bytes(png)
    storage_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    study = optuna.create_study(storage=storage_url, study_name="browser")
    store = optuna_cas.FileSystemArtifactStore(tmp_path / "store")
    artifacts = [
        optuna_cas.upload_artifact(
            artifact_store=store, file_path=str(source), study_or_trial=study.ask()
        )
        for _ in range(2)
    ]
    assert len(list(store.content.iter_blobs())) == 1  # the two trials share one blob

    log = tmp_path / "dashboard.log"
    command = [str(SCRIPT), "--store", str(tmp_path / "store"), "dashboard", storage_url]
    # Port 0: the server picks a free port and prints its URL (no race for a port number).
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        try:
            first = lines.get(timeout=120)
        except queue.Empty:
            pytest.fail(f"optuna-cas dashboard printed no URL: {log.read_text()[-2000:]}")
        assert first.startswith("optuna-dashboard at http://127.0.0.1:"), first
        url = first.split()[2].rstrip("/")
        with urllib.request.urlopen(f"{url}/api/studies", timeout=60) as response:
            assert response.status == 200  # it answers
        yield Dashboard(url, study, store, artifacts, png)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_trial_page_previews_png_serves_exact_bytes_and_delete_keeps_the_twin(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    chromium = find_chromium()
    study_id = dashboard.study._study_id
    trials = dashboard.study.trials
    trial_page = f"{dashboard.url}/dashboard/studies/{study_id}/trials?numbers="

    # (a) The trial's page shows the PNG's preview: the browser fetched and drew the image.
    shot = screenshot(chromium, trial_page + "0", tmp_path / "trial-0.png")
    assert largest_red_square(shot) >= SIDE, "no preview of the red PNG on the trial page"

    # (b) The dashboard's artifact route returns the exact bytes, typed from the metadata.
    routes = [
        f"{dashboard.url}/artifacts/{study_id}/{trial._trial_id}/{artifact_id}"
        for trial, artifact_id in zip(trials, dashboard.artifacts, strict=True)
    ]
    for route in routes:
        with urllib.request.urlopen(route, timeout=60) as response:
            assert response.headers["Content-Type"] == "image/png"
            assert response.read() == dashboard.png

    # (c) Delete trial 0's artifact with the request the UI's delete button sends. The blob
    # is shared with trial 1's identical PNG, which must stay downloadable, byte-exact.
    delete = urllib.request.Request(
        f"{dashboard.url}/api/artifacts/{study_id}/{trials[0]._trial_id}/{dashboard.artifacts[0]}",
        method="DELETE",
    )
    with urllib.request.urlopen(delete, timeout=60) as response:
        assert response.status == 204
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(routes[0], timeout=60)
    assert gone.value.code == 404
    with urllib.request.urlopen(routes[1], timeout=60) as response:
        assert response.read() == dashboard.png
    twin = screenshot(chromium, trial_page + "1", tmp_path / "trial-1-after-delete.png")
    assert largest_red_square(twin) >= SIDE, "trial 1's preview vanished with trial 0's delete"
    deleted = screenshot(chromium, trial_page + "0", tmp_path / "trial-0-after-delete.png")
    assert largest_red_square(deleted) == 0, "trial 0 still shows the deleted artifact"
