"""The fixture contract every TimeSeries suite test builds on.

A plugin author sets ``backend`` (or overrides the ``prism_backend`` fixture);
everything else here belongs to the suite and may not be overridden (the guard
test in :mod:`prism_conformance.timeseries.suite` checks that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

import prism
from prism_conformance.handles import TimeSeriesHandle
from prism_conformance.suite_base import ConformanceSuiteBase


class TimeSeriesSuiteBase(ConformanceSuiteBase):
    """Fixtures and helpers of the TimeSeries suite. Not collected by itself."""

    __test__ = False

    abstraction: ClassVar[str] = "timeseries"

    @pytest.fixture
    def ts(self, prism_harness: None) -> TimeSeriesHandle:
        """A fresh, empty TimeSeries namespace with the default ``timeseries:``
        settings (30 days of retention, 1 minute of future skew, 1 hour buckets)."""
        return self.open_timeseries()

    # -- helpers ----------------------------------------------------------------------------

    def open_timeseries(
        self, *, timeseries: Mapping[str, Any] | None = None, needs: Mapping[str, Any] | None = None
    ) -> TimeSeriesHandle:
        """A fresh, empty TimeSeries namespace with these ``timeseries:`` settings
        and ``needs`` (as in ``prism.yaml``, e.g. ``timeseries={"retention": "2s",
        "bucket": "1s"}``)."""
        return self._harness.open_timeseries(1, timeseries=timeseries, needs=needs).namespaces[0]

    def open_many_timeseries(
        self, count: int, *, timeseries: Mapping[str, Any] | None = None
    ) -> tuple[TimeSeriesHandle, ...]:
        """``count`` fresh TimeSeries namespaces in one Prism, sharing one backend instance."""
        return self._harness.open_timeseries(count, timeseries=timeseries).namespaces

    def _verify_refusal(self, capability: str) -> str:
        """``timeseries.native_retention`` only says who deletes old events (the
        datastore, or the core's purge); retention itself is tested by core
        tests on every backend. Its refusal is what a user can ask for: a
        namespace that needs it is not planned onto a backend without it."""
        planned: prism.PlanError | None = None
        try:
            self._harness.open_timeseries(1, needs={"capabilities": [capability]})
        except prism.PlanError as exc:
            planned = exc
        if planned is None:
            pytest.fail(
                f"the backend does not declare {capability}, yet a namespace that needs it was planned "
                "onto it: the planner must refuse it with PlanError",
                pytrace=False,
            )
        assert capability in str(planned), (
            f"a namespace needing {capability} was refused, but the error does not name it: {planned}"
        )
        return f"backend does not declare {capability} (refusal verified: the planner refuses it)"
