"""Imported once by the forkserver of the crash and cache tests: forked workers start warm.

An RDB storage's first construction imports alembic and builds the schema (~0.5 s), a boto3
client's first construction loads the S3 service model (~0.1 s), google-cloud-storage's
import takes about as long; done here, every forked worker inherits them and is ready in a few
milliseconds.
"""

from __future__ import annotations

import optuna

import optuna_cas  # noqa: F401
from optuna_cas.testing.servers import make_gcs_client
from tests.reliability import _workers  # noqa: F401
from tests.reliability._common import rdb_storage, s3_client

optuna.logging.set_verbosity(optuna.logging.WARNING)
rdb_storage("sqlite:///:memory:")
s3_client("http://127.0.0.1:9", sdk_retries=True)
make_gcs_client("http://127.0.0.1:9")  # builds no connection
