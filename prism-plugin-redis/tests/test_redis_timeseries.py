"""The redis TimeSeries backend at the SPI, on a real Redis server.

Reads are checked against a model built from :meth:`EventQuery.matches` (the
SPI's reference semantics) over what was written, in both orders, with and
without cursors, paging until the end. Every test uses its own key prefix,
whose keys are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

import prism
from prism.config import NamespaceConfig, TimeSeriesSettings
from prism.errors import BackendError, InvalidArgument
from prism.plugins.registry import BackendRegistry
from prism.spi import EventQuery, StoredEvent, TimeSeriesBackend
from prism_redis.keyvalue import RedisSettings
from prism_redis.plugin import prism_register_timeseries
from prism_redis.timeseries import (
    PURGE_BATCH,
    TIMESERIES,
    RedisTimeSeries,
    decode_event,
    encode_event,
    position_member,
)

NS = "events"
DAY_US = 86_400 * 1_000_000
#: A base time for events (2026-01-01); expiries lie far in the future.
T0 = 1_767_225_600 * 1_000_000
FAR = T0 + 3650 * DAY_US


@asynccontextmanager
async def opened(url: str, **settings: Any) -> AsyncIterator[RedisTimeSeries]:
    prefix = settings.setdefault("key_prefix", f"prism-test-{uuid.uuid4().hex[:12]}")
    backend = RedisTimeSeries("test", RedisSettings(url=url, **settings))
    await backend.start()
    try:
        await backend.provision(
            NS, NamespaceConfig(abstraction="timeseries", timeseries=TimeSeriesSettings())
        )
        yield backend
    finally:
        await backend.close()
        client = aioredis.Redis.from_url(url)
        try:
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


def run_with(url: str, body: Callable[[RedisTimeSeries], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        async with opened(url, **settings) as backend:
            await body(backend)

    asyncio.run(main())


def event(time_us: int, event_id: str, payload: bytes = b"", **tags: str) -> StoredEvent:
    return StoredEvent(
        time_us=time_us,
        event_id=event_id,
        payload=payload,
        tags=tuple(sorted(tags.items())),
        expires_at_us=FAR,
    )


def expected(stored: dict[tuple[int, str], StoredEvent], query: EventQuery) -> list[StoredEvent]:
    """The model: what ``query`` must return, from the SPI's own ``matches``."""
    chosen = sorted((p for p in stored if query.matches(p)), reverse=query.descending)
    return [stored[p] for p in chosen[: query.limit]]


async def read_pages(b: RedisTimeSeries, series: str, query: EventQuery) -> list[StoredEvent]:
    """Every event of ``query``'s range, page by page through ``after``."""
    out: list[StoredEvent] = []
    after = query.after
    while True:
        page = await b.read(
            NS, series, EventQuery(query.start_us, query.end_us, query.descending, query.limit, after)
        )
        assert len(page) <= query.limit
        out += page
        if len(page) < query.limit:
            return out
        after = page[-1].position


def test_backend_satisfies_the_spi_and_is_registered() -> None:
    assert isinstance(RedisTimeSeries("x", RedisSettings()), TimeSeriesBackend)
    assert TIMESERIES.settings_type is RedisSettings
    # Redis 7.0 has no per-member expiry: retention is the core's job.
    assert "timeseries.native_retention" not in TIMESERIES.capabilities
    assert TIMESERIES.traits(RedisSettings()).durability == "ephemeral"
    assert TIMESERIES.traits(RedisSettings(durable=True)).durability == "durable"
    assert "appendfsync always" in TIMESERIES.traits(RedisSettings()).durability_note

    registry = BackendRegistry()
    prism_register_timeseries(registry)
    assert registry.timeseries == {"redis": TIMESERIES}


def test_position_bytes_sort_as_positions() -> None:
    rng = random.Random(7)
    ids = ["", "a", "a\x00", "ab", "b", "é", "\u00ff", "\u0100", "z" * 5, "\U0001f600", "\uffff"]
    times = [-(2**62), -DAY_US, -1, 0, 1, 255, 256, T0, T0 + 1, 2**62]
    positions = [(t, i) for t in times for i in ids]
    rng.shuffle(positions)
    by_bytes = sorted(positions, key=lambda p: position_member(*p))
    assert by_bytes == sorted(positions)


def test_event_encoding_round_trips() -> None:
    e = StoredEvent(
        time_us=-5,
        event_id="ïd/1",
        payload=b"\x00payload\xff",
        tags=(("", ""), ("k", "v" * 300), ("ü", "\x00")),
        expires_at_us=-(2**40),
    )
    assert decode_event(position_member(e.time_us, e.event_id), encode_event(e)) == e
    bare = event(0, "x")
    assert decode_event(position_member(0, "x"), encode_event(bare)) == bare


def test_reads_match_the_reference_in_both_orders_with_cursors(redis_url: str) -> None:
    rng = random.Random(11)

    async def body(b: RedisTimeSeries) -> None:
        stored: dict[tuple[int, str], StoredEvent] = {}
        # Many events on few distinct times, so that ids order events at one time.
        for _ in range(4):
            batch = {}
            for _ in range(60):
                e = event(
                    T0 + rng.randrange(-30, 30),
                    rng.choice(["a", "b", "c", "é", "a0", "zz"]) + str(rng.randrange(4)),
                    rng.randbytes(rng.randrange(0, 20)),
                    host=rng.choice(["h1", "h2"]),
                )
                batch[e.position] = e
            await b.write(NS, "cpu", list(batch.values()), write_us=0)
            stored.update(batch)
        # Another series is never seen.
        await b.write(NS, "other", [event(T0, "a", b"other")], write_us=0)

        edges = [T0 - 31, T0 - 30, T0 - 1, T0, T0 + 1, T0 + 29, T0 + 30]
        for start in edges:
            for end in edges:
                if start >= end:
                    continue
                for descending in (False, True):
                    for limit in (1, 3, 1000):
                        q = EventQuery(start, end, descending, limit)
                        assert await b.read(NS, "cpu", q) == expected(stored, q)
                    whole = expected(stored, EventQuery(start, end, descending, 10**6))
                    assert await read_pages(b, "cpu", EventQuery(start, end, descending, 7)) == whole
        # Cursors anywhere, also outside the range and between stored positions.
        positions = sorted(stored)
        cursors = [*rng.sample(positions, 20), (T0 - 100, "x"), (T0 + 100, ""), (T0, ""), (T0, "b1\x00")]
        for after in cursors:
            for descending in (False, True):
                q = EventQuery(T0 - 10, T0 + 10, descending, 5, after)
                assert await b.read(NS, "cpu", q) == expected(stored, q)
                full = EventQuery(T0 - 10, T0 + 10, descending, 10**6, after)
                assert await read_pages(b, "cpu", EventQuery(T0 - 10, T0 + 10, descending, 4, after)) == (
                    expected(stored, full)
                )
        assert await b.read(NS, "missing", EventQuery(T0 - 100, T0 + 100, False, 10)) == []
        assert await b.read(NS, "cpu", EventQuery(T0 - 100, T0 + 100, False, 0)) == []

    run_with(redis_url, body)


def test_boundaries_are_start_inclusive_end_exclusive_also_for_negative_times(redis_url: str) -> None:
    async def body(b: RedisTimeSeries) -> None:
        times = [-(2**62), -2, -1, 0, 1, 2, 2**62]
        await b.write(NS, "s", [event(t, "e") for t in times], write_us=0)
        got = await b.read(NS, "s", EventQuery(-1, 2, False, 100))
        assert [e.time_us for e in got] == [-1, 0, 1]
        got = await b.read(NS, "s", EventQuery(-1, 2, True, 100))
        assert [e.time_us for e in got] == [1, 0, -1]
        got = await b.read(NS, "s", EventQuery(-(2**62), 2**62 + 1, True, 2))
        assert [e.time_us for e in got] == [2**62, 2]

    run_with(redis_url, body)


def test_a_position_written_again_is_replaced_by_the_later_write(redis_url: str) -> None:
    async def body(b: RedisTimeSeries) -> None:
        await b.write(NS, "s", [event(T0, "dup", b"first", v="1"), event(T0, "other", b"x")], write_us=1)
        await b.write(NS, "s", [event(T0, "dup", b"second", w="2")], write_us=2)
        got = await b.read(NS, "s", EventQuery(T0, T0 + 1, False, 10))
        assert [(e.event_id, e.payload, e.tags) for e in got] == [
            ("dup", b"second", (("w", "2"),)),
            ("other", b"x", ()),
        ]
        # Concurrent writers of one position: exactly one event stays, one of theirs.
        payloads = [f"w{i}".encode() for i in range(20)]
        await asyncio.gather(*(b.write(NS, "s", [event(T0 + 5, "race", p)], write_us=3) for p in payloads))
        got = await b.read(NS, "s", EventQuery(T0 + 5, T0 + 6, False, 10))
        assert len(got) == 1
        assert got[0].payload in payloads

    run_with(redis_url, body)


def test_a_batch_is_seen_whole_by_concurrent_readers(redis_url: str) -> None:
    async def body(b: RedisTimeSeries) -> None:
        size = 50
        stop = asyncio.Event()
        seen: list[int] = []

        async def writer() -> None:
            for n in range(30):
                await b.write(NS, "s", [event(T0 + n, f"e{i:03}") for i in range(size)], write_us=n)
            stop.set()

        async def reader() -> None:
            while not stop.is_set():
                seen.append(len(await b.read(NS, "s", EventQuery(T0, T0 + 100, True, 100_000))))

        await asyncio.gather(writer(), reader(), reader())
        assert seen
        assert all(n % size == 0 for n in seen), sorted(set(seen))

    run_with(redis_url, body)


def test_purge_of_one_series_and_of_the_namespace(redis_url: str) -> None:
    async def body(b: RedisTimeSeries) -> None:
        client = b._server.client
        # More than one purge batch, so the loop over batches is exercised.
        old = [event(T0 - 10_000 + i, f"o{i}") for i in range(PURGE_BATCH + 10)]
        for i in range(0, len(old), 500):
            await b.write(NS, "a", old[i : i + 500], write_us=0)
        await b.write(NS, "a", [event(T0, "keep"), event(T0 - 1, "old-edge")], write_us=0)
        await b.write(NS, "b", [event(T0 - 5, "old")], write_us=0)
        await b.write(NS, "c", [event(T0 + 5, "new")], write_us=0)
        series_set = f"{b.settings.key_prefix}:{NS}:ts-series".encode()
        assert await client.smembers(series_set) == {b"a", b"b", b"c"}

        everything = EventQuery(-(2**62), 2**62, False, 100_000)
        await b.purge(NS, T0 - 1, series="a")
        assert [e.event_id for e in await b.read(NS, "a", everything)] == ["old-edge", "keep"]
        assert len(await b.read(NS, "b", everything)) == 1  # another series is untouched

        await b.purge(NS, T0)
        assert [e.event_id for e in await b.read(NS, "a", everything)] == ["keep"]
        assert await b.read(NS, "b", everything) == []
        assert [e.event_id for e in await b.read(NS, "c", everything)] == ["new"]
        # The emptied series left no keys and no name behind.
        assert await client.exists(*b.series_keys(NS, "b")) == 0
        assert await client.smembers(series_set) == {b"a", b"c"}
        zset, events = b.series_keys(NS, "a")
        assert await client.zcard(zset) == 1
        assert await client.hlen(events) == 1

        # A series written again after it was emptied is purged by the next sweep.
        await b.write(NS, "b", [event(T0 - 3, "again")], write_us=0)
        assert b"b" in await client.smembers(series_set)
        await b.purge(NS, T0)
        assert await b.read(NS, "b", everything) == []

    run_with(redis_url, body)


def test_a_write_between_emptying_and_forgetting_keeps_the_series_name(redis_url: str) -> None:
    # The worst interleaving, step by step: a purge empties the series, a write
    # recreates it (and adds the name, already there), then the purge drops the name.
    async def body(b: RedisTimeSeries) -> None:
        client = b._server.client
        series_set = f"{b.settings.key_prefix}:{NS}:ts-series".encode()
        await b.write(NS, "s", [event(T0 - 5, "old")], write_us=0)
        assert await b._purge_series(NS, "s", T0) is True
        await b.write(NS, "s", [event(T0 + 5, "new")], write_us=1)
        await b._forget(NS, "s")
        assert await client.smembers(series_set) == {b"s"}
        # And the name goes once the series is really empty.
        await b.purge(NS, T0 + 10)
        assert await client.smembers(series_set) == set()

    run_with(redis_url, body)


def test_purge_racing_writes_never_loses_a_series_name(redis_url: str) -> None:
    async def body(b: RedisTimeSeries) -> None:
        client = b._server.client
        series_set = f"{b.settings.key_prefix}:{NS}:ts-series".encode()
        names = [f"s{i}" for i in range(20)]
        for round_ in range(5):

            async def write(name: str, n: int = round_) -> None:
                await b.write(NS, name, [event(T0 + n, "e")], write_us=n)

            async def purge_old(name: str, n: int = round_) -> None:
                await b.purge(NS, T0 + n, series=name)

            await asyncio.gather(*(f(name) for name in names for f in (purge_old, write)))
            await b.purge(NS, T0 + round_)
            live = {n.encode() for n in names if await client.exists(b.series_keys(NS, n)[0])}
            assert live <= await client.smembers(series_set)

    run_with(redis_url, body)


def test_a_series_expires_as_a_whole_after_its_latest_event(redis_url: str) -> None:
    async def body(b: RedisTimeSeries) -> None:
        client = b._server.client
        zset, events = b.series_keys(NS, "s")
        late = StoredEvent(T0, "late", b"", (), expires_at_us=FAR)
        early = StoredEvent(T0, "early", b"", (), expires_at_us=FAR - DAY_US)
        await b.write(NS, "s", [late], write_us=0)
        await b.write(NS, "s", [early], write_us=0)  # does not pull the expiry in
        for key in (zset, events):
            assert await client.pexpiretime(key.decode()) == FAR // 1000 + 60_000

    run_with(redis_url, body, expiry_grace=timedelta(minutes=1))


def test_closed_backend_refuses_calls(redis_url: str) -> None:
    async def main() -> None:
        async with opened(redis_url) as b:
            pass
        with pytest.raises(BackendError, match="not started, or closed"):
            await b.read(NS, "s", EventQuery(0, 1, False, 1))

    asyncio.run(main())


def test_end_to_end_through_the_public_api(redis_url: str, redis_prefix: str) -> None:
    config = {
        "backends": {"r": {"plugin": "redis", "url": redis_url, "key_prefix": redis_prefix}},
        "namespaces": {"metrics": {"abstraction": "timeseries", "timeseries": {"retention": "1h"}}},
    }
    now = datetime.now(UTC).replace(microsecond=0)
    with prism.open(config) as db:
        ts = db.timeseries("metrics")
        events = [
            prism.Event(now - timedelta(seconds=i % 5), f"e{i:02}", f"p{i}".encode(), {"i": str(i)})
            for i in range(12)
        ]
        ts.write_events("cpu", events)
        # Later write of a position wins.
        ts.write_events("cpu", [prism.Event(now, "e00", b"again")])
        start, end = now - timedelta(minutes=1), now + timedelta(seconds=1)
        for order in ("asc", "desc"):
            got: list[prism.Event] = []
            token: str | None = None
            while True:
                page = ts.read_events("cpu", start, end, order=order, limit=5, page_token=token)
                got += page.events
                token = page.next_page_token
                if token is None:
                    break
            positions = [(e.event_time, e.event_id) for e in got]
            assert positions == sorted(positions, reverse=order == "desc")
            assert len(got) == 12
            by_id = {e.event_id: e for e in got}
            assert by_id["e00"].payload == b"again"
            assert by_id["e07"].payload == b"p7"
            assert by_id["e07"].tags == {"i": "7"}
        # End is exclusive.
        assert ts.read_events("cpu", now - timedelta(seconds=4), now).events == sorted(
            (e for e in events if now - timedelta(seconds=4) <= e.event_time < now),
            key=lambda e: (e.event_time, e.event_id),
        )
        with pytest.raises(InvalidArgument):
            ts.write_events("cpu", [prism.Event(now - timedelta(hours=2), "old")])
