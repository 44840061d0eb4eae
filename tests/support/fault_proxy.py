"""The fault-injecting HTTP proxy now lives in optuna_cas.testing.faults (the benchmarks use
it too); this name stays for the tests that import it from here."""

from __future__ import annotations

from optuna_cas.testing.faults import FAULT_MODES, FaultProxy, RequestRecord

__all__ = ["FAULT_MODES", "FaultProxy", "RequestRecord"]
