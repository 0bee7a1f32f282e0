"""The Counter conformance suite."""

from __future__ import annotations

from prism_conformance.counter.suite import CounterSuite, silent_opt_outs, suite_test_names

__all__ = ["CounterSuite", "silent_opt_outs", "suite_test_names"]
