"""Fast start-up: what importing optuna-cas pulls in, and Optuna's exception class either way.

Each check runs in a fresh interpreter: the test process has imported everything already.
Timings live in the benchmarks (``python -m benchmarks.run --only startup``), not here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CLOUD_SDKS = ("boto3", "botocore", "google.cloud.storage")


def python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_cli_imports_neither_optuna_nor_a_cloud_sdk() -> None:
    out = python(
        """
        import sys
        import optuna_cas.cli
        optuna_cas.cli.build_parser().format_help()  # what --help does
        print(sorted(m for m in ("optuna", "boto3", "botocore", "google.cloud.storage",
                                 "optuna_cas.exceptions", "blake3", "diskcache")
                     if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_using_a_local_store_imports_no_cloud_sdk() -> None:
    out = python(
        """
        import sys, tempfile
        import optuna_cas
        from optuna_cas import FileSystemArtifactStore, download_artifact, upload_artifact
        from optuna_cas.exceptions import ArtifactNotFound
        store = FileSystemArtifactStore(tempfile.mkdtemp())
        try:
            store.open_reader("missing")
        except ArtifactNotFound:
            pass
        print(sorted(m for m in CLOUD_SDKS if m in sys.modules))
        """.replace("CLOUD_SDKS", repr(CLOUD_SDKS))
    )
    assert out.strip() == "[]"


def test_package_exposes_every_public_name() -> None:
    out = python(
        """
        import optuna_cas
        missing = [n for n in optuna_cas.__all__ if not hasattr(optuna_cas, n)]
        print(missing, set(optuna_cas.__all__) <= set(dir(optuna_cas)))
        try:
            optuna_cas.no_such_name
        except AttributeError as e:
            print(e)
        """
    )
    assert out.splitlines() == [
        "[] True",
        "module 'optuna_cas' has no attribute 'no_such_name'",
    ]


def test_commands_that_touch_no_study_import_no_optuna(tmp_path: object) -> None:
    # Our ArtifactNotFound subclasses Optuna's; that imported all of Optuna (0.25 s of each
    # 0.5 s `optuna-cas ls`). Optuna's exceptions module is now loaded on its own.
    out = python(
        f"""
        import sys
        from optuna_cas.cli import main
        assert main(["--store", "{tmp_path}/store", "-q", "put", "{__file__}"]) == 0
        for command in (["ls"], ["stats"], ["verify"]):
            assert main(["--store", "{tmp_path}/store", "-q", *command]) == 0
        print(sorted(m for m in ("optuna", "optuna.artifacts", "sqlalchemy") if m in sys.modules))
        print("optuna.exceptions" in sys.modules)
        """
    )
    assert out.split("\n")[-3:-1] == ["[]", "True"]


ORDERS = {
    "optuna-cas first": "import optuna_cas.exceptions as ours\nimport optuna",
    "optuna.exceptions after": (
        "import optuna_cas.exceptions as ours\nimport optuna.exceptions\nimport optuna.artifacts"
    ),
    "from optuna import": (
        "import optuna_cas.exceptions as ours\nfrom optuna import exceptions\nimport optuna.artifacts"
    ),
    "optuna.artifacts first": "import optuna.artifacts\nimport optuna_cas.exceptions as ours",
    "plain optuna first": "import optuna\nimport optuna_cas.exceptions as ours",
    "import statement": (
        "import optuna_cas.exceptions as ours\nimport optuna.artifacts.exceptions\nimport optuna"
    ),
    "through the package": "from optuna_cas import exceptions as ours\nimport optuna",
}


@pytest.mark.parametrize("order", ORDERS.values(), ids=ORDERS.keys())
def test_optunas_except_clause_catches_ours_whichever_is_imported_first(order: str) -> None:
    out = python(
        order
        + """
import sys, tempfile
try:
    raise ours.ArtifactNotFound("x")
except optuna.artifacts.exceptions.ArtifactNotFound:
    print("caught")
import optuna.exceptions
assert issubclass(ours.ArtifactNotFound, optuna.exceptions.OptunaError)
assert optuna.exceptions is sys.modules["optuna.exceptions"]
# One class only: Optuna's own stores raise the class Optuna's modules see.
from optuna.artifacts.exceptions import ArtifactNotFound
assert ArtifactNotFound is optuna.artifacts.exceptions.ArtifactNotFound
try:
    optuna.artifacts.FileSystemArtifactStore(tempfile.mkdtemp()).open_reader("missing")
except ArtifactNotFound:
    print("optuna's own")
import optuna.artifacts as package
print(type(package.__loader__).__name__)
"""
    )
    assert out.split() == ["caught", "optuna's", "own", "SourceFileLoader"]
