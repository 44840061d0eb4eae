"""The GCS test server says why it is gone, instead of leaving "connection refused"."""

from __future__ import annotations

import signal

import pytest

from optuna_cas.testing.servers import running_fake_gcs_server

pytestmark = pytest.mark.gcs


def test_a_server_that_exited_reports_its_exit_code_and_log() -> None:
    with running_fake_gcs_server() as server:
        assert server.exit_report() is None
        assert server.log_path is not None and server.log_path.exists()
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        report = server.exit_report()
        assert report is not None and "exited with code -9" in report
        assert server.endpoint_url in report
    assert not server.log_path.exists()  # removed with the server
