"""Find the code blocks of a Markdown file and run them (the documentation test's runner).

Every fenced block must say what it is:

- ``python``: run; the Python blocks of one file share one interpreter and one namespace.
  A ``python`` block made of ``>>>`` lines is a ``pycon`` block.
- ``pycon``: an interactive session, checked like a doctest (``...`` matches anything).
- ``bash``, ``sh``, ``shell``: run with ``bash -Eeuo pipefail``; any failing command fails it.
- ``console``: ``$ command`` lines, each followed by its expected output (``...`` as above).
- ``text`` and data (``json``, ``toml``, ``yaml``, ``ini``): not run; JSON and TOML must parse.

The blocks of one file run in document order in one fresh working directory, so a file written
by one block is there for the next. A block that cannot run says why, in a comment right above
it (blank lines may separate them)::

    <!-- docs-test: skip (starts a server that runs until interrupted) -->

Anything else (no language, an unknown one, a directive without a reason or with no block
below it, a fence indented into a list item, which mkdocs renders as inline text) is a problem
the test reports with its file and line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

DRIVER = Path(__file__).with_name("docs_driver.py")

# Each language of a fence's info string, and what the runner does with it.
RUN_KINDS = {
    "python": "python",
    "py": "python",
    "pycon": "pycon",
    "bash": "bash",
    "sh": "bash",
    "shell": "bash",
    "console": "console",
}
DATA_KINDS = {"text", "json", "toml", "yaml", "ini"}

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:(?P<body>.*?)-->\s*$")
_SKIP = re.compile(r"^\s*skip\s*\((?P<reason>[^)]*\S[^)]*)\)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts (the fence's line, 1-based), its kind and text."""

    source: str
    line: int
    kind: str  # a value of RUN_KINDS, or a DATA_KINDS language
    code: str
    skip: str | None = None  # the reason, for a block marked "skip"

    @property
    def runs(self) -> bool:
        return self.kind in RUN_KINDS.values() and self.skip is None


@dataclass
class Document:
    """The blocks of one file and the problems found while reading it."""

    blocks: list[Block] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse(text: str, source: str) -> Document:
    """Every fenced block of ``text``, with ``source`` (a file name) for messages."""
    doc = Document()
    lines = text.splitlines()
    pending: tuple[int, str | None] | None = None  # (line, skip reason) of a directive
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        fence = _FENCE.match(line)
        if directive:
            if pending is not None:
                doc.problems.append(f"{source}:{pending[0]}: docs-test comment with no block below")
            skip = _SKIP.match(directive.group("body"))
            if skip is None:
                doc.problems.append(
                    f"{source}:{i + 1}: unknown docs-test comment {line.strip()!r}; "
                    "write <!-- docs-test: skip (why it cannot run) -->"
                )
            pending = (i + 1, skip.group("reason").strip() if skip else None)
            i += 1
            continue
        if fence is None or (fence.group("fence")[0] == "`" and "`" in fence.group("info")):
            if line.strip() and pending is not None:
                doc.problems.append(f"{source}:{pending[0]}: docs-test comment with no block below")
                pending = None
            i += 1
            continue
        start = i
        indent, marker = len(fence.group("indent")), fence.group("fence")
        if indent:
            doc.problems.append(
                f"{source}:{start + 1}: indented code fence (in a list item?): mkdocs' "
                "Markdown shows it as inline text; put the block outside the list"
            )
        info = fence.group("info").strip()
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if (
                close
                and close.group("fence")[0] == marker[0]
                and len(close.group("fence")) >= len(marker)
                and not close.group("info").strip()
            ):
                break
            # Continuation lines of a fence inside a list item carry its indentation.
            text_line = lines[i]
            body.append(text_line[indent:] if text_line[:indent].isspace() else text_line)
            i += 1
        else:
            doc.problems.append(f"{source}:{start + 1}: code block never closed")
        i += 1
        code = "\n".join(body) + "\n"
        skip_reason = pending[1] if pending else None
        pending = None
        _add_block(doc, source, start + 1, info, code, skip_reason)
    if pending is not None:
        doc.problems.append(f"{source}:{pending[0]}: docs-test comment with no block below")
    return doc


def _add_block(
    doc: Document, source: str, line: int, info: str, code: str, skip: str | None
) -> None:
    language = info.split()[0].lower() if info else ""
    if not language:
        doc.problems.append(
            f"{source}:{line}: code block without a language: label it "
            f"{', '.join(sorted(RUN_KINDS))} (run) or {', '.join(sorted(DATA_KINDS))} (not run)"
        )
        return
    if language in DATA_KINDS:
        kind = language
        problem = _data_problem(language, code)
        if problem:
            doc.problems.append(f"{source}:{line}: {language} block does not parse: {problem}")
    elif language in RUN_KINDS:
        kind = RUN_KINDS[language]
        if kind == "python" and code.lstrip().startswith(">>>"):
            kind = "pycon"
    else:
        doc.problems.append(f"{source}:{line}: unknown code block language {language!r}")
        return
    doc.blocks.append(Block(source, line, kind, code, skip))


def _data_problem(language: str, code: str) -> str | None:
    try:
        if language == "json":
            json.loads(code)
        elif language == "toml":
            tomllib.loads(code)
    except ValueError as e:
        return str(e)
    return None


@dataclass(frozen=True)
class RunResult:
    """What running a file's blocks did: how many ran, and the first failure if any."""

    ran: int
    failure: str | None  # "<file>:<line>: <kind> block failed ..." with the details
    output: str  # everything the blocks printed


def run_blocks(
    blocks: list[Block],
    workdir: Path,
    env: dict[str, str],
    *,
    replacements: dict[str, str] | None = None,
    timeout: float = 600,
) -> RunResult:
    """Run ``blocks`` in order in one interpreter (``docs_driver.py``) with cwd ``workdir``.

    ``replacements`` are applied to each block's text first: the documentation names example
    endpoints (MinIO's ``http://localhost:9000``) that the test swaps for its own servers.
    """
    plan = [{**asdict(b), "code": _replace(b.code, replacements or {})} for b in blocks if b.runs]
    plan_path = workdir / ".docs-test-plan.json"
    result_path = workdir / ".docs-test-result.json"
    plan_path.write_text(json.dumps(plan))
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(plan_path), str(result_path)],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout.decode(errors="replace")
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return RunResult(0, f"the runner itself failed (exit code {proc.returncode})", output)
    plan_path.unlink()
    result_path.unlink()
    return RunResult(result["ran"], result["failure"], output)


def _replace(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        code = code.replace(old, new)
    return code


def docs_env(base: dict[str, str], home: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment blocks run in: this interpreter's tools first, nothing of the caller's
    optuna-cas, AWS or Google settings, a private ``HOME`` (caches, ``~/.aws``), plus ``extra``.
    """
    import optuna_cas

    dropped = ("OPTUNA_CAS_", "AWS_", "STORAGE_EMULATOR_HOST", "GOOGLE_", "XDG_CACHE_HOME")
    env = {k: v for k, v in base.items() if not k.startswith(dropped)}
    src = str(Path(optuna_cas.__file__).resolve().parents[1])  # this checkout's sources
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, base.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
    env["HOME"] = str(home)
    env["MPLBACKEND"] = "Agg"
    env.update(extra)
    return env
