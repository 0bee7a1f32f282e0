"""``counter.best_effort``: one native atomic increment per add. Tokens are
not used (the core passes none), so a replay counts again: the documented
price of the mode. Concurrent adds still sum exactly."""

from __future__ import annotations

from prism import IdempotencyToken, capabilities
from prism_conformance.counter.base import CounterSuiteBase
from prism_conformance.marks import requires_capability
from prism_conformance.support import run_threads

BEST_EFFORT = "best_effort"


class BestEffortTests(CounterSuiteBase):
    @requires_capability(capabilities.COUNTER_BEST_EFFORT)
    def test_best_effort_counts_every_add_and_ignores_tokens(self) -> None:
        c = self.open_counter(BEST_EFFORT)
        token = IdempotencyToken.new()
        c.add("c", 5, token=token)
        c.add("c", 5, token=token)
        assert c.get("c") == 10, (
            "best_effort mode ignores tokens: an add sent twice counts twice (the mode's documented price)"
        )
        c.clear("c", token=token)
        c.add("c", 1)
        c.clear("c", token=token)
        assert c.get("c") == 0, "best_effort mode ignores tokens: a clear sent twice clears twice"

    @requires_capability(capabilities.COUNTER_BEST_EFFORT)
    def test_best_effort_concurrent_increments_are_atomic(self) -> None:
        c = self.open_counter(BEST_EFFORT)

        def adder() -> None:
            for _ in range(50):
                c.add("hits")
                c.add("misses", -1)

        run_threads([adder for _ in range(8)])
        assert (c.get("hits"), c.get("misses")) == (400, -400), (
            "8 threads each adding 1 (and -1) 50 times: the native increment lost updates"
        )
