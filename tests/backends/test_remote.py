"""The remote-backend base and its adapters as code: one error table per SDK, public SDK API
only, small modules, clients rebuilt after a fork.

Behaviour against real servers is in test_s3.py and test_gcs.py (the BackendConformance suite
and each service's own tests).
"""

from __future__ import annotations

import ast
import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import optuna_cas
from optuna_cas.middleware.retry import is_transient

SRC = Path(optuna_cas.__file__).parent
BACKENDS = SRC / "backends"
REMOTE_MODULES = [
    "remote.py",
    "remote_errors.py",
    "remote_io.py",
    "per_process.py",
    "s3.py",
    "gcs.py",
    "resumable.py",
]


# ---- one error table per SDK ------------------------------------------------------------------


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def test_every_s3_code_means_the_same_to_the_backend_and_to_backoff() -> None:
    # Backoff wrapping Optuna's own S3 store judges botocore errors with the table S3Backend
    # translates with: before, two lists of transient codes disagreed.
    from optuna_cas.backends.remote import Fault
    from optuna_cas.backends.s3 import _CODES, classify_s3_error

    for code, fault in _CODES.items():
        error = _client_error(code, 400)
        verdict = classify_s3_error(error)
        assert verdict is not None and verdict[0] is fault, code
        assert is_transient(error) == (fault is Fault.TRANSIENT), code


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("ConditionalRequestConflict", 409, True),  # a competing conditional write in flight
        ("TooManyRequestsException", 400, True),
        ("SlowDown", 503, True),
        ("RequestTimeTooSkewed", 403, False),  # the clock is off: a retry cannot fix it
        ("AccessDenied", 403, False),
        ("NoSuchKey", 404, False),
        ("SomethingNew", 502, True),
        ("SomethingNew", 400, False),
    ],
)
def test_backoff_judges_optunas_s3_errors_by_the_s3_table(
    code: str, status: int, transient: bool
) -> None:
    assert is_transient(_client_error(code, status)) is transient


def test_backoff_judges_optunas_gcs_errors_by_the_gcs_table() -> None:
    import requests
    from google.api_core import exceptions as api

    assert is_transient(api.ServiceUnavailable("busy"))
    assert is_transient(api.TooManyRequests("slow down"))
    assert is_transient(requests.exceptions.ChunkedEncodingError("cut"))
    assert not is_transient(api.PreconditionFailed("exists"))
    assert not is_transient(api.Forbidden("no"))
    # The SDK gave up retrying a 404: nothing to retry (the class name alone said "retry").
    assert not is_transient(api.RetryError("gave up", cause=api.NotFound("gone")))
    assert is_transient(api.RetryError("gave up", cause=api.ServiceUnavailable("busy")))


# ---- the code itself --------------------------------------------------------------------------


def _names_defined_in_optuna_cas() -> set[str]:
    """Every private name our own package defines (functions, classes, attributes)."""
    names = {n for n in dir(io.RawIOBase) if n.startswith("_")}  # io's own, e.g. _checkClosed
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


@pytest.mark.parametrize("module", REMOTE_MODULES)
def test_no_private_sdk_api(module: str) -> None:
    # e.g. google-cloud-storage's Blob._initiate_resumable_upload, or its _media package
    ours = _names_defined_in_optuna_cas()
    tree = ast.parse((BACKENDS / module).read_text())
    private_uses = [
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr not in ours
    ]
    private_imports = [
        f"line {node.lineno}: from {node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module is not None
        and not node.module.startswith("optuna_cas")
        and node.module not in ("__future__", "_typeshed")
        and any(part.startswith("_") for part in node.module.split("."))
    ]
    assert private_uses == [] and private_imports == []


@pytest.mark.parametrize("path", sorted(BACKENDS.glob("*.py")), ids=lambda p: p.name)
def test_backend_modules_stay_under_600_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 600


# ---- clients per process ----------------------------------------------------------------------


def _in_forked_child(check: Any) -> bool:
    """Run ``check()`` in a forked child; True if it returned True there."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ok = bool(check())
        except BaseException:
            ok = False
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.close(write_end)
    try:
        answer = os.read(read_end, 1)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return answer == b"1"


def test_per_process_values_are_rebuilt_in_a_forked_child_unless_given() -> None:
    from optuna_cas.backends.per_process import PerProcess

    built = PerProcess(object)
    given = object()
    kept = PerProcess.unless_given(given, object)
    in_parent = built.get()
    assert built.get() is in_parent and kept.get() is given
    assert _in_forked_child(
        lambda: built.get() is not in_parent and built.get() is built.get() and kept.get() is given
    )
    assert built.get() is in_parent


@pytest.mark.s3
def test_s3_client_we_built_is_rebuilt_in_a_forked_child(
    s3_server: Any, s3_client: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna_cas.backends.s3 import S3Backend

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    ours = S3Backend(s3_bucket, endpoint_url=s3_server.endpoint_url)
    theirs = S3Backend(s3_bucket, client=s3_client)
    ours.write("k", io.BytesIO(b"from the parent"))  # the pool now holds a connection
    parent_client = ours.client

    def child() -> bool:
        ours.write("k2", io.BytesIO(b"from the child"))
        return ours.client is not parent_client and theirs.client is s3_client

    assert _in_forked_child(child)
    assert ours.open_reader("k2").read() == b"from the child"


@pytest.mark.s3
def test_part_threads_are_rebuilt_in_a_forked_child(s3_client: Any, s3_bucket: str) -> None:
    # The parent's part threads do not exist in a child: a pool inherited as it is would queue
    # the child's parts forever.
    from optuna_cas.backends.s3 import S3Backend
    from tests.support.s3 import TEST_PART_SIZE

    backend = S3Backend(
        s3_bucket, client=s3_client, part_size=TEST_PART_SIZE, multipart_threshold=TEST_PART_SIZE
    )
    backend.write("parent", io.BytesIO(os.urandom(2 * TEST_PART_SIZE)))  # threads started
    time.sleep(0.2)  # and idle, as a pool's threads are between uploads
    data = os.urandom(2 * TEST_PART_SIZE)

    def child() -> bool:
        # A hung child dies (pytest-timeout's handler is inherited), the parent reads no answer.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(30)
        backend.write("child", io.BytesIO(data))
        return True

    assert _in_forked_child(child)
    assert backend.open_reader("child").read() == data


class _CountingBody(io.BytesIO):
    """A response body that remembers the bytes objects its ``read`` handed over."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.handed: list[bytes] = []

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.handed.append(data)
        return data


def _object_reader(body: io.BytesIO, size: int) -> Any:
    from contextlib import nullcontext

    from optuna_cas.backends.remote_io import Download, ObjectReader

    def reopen(at: int) -> Download:
        raise AssertionError("no reopen expected")

    return ObjectReader(Download(body, size), 0, reopen=reopen, guard=nullcontext, name="k")


def test_object_reader_read_hands_over_the_bodys_own_bytes() -> None:
    # A chunked read takes its blocks from here: botocore's body hands over the bytes the
    # socket was read into, where readinto would copy them once more (urllib3).
    body = _CountingBody(b"0123456789")
    reader = _object_reader(body, 10)
    first = reader.read(6)
    assert first == b"012345" and first is body.handed[-1]
    assert reader.read(100) == b"6789" and reader.read(1) == b""


def test_object_reader_read_of_a_cut_body_is_a_transient_error() -> None:
    from optuna_cas.exceptions import TransientBackendError

    reader = _object_reader(_CountingBody(b"abc"), 10)
    assert reader.read(5) == b"abc"
    with pytest.raises(TransientBackendError, match="connection ended at byte 3 of 10"):
        reader.read(5)
