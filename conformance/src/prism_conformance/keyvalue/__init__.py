"""The KeyValue conformance suite."""

from __future__ import annotations

from prism_conformance.keyvalue.suite import KeyValueSuite, silent_opt_outs, suite_test_names

__all__ = ["KeyValueSuite", "silent_opt_outs", "suite_test_names"]
