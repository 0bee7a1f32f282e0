"""The gateway's load shedding and circuit breaker, state by state, on a
clock the test moves (the end-to-end behaviour, against a real Redis that
stops and restarts, is in tests/test_gateway_protection.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from prism.config import BreakerConfig, GatewayLimits
from prism.errors import BreakerOpen, Overloaded
from prism.gateway.protection import Breakers, BreakerState, CircuitBreaker, ConcurrencyLimiter, Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[BreakerState] | None = None) -> CircuitBreaker:
    def note(backend: str, state: BreakerState) -> None:
        if changes is not None:
            changes.append(state)

    return CircuitBreaker(
        "redis", BreakerConfig(failures=3, open_for=timedelta(seconds=5)), clock=clock, on_change=note
    )


def state_of(b: CircuitBreaker) -> BreakerState:
    """Read through a call, so that mypy does not narrow the state across asserts."""
    return b.state


def fail(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        probe = b.admit("ns")
        b.record(Outcome.FAILURE, probe=probe, cause="ConnectionError")


def test_the_limiter_sheds_beyond_the_limit_and_frees_slots() -> None:
    limiter = ConcurrencyLimiter(GatewayLimits(max_concurrency=2, namespace_concurrency={"hot": 1}))
    limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(Overloaded) as caught:
        limiter.acquire("a")
    assert (caught.value.namespace, caught.value.limit) == ("a", 2)
    assert caught.value.limit_name == "gateway.limits.max_concurrency"
    assert limiter.in_flight("a") == 2  # the refused call took nothing
    limiter.acquire("hot")
    with pytest.raises(Overloaded, match=r"gateway\.limits\.namespace_concurrency\.hot"):
        limiter.acquire("hot")
    limiter.release("a")
    limiter.acquire("a")
    for _ in range(2):
        limiter.release("a")
    assert limiter.in_flight("a") == 0


def test_consecutive_failures_open_the_breaker_and_a_success_resets_the_count() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 2)
    b.record(Outcome.SUCCESS, probe=b.admit("ns"))
    fail(b, 2)
    assert state_of(b) is BreakerState.CLOSED  # not three in a row
    fail(b)
    assert state_of(b) is BreakerState.OPEN
    with pytest.raises(BreakerOpen) as caught:
        b.admit("ns")
    assert (caught.value.backend, caught.value.failures, caught.value.retry_after_s) == ("redis", 3, 5.0)
    assert "ConnectionError" in str(caught.value)


def test_neutral_outcomes_do_not_count() -> None:
    b = breaker(Clock())
    for _ in range(10):
        b.record(Outcome.NEUTRAL, probe=b.admit("ns"))
    assert (state_of(b), b.failures) == (BreakerState.CLOSED, 0)


def test_after_open_for_exactly_one_probe_goes_through_and_its_success_closes() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    b = breaker(clock, changes)
    fail(b, 3)
    clock.now += 4.9
    with pytest.raises(BreakerOpen):
        b.admit("ns")
    clock.now += 0.1
    assert b.admit("ns") is True  # the probe
    assert state_of(b) is BreakerState.HALF_OPEN
    with pytest.raises(BreakerOpen):
        b.admit("ns")  # one probe at a time
    b.record(Outcome.SUCCESS, probe=True)
    assert b.admit("ns") is False  # closed: no probe needed
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_failed_probe_opens_the_breaker_for_another_period() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 5
    assert b.admit("ns") is True
    b.record(Outcome.FAILURE, probe=True, cause="TimeoutError")
    assert state_of(b) is BreakerState.OPEN
    clock.now += 4
    with pytest.raises(BreakerOpen, match="TimeoutError"):
        b.admit("ns")
    clock.now += 1
    assert b.admit("ns") is True


def test_a_probe_without_news_lets_the_next_call_probe() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 5
    assert b.admit("ns") is True
    b.record(Outcome.NEUTRAL, probe=True)  # e.g. a bad argument, or cancelled
    assert state_of(b) is BreakerState.HALF_OPEN
    assert b.admit("ns") is True


def test_breakers_are_per_backend_and_report_their_first_state() -> None:
    seen: list[tuple[str, BreakerState]] = []
    breakers = Breakers(BreakerConfig(failures=1), on_change=lambda name, state: seen.append((name, state)))
    a = breakers("a")
    assert breakers("a") is a
    a.record(Outcome.FAILURE, probe=a.admit("ns"))
    assert breakers.states() == {"a": BreakerState.OPEN}
    assert breakers("b").state is BreakerState.CLOSED
    assert seen == [("a", BreakerState.CLOSED), ("a", BreakerState.OPEN), ("b", BreakerState.CLOSED)]
