"""``TimeSeriesSuite``: every TimeSeries test, and the guard against silent opt-outs."""

from __future__ import annotations

from typing import Any

from prism_conformance import guard
from prism_conformance.timeseries.basics import BasicTests
from prism_conformance.timeseries.limits import LimitTests
from prism_conformance.timeseries.pagination import PaginationTests
from prism_conformance.timeseries.retention import RetentionTests
from prism_conformance.timeseries.writes import WriteTests

#: The suite's machinery; see :data:`prism_conformance.queue.suite.PROTECTED`.
PROTECTED = (
    "prism_harness",
    "ts",
    "open_timeseries",
    "open_many_timeseries",
    "_verify_refusal",
    "_refused",
)

_MIXINS: tuple[type, ...] = (BasicTests, WriteTests, PaginationTests, RetentionTests, LimitTests)

guard.check_unique_test_names(_MIXINS)


# pytest collects base classes' tests first, the last base first: listed in
# reverse, a run reads from basics to limits.
class TimeSeriesSuite(LimitTests, RetentionTests, PaginationTests, WriteTests, BasicTests):
    """The TimeSeries conformance suite. Subclass it once per backend::

        class TestMineTimeSeries(TimeSeriesSuite):
            backend = {"plugin": "mine", "url": "..."}

    Each test opens fresh, empty TimeSeries namespaces on that backend through
    :func:`prism.open`, with the ``timeseries:`` settings it needs (a retention
    of 3 s where a test waits for events to expire, 1 s buckets where a read
    crosses bucket boundaries, small limits), or through a gateway with
    ``gateway = Gateway(...)`` as the other suites.
    """

    __test__ = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        guard.refuse_guard_override(cls)

    def test_suite_tests_are_not_overridden(self) -> None:
        """Fails when a subclass deletes or overrides a suite test without
        :func:`prism_conformance.opt_out`, or overrides the suite's machinery."""
        problems = silent_opt_outs(type(self))
        assert not problems, guard.guard_failure(type(self), problems)


def suite_test_names() -> list[str]:
    """Every TimeSeries suite test, in the order pytest collects them."""
    return list(guard.suite_test_names(TimeSeriesSuite))


def silent_opt_outs(cls: type) -> list[str]:
    """How ``cls`` deletes or overrides TimeSeries suite tests or machinery
    without an explicit opt-out; empty when it does not."""
    return guard.silent_opt_outs(cls, TimeSeriesSuite, PROTECTED)
