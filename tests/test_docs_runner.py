"""The documentation runner itself (tests/support/docs.py): what it finds, runs and reports."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from tests.support.docs import RunResult, docs_env, parse, run_blocks


def _md(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _run(tmp_path: Path, markdown: str) -> RunResult:
    doc = parse(_md(markdown), "x.md")
    assert doc.problems == []
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return run_blocks(doc.blocks, tmp_path, docs_env(dict(os.environ), home, {}))


def test_kinds_lines_and_skips() -> None:
    doc = parse(
        _md(
            """
            # Title

            ```python
            x = 1
            ```

            ```python
            >>> x
            1
            ```

            <!-- docs-test: skip (starts a server) -->

            ```bash
            serve forever
            ```

            ```console
            $ echo hi
            hi
            ```

            ~~~sh
            echo tildes
            ~~~

            ```text
            not code
            ```
            """
        ),
        "x.md",
    )
    assert doc.problems == []
    found = [(b.line, b.kind, b.skip, b.runs) for b in doc.blocks]
    assert found == [
        (3, "python", None, True),
        (7, "pycon", None, True),
        (14, "bash", "starts a server", False),
        (18, "console", None, True),
        (23, "bash", None, True),
        (27, "text", None, False),
    ]
    assert doc.blocks[4].code == "echo tildes\n"


def test_problems_name_file_and_line() -> None:
    doc = parse(
        _md(
            """
            ```
            unlabelled
            ```

            ```rust
            fn main() {}
            ```

            <!-- docs-test: skip -->
            ```bash
            true
            ```

            <!-- docs-test: skip (no block follows) -->
            some prose

            ```json
            {"not": json}
            ```

            - a list item:

              ```bash
              echo indented
              ```

            ```python
            never closed
            """
        ),
        "x.md",
    )
    assert [p.split(":", 2)[1] for p in doc.problems] == ["1", "5", "9", "14", "17", "23", "27"]
    assert "without a language" in doc.problems[0]
    assert "unknown code block language 'rust'" in doc.problems[1]
    assert "unknown docs-test comment" in doc.problems[2]
    assert "no block below" in doc.problems[3]
    assert "json block does not parse" in doc.problems[4]
    assert "indented code fence" in doc.problems[5]
    assert "never closed" in doc.problems[6]


def test_blocks_share_a_directory_and_a_namespace(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        ```bash
        echo "from bash" > note.txt
        ```

        ```python
        text = open("note.txt").read().strip()
        ```

        ```pycon
        >>> text
        'from bash'
        >>> import optuna_cas, sys
        >>> sys.executable == __import__("shutil").which("python")
        True
        ```

        ```console
        $ cat note.txt
        from bash
        $ optuna-cas --store ./s -q put note.txt
        ...-...-...-...-...
        ```
        """,
    )
    assert result.failure is None, result.output
    assert result.ran == 4


def test_python_failure_names_the_markdown_line(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        ```python
        a = 1

        raise ValueError("boom")
        ```

        ```python
        never = "run"
        ```
        """,
    )
    assert result.failure is not None
    assert result.failure.startswith("x.md:1: python block failed")
    assert 'File "x.md", line 4' in result.failure
    assert "ValueError: boom" in result.failure
    assert result.ran == 1  # a later block builds on earlier ones: the run stops


def test_bash_failure_names_the_command_and_its_line(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        Text.

        ```bash
        echo fine
        false | cat
        echo never
        ```
        """,
    )
    assert result.failure is not None
    assert result.failure.startswith("x.md:3: bash block failed")
    assert "docs-test: x.md:5: exit status 1" in result.failure  # pipefail
    assert "never" not in result.output


def test_unset_variable_fails_a_bash_block(tmp_path: Path) -> None:
    result = _run(tmp_path, '```bash\necho "$NO_SUCH_VARIABLE"\n```\n')
    assert result.failure is not None
    assert "NO_SUCH_VARIABLE: unbound variable" in result.failure


def test_wrong_output_fails_pycon_and_console(tmp_path: Path) -> None:
    pycon = _run(tmp_path, "```pycon\n>>> 1 + 1\n3\n```\n")
    assert pycon.failure is not None
    assert "x.md" in pycon.failure
    assert "Expected:\n    3\nGot:\n    2" in pycon.failure
    console = _run(tmp_path, "```console\n$ echo one\none\n$ echo two\nthree\n```\n")
    assert console.failure is not None
    assert "x.md:4: 'echo two'" in console.failure
    failing = _run(tmp_path, "```console\n$ false\n```\n")
    assert failing.failure is not None
    assert "'false' (exit status 1)" in failing.failure


def test_replacements_and_environment(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    doc = parse(
        "```bash\ntest http://example.test = http://localhost:9000\n"
        'test "$HOME" = "' + str(home) + '"\n'
        'test -z "${OPTUNA_CAS_STORE:-}"\n```\n',
        "x.md",
    )
    env = docs_env({**os.environ, "OPTUNA_CAS_STORE": "s3://leak"}, home, {})
    result = run_blocks(
        doc.blocks, tmp_path, env, replacements={"http://localhost:9000": "http://example.test"}
    )
    assert result.failure is None, result.output
