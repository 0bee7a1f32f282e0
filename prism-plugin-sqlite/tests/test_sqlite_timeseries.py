"""The sqlite TimeSeries backend at the SPI, on a real database file: reads in
both orders, range boundaries, cursors, replacement, purges, a randomized
comparison with an oracle built from :meth:`EventQuery.matches`, the query
plans (every read and purge is an index search, never a table scan or a sort),
what survives reopening the file, and an end-to-end check through
``prism.open``."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

import prism
from prism.config import NamespaceConfig
from prism.models import now_micros
from prism.plugins import load_plugins
from prism.spi import EventQuery, StoredEvent, TimeSeriesBackend
from prism_sqlite import SqliteSettings
from prism_sqlite.timeseries import (
    PURGE_NAMESPACE,
    PURGE_SERIES,
    TIMESERIES,
    SqliteTimeSeries,
    read_statement,
)

T = TypeVar("T")

TS_NS = NamespaceConfig(abstraction="timeseries")


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


def with_backend(path: Path, body: Callable[[SqliteTimeSeries], Awaitable[T]]) -> T:
    async def main() -> T:
        backend = SqliteTimeSeries("local", SqliteSettings(path=path))
        await backend.start()
        try:
            for namespace in ("ns", "other"):
                await backend.provision(namespace, TS_NS)
            return await body(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ts.db"


def test_registered_with_the_shared_settings_and_no_native_retention() -> None:
    registry = load_plugins(disabled=()).registry
    assert registry.timeseries["sqlite"] is TIMESERIES
    assert TIMESERIES.settings_type is registry.keyvalue["sqlite"].settings_type is SqliteSettings
    assert TIMESERIES.capabilities == frozenset()
    durable = TIMESERIES.traits(SqliteSettings(path=Path("x.db")))
    assert durable.durability == "durable"
    assert durable.max_event_bytes == SqliteSettings().max_message_bytes
    in_memory = TIMESERIES.traits(SqliteSettings(path=Path(":memory:")))
    assert in_memory.durability == "ephemeral"
    assert ":memory:" in in_memory.durability_note
    assert isinstance(SqliteTimeSeries("x", SqliteSettings()), TimeSeriesBackend)


def test_reads_in_both_orders_with_inclusive_start_and_exclusive_end(db_path: Path) -> None:
    async def body(ts: SqliteTimeSeries) -> None:
        events = [ev(30, "b"), ev(10, "a"), ev(30, "a"), ev(20, "z"), ev(40, "a"), ev(30, "ab")]
        await ts.write("ns", "s", events, now_micros())
        asc = await ts.read("ns", "s", EventQuery(10, 40, descending=False, limit=100))
        assert positions(asc) == [(10, "a"), (20, "z"), (30, "a"), (30, "ab"), (30, "b")]
        desc = await ts.read("ns", "s", EventQuery(10, 40, descending=True, limit=100))
        assert positions(desc) == list(reversed(positions(asc)))
        assert positions(await ts.read("ns", "s", EventQuery(30, 31, descending=False, limit=9))) == [
            (30, "a"),
            (30, "ab"),
            (30, "b"),
        ]
        assert await ts.read("ns", "s", EventQuery(31, 40, descending=True, limit=9)) == []
        assert positions(await ts.read("ns", "s", EventQuery(11, 30, descending=True, limit=9))) == [
            (20, "z")
        ]
        assert positions(await ts.read("ns", "s", EventQuery(0, 100, descending=True, limit=2))) == [
            (40, "a"),
            (30, "b"),
        ]
        assert await ts.read("ns", "other-series", EventQuery(0, 100, descending=False, limit=2)) == []
        assert await ts.read("other", "s", EventQuery(0, 100, descending=False, limit=2)) == []
        assert asc[0] == events[1]

    with_backend(db_path, body)


def test_payloads_tags_and_ids_round_trip_exactly(db_path: Path) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB with every byte value, NULs included
    events = [
        StoredEvent(1, "ü/é ✓", big, (("host", "h\x00st"), ("zone", "é\"'")), 99),
        StoredEvent(2, "", b"", (), 100),
        StoredEvent(-5, "neg", b"\x00", (("a", ""),), 7),
    ]

    async def body(ts: SqliteTimeSeries) -> None:
        await ts.write("ns", "s", events, now_micros())
        got = await ts.read("ns", "s", EventQuery(-10, 10, descending=False, limit=10))
        assert got == sorted(events, key=lambda e: e.position)

    with_backend(db_path, body)


@pytest.mark.parametrize("descending", [False, True])
def test_cursor_pages_join_up_to_the_whole_read(db_path: Path, descending: bool) -> None:
    async def body(ts: SqliteTimeSeries) -> None:
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
        beyond = (200, "") if not descending else (0, "")
        assert await ts.read("ns", "s", EventQuery(101, 109, descending, 10, after=beyond)) == []
        before = (0, "") if not descending else (200, "")
        assert await ts.read("ns", "s", EventQuery(101, 109, descending, 100, after=before)) == whole

    with_backend(db_path, body)


def test_writing_a_stored_position_replaces_it_and_survives_reopening(db_path: Path) -> None:
    async def first(ts: SqliteTimeSeries) -> None:
        await ts.write("ns", "s", [ev(5, "x", b"first", k="1"), ev(6, "y", b"keep")], now_micros())
        await ts.write("ns", "s", [ev(5, "x", b"second", k="2")], now_micros())

    async def second(ts: SqliteTimeSeries) -> list[StoredEvent]:
        return await ts.read("ns", "s", EventQuery(0, 10, descending=False, limit=10))

    with_backend(db_path, first)
    got = with_backend(db_path, second)
    assert [(e.position, e.payload, e.tags) for e in got] == [
        ((5, "x"), b"second", (("k", "2"),)),
        ((6, "y"), b"keep", ()),
    ]
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT count(*) FROM ts_events").fetchone() == (2,)


def test_purge_one_series_or_the_whole_namespace(db_path: Path) -> None:
    async def body(ts: SqliteTimeSeries) -> None:
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

    with_backend(db_path, body)


def oracle(stored: dict[tuple[int, str], StoredEvent], query: EventQuery) -> list[StoredEvent]:
    chosen = sorted((p for p in stored if query.matches(p)), reverse=query.descending)
    return [stored[p] for p in chosen[: query.limit]]


def test_random_writes_and_reads_agree_with_the_reference_semantics(db_path: Path) -> None:
    async def body(ts: SqliteTimeSeries) -> None:
        rng = random.Random(11)
        stored: dict[tuple[int, str], StoredEvent] = {}
        # Ids that differ in code point vs. UTF-16 order and with embedded NUL.
        ids = ["a", "b", "é", "ab", "Z", "a\x00", "\U0001f600", "\uffff"]
        for round_ in range(40):
            batch = {}
            for _ in range(rng.randint(1, 15)):
                e = ev(rng.randint(0, 50), rng.choice(ids), f"r{round_}".encode(), t=str(round_))
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
                    after = (rng.randint(0, 52), rng.choice(["", "a", "b", "zz", "\U0001f600"]))
                query = EventQuery(start, end, descending, rng.randint(1, 20), after)
                assert await ts.read("ns", "s", query) == oracle(stored, query), query

    with_backend(db_path, body)


def test_reads_and_purges_are_index_searches(db_path: Path) -> None:
    async def body(ts: SqliteTimeSeries) -> None:
        await ts.write("ns", "s", [ev(t, "e") for t in range(50)], now_micros())

    with_backend(db_path, body)
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("ANALYZE")
        queries = {
            "asc": (EventQuery(0, 10, False, 5), "time_us>? AND time_us<?"),
            "asc after": (EventQuery(0, 10, False, 5, (5, "e")), "(time_us,event_id)>(?,?) AND time_us<?"),
            "asc after, before start": (EventQuery(6, 10, False, 5, (5, "e")), "time_us>? AND time_us<?"),
            "desc": (EventQuery(0, 10, True, 5), "time_us>? AND time_us<?"),
            "desc after": (EventQuery(0, 10, True, 5, (5, "e")), "time_us>? AND (time_us,event_id)<(?,?)"),
            "desc after, past end": (EventQuery(0, 5, True, 5, (5, "e")), "time_us>? AND time_us<?"),
        }
        for name, (query, bounds) in queries.items():
            sql, params = read_statement(query)
            plan = " / ".join(
                str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", ("ns", "s", *params))
            )
            # The cursor bounds the index range itself, so a page starts where
            # the last one ended instead of rereading the range before it.
            expected = f"SEARCH ts_events USING INDEX sqlite_autoindex_ts_events_1 (namespace=? AND series=? AND {bounds})"
            assert plan == expected, name
        for sql, params in ((PURGE_SERIES, ("ns", "s", 5)), (PURGE_NAMESPACE, ("ns", 5))):
            plan = " / ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "SEARCH ts_events USING" in plan, plan
        plan = str(conn.execute(f"EXPLAIN QUERY PLAN {PURGE_NAMESPACE}", ("ns", 5)).fetchall())
        assert "ts_events_by_time" in plan, plan


def test_end_to_end_through_prism_open(db_path: Path) -> None:
    config: dict[str, Any] = {
        "backends": {"local": {"plugin": "sqlite", "path": str(db_path)}},
        "namespaces": {"metrics": {"abstraction": "timeseries", "timeseries": {"retention": "1h"}}},
    }
    now = datetime.now(UTC)
    start, end = now - timedelta(minutes=1), now + timedelta(seconds=1)
    with prism.open(config) as db:
        ts = db.timeseries("metrics")
        ts.write_events(
            "cpu", [prism.Event(now - timedelta(seconds=s), f"e{s}", b"p", {"h": "a"}) for s in range(5)]
        )
        ts.write_events("cpu", [prism.Event(now - timedelta(seconds=2), "e2", b"new", {})])
        page = ts.read_events("cpu", start, end, order="desc", limit=3)
        assert [(e.event_id, e.payload) for e in page.events] == [("e0", b"p"), ("e1", b"p"), ("e2", b"new")]
        assert page.next_page_token is not None
        rest = ts.read_events("cpu", start, end, order="desc", page_token=page.next_page_token)
        assert [e.event_id for e in rest.events] == ["e3", "e4"]
        assert [e.event_id for e in ts.read_events("cpu", start, end).events] == [
            "e4",
            "e3",
            "e2",
            "e1",
            "e0",
        ]
        # An event past retention is refused, not stored.
        with pytest.raises(prism.InvalidArgument):
            ts.write_events("cpu", [prism.Event(now - timedelta(hours=2), "old")])
    with prism.open(config) as db:
        assert len(db.timeseries("metrics").read_events("cpu", start, end).events) == 5
