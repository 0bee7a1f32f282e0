"""The Queue conformance suite."""

from __future__ import annotations

from prism_conformance.queue.suite import QueueSuite, silent_opt_outs, suite_test_names

__all__ = ["QueueSuite", "silent_opt_outs", "suite_test_names"]
