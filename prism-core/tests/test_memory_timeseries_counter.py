"""The memory TimeSeries and Counter backends at the SPI: reads in both orders,
range boundaries, cursors, replacement, purges, and a randomized comparison
with an oracle built from :meth:`EventQuery.matches`; counters in both modes,
replays, overflow, concurrent adds, and forgetting old tokens. Then a short
end-to-end check through ``prism.open``."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import prism
from prism import capabilities
from prism.backends.memory import COUNTER, TIMESERIES, MemorySettings
from prism.backends.memory_counter import KEEP_WINDOWS, SWEEP_EVERY, MemoryCounter
from prism.backends.memory_timeseries import MemoryTimeSeries
from prism.config import CounterSettings, NamespaceConfig, TimeSeriesSettings
from prism.models import now_micros
from prism.plugins import load_plugins
from prism.spi import (
    COUNTER_MAX,
    COUNTER_MIN,
    CounterBackend,
    CounterOverflow,
    CounterToken,
    EventQuery,
    StoredEvent,
    TimeSeriesBackend,
)

TS_NS = NamespaceConfig(abstraction="timeseries", timeseries=TimeSeriesSettings())
EXACT_NS = NamespaceConfig(abstraction="counter", counter=CounterSettings(mode="exact"))


def ev(time_us: int, event_id: str, payload: bytes = b"", **tags: str) -> StoredEvent:
    return StoredEvent(
        time_us,
        event_id,
        payload or f"{time_us}/{event_id}".encode(),
        tuple(sorted(tags.items())),
        time_us + 10**9,
    )


def positions(events: list[StoredEvent]) -> list[tuple[int, str]]:
    return [e.position for e in events]


async def started_ts(*namespaces: str) -> MemoryTimeSeries:
    backend = MemoryTimeSeries("mem", MemorySettings())
    await backend.start()
    for namespace in namespaces or ("ns",):
        await backend.provision(namespace, TS_NS)
    return backend


async def started_counter(window: timedelta = timedelta(minutes=10)) -> MemoryCounter:
    backend = MemoryCounter("mem", MemorySettings())
    await backend.start()
    await backend.provision(
        "exact",
        NamespaceConfig(abstraction="counter", counter=CounterSettings(mode="exact", token_window=window)),
    )
    await backend.provision("best", NamespaceConfig(abstraction="counter"))
    return backend


def test_registered_without_native_retention_and_with_both_counter_modes() -> None:
    registry = load_plugins(disabled=()).registry
    assert registry.timeseries["memory"] is TIMESERIES
    assert registry.counter["memory"] is COUNTER
    assert TIMESERIES.capabilities == frozenset()
    assert COUNTER.capabilities == {capabilities.COUNTER_BEST_EFFORT, capabilities.COUNTER_EXACT}
    assert TIMESERIES.settings_type is COUNTER.settings_type is registry.keyvalue["memory"].settings_type
    traits = TIMESERIES.traits(MemorySettings())
    assert traits.durability == "ephemeral"
    assert traits.max_event_bytes == 64 * 1024 * 1024
    assert COUNTER.traits(MemorySettings()).durability == "ephemeral"
    assert isinstance(MemoryTimeSeries("m", MemorySettings()), TimeSeriesBackend)
    assert isinstance(MemoryCounter("m", MemorySettings()), CounterBackend)


# -- TimeSeries ------------------------------------------------------------------------------


def test_reads_in_both_orders_with_inclusive_start_and_exclusive_end() -> None:
    async def main() -> None:
        ts = await started_ts()
        # Written out of order, with ties at one microsecond ordered by id.
        events = [ev(30, "b"), ev(10, "a"), ev(30, "a"), ev(20, "z"), ev(40, "a"), ev(30, "ab")]
        await ts.write("ns", "s", events, now_micros())
        asc = await ts.read("ns", "s", EventQuery(10, 40, descending=False, limit=100))
        assert positions(asc) == [(10, "a"), (20, "z"), (30, "a"), (30, "ab"), (30, "b")]
        desc = await ts.read("ns", "s", EventQuery(10, 40, descending=True, limit=100))
        assert positions(desc) == list(reversed(positions(asc)))
        # Exactly on an event time: the start takes it, the end leaves it out.
        assert positions(await ts.read("ns", "s", EventQuery(30, 31, descending=False, limit=9))) == [
            (30, "a"),
            (30, "ab"),
            (30, "b"),
        ]
        assert await ts.read("ns", "s", EventQuery(31, 40, descending=True, limit=9)) == []
        assert positions(await ts.read("ns", "s", EventQuery(11, 30, descending=True, limit=9))) == [
            (20, "z")
        ]
        # Limit counts from the read's start, in its order.
        assert positions(await ts.read("ns", "s", EventQuery(0, 100, descending=True, limit=2))) == [
            (40, "a"),
            (30, "b"),
        ]
        assert positions(await ts.read("ns", "s", EventQuery(0, 100, descending=False, limit=2))) == [
            (10, "a"),
            (20, "z"),
        ]
        assert await ts.read("ns", "other", EventQuery(0, 100, descending=False, limit=2)) == []
        assert await ts.read("ns2", "s", EventQuery(0, 100, descending=False, limit=2)) == []
        # The stored event comes back whole.
        assert asc[0] == events[1]

    asyncio.run(main())


@pytest.mark.parametrize("descending", [False, True])
def test_cursor_pages_join_up_to_the_whole_read(descending: bool) -> None:
    async def main() -> None:
        ts = await started_ts()
        events = [ev(t, i) for t in range(100, 110) for i in ("a", "b", "c")]
        await ts.write("ns", "s", events, now_micros())
        whole = await ts.read("ns", "s", EventQuery(101, 109, descending, limit=1000))
        assert len(whole) == 8 * 3
        pages: list[StoredEvent] = []
        after: tuple[int, str] | None = None
        while True:
            page = await ts.read("ns", "s", EventQuery(101, 109, descending, limit=4, after=after))
            assert len(page) <= 4
            if not page:
                break
            pages += page
            after = page[-1].position
        assert pages == whole
        # A cursor outside the range: nothing past it (or everything, from before it).
        beyond = (200, "") if not descending else (0, "")
        assert await ts.read("ns", "s", EventQuery(101, 109, descending, 10, after=beyond)) == []
        before = (0, "") if not descending else (200, "")
        assert await ts.read("ns", "s", EventQuery(101, 109, descending, 100, after=before)) == whole

    asyncio.run(main())


def test_writing_a_stored_position_replaces_it() -> None:
    async def main() -> None:
        ts = await started_ts()
        await ts.write("ns", "s", [ev(5, "x", b"first", k="1"), ev(6, "y", b"keep")], now_micros())
        await ts.write("ns", "s", [ev(5, "x", b"second", k="2")], now_micros())
        got = await ts.read("ns", "s", EventQuery(0, 10, descending=False, limit=10))
        assert [(e.position, e.payload, e.tags) for e in got] == [
            ((5, "x"), b"second", (("k", "2"),)),
            ((6, "y"), b"keep", ()),
        ]

    asyncio.run(main())


def test_purge_one_series_or_the_whole_namespace() -> None:
    async def main() -> None:
        ts = await started_ts("ns", "other")
        for namespace in ("ns", "other"):
            for series in ("s1", "s2"):
                await ts.write(namespace, series, [ev(t, "e") for t in (10, 20, 30)], now_micros())
        everything = EventQuery(0, 100, descending=False, limit=100)
        await ts.purge("ns", 20, "s1")
        assert positions(await ts.read("ns", "s1", everything)) == [(20, "e"), (30, "e")]
        assert len(await ts.read("ns", "s2", everything)) == 3
        await ts.purge("ns", 30)
        assert positions(await ts.read("ns", "s1", everything)) == [(30, "e")]
        assert positions(await ts.read("ns", "s2", everything)) == [(30, "e")]
        assert len(await ts.read("other", "s1", everything)) == 3
        await ts.purge("ns", 1000)
        await ts.purge("ns", 1000, "never-written")
        assert await ts.read("ns", "s1", everything) == []
        # A purged series takes new events as before.
        await ts.write("ns", "s1", [ev(5, "again")], now_micros())
        assert positions(await ts.read("ns", "s1", everything)) == [(5, "again")]

    asyncio.run(main())


def oracle(stored: dict[tuple[int, str], StoredEvent], query: EventQuery) -> list[StoredEvent]:
    chosen = sorted((p for p in stored if query.matches(p)), reverse=query.descending)
    return [stored[p] for p in chosen[: query.limit]]


def test_random_writes_and_reads_agree_with_the_reference_semantics() -> None:
    async def main() -> None:
        ts = await started_ts()
        rng = random.Random(7)
        stored: dict[tuple[int, str], StoredEvent] = {}
        for round_ in range(60):
            batch = {}
            for _ in range(rng.randint(1, 15)):
                e = ev(
                    rng.randint(0, 50), rng.choice(["a", "b", "é", "ab", "Z", "a\x00"]), f"r{round_}".encode()
                )
                batch[e.position] = e
            await ts.write("ns", "s", list(batch.values()), now_micros())
            stored.update(batch)
            if rng.random() < 0.1:
                cut = rng.randint(0, 20)
                await ts.purge("ns", cut, "s")
                stored = {p: e for p, e in stored.items() if p[0] >= cut}
            for _ in range(5):
                start = rng.randint(0, 50)
                end = rng.randint(start + 1, 52)
                descending = rng.random() < 0.5
                after = None
                if rng.random() < 0.5:
                    after = (rng.randint(0, 52), rng.choice(["", "a", "b", "zz"]))
                query = EventQuery(start, end, descending, rng.randint(1, 20), after)
                assert await ts.read("ns", "s", query) == oracle(stored, query), query

    asyncio.run(main())


# -- Counter ---------------------------------------------------------------------------------


def tok(nonce: str, age: timedelta = timedelta(0)) -> CounterToken:
    return CounterToken(now_micros() - int(age.total_seconds() * 1e6), nonce)


def test_best_effort_adds_gets_and_clears() -> None:
    async def main() -> None:
        c = await started_counter()
        assert await c.get("best", "views") == 0
        assert await c.add("best", "views", 5, None) == 5
        assert await c.add("best", "views", -7, None) == -2
        assert await c.add("best", "other", 1, None) == 1
        assert await c.get("best", "views") == -2
        # Same counter name in another namespace is another counter.
        assert await c.get("exact", "views") == 0
        await c.clear("best", "views", None)
        assert await c.get("best", "views") == 0
        assert await c.get("best", "other") == 1
        assert await c.add("best", "views", 3, None) == 3

    asyncio.run(main())


def test_exact_replays_change_nothing() -> None:
    async def main() -> None:
        c = await started_counter()
        t1, t2, clear1 = tok("1"), tok("2"), tok("c")
        assert await c.add("exact", "n", 10, t1) == 10
        assert await c.add("exact", "n", 10, t1) == 10
        assert await c.add("exact", "n", 5, t2) == 15
        # A replay returns the current value, whatever delta it carries.
        assert await c.add("exact", "n", 999, t1) == 15
        await c.clear("exact", "n", clear1)
        assert await c.get("exact", "n") == 0
        assert await c.add("exact", "n", 3, tok("3")) == 3
        # Replaying the clear keeps the adds made since; replaying an add
        # erased by the clear does not bring it back.
        await c.clear("exact", "n", clear1)
        assert await c.add("exact", "n", 10, t1) == 3
        assert await c.get("exact", "n") == 3
        # Tokens are per counter: the same token on another counter is new.
        assert await c.add("exact", "m", 4, t1) == 4

    asyncio.run(main())


@pytest.mark.parametrize("namespace", ["best", "exact"])
def test_overflow_changes_nothing(namespace: str) -> None:
    async def main() -> None:
        c = await started_counter()
        token = (lambda n: tok(n)) if namespace == "exact" else (lambda n: None)
        assert await c.add(namespace, "hi", COUNTER_MAX - 1, token("a")) == COUNTER_MAX - 1
        t = token("b")
        with pytest.raises(CounterOverflow, match=r"counter 'hi' in namespace '\w+'"):
            await c.add(namespace, "hi", 2, t)
        assert await c.get(namespace, "hi") == COUNTER_MAX - 1
        # The refused add's token was not used up: the same token applies now.
        assert await c.add(namespace, "hi", 1, t) == COUNTER_MAX
        assert await c.add(namespace, "lo", COUNTER_MIN, token("c")) == COUNTER_MIN
        with pytest.raises(CounterOverflow):
            await c.add(namespace, "lo", -1, token("d"))
        assert await c.get(namespace, "lo") == COUNTER_MIN
        assert await c.add(namespace, "lo", COUNTER_MAX, token("e")) == -1

    asyncio.run(main())


def test_an_applied_token_replayed_with_an_overflowing_delta_is_still_a_replay() -> None:
    async def main() -> None:
        c = await started_counter()
        t = tok("x")
        assert await c.add("exact", "n", COUNTER_MAX, t) == COUNTER_MAX
        assert await c.add("exact", "n", COUNTER_MAX, t) == COUNTER_MAX

    asyncio.run(main())


@pytest.mark.parametrize("namespace", ["best", "exact"])
def test_concurrent_adds_sum_up(namespace: str) -> None:
    async def main() -> None:
        c = await started_counter()
        tokens = [tok(f"n{i}") if namespace == "exact" else None for i in range(300)]
        calls = [c.add(namespace, "n", i % 7 - 2, t) for i, t in enumerate(tokens)]
        if namespace == "exact":
            # Retries of every third add, racing their first calls.
            calls += [c.add(namespace, "n", i % 7 - 2, tokens[i]) for i in range(0, 300, 3)]
        random.Random(3).shuffle(calls)
        results = await asyncio.gather(*calls)
        expected = sum(i % 7 - 2 for i in range(300))
        assert await c.get(namespace, "n") == expected
        assert expected in results

    asyncio.run(main())


def test_tokens_are_remembered_for_the_window_and_then_forgotten() -> None:
    async def main() -> None:
        window = timedelta(minutes=1)
        c = await started_counter(window)
        recent = tok("recent", age=window * KEEP_WINDOWS - timedelta(seconds=10))
        assert await c.add("exact", "n", 1, recent) == 1
        assert await c.add("exact", "n", 1, recent) == 1
        # Older than what is kept: the core would refuse it; the backend has
        # forgotten it, so nothing stops it from counting again.
        old = tok("old", age=window * KEEP_WINDOWS + timedelta(seconds=10))
        assert await c.add("exact", "n", 1, old) == 2
        assert await c.add("exact", "n", 1, old) == 3
        # Counters no longer used lose their tokens in the periodic sweep.
        for i in range(SWEEP_EVERY):
            await c.add(
                "exact", f"idle{i}", 1, tok(f"t{i}", age=window * KEEP_WINDOWS + timedelta(seconds=1))
            )
        await c.add("exact", "n", 1, tok("fresh"))
        assert len(c._tokens) < 10

    asyncio.run(main())


# -- end to end --------------------------------------------------------------------------------


def test_end_to_end_through_prism_open() -> None:
    config: dict[str, Any] = {
        "backends": {"mem": {"plugin": "memory"}},
        "namespaces": {
            "metrics": {"abstraction": "timeseries", "timeseries": {"retention": "1h"}},
            "views": {"abstraction": "counter"},
            "exact": {"abstraction": "counter", "counter": {"mode": "exact"}},
        },
    }
    now = datetime.now(UTC)
    with prism.open(config) as db:
        ts = db.timeseries("metrics")
        ts.write_events(
            "cpu", [prism.Event(now - timedelta(seconds=s), f"e{s}", b"p", {"h": "a"}) for s in range(5)]
        )
        page = ts.read_events(
            "cpu", now - timedelta(minutes=1), now + timedelta(seconds=1), order="desc", limit=3
        )
        assert [e.event_id for e in page.events] == ["e0", "e1", "e2"]
        assert page.next_page_token is not None
        rest = ts.read_events(
            "cpu",
            now - timedelta(minutes=1),
            now + timedelta(seconds=1),
            order="desc",
            page_token=page.next_page_token,
        )
        assert [e.event_id for e in rest.events] == ["e3", "e4"]
        views = db.counter("views")
        views.add("home", 2)
        views.add("home")
        assert views.get("home") == 3
        exact = db.counter("exact")
        token = prism.IdempotencyToken.new()
        exact.add("n", 5, token=token)
        exact.add("n", 5, token=token)
        assert exact.get("n") == 5
        exact.clear("n")
        assert exact.get("n") == 0
