"""The TimeSeries conformance suite."""

from __future__ import annotations

from prism_conformance.timeseries.suite import TimeSeriesSuite, silent_opt_outs, suite_test_names

__all__ = ["TimeSeriesSuite", "silent_opt_outs", "suite_test_names"]
