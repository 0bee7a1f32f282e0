"""TimeSeries and Counter (issue 7 §4): Prism against the raw driver doing the
same storage work (:mod:`benchmarks.raw_ts_counter`), embedded on sqlite and
redis, and through ``prism serve`` on redis.

Scenarios, one call in flight (closed loop), so ops/s is 1 / time per op:

* ``ts.write 10 events``: ``write_events`` of 10 events of 100 B payloads and
  one tag, each call to new positions (an append, as a writer of samples does);
  the events of each repetition are built before it is timed, on both sides.
* ``ts.read range 100 events``: ``read_events`` of a 100-event range
  (``limit=100``; the core asks the backend for 101, and so does the baseline).
* ``counter.add best_effort`` and ``counter.add exact``: ``add`` of 1 in a
  ``best_effort`` and in an ``exact`` namespace (a new token per call: Prism
  makes one when none is given, the baseline makes one the same way).
* ``counter.get``: ``get`` of a counter both sides read.

Through the gateway: Prism's remote client (``prism.connect_async``) against
the raw redis-py baseline from the same client process and event loop, closed
loop, one call in flight. Not a fixed rate: five scenarios at a fixed rate for
3 s a repetition would take 90 s of the 5-minute ``--quick`` budget, and one
call in flight shows the per-call cost directly, as the 1 MiB gateway scenario
does; the fixed-rate latency figure for a small call is the KeyValue one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import prism
from benchmarks import gateway
from benchmarks.harness import Op, Progress, Result, Settings, closed_loop, interleaved, one_core
from benchmarks.profiling import pyinstrument_profile
from benchmarks.raw_ts_counter import RawRedisTsCounter, RawSqliteTsCounter, Row
from benchmarks.stats import Sample
from prism.models import datetime_to_micros
from prism.spi import StoredEvent

TS = "bench_ts"
COUNTER = "bench_ctr"
COUNTER_EXACT = "bench_ctr_exact"
PAYLOAD = bytes(i % 251 for i in range(100))
TAGS = {"host": "h1"}
WRITE_EVENTS = 10
READ_EVENTS = 100
#: The namespaces' default ``timeseries.retention`` (30 days): the stored expiry.
RETENTION_US = 30 * 86_400 * 1_000_000
#: Embedded, each case runs 3x the repetitions of a third of the calls. A call
#: that hops to a worker thread (sqlite) and takes ~0.05 ms is bimodal here:
#: for a whole repetition at a time, p50 sits at either ~0.035 or ~0.06-0.08 ms
#: on *both* sides (whether the worker thread wakes on the caller's core or an
#: idle one, it seems), so a median of 3 repetitions could land on different
#: modes for the two sides; a median of 9 shorter ones is far steadier.
EMBEDDED_SPLIT = 3
#: Embedded calls take 0.03-0.6 ms, gateway ones 0.6-2 ms: embedded makes 3x
#: the calls, so a repetition lasts 15-60 ms rather than 5-20 ms.
EMBEDDED_SCALE = 3


class TimeSeriesHandle(Protocol):
    """What the scenarios call: ``prism.AsyncTimeSeries`` or the remote one."""

    async def write_events(self, series: str, events: Sequence[prism.Event]) -> None: ...

    async def read_events(
        self, series: str, start: datetime, end: datetime, *, limit: int | None = None
    ) -> prism.EventsPage: ...


class CounterHandle(Protocol):
    async def add(self, counter: str, delta: int = 1) -> int | None: ...

    async def get(self, counter: str) -> int: ...


class RawTsCounter(Protocol):
    async def write_events(self, namespace: str, series: str, events: Sequence[StoredEvent]) -> None: ...

    async def read_events(
        self, namespace: str, series: str, start_us: int, end_us: int, limit: int
    ) -> list[Row]: ...

    async def add(self, namespace: str, counter: str, delta: int) -> int: ...

    async def add_exact(self, namespace: str, counter: str, delta: int) -> int: ...

    async def get(self, namespace: str, counter: str) -> int: ...

    async def settle(self) -> None: ...


@dataclass(frozen=True)
class Handles:
    ts: TimeSeriesHandle
    counter: CounterHandle
    counter_exact: CounterHandle


#: Builds a repetition's call (anything it needs, like the events to write, is
#: made here, outside the timed loop), given the calls the repetition makes.
Prepare = Callable[[int], Op]


@dataclass(frozen=True)
class Case:
    scenario: str
    abstraction: str
    calls: Callable[[Settings], int]
    prism: Prepare
    raw: Prepare


class Positions:
    """New event positions, a microsecond apart from a minute ago (well inside
    the retention and the future skew), so every write appends."""

    def __init__(self) -> None:
        self.base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        self.base_us = datetime_to_micros(self.base)
        self._next = itertools.count()

    def prism_batches(self, calls: int) -> list[list[prism.Event]]:
        out = []
        for _ in range(calls):
            n = next(self._next) * WRITE_EVENTS
            out.append(
                [
                    prism.Event(self.base + timedelta(microseconds=n + j), f"e{n + j}", PAYLOAD, TAGS)
                    for j in range(WRITE_EVENTS)
                ]
            )
        return out

    def raw_batches(self, calls: int) -> list[list[StoredEvent]]:
        tags = tuple(sorted(TAGS.items()))
        out = []
        for _ in range(calls):
            n = next(self._next) * WRITE_EVENTS
            out.append(
                [
                    StoredEvent(
                        self.base_us + n + j, f"e{n + j}", PAYLOAD, tags, self.base_us + n + j + RETENTION_US
                    )
                    for j in range(WRITE_EVENTS)
                ]
            )
        return out


def _read_range() -> tuple[datetime, datetime]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    return start, start + timedelta(seconds=1)


def _cases(h: Handles, raw: RawTsCounter, read_start: datetime, read_end: datetime) -> list[Case]:
    positions = Positions()
    start_us, end_us = datetime_to_micros(read_start), datetime_to_micros(read_end)

    def prism_write(calls: int) -> Op:
        batches = positions.prism_batches(calls)
        return lambda i: h.ts.write_events("write-prism", batches[i])

    def raw_write(calls: int) -> Op:
        batches = positions.raw_batches(calls)
        return lambda i: raw.write_events(TS, "write-raw", batches[i])

    return [
        Case("ts.write 10 events", "timeseries", lambda s: s.small_ops, prism_write, raw_write),
        Case(
            "ts.read range 100 events",
            "timeseries",
            lambda s: s.batch_ops * 2,
            lambda calls: lambda i: h.ts.read_events("read", read_start, read_end, limit=READ_EVENTS),
            lambda calls: lambda i: raw.read_events(TS, "read", start_us, end_us, READ_EVENTS + 1),
        ),
        Case(
            "counter.add best_effort",
            "counter",
            lambda s: s.small_ops,
            lambda calls: lambda i: h.counter.add("add-prism"),
            lambda calls: lambda i: raw.add(COUNTER, "add-raw", 1),
        ),
        Case(
            "counter.add exact",
            "counter",
            lambda s: s.small_ops,
            lambda calls: lambda i: h.counter_exact.add("add-prism"),
            lambda calls: lambda i: raw.add_exact(COUNTER_EXACT, "add-raw", 1),
        ),
        Case(
            "counter.get",
            "counter",
            lambda s: s.small_ops,
            lambda calls: lambda i: h.counter.get("get"),
            lambda calls: lambda i: raw.get(COUNTER, "get"),
        ),
    ]


async def _seed_and_check(h: Handles, raw: RawTsCounter, read_start: datetime, read_end: datetime) -> None:
    """Write what the reads read (through Prism, in the plugin's layout), and
    check both sides read the same, so a broken baseline cannot pass for a fast one."""
    events = [
        prism.Event(read_start + timedelta(milliseconds=j), f"r{j:03d}", PAYLOAD, TAGS)
        for j in range(READ_EVENTS)
    ]
    await h.ts.write_events("read", events)
    await h.counter.add("get", 42)
    page = await h.ts.read_events("read", read_start, read_end, limit=READ_EVENTS)
    rows = await raw.read_events(
        TS, "read", datetime_to_micros(read_start), datetime_to_micros(read_end), READ_EVENTS + 1
    )
    assert [(e.event_id, e.payload, dict(e.tags)) for e in page.events] == [
        (e.event_id, e.payload, TAGS) for e in events
    ]
    assert [(r[1], r[2], dict(r[3])) for r in rows] == [(e.event_id, e.payload, TAGS) for e in events]
    assert await raw.get(COUNTER, "get") == await h.counter.get("get") > 0


async def _check_raw_writes(h: Handles, positions_start: datetime) -> None:
    """What the baseline wrote reads back through Prism: same layout, same format."""
    page = await h.ts.read_events("write-raw", positions_start, datetime.now(UTC), limit=WRITE_EVENTS)
    assert len(page.events) == WRITE_EVENTS
    assert all(e.payload == PAYLOAD for e in page.events)
    assert await h.counter.get("add-raw") > 0
    assert await h.counter_exact.get("add-raw") > 0


async def run_cases(
    h: Handles,
    raw: RawTsCounter,
    backend: str,
    mode: str,
    baseline_name: str,
    settings: Settings,
    progress: Progress,
    notes: dict[str, Any] | None = None,
    split: int = 1,
    scale: int = 1,
) -> list[Result]:
    """Each case ``scale`` times its calls, spread over ``split`` times the
    repetitions (see :data:`EMBEDDED_SPLIT` and :data:`EMBEDDED_SCALE`)."""
    repetitions = settings.repetitions * split
    read_start, read_end = _read_range()
    await _seed_and_check(h, raw, read_start, read_end)
    results: list[Result] = []
    for case in _cases(h, raw, read_start, read_end):
        calls = max(20, case.calls(settings) * scale // split)
        warmup = max(3, calls // 10)
        await raw.settle()
        prism_warm, raw_warm = case.prism(warmup), case.raw(warmup)
        for w in range(warmup):
            await prism_warm(w)
            await raw_warm(w)

        async def prism_side(case: Case = case, calls: int = calls) -> Sample:
            return await closed_loop(case.prism(calls), calls)

        async def raw_side(case: Case = case, calls: int = calls) -> Sample:
            return await closed_loop(case.raw(calls), calls)

        progress.say(f"{case.scenario} on {backend}, {mode}: {calls} calls x {repetitions} reps")
        p, b = await interleaved(repetitions, prism_side, raw_side, progress, case.scenario)
        if settings.profile and mode == "embedded":
            slug = case.scenario.replace(" ", "-").replace(".", "-")
            out = settings.results_dir / "profiles" / f"embedded-{backend}-{slug}.txt"
            await pyinstrument_profile(prism_side, out)
            progress.say(f"profile: {out}")
        results.append(
            Result(
                scenario=case.scenario,
                abstraction=case.abstraction,
                backend=backend,
                mode=mode,
                prism=p,
                baseline_name=baseline_name,
                baseline=b,
                notes={"calls_per_rep": calls, "repetitions": repetitions, "concurrency": 1, **(notes or {})},
            )
        )
    await _check_raw_writes(h, read_end)
    return results


def _namespaces(backend: str) -> dict[str, Any]:
    return {
        TS: {"abstraction": "timeseries", "backend": backend},
        COUNTER: {"abstraction": "counter", "backend": backend, "counter": {"mode": "best_effort"}},
        COUNTER_EXACT: {"abstraction": "counter", "backend": backend, "counter": {"mode": "exact"}},
    }


async def _embedded(
    config: dict[str, Any],
    raw: RawTsCounter,
    backend: str,
    baseline_name: str,
    settings: Settings,
    progress: Progress,
) -> list[Result]:
    async with prism.open_async(config) as db:
        h = Handles(db.timeseries(TS), db.counter(COUNTER), db.counter(COUNTER_EXACT))
        return await run_cases(
            h,
            raw,
            backend,
            "embedded",
            baseline_name,
            settings,
            progress,
            split=EMBEDDED_SPLIT,
            scale=EMBEDDED_SCALE,
        )


async def run_sqlite(settings: Settings, progress: Progress) -> AsyncIterator[Result]:
    with one_core() as core:
        results = [r async for r in _run_sqlite(settings, progress, core)]
    for result in results:
        yield result


async def _run_sqlite(settings: Settings, progress: Progress, core: int | None) -> AsyncIterator[Result]:
    path = settings.work_dir / "ts-counter.db"
    config = {
        # NORMAL on both sides, as for KeyValue: the disk's fsync must not hide Prism's CPU cost.
        "backends": {"sqlite": {"plugin": "sqlite", "path": str(path), "synchronous": "normal"}},
        "namespaces": _namespaces("sqlite"),
    }
    raw = RawSqliteTsCounter(str(path), synchronous="NORMAL")
    await raw.start()
    try:
        results = await _embedded(config, raw, "sqlite", "raw sqlite3", settings, progress)
    finally:
        await raw.close()
    for result in results:
        result.notes["pinned_to_core"] = core
        yield result


async def run_redis(settings: Settings, progress: Progress, url: str) -> AsyncIterator[Result]:
    prefix = f"prismbenchtc{os.getpid()}"
    config = {
        "backends": {"redis": {"plugin": "redis", "url": url, "key_prefix": prefix}},
        "namespaces": _namespaces("redis"),
    }
    raw = RawRedisTsCounter(url, prefix)
    try:
        results = await _embedded(config, raw, "redis", "raw redis-py asyncio", settings, progress)
    finally:
        await raw.delete_prefix(prefix + ":")
        await raw.close()
    for result in results:
        yield result


async def run_gateway_redis(settings: Settings, progress: Progress, url: str) -> AsyncIterator[Result]:
    prefix = f"prismbenchtcgw{os.getpid()}"
    config = gateway.gateway_config({"plugin": "redis", "url": url, "key_prefix": prefix})
    config["namespaces"].update(_namespaces("b"))
    raw = RawRedisTsCounter(url, prefix)
    try:
        with gateway.prism_serve(config, settings, "gateway-ts-counter-redis") as (address, _):
            async with prism.connect_async(f"grpc://{address}") as db:
                h = Handles(db.timeseries(TS), db.counter(COUNTER), db.counter(COUNTER_EXACT))
                results = await run_cases(
                    h,
                    raw,
                    "redis",
                    "gateway closed loop",
                    "raw redis-py asyncio (same client)",
                    settings,
                    progress,
                    {
                        "loadgen": "one call in flight: Prism's remote client vs redis-py, same process and loop"
                    },
                )
    finally:
        await raw.delete_prefix(prefix + ":")
        await raw.close()
    for result in results:
        yield result
