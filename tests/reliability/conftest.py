"""The reliability suite: a short run by default, the long one with ``OPTUNA_CAS_SOAK=1``.

Every scenario records what it did (operations, injected faults, kills, outcomes) in
``.bench-data/reliability/<scenario>.<short|soak>.json``; ``docs/reliability.md`` cites them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.reliability._common import SOAK
from tests.support.fault_proxy import FaultProxy


def pytest_report_header() -> str:
    return f"reliability suite: {'SOAK (long)' if SOAK else 'short'} run (OPTUNA_CAS_SOAK)"


@pytest.fixture
def s3_fault_proxy(s3_server: Any) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's moto server (no faults until set_faults)."""
    with FaultProxy(s3_server.host, s3_server.port, seed=20240611, keep_client_alive=True) as proxy:
        yield proxy
