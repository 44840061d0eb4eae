"""The layering table in README.md holds: every module sits on one row and imports only its own
row or rows above it in the table (the lower layers).

Imports inside functions and under ``TYPE_CHECKING`` count too: a lazy import is still a
dependency, and a layer that needs a higher one cannot be changed or tested without it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "optuna_cas"
ROOT_MODULE = "__init__"  # how the table names the package itself


def layer_table(readme: str) -> dict[str, int]:
    """Each name in the README's layering table (``cli``, ``digest``, ...) to its row number.

    A row's names fill the left column; a row continues on the next line while its names end
    with a comma. Lines whose left column is empty only continue the description.
    """
    start = readme.index("Layers, each importing only those below it")
    block = readme[readme.index("```text\n", start) + len("```text\n") :]
    block = block[: block.index("```")]
    rows: dict[str, int] = {}
    row, continues = -1, False
    for line in block.splitlines():
        names = re.split(r"\s{2,}", line, maxsplit=1)[0].strip()
        if not names:
            continue
        if not continues:
            row += 1
        for name in filter(None, (n.strip() for n in names.split(","))):
            assert name not in rows, f"{name!r} is on two rows of the README's layering table"
            rows[name.rstrip("/")] = row
        continues = names.endswith(",")
    return rows


def module_names() -> dict[str, Path]:
    """Dotted name (``optuna_cas.chunks.store``) to file, for every module of the package."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def table_name(module: str) -> str:
    """The table's name for a module: its top-level module or package under ``optuna_cas``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_MODULE


@dataclass(frozen=True)
class Import:
    module: str  # what is imported, dotted
    line: int


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The ``optuna_cas`` modules ``path`` imports, anywhere in it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # ``from optuna_cas import exceptions`` imports a module; ``... import gc`` a
                # name of the package itself.
                submodule = f"{source}.{alias.name}"
                found.append(Import(submodule if submodule in modules else source, node.lineno))
    return [i for i in found if i.module == "optuna_cas" or i.module.startswith("optuna_cas.")]


README_ROWS = layer_table((ROOT / "README.md").read_text())
MODULES = module_names()


def test_the_table_is_read() -> None:
    assert README_ROWS["exceptions"] == 0
    assert README_ROWS["digest"] < README_ROWS["backends"] < README_ROWS["chunks"]
    assert README_ROWS["chunks"] < README_ROWS["content"] < README_ROWS["middleware"]
    assert README_ROWS["refs"] == README_ROWS["content"]  # a row over three lines
    assert README_ROWS["cli"] == README_ROWS[ROOT_MODULE]


def test_every_module_is_in_the_table() -> None:
    missing = sorted({table_name(m) for m in MODULES} - set(README_ROWS))
    assert not missing, f"modules missing from README.md's layering table: {missing}"
    stale = sorted(set(README_ROWS) - {table_name(m) for m in MODULES})
    assert not stale, f"README.md's layering table names modules that do not exist: {stale}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module: str) -> None:
    row = README_ROWS[table_name(module)]
    upward = [
        f"line {i.line}: {i.module} (row {README_ROWS[table_name(i.module)]})"
        for i in imports_of(module, MODULES[module], MODULES)
        if README_ROWS[table_name(i.module)] > row
    ]
    assert not upward, f"{module} (row {row}) imports from higher layers: {upward}"


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    """The check itself: absolute, relative and lazy imports of higher layers are all found."""
    path = tmp_path / "chunker.py"
    path.write_text(
        "from optuna_cas.digest import Digest\n"
        "from . import packer\n"
        "def f():\n"
        "    from optuna_cas.cli import main\n"
        "    from ..stores import filesystem\n"
    )
    modules = {**MODULES, "optuna_cas.chunks.chunker": path}
    found = [(i.module, i.line) for i in imports_of("optuna_cas.chunks.chunker", path, modules)]
    assert found == [
        ("optuna_cas.digest", 1),
        ("optuna_cas.chunks.packer", 2),
        ("optuna_cas.cli", 4),
        ("optuna_cas.stores.filesystem", 5),
    ]
    rows = [README_ROWS[table_name(module)] for module, _line in found]
    assert [row > README_ROWS["chunks"] for row in rows] == [False, False, True, True]


def test_no_module_is_over_600_lines() -> None:
    # Issue 11's bound, kept by hand until a fix pushed blob_cache.py to 609 lines unnoticed.
    sizes = {p.relative_to(PACKAGE): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(sizes) > 100  # the scan found the package
    assert {str(path): n for path, n in sizes.items() if n > 600} == {}
