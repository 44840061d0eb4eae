"""Start-up time of the command line and of ``import optuna_cas``, against ``import optuna``.

Every contender is a fresh interpreter, timed from spawn to exit (what a user waits for),
rounds alternating the order. The target: ``optuna-cas --help`` takes at most as long as
``python -c "import optuna"``, which every Optuna user pays anyway.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks._util import Config, Contender, Row, Section, fmt_times, measure, median

# What a fast start must not import: the cloud SDKs and Optuna itself.
HEAVY = ("optuna", "boto3", "botocore", "google.cloud.storage", "numpy", "sqlalchemy")


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("optuna-cas")
    return [str(script)] if script.exists() else [sys.executable, "-m", "optuna_cas"]


def _timed(argv: list[str]) -> Contender:
    def run() -> None:
        subprocess.run(
            argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
        )

    return Contender(" ".join(argv), run)


def _imported_by_help() -> list[str]:
    code = (
        "import sys, optuna_cas.cli\n"
        "optuna_cas.cli.build_parser().format_help()\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def run_startup(cfg: Config, data: Path) -> list[Section]:
    data.mkdir(parents=True, exist_ok=True)
    store = data / "store"
    env_store = str(store)
    # A store with one artifact, for a real command.
    subprocess.run([*_cli(), "--store", env_store, "-q", "put", __file__], check=True)
    contenders = {
        "help": _timed([*_cli(), "--help"]),
        "optuna": _timed([sys.executable, "-c", "import optuna"]),
        "ls": _timed([*_cli(), "--store", env_store, "ls"]),
        "ours-import": _timed(
            [sys.executable, "-c", "from optuna_cas import FileSystemArtifactStore"]
        ),
        "optuna-artifacts": _timed(
            [sys.executable, "-c", "from optuna.artifacts import FileSystemArtifactStore"]
        ),
        "python": _timed([sys.executable, "-c", "pass"]),
    }
    times = measure(list(contenders.values()), cfg.startup_reps)
    m = {key: median(times[c.name]) for key, c in contenders.items()}
    ratio = m["help"] / m["optuna"]
    heavy = _imported_by_help()
    rows = [
        Row(
            "`optuna-cas --help`",
            f"{m['help']:.3f} s",
            f'`python -c "import optuna"`: {m["optuna"]:.3f} s',
            f"{ratio:.2f}x",
            "≤ 1.0x",
            ratio <= 1.0,
        ),
        Row(
            "`optuna-cas ls` on a local store (one artifact)",
            f"{m['ls']:.3f} s",
            f'`python -c "import optuna"`: {m["optuna"]:.3f} s',
            f"{m['ls'] / m['optuna']:.2f}x",
            "—",
            None,
        ),
        Row(
            "`from optuna_cas import FileSystemArtifactStore`",
            f"{m['ours-import']:.3f} s",
            f"`from optuna.artifacts import ...`: {m['optuna-artifacts']:.3f} s",
            f"{m['ours-import'] / m['optuna-artifacts']:.2f}x",
            "—",
            None,
        ),
    ]
    notes = [
        f"Medians of {cfg.startup_reps} runs each (after 1 warm-up round; order rotated each "
        f"round); an empty interpreter (`python -c pass`) takes {m['python']:.3f} s.",
        "Modules among "
        + ", ".join(HEAVY)
        + " that `--help` imports: "
        + (", ".join(heavy) if heavy else "none")
        + ". Commands import what they use: Optuna only for a study (`--storage`, the "
        "dashboard); our ArtifactNotFound subclasses Optuna's, whose module is loaded without "
        "`optuna/__init__` (all of Optuna) or `optuna.artifacts`'s (boto3 and "
        "google-cloud-storage).",
        "Per-run seconds: "
        + "; ".join(f"{key} {fmt_times(times[c.name])}" for key, c in contenders.items())
        + ".",
    ]
    return [Section("13. Start-up of the command line", rows, notes)]
