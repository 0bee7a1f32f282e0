"""Counting, in every mode the backend declares: add, get and clear; 0 for a
counter never added to; negative deltas; what ``add`` returns; counters and
namespaces kept apart; and concurrent adds, from threads and from one event
loop, that sum exactly."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from prism_conformance.counter.base import CounterSuiteBase
from prism_conformance.handles import AsyncCounterHandle, CounterHandle
from prism_conformance.support import run_threads


def _returned_ok(returned: int | None, expected: int, what: str) -> None:
    """``add`` returns the new value, or None where the backend cannot say it."""
    assert returned is None or returned == expected, (
        f"{what}: add returned {returned}, but the counter's new value is {expected}"
    )


class BasicTests(CounterSuiteBase):
    def test_a_counter_never_added_to_is_zero(self) -> None:
        for mode, c in self.each_mode():
            assert c.get("never") == 0, f"{mode}: an unknown counter must be 0"
            c.clear("never-either")
            assert c.get("never-either") == 0, f"{mode}: clearing an unknown counter leaves it 0"

    def test_add_get_and_clear(self) -> None:
        for mode, c in self.each_mode():
            _returned_ok(c.add("c"), 1, f"{mode}: add with the default delta")
            _returned_ok(c.add("c", 41), 42, f"{mode}: add 41")
            assert c.get("c") == 42, f"{mode}: 1 + 41"
            c.clear("c")
            assert c.get("c") == 0, f"{mode}: a cleared counter is 0"
            _returned_ok(c.add("c", 7), 7, f"{mode}: the first add after a clear")
            assert c.get("c") == 7, f"{mode}: adds after a clear count from 0"
            _returned_ok(c.add("c", 0), 7, f"{mode}: add 0")
            assert c.get("c") == 7

    def test_negative_deltas(self) -> None:
        for mode, c in self.each_mode():
            _returned_ok(c.add("c", -5), -5, f"{mode}: a counter may go below 0")
            _returned_ok(c.add("c", 2), -3, f"{mode}: -5 + 2")
            _returned_ok(c.add("c", -(2**40)), -3 - 2**40, f"{mode}: a large negative delta")
            _returned_ok(c.add("c", 2**40 + 3), 0, f"{mode}: back to 0")
            assert c.get("c") == 0, f"{mode}: a counter added back to 0 reads 0"
            _returned_ok(c.add("c", -1), -1, f"{mode}: below 0 again")

    def test_add_returns_the_new_value_or_none(self) -> None:
        """Whenever ``add`` returns a value it is the counter's value right after
        that add, for every delta; a backend that cannot say returns None."""
        rng = random.Random(11)
        for mode, c in self.each_mode():
            total = 0
            returned: list[int | None] = []
            for _ in range(60):
                delta = rng.choice([1, -1, rng.randrange(-(2**31), 2**31), rng.randrange(1, 2**50)])
                total += delta
                got = c.add("r", delta)
                returned.append(got)
                _returned_ok(got, total, f"{mode}: after adding {delta}")
                assert c.get("r") == total, f"{mode}: get after adding {delta}"
            assert all(r is None for r in returned) or None not in returned, (
                f"{mode}: add returned a value for some adds and None for others: {returned}"
            )

    def test_counters_and_namespaces_are_isolated(self) -> None:
        for mode in self.declared_modes():
            first, second = self.open_counters(2, mode)
            names = ["c", "C", "c1", "c:1", "c 1", "ç", "c\u0327", "1c"]
            for n, name in enumerate(names, start=1):
                first.add(name, n)
                second.add(name, 100 * n)
            for n, name in enumerate(names, start=1):
                assert first.get(name) == n, f"{mode}: counter {name!r} must hold only its own adds"
                assert second.get(name) == 100 * n, f"{mode}: counter {name!r} of a second namespace"
            first.clear("c")
            assert (first.get("c"), first.get("C"), second.get("c")) == (0, 2, 100), (
                f"{mode}: a clear must reset exactly one counter of one namespace"
            )

    def test_concurrent_adds_from_threads_sum_exactly(self) -> None:
        for mode, c in self.each_mode():
            self._threads_sum(mode, c)

    def test_concurrent_adds_on_one_event_loop_sum_exactly(self) -> None:
        """Hundreds of adds started at once with ``asyncio.gather``; each
        returned value (if any) is the value right after one add, so with
        distinct powers of two every returned value is distinct."""
        for mode in self.declared_modes():
            total, returned, final = self.run_async(mode, _gathered_adds)
            assert final == total, f"{mode}: {len(returned)} concurrent adds summing to {total} left {final}"
            values = [r for r in returned if r is not None]
            assert len(values) == len(set(values)), (
                f"{mode}: two concurrent adds returned the same new value, so one of them did not see the "
                f"other: {sorted(values)}"
            )
            assert not values or total in values, f"{mode}: no add returned the final value {total}"

    def _threads_sum(self, mode: str, c: CounterHandle) -> None:
        threads, adds = 6, 40
        deltas = [
            [(t + 1) * (i % 5 + 1) * (-1 if i % 7 == 0 else 1) for i in range(adds)] for t in range(threads)
        ]
        returned: list[int | None] = []

        def adder(mine: list[int]) -> Callable[[], None]:
            def run() -> None:
                for delta in mine:
                    returned.append(c.add("shared", delta))

            return run

        run_threads([adder(mine) for mine in deltas])
        total = sum(map(sum, deltas))
        assert c.get("shared") == total, (
            f"{mode}: {threads} threads added {total} in all, but the counter is {c.get('shared')}"
        )
        values = [r for r in returned if r is not None]
        assert total in values or not values, (
            f"{mode}: the last add to finish must have returned the final value {total}"
        )


async def _gathered_adds(c: AsyncCounterHandle) -> tuple[int, list[int | None], int]:
    # Positive, so every partial sum is distinct: two adds returning one
    # value must have overlapped.
    deltas = [2**i for i in range(62)]
    random.Random(3).shuffle(deltas)
    returned = await asyncio.gather(*(c.add("g", delta) for delta in deltas))
    mixed_deltas = [-(3**i) for i in range(30)] + [5**i for i in range(20)]
    await asyncio.gather(*(c.add("mixed", delta) for delta in mixed_deltas))
    mixed = await c.get("mixed")
    assert mixed == sum(mixed_deltas), f"concurrent negative and positive adds left {mixed}"
    # 120 at once: under a gateway's default of 128 calls in flight per
    # namespace, so the suite runs through any gateway with default limits.
    others = await asyncio.gather(*(c.add(f"other-{i % 4}", 1) for i in range(120)))
    assert len(others) == 120
    counts = await asyncio.gather(*(c.get(f"other-{i}") for i in range(4)))
    assert counts == [30, 30, 30, 30], f"120 concurrent adds of 1 over 4 counters: {counts}"
    return sum(deltas), list(returned), await c.get("g")
