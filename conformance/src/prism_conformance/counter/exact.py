"""``counter.exact``: adds and clears are idempotent by their token. A replay
never counts (or clears) twice, also when it races the first call; tokens are
per counter; a token is remembered for the whole ``counter.token_window`` and
refused once older; a clear is ordered against concurrent adds."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs
import pytest

import prism
from prism import IdempotencyToken, capabilities
from prism_conformance.counter.base import CounterSuiteBase
from prism_conformance.handles import AsyncCounterHandle
from prism_conformance.marks import requires_capability
from prism_conformance.support import POLL_DEADLINE, run_threads, wait_until

EXACT = "exact"


@attrs.frozen
class Timed:
    """When one call was started and when it returned (monotonic seconds)."""

    started: float
    ended: float


class ExactTests(CounterSuiteBase):
    @requires_capability(capabilities.COUNTER_EXACT)
    def test_a_replayed_add_counts_once(self) -> None:
        c = self.open_counter(EXACT)
        token = IdempotencyToken.new()
        assert c.add("c", 5, token=token) in (None, 5)
        replay = c.add("c", 5, token=token)
        assert replay in (None, 5), f"a replayed add must return the current value 5, got {replay}"
        assert c.get("c") == 5, "a replayed add token counted twice"
        c.add("c", 7, token=IdempotencyToken.new())
        for _ in range(3):
            replay = c.add("c", 5, token=token)
            assert replay in (None, 12), f"a late replay must return the current value 12, got {replay}"
        assert c.get("c") == 12, "a replay after another add counted again"
        # Tokens are per counter: the same token applies once to each.
        assert c.add("other", 5, token=token) in (None, 5)
        assert c.get("other") == 5, "a token applied to one counter must still count on another"
        assert c.get("c") == 12

    @requires_capability(capabilities.COUNTER_EXACT)
    def test_adds_without_a_token_each_count(self) -> None:
        """In exact mode the core gives each add without a token a new one: two
        plain adds are two operations, never one replay."""
        c = self.open_counter(EXACT)
        for n in range(1, 6):
            c.add("c", 1)
            assert c.get("c") == n, f"{n} adds without a token in exact mode counted {c.get('c')}"
        c.clear("c")
        c.add("c", 2)
        c.clear("c")
        assert c.get("c") == 0, "a second clear without a token must clear again"

    @requires_capability(capabilities.COUNTER_EXACT)
    def test_a_replay_racing_the_first_call_counts_once(self) -> None:
        async def body(c: AsyncCounterHandle) -> None:
            for round_ in range(5):
                token = IdempotencyToken.new()
                results = await asyncio.gather(*(c.add("c", 3, token=token) for _ in range(20)))
                value = await c.get("c")
                assert value == 3 * (round_ + 1), (
                    f"round {round_}: 20 concurrent copies of one add counted {value // 3 - round_} times"
                )
                assert all(r is None or r == value for r in results), (
                    f"every copy of one add must return the value after it was applied once: {results}"
                )
            distinct = [IdempotencyToken.new() for _ in range(50)]
            await asyncio.gather(*(c.add("d", 1, token=t) for t in distinct + distinct[::-1]))
            assert await c.get("d") == 50, "50 tokens, each sent twice at once, must count 50"

        self.run_async(EXACT, body)
        c = self.open_counter(EXACT)
        token = IdempotencyToken.new()

        def replay() -> None:
            for _ in range(10):
                c.add("c", 1, token=token)

        run_threads([replay for _ in range(4)])
        assert c.get("c") == 1, f"one add replayed 40 times from 4 threads counted {c.get('c')} times"

    @requires_capability(capabilities.COUNTER_EXACT)
    def test_a_replayed_clear_clears_once(self) -> None:
        c = self.open_counter(EXACT)
        c.add("c", 10)
        token = IdempotencyToken.new()
        c.clear("c", token=token)
        assert c.get("c") == 0
        c.add("c", 3)
        c.clear("c", token=token)
        assert c.get("c") == 3, "a replayed clear erased adds made after the first clear"
        c.add("c", 4)
        c.clear("c", token=IdempotencyToken.new())
        assert c.get("c") == 0, "a clear with a new token must clear"
        # A clear's token and an add's token are both operations on the counter:
        # replaying the clear's token as an add changes nothing either.
        c.add("c", 1, token=token)
        assert c.get("c") in (0, 1)

    @requires_capability(capabilities.COUNTER_EXACT)
    def test_a_token_older_than_the_window_is_refused(self) -> None:
        c = self.open_counter(EXACT, token_window="2s")
        c.add("c", 1)
        stale = IdempotencyToken.at(datetime.now(UTC) - timedelta(seconds=3))
        calls: list[Callable[[], object]] = [
            functools.partial(c.add, "c", 100, token=stale),
            functools.partial(c.clear, "c", token=stale),
        ]
        for call in calls:
            with pytest.raises(prism.InvalidArgument) as refused:
                call()
            assert c.name in str(refused.value), f"the refusal must name the namespace: {refused.value}"
            assert "token_window" in str(refused.value), (
                f"the refusal must name counter.token_window: {refused.value}"
            )
        assert c.get("c") == 1, "a refused stale token changed the counter"

    @requires_capability(capabilities.COUNTER_EXACT)
    def test_a_token_is_remembered_for_the_whole_window(self) -> None:
        """Replay one add again and again until the token is too old to be
        accepted: while it is accepted it must never count again."""
        window = timedelta(seconds=3)
        c = self.open_counter(EXACT, token_window="3s")
        token = IdempotencyToken.new()
        c.add("c", 1, token=token)
        replays = 0

        def replayed_until_refused() -> bool:
            nonlocal replays
            try:
                c.add("c", 1, token=token)
            except prism.InvalidArgument:
                return True
            replays += 1
            value = c.get("c")
            assert value == 1, (
                f"a replay {time.time() - token.generation_time_us / 1e6:.2f}s after the token was made "
                f"(within the {window.total_seconds():g}s token_window) counted again: the backend forgot "
                "the token too early"
            )
            return False

        wait_until(
            replayed_until_refused,
            what="a token older than counter.token_window is still accepted",
            deadline=window + POLL_DEADLINE,
            interval=timedelta(milliseconds=100),
        )
        assert replays >= 5, f"only {replays} replays ran within the window; the test proved little"
        assert c.get("c") == 1

    @requires_capability(capabilities.COUNTER_EXACT)
    def test_a_clear_racing_adds_is_ordered_against_each_of_them(self) -> None:
        """Adds of distinct powers of two race a clear: an add that returned
        before the clear began is erased, an add begun after the clear returned
        is kept, and every other one is entirely in or out (its bit is 0 or 1)."""

        async def body(c: AsyncCounterHandle) -> list[tuple[int, Timed, Timed, int]]:
            outcomes = []
            for round_ in range(8):
                outcomes += await _race_a_clear(c, round_)
            return outcomes

        outcomes = self.run_async(EXACT, body)
        for bit, add, clear, value in outcomes:
            kept = bool(value >> bit & 1)
            assert 0 <= value < 2**40, f"the counter holds {value}, not a sum of some of the adds"
            if add.ended < clear.started:
                assert not kept, f"an add of 2**{bit} that returned before the clear began survived it"
            if add.started > clear.ended:
                assert kept, f"an add of 2**{bit} begun after the clear returned was lost"


async def _race_a_clear(c: AsyncCounterHandle, round_: int) -> list[tuple[int, Timed, Timed, int]]:
    """Forty adds of 2**bit and one clear of counter ``race-<round_>``, started
    together; for each add: its bit, its timing, the clear's, and the final value."""
    name = f"race-{round_}"
    adds: dict[int, Timed] = {}
    cleared: list[Timed] = []

    async def add(bit: int) -> None:
        # Spread the adds over the clear: some before, some during, some after.
        for _ in range(bit % 6):
            await asyncio.sleep(0)
        started = time.monotonic()
        await c.add(name, 2**bit)
        adds[bit] = Timed(started, time.monotonic())

    async def clear() -> None:
        for _ in range(round_ % 4):
            await asyncio.sleep(0)
        started = time.monotonic()
        await c.clear(name)
        cleared.append(Timed(started, time.monotonic()))

    bits = list(range(40))
    await asyncio.gather(clear(), *(add(bit) for bit in bits))
    value = await c.get(name)
    return [(bit, adds[bit], cleared[0], value) for bit in bits]
