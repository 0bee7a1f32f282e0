"""Limits and validation, in every mode: a counter name over
``counter.max_counter_name_bytes``, a delta that is not an int or outside
the signed 64-bit range, and an add that would overflow it are each refused
naming the namespace and the limit, and change nothing."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

import prism
from prism.spi import COUNTER_MAX, COUNTER_MIN
from prism_conformance.counter.base import CounterSuiteBase
from prism_conformance.handles import CounterHandle


def _names_namespace(exc: prism.InvalidArgument, c: CounterHandle, what: str) -> None:
    assert exc.namespace == c.name, f"{what}: the refusal must name the namespace {c.name!r}: {exc}"
    assert c.name in str(exc), f"{what}: the message must name the namespace {c.name!r}: {exc}"


class LimitTests(CounterSuiteBase):
    def test_counter_names_are_checked(self) -> None:
        for mode, c in self.each_mode(max_counter_name_bytes=16):
            at_limit = "çounter-at-16-b"  # ç is two bytes
            assert len(at_limit.encode()) == 16
            c.add(at_limit, 3)
            assert c.get(at_limit) == 3, f"{mode}: a name of exactly 16 bytes"
            calls: list[Callable[[str], object]] = [functools.partial(c.add, delta=1), c.get, c.clear]
            for call in calls:
                with pytest.raises(prism.LimitExceeded) as refused:
                    call(at_limit + "x")
                _names_namespace(refused.value, c, f"{mode}: a 17-byte name")
                assert "max_counter_name_bytes" in refused.value.limit_name, refused.value
                assert "max_counter_name_bytes" in str(refused.value), refused.value
                assert (refused.value.limit, refused.value.actual) == (16, 17), refused.value
                with pytest.raises(prism.InvalidArgument) as empty:
                    call("")
                _names_namespace(empty.value, c, f"{mode}: an empty name")
            assert c.get(at_limit) == 3, f"{mode}: refused calls changed a counter"

    def test_deltas_must_be_64_bit_ints(self) -> None:
        bad: list[Any] = [1.0, 1.5, "1", b"1", None, True, [1]]
        for mode, c in self.each_mode():
            c.add("c", 10)
            for delta in bad:
                with pytest.raises(prism.InvalidArgument) as refused:
                    c.add("c", delta)
                _names_namespace(refused.value, c, f"{mode}: delta {delta!r}")
                assert "delta" in str(refused.value), (
                    f"{mode}: the refusal must name the delta: {refused.value}"
                )
            for delta in (COUNTER_MAX + 1, COUNTER_MIN - 1, 2**100):
                with pytest.raises(prism.InvalidArgument) as refused:
                    c.add("c", delta)
                _names_namespace(refused.value, c, f"{mode}: delta {delta}")
            assert c.get("c") == 10, f"{mode}: refused adds changed the counter"
            c.add("extremes", COUNTER_MAX)
            c.add("extremes", COUNTER_MIN)
            assert c.get("extremes") == -1, f"{mode}: deltas of exactly the 64-bit bounds are valid"

    def test_overflow_is_refused_and_changes_nothing(self) -> None:
        for mode, c in self.each_mode():
            returned = c.add("up", COUNTER_MAX - 1)
            assert returned in (None, COUNTER_MAX - 1)
            returned = c.add("up", 1)
            assert returned in (None, COUNTER_MAX), f"{mode}: a counter may reach exactly 2**63-1"
            for delta in (1, 2**62, COUNTER_MAX):
                with pytest.raises(prism.LimitExceeded) as refused:
                    c.add("up", delta)
                _names_namespace(refused.value, c, f"{mode}: overflow by {delta}")
                assert c.get("up") == COUNTER_MAX, (
                    f"{mode}: an add that would overflow must change nothing (it wrapped or was capped: "
                    f"{c.get('up')})"
                )
            c.add("up", -1)
            assert c.get("up") == COUNTER_MAX - 1, f"{mode}: the counter still counts after a refused add"

            c.add("down", COUNTER_MIN + 1)
            c.add("down", -1)
            assert c.get("down") == COUNTER_MIN, f"{mode}: a counter may reach exactly -2**63"
            for delta in (-1, COUNTER_MIN):
                with pytest.raises(prism.LimitExceeded) as refused:
                    c.add("down", delta)
                _names_namespace(refused.value, c, f"{mode}: underflow by {delta}")
                assert c.get("down") == COUNTER_MIN, (
                    f"{mode}: an add that would underflow changed the counter"
                )
            c.clear("down")
            assert c.get("down") == 0, f"{mode}: a counter at the bound can be cleared"
