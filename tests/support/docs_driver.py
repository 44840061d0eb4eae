"""Run one Markdown file's code blocks in order (started by ``tests/support/docs.py``).

Usage: ``python docs_driver.py PLAN.json RESULT.json``, in the working directory the blocks
share. PLAN is a list of blocks (source, line, kind, code); RESULT gets ``{"ran": N,
"failure": null | "<file>:<line>: ..."}``. Stops at the first failing block: later blocks
usually build on it. Only the standard library, so nothing here leaks into the blocks.
"""

from __future__ import annotations

import doctest
import io
import json
import subprocess
import sys
import traceback
from typing import Any

_BLOCK_TIMEOUT_S = 300


def main(plan_path: str, result_path: str) -> None:
    with open(plan_path) as f:
        blocks: list[dict[str, Any]] = json.load(f)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    ran, failure = 0, None
    for block in blocks:
        run = {"python": _python, "pycon": _pycon, "bash": _bash, "console": _console}
        where = f"{block['source']}:{block['line']}"
        print(f"--- docs-test: {where} ({block['kind']})", flush=True)
        problem = run[block["kind"]](block, namespace)
        ran += 1
        if problem is not None:
            failure = f"{where}: {block['kind']} block failed\n{problem}"
            break
    with open(result_path, "w") as f:
        json.dump({"ran": ran, "failure": failure}, f)


def _python(block: dict[str, Any], namespace: dict[str, Any]) -> str | None:
    # Padding puts the code on its Markdown line numbers, so tracebacks name the real line.
    code = "\n" * block["line"] + block["code"]
    try:
        exec(compile(code, block["source"], "exec"), namespace)
    except BaseException:
        return traceback.format_exc()
    finally:
        sys.stdout.flush()
    return None


def _pycon(block: dict[str, Any], namespace: dict[str, Any]) -> str | None:
    test = doctest.DocTestParser().get_doctest(
        block["code"], namespace, block["source"], block["source"], block["line"]
    )
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS, verbose=False)
    runner.run(test, out=report.write, clear_globs=False)
    return report.getvalue() if runner.failures else None


def _bash(block: dict[str, Any], namespace: dict[str, Any]) -> str | None:
    # The trap names the failing command by its Markdown line (the code starts on line 2).
    offset = block["line"] - 1
    trap = (
        "trap 's=$?; echo \"docs-test: "
        + block["source"].replace("'", "")
        + f":$((LINENO + {offset})): exit status $s (at: $BASH_COMMAND)\" >&2' ERR\n"
    )
    return _run_script(trap + block["code"])


def _run_script(script: str) -> str | None:
    proc = subprocess.run(
        ["bash", "-Eeuo", "pipefail", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=_BLOCK_TIMEOUT_S,
        check=False,
    )
    output = proc.stdout.decode(errors="replace")
    print(output, end="", flush=True)
    if proc.returncode != 0:
        return f"exit status {proc.returncode}; output:\n{output}"
    return None


def _console(block: dict[str, Any], namespace: dict[str, Any]) -> str | None:
    """``$ command`` lines with their expected output, checked like a doctest's."""
    commands: list[tuple[int, str, list[str]]] = []  # (line, command, expected output lines)
    for number, line in enumerate(block["code"].splitlines(), start=block["line"] + 1):
        if line.startswith("$ "):
            commands.append((number, line[2:], []))
        elif commands:
            commands[-1][2].append(line)
        elif line.strip():
            return f"line {number}: output before the first '$ ' command: {line!r}"
    marker = "\x1edocs-test-command\x1e"
    script = "exec 2>&1\n" + "".join(f"printf '{marker}\\n'\n{cmd}\n" for _, cmd, _ in commands)
    proc = subprocess.run(
        ["bash", "-Eeuo", "pipefail", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        timeout=_BLOCK_TIMEOUT_S,
        check=False,
    )
    outputs = proc.stdout.decode(errors="replace").split(marker + "\n")[1:]
    checker = doctest.OutputChecker()
    for index, (number, command, expected_lines) in enumerate(commands):
        if index >= len(outputs):
            return f"line {number}: {command!r} did not run (exit status {proc.returncode})"
        expected = "\n".join(expected_lines).strip("\n")
        expected = expected + "\n" if expected else ""
        got = outputs[index]
        failed = index == len(outputs) - 1 and proc.returncode != 0
        if failed or not checker.check_output(expected, got, doctest.ELLIPSIS):
            status = f" (exit status {proc.returncode})" if failed else ""
            return (
                f"{block['source']}:{number}: {command!r}{status}\nexpected:\n{expected}got:\n{got}"
            )
    return None


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
