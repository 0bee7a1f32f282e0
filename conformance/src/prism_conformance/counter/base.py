"""The fixture contract every Counter suite test builds on.

A backend serves one or both counter modes, each a capability
(``counter.best_effort``, ``counter.exact``). Core tests run in every mode the
backend declares; the tests of one mode are tagged with its capability, so a
mode the backend does not declare is checked the other way: the planner must
refuse a namespace in that mode (``PlanError``), and the tests are reported
not applicable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import pytest

import prism
from prism import capabilities
from prism_conformance.handles import AsyncCounterHandle, CounterHandle
from prism_conformance.suite_base import ConformanceSuiteBase

T = TypeVar("T")

#: Each mode and the capability that serves it.
MODES: dict[str, str] = dict(capabilities.COUNTER_MODE)


class CounterSuiteBase(ConformanceSuiteBase):
    """Fixtures and helpers of the Counter suite. Not collected by itself."""

    __test__ = False

    abstraction: ClassVar[str] = "counter"

    # -- helpers ----------------------------------------------------------------------------

    def declared_modes(self) -> list[str]:
        """The modes the backend declares, ``best_effort`` first."""
        declared = self._harness.declared_capabilities
        return [mode for mode, capability in MODES.items() if capability in declared]

    def open_counter(self, mode: str, **settings: Any) -> CounterHandle:
        """A fresh, empty Counter namespace in ``mode`` with these other
        ``counter:`` settings (as in ``prism.yaml``, e.g. ``token_window="3s"``)."""
        return self._harness.open_counters(1, counter={"mode": mode, **settings}).namespaces[0]

    def open_counters(self, count: int, mode: str) -> tuple[CounterHandle, ...]:
        """``count`` fresh Counter namespaces in ``mode``, in one Prism."""
        return self._harness.open_counters(count, counter={"mode": mode}).namespaces

    def each_mode(self, **settings: Any) -> list[tuple[str, CounterHandle]]:
        """A fresh namespace in each mode the backend declares: what core tests run on."""
        modes = self.declared_modes()
        assert modes, (
            "the backend declares neither counter.best_effort nor counter.exact: it serves no counter "
            "namespace at all"
        )
        return [(mode, self.open_counter(mode, **settings)) for mode in modes]

    def run_async(self, mode: str, body: Callable[[AsyncCounterHandle], Awaitable[T]], **settings: Any) -> T:
        """Run ``body`` on a fresh namespace in ``mode`` of an async Prism
        (:func:`prism.open_async`), so it can start many calls at once."""
        return self._harness.run_with_async_counter(body, counter={"mode": mode, **settings})

    def _verify_refusal(self, capability: str) -> str:
        """A mode the backend does not declare is refused by the planner: a
        namespace in that mode is never planned onto it (it would silently
        count differently from what the namespace asked for)."""
        modes = [mode for mode, served_by in MODES.items() if served_by == capability]
        if not modes:
            return f"backend does not declare {capability}"
        (mode,) = modes
        planned: prism.PlanError | None = None
        try:
            self._harness.open_counters(1, counter={"mode": mode})
        except prism.PlanError as exc:
            planned = exc
        if planned is None:
            pytest.fail(
                f"the backend does not declare {capability}, yet a namespace with counter.mode {mode} was "
                "planned onto it: the planner must refuse it with PlanError",
                pytrace=False,
            )
        assert capability in str(planned), (
            f"a namespace with counter.mode {mode} was refused, but the error does not name {capability}: "
            f"{planned}"
        )
        return f"backend does not declare {capability} (refusal verified: the planner refuses counter.mode {mode})"
