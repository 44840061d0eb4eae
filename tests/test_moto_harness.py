"""The S3 test server: moto with its ETag computed under the object's lock (see _moto_main)."""

from __future__ import annotations

import hashlib
import threading

import pytest

models = pytest.importorskip("moto.s3.models")

from optuna_cas.testing._moto_main import _etag  # noqa: E402


def test_the_first_etag_waits_for_the_lock_that_guards_the_objects_bytes() -> None:
    key = models.FakeKey("k", b"payload", account_id="123456789012", region_name="us-east-1")
    started, result = threading.Event(), []

    def compute() -> None:
        started.set()
        result.append(_etag(key))

    with key.lock:  # a copy of this object reading its bytes
        thread = threading.Thread(target=compute)
        thread.start()
        started.wait()
        thread.join(0.2)
        assert thread.is_alive(), "the ETag pass read the shared file without the lock"
    thread.join()
    assert result == [f'"{hashlib.md5(b"payload").hexdigest()}"']
    assert _etag(key) == result[0]  # computed once, then served without the lock
