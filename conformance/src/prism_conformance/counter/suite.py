"""``CounterSuite``: every Counter test, and the guard against silent opt-outs."""

from __future__ import annotations

from typing import Any

from prism_conformance import guard
from prism_conformance.counter.basics import BasicTests
from prism_conformance.counter.best_effort import BestEffortTests
from prism_conformance.counter.exact import ExactTests
from prism_conformance.counter.limits import LimitTests

#: The suite's machinery; see :data:`prism_conformance.queue.suite.PROTECTED`.
PROTECTED = (
    "prism_harness",
    "declared_modes",
    "open_counter",
    "open_counters",
    "each_mode",
    "run_async",
    "_verify_refusal",
)

_MIXINS: tuple[type, ...] = (BasicTests, LimitTests, BestEffortTests, ExactTests)

guard.check_unique_test_names(_MIXINS)


# pytest collects base classes' tests first, the last base first: listed in
# reverse, a run reads from basics to the modes.
class CounterSuite(ExactTests, BestEffortTests, LimitTests, BasicTests):
    """The Counter conformance suite. Subclass it once per backend::

        class TestMineCounter(CounterSuite):
            backend = {"plugin": "mine", "url": "..."}

    Core tests run in every ``counter.mode`` the backend declares; the tests of
    one mode are tagged with its capability (``counter.best_effort``,
    ``counter.exact``), and for a mode it does not declare the suite checks
    that the planner refuses a namespace in that mode. Through a gateway too,
    with ``gateway = Gateway(...)`` as the other suites.
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
    """Every Counter suite test, in the order pytest collects them."""
    return list(guard.suite_test_names(CounterSuite))


def silent_opt_outs(cls: type) -> list[str]:
    """How ``cls`` deletes or overrides Counter suite tests or machinery
    without an explicit opt-out; empty when it does not."""
    return guard.silent_opt_outs(cls, CounterSuite, PROTECTED)
