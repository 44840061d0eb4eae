"""Every code block in README.md and docs/*.md runs as shown (the runner: tests/support/docs.py).

Blocks that use S3 run against the suite's moto server and those that use GCS against
fake-gcs-server: the buckets a file names are created empty before its blocks run, and the
environment stands in for the cloud (``AWS_ENDPOINT_URL``, ``STORAGE_EMULATOR_HOST``, dummy
credentials). A file that names the docs' example endpoints (MinIO's
``http://localhost:9000``, fake-gcs-server's ``http://localhost:4443``) gets them swapped for
the test servers instead, and no ``AWS_ENDPOINT_URL``: it shows how to set the endpoint, so the
test checks that what it shows is enough. Blocks marked
``<!-- docs-test: skip (why) -->`` are reported as skipped tests, one per block.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.docs import Block, Document, docs_env, parse, run_blocks

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

# The endpoints the docs use as examples; a reader's MinIO or emulator is there.
EXAMPLE_S3_ENDPOINT = "http://localhost:9000"
EXAMPLE_GCS_ENDPOINT = "http://localhost:4443"

_NAME = r"([a-z0-9][a-z0-9._-]{1,61}[a-z0-9])"
S3_BUCKETS = re.compile(r"(?:s3://|Boto3ArtifactStore\(\s*[\"'])" + _NAME)
GCS_BUCKETS = re.compile(r"(?:gs://|gcs://|GCSArtifactStore\(\s*[\"'])" + _NAME)


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO))


DOCUMENTS: dict[str, Document] = {
    _relative(path): parse(path.read_text(), _relative(path)) for path in DOC_FILES
}


def _runnable(doc: Document) -> list[Block]:
    return [b for b in doc.blocks if b.runs]


def _code(doc: Document) -> str:
    return "".join(b.code for b in _runnable(doc))


def _needs_s3(doc: Document) -> bool:
    return bool(S3_BUCKETS.search(_code(doc))) or EXAMPLE_S3_ENDPOINT in _code(doc)


def _needs_gcs(doc: Document) -> bool:
    return bool(GCS_BUCKETS.search(_code(doc))) or EXAMPLE_GCS_ENDPOINT in _code(doc)


def _file_params() -> Iterator[Any]:
    for name, doc in DOCUMENTS.items():
        if _runnable(doc):
            marks = [pytest.mark.s3] * _needs_s3(doc) + [pytest.mark.gcs] * _needs_gcs(doc)
            yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_block_is_labelled(name: str) -> None:
    """No block without a language, no unknown language, no stray or reasonless skip."""
    problems = DOCUMENTS[name].problems
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(_file_params()))
def test_blocks_run(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    doc = DOCUMENTS[name]
    code = _code(doc)
    extra = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
    }
    replacements: dict[str, str] = {}
    cleanups = []
    if _needs_s3(doc):
        endpoint = request.getfixturevalue("s3_server").endpoint_url
        if EXAMPLE_S3_ENDPOINT not in code:  # else the file sets its endpoint itself
            extra["AWS_ENDPOINT_URL"] = endpoint
        replacements[EXAMPLE_S3_ENDPOINT] = endpoint
        cleanups.append(_fresh_s3_buckets(endpoint, set(S3_BUCKETS.findall(code))))
    if _needs_gcs(doc):
        endpoint = request.getfixturevalue("gcs_server").endpoint_url
        extra["STORAGE_EMULATOR_HOST"] = endpoint
        replacements[EXAMPLE_GCS_ENDPOINT] = endpoint
        cleanups.append(_fresh_gcs_buckets(endpoint, set(GCS_BUCKETS.findall(code))))
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    try:
        result = run_blocks(
            doc.blocks,
            workdir,
            docs_env(dict(os.environ), home, extra),
            replacements=replacements,
        )
    finally:
        for cleanup in cleanups:
            cleanup()
    if result.failure is not None:
        pytest.fail(f"{result.failure}\n--- all output ---\n{result.output[-6000:]}", False)
    assert result.ran == len(_runnable(doc))


def _skip_params() -> Iterator[Any]:
    for doc in DOCUMENTS.values():
        for block in doc.blocks:
            if block.skip is not None:
                yield pytest.param(block, id=f"{block.source}:{block.line}")


@pytest.mark.parametrize("block", list(_skip_params()))
def test_skipped_block(block: Block) -> None:
    """One skipped test per block marked skip, so the summary counts them with their reasons."""
    pytest.skip(f"{block.source}:{block.line}: {block.skip}")


def _fresh_s3_buckets(endpoint: str, names: set[str]) -> Any:
    from tests.support.s3 import _empty_and_delete_bucket, make_s3_client

    client = make_s3_client(endpoint)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for name in names:
        if name in existing:
            _empty_and_delete_bucket(client, name)
        client.create_bucket(Bucket=name)

    def cleanup() -> None:
        for name in names:
            _empty_and_delete_bucket(client, name)

    return cleanup


def _fresh_gcs_buckets(endpoint: str, names: set[str]) -> Any:
    from tests.support.gcs import delete_bucket, make_gcs_client

    client = make_gcs_client(endpoint)
    for name in names:
        delete_bucket(client.bucket(name))
        client.create_bucket(name)

    def cleanup() -> None:
        for name in names:
            delete_bucket(client.bucket(name))

    return cleanup


def test_the_readme_describes_artifact_meta_as_it_is() -> None:
    import dataclasses

    import optuna.artifacts

    import optuna_cas

    meta = optuna_cas.ArtifactMeta("a", "f", "text/plain", None)
    assert dataclasses.is_dataclass(meta) and len(dataclasses.fields(meta)) == 7
    assert meta != optuna.artifacts.ArtifactMeta("a", "f", "text/plain", None)
    assert meta != dataclasses.replace(meta, digest="blake3:00", size=1, created=0.0)
    with pytest.raises(TypeError):
        iter(meta)  # type: ignore[call-overload]  # a dataclass, not a tuple
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "`ArtifactMeta` is a dataclass" in readme and "unpacks into" not in readme
