"""open_store's endpoint for s3:// URLs: argument, then OPTUNA_CAS_ENDPOINT_URL, then boto3's own.

Every case talks to the moto server, so "works" means the bytes really went to that endpoint.
The wrong endpoints are closed ports on 127.0.0.1: a request there fails at once.

Also open_store's request options (``sdk_retries``, ``timeout``), against servers that only
say 503 or never answer (tests/support/unanswering.py).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest

from optuna_cas import open_store
from optuna_cas.exceptions import StoreConfigError, TransientBackendError
from optuna_cas.registry import ENDPOINT_ENV
from tests.support.s3 import S3Server
from tests.support.unanswering import Answering503, SilentServer

# Nothing listens on port 1; botocore's retries of a refused connection take a few seconds.
NOWHERE = "http://127.0.0.1:1"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Dummy credentials, no endpoint from the caller's environment or ~/.aws files."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", ENDPOINT_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _round_trip(store: Any, s3_client: Any, bucket: str) -> None:
    store.write("a", io.BytesIO(b"via the endpoint"))
    with store.open_reader("a") as r:
        assert r.read() == b"via the endpoint"
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert "p/refs/a" in keys  # on the moto server, under the URL's prefix


@pytest.mark.s3
def test_endpoint_from_optuna_cas_variable(
    aws_env: pytest.MonkeyPatch, s3_server: S3Server, s3_client: Any, s3_bucket: str
) -> None:
    aws_env.setenv(ENDPOINT_ENV, s3_server.endpoint_url)
    _round_trip(open_store(f"s3://{s3_bucket}/p"), s3_client, s3_bucket)


@pytest.mark.s3
def test_optuna_cas_variable_wins_over_aws_endpoint_url(
    aws_env: pytest.MonkeyPatch, s3_server: S3Server, s3_client: Any, s3_bucket: str
) -> None:
    aws_env.setenv("AWS_ENDPOINT_URL", NOWHERE)
    aws_env.setenv(ENDPOINT_ENV, s3_server.endpoint_url)
    _round_trip(open_store(f"s3://{s3_bucket}/p"), s3_client, s3_bucket)


@pytest.mark.s3
def test_argument_wins_over_the_variable(
    aws_env: pytest.MonkeyPatch, s3_server: S3Server, s3_client: Any, s3_bucket: str
) -> None:
    aws_env.setenv(ENDPOINT_ENV, NOWHERE)
    store = open_store(f"s3://{s3_bucket}/p", endpoint_url=s3_server.endpoint_url)
    _round_trip(store, s3_client, s3_bucket)


@pytest.mark.s3
def test_a_client_keeps_its_own_endpoint(
    aws_env: pytest.MonkeyPatch, s3_client: Any, s3_bucket: str
) -> None:
    # A client together with an endpoint is a configuration error; the variable must not
    # turn a ready client into one.
    aws_env.setenv(ENDPOINT_ENV, NOWHERE)
    _round_trip(open_store(f"s3://{s3_bucket}/p", client=s3_client), s3_client, s3_bucket)


@pytest.mark.s3
@pytest.mark.parametrize("optuna_cas_value", [None, ""])
def test_boto3s_aws_endpoint_url_still_works(
    aws_env: pytest.MonkeyPatch,
    s3_server: S3Server,
    s3_client: Any,
    s3_bucket: str,
    optuna_cas_value: str | None,
) -> None:
    aws_env.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    if optuna_cas_value is not None:  # set but empty counts as unset
        aws_env.setenv(ENDPOINT_ENV, optuna_cas_value)
    _round_trip(open_store(f"s3://{s3_bucket}/p"), s3_client, s3_bucket)


def test_variable_ignored_by_other_schemes(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # endpoint_url= on a file:// or gs:// URL is an error; the variable is not an argument.
    aws_env.setenv(ENDPOINT_ENV, NOWHERE)
    for url in (f"file://{tmp_path}/a", str(tmp_path / "b"), "memory://"):
        store = open_store(url)
        store.write("x", io.BytesIO(b"1"))
        assert store.get_ref("x").size == 1


@pytest.mark.gcs
def test_variable_ignored_by_gs_urls(
    aws_env: pytest.MonkeyPatch, gcs_client: Any, gcs_bucket: Any
) -> None:
    aws_env.setenv(ENDPOINT_ENV, NOWHERE)
    store = open_store(f"gs://{gcs_bucket.name}/p", client=gcs_client)
    store.write("x", io.BytesIO(b"1"))
    assert store.get_ref("x").size == 1


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_sdk_retries_off_sends_each_request_once(aws_env: pytest.MonkeyPatch, scheme: str) -> None:
    # The SDKs' own retries kept a refused GCS request going ~2 minutes; what the CLI opens
    # must try once and leave retrying to Backoff.
    service = "s3" if scheme == "s3" else "gcs"
    with Answering503(service) as server:
        aws_env.setenv("STORAGE_EMULATOR_HOST", server.endpoint_url)
        endpoint = {"endpoint_url": server.endpoint_url} if scheme == "s3" else {}
        store = open_store(f"{scheme}://b/p", sdk_retries=False, timeout=5, **endpoint)
        with pytest.raises(TransientBackendError):
            store.get_ref("x")
        assert server.requests == 1


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_timeout_bounds_a_silent_server(aws_env: pytest.MonkeyPatch, scheme: str) -> None:
    with SilentServer() as server:
        aws_env.setenv("STORAGE_EMULATOR_HOST", server.endpoint_url)
        endpoint = {"endpoint_url": server.endpoint_url} if scheme == "s3" else {}
        store = open_store(f"{scheme}://b/p", sdk_retries=False, timeout=0.3, **endpoint)
        started = time.monotonic()
        with pytest.raises(TransientBackendError):
            store.get_ref("x")
        assert time.monotonic() - started < 3
        assert server.connections == 1


def test_request_options_are_refused_with_an_s3_client_and_ignored_by_local_stores(
    aws_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from optuna_cas.testing.servers import make_s3_client

    with pytest.raises(StoreConfigError, match=r"configured with botocore\.config\.Config"):
        open_store("s3://b/p", client=make_s3_client(NOWHERE), sdk_retries=False)
    store = open_store(tmp_path / "local", sdk_retries=False, timeout=1)
    store.write("x", io.BytesIO(b"1"))
    assert store.get_ref("x").size == 1
