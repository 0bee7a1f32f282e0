"""The cassandra TimeSeries backend through its SPI, on a real node: bucket
walks in both orders with cursors, bucket boundaries, later-write-wins, the
fixed bucket length, TTLs and the bucket index."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from cassandra_support import settings_for

from prism.config import NamespaceConfig, TimeSeriesSettings
from prism.errors import InvalidArgument
from prism.spi import EventQuery, StoredEvent
from prism_cassandra.keyvalue import MAX_TTL_SECONDS, now_micros
from prism_cassandra.timeseries import (
    EVENTS_TABLE,
    CassandraTimeSeries,
    bucket_span,
    decode_body,
    encode_body,
    event_clause,
)

SECOND = 1_000_000
BUCKET = timedelta(seconds=10)
BUCKET_US = 10 * SECOND
RETENTION = timedelta(days=30)


def ns_config(bucket: timedelta = BUCKET, retention: timedelta = RETENTION) -> NamespaceConfig:
    return NamespaceConfig(
        abstraction="timeseries", timeseries=TimeSeriesSettings(bucket=bucket, retention=retention)
    )


def unique_ns(label: str) -> str:
    return f"ts_{label}_{os.urandom(4).hex()}"


def event(
    time_us: int, event_id: str, payload: bytes = b"", tags: dict[str, str] | None = None
) -> StoredEvent:
    return StoredEvent(
        time_us=time_us,
        event_id=event_id,
        payload=payload,
        tags=tuple(sorted((tags or {}).items())),
        expires_at_us=time_us + int(RETENTION.total_seconds()) * SECOND,
    )


def run(contact: str, keyspace: str, body: Callable[[CassandraTimeSeries], Awaitable[None]]) -> None:
    async def main() -> None:
        backend = CassandraTimeSeries("test", settings_for(contact, keyspace))
        await backend.start()
        try:
            await body(backend)
        finally:
            await backend.close()

    asyncio.run(main())


async def read_all(
    backend: CassandraTimeSeries, ns: str, series: str, start: int, end: int, *, descending: bool, page: int
) -> list[StoredEvent]:
    """Every event of the range, page by page with the cursor, as the core does."""
    out: list[StoredEvent] = []
    after: tuple[int, str] | None = None
    for _ in range(1000):
        got = await backend.read(ns, series, EventQuery(start, end, descending, page, after))
        assert len(got) <= page
        out.extend(got)
        if len(got) < page:
            return out
        after = got[-1].position
    raise AssertionError("the read never ended")


# -- pure Python ---------------------------------------------------------------------------


def test_body_round_trips() -> None:
    e = event(123, "id", bytes(range(256)), {"a": "1", "é": "ü", "": ""})
    assert decode_body(123, "id", encode_body(e)) == e
    assert decode_body(5, "x", encode_body(event(5, "x"))) == event(5, "x")


def test_bucket_span_follows_cursor_and_order() -> None:
    q = EventQuery(start_us=15, end_us=45, descending=False, limit=10)
    assert bucket_span(q, 10) == (1, 4)
    assert bucket_span(EventQuery(15, 45, False, 10, after=(31, "a")), 10) == (3, 4)
    assert bucket_span(EventQuery(15, 45, True, 10, after=(22, "a")), 10) == (1, 2)
    # end is exclusive: an end on a bucket's first microsecond leaves that bucket out
    assert bucket_span(EventQuery(15, 40, False, 10), 10) == (1, 3)
    assert bucket_span(EventQuery(15, 45, False, 10, after=(50, "a")), 10) is None
    # before the epoch, floor division keeps buckets contiguous
    assert bucket_span(EventQuery(-15, 5, False, 10), 10) == (-2, 0)


def test_event_clause_picks_the_tighter_bound() -> None:
    assert event_clause(EventQuery(10, 20, False, 5)) == (
        " AND (time_us) >= (?) AND (time_us) < (?)",
        [10, 20],
    )
    assert event_clause(EventQuery(10, 20, False, 5, after=(5, "z")))[1] == [10, 20]  # type: ignore[index]
    assert event_clause(EventQuery(10, 20, False, 5, after=(12, "z")))[1] == [12, "z", 20]  # type: ignore[index]
    assert event_clause(EventQuery(10, 20, True, 5, after=(12, "z")))[1] == [10, 12, "z"]  # type: ignore[index]
    assert event_clause(EventQuery(10, 20, True, 5, after=(25, "z")))[1] == [10, 20]  # type: ignore[index]
    assert event_clause(EventQuery(10, 20, False, 5, after=(20, "a"))) is None
    assert event_clause(EventQuery(10, 20, True, 5, after=(9, "a"))) is None


# -- on the node ---------------------------------------------------------------------------


def test_reads_walk_buckets_in_both_orders_with_cursor(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("walk")
    base = (now_micros() // BUCKET_US - 50) * BUCKET_US
    # Five buckets with events (three of them on the bucket's first or last
    # microsecond), two empty buckets between, several ids at one time.
    times = [
        base,
        base + 1,
        base + BUCKET_US - 1,
        base + BUCKET_US,
        base + BUCKET_US + 5,
        base + 4 * BUCKET_US + 7,
        base + 5 * BUCKET_US - 1,
        base + 5 * BUCKET_US,
        base + 9 * BUCKET_US + 3,
    ]
    events = [event(t, i, f"{t}/{i}".encode(), {"n": i}) for t in times for i in ("a", "b")]
    expected = sorted(events, key=lambda e: e.position)

    async def body(backend: CassandraTimeSeries) -> None:
        await backend.provision(ns, ns_config())
        await backend.write(ns, "s", events[::-1], now_micros())
        await backend.write(ns, "other", [event(base + 2, "x")], now_micros())
        start, end = base, base + 10 * BUCKET_US
        for page in (1, 2, 3, 7, 100):
            assert await read_all(backend, ns, "s", start, end, descending=False, page=page) == expected
            assert await read_all(backend, ns, "s", start, end, descending=True, page=page) == expected[::-1]
        # Boundaries on event times: start inclusive, end exclusive.
        cut_lo, cut_hi = base + BUCKET_US, base + 5 * BUCKET_US
        inside = [e for e in expected if cut_lo <= e.time_us < cut_hi]
        assert inside[0].time_us == cut_lo
        got = await read_all(backend, ns, "s", cut_lo, cut_hi, descending=False, page=2)
        assert got == inside
        got = await read_all(backend, ns, "s", cut_lo, cut_hi, descending=True, page=2)
        assert got == inside[::-1]
        # A cursor between two ids at one time resumes on the second.
        first = await backend.read(ns, "s", EventQuery(start, end, False, 1, after=(base + 1, "a")))
        assert [e.position for e in first] == [(base + 1, "b")]
        last = await backend.read(ns, "s", EventQuery(start, end, True, 1, after=(base + 1, "b")))
        assert [e.position for e in last] == [(base + 1, "a")]
        # Nothing outside the written buckets; another series is separate.
        assert await backend.read(ns, "s", EventQuery(end, end + 100 * BUCKET_US, False, 10)) == []
        assert [e.event_id for e in await backend.read(ns, "other", EventQuery(start, end, False, 10))] == [
            "x"
        ]

    run(cassandra_contact, module_keyspace, body)


def test_a_sparse_series_reads_only_indexed_buckets(cassandra_contact: str, module_keyspace: str) -> None:
    """Events a thousand buckets apart, and more non-empty buckets than one
    index page: the read must find them all, in order, through the index."""
    ns = unique_ns("sparse")
    base = (now_micros() // BUCKET_US - 12_000) * BUCKET_US
    events = [event(base + k * 1000 * BUCKET_US // 10, f"e{k}") for k in range(0, 100)]

    async def body(backend: CassandraTimeSeries) -> None:
        await backend.provision(ns, ns_config())
        await backend.write(ns, "s", events, now_micros())
        start, end = base, base + 200 * 100 * BUCKET_US
        assert await read_all(backend, ns, "s", start, end, descending=False, page=30) == events
        assert await read_all(backend, ns, "s", start, end, descending=True, page=1000) == events[::-1]
        rows = await backend._run(
            f'SELECT bucket FROM "{module_keyspace}".prism_ts_buckets WHERE namespace = ? AND series = ?',
            (ns, "s"),
            "test",
        )
        assert sorted(int(b) for (b,) in rows) == sorted({e.time_us // BUCKET_US for e in events})

    run(cassandra_contact, module_keyspace, body)


def test_a_duplicate_position_is_replaced_by_the_later_write(
    cassandra_contact: str, module_keyspace: str
) -> None:
    ns = unique_ns("dup")
    t = (now_micros() // BUCKET_US - 3) * BUCKET_US + 17

    async def body(backend: CassandraTimeSeries) -> None:
        await backend.provision(ns, ns_config())
        w = now_micros()
        await backend.write(ns, "s", [event(t, "e", b"first", {"v": "1", "only-first": "x"})], w)
        await backend.write(ns, "s", [event(t, "e", b"second", {"v": "2"})], w + 1)
        # An earlier write_us arriving late loses, whatever order it lands in.
        await backend.write(ns, "s", [event(t, "e", b"stale", {"v": "0"})], w - 1)
        got = await backend.read(ns, "s", EventQuery(t - 1, t + 1, False, 10))
        assert got == [event(t, "e", b"second", {"v": "2"})]

    run(cassandra_contact, module_keyspace, body)


def test_a_changed_bucket_is_refused(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("bucket")

    async def body(backend: CassandraTimeSeries) -> None:
        await backend.provision(ns, ns_config(bucket=timedelta(hours=1)))
        await backend.provision(ns, ns_config(bucket=timedelta(hours=1)))
        # Another process (a fresh backend) with another bucket is refused too.
        other = CassandraTimeSeries("other", settings_for(cassandra_contact, module_keyspace))
        await other.start()
        try:
            with pytest.raises(InvalidArgument) as refused:
                await other.provision(ns, ns_config(bucket=timedelta(hours=2)))
        finally:
            await other.close()
        message = str(refused.value)
        assert "timeseries.bucket" in message
        assert ns in message
        assert "fixed once events exist" in message
        assert "1:00:00" in message
        with pytest.raises(InvalidArgument, match=r"timeseries\.bucket"):
            await backend.provision(ns, ns_config(bucket=timedelta(minutes=30)))

    run(cassandra_contact, module_keyspace, body)


def test_events_carry_a_ttl_until_they_expire(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("ttl")
    now = now_micros()
    t = now - 30 * SECOND
    retention_s = 3600
    e = StoredEvent(t, "e", b"p", (), expires_at_us=t + retention_s * SECOND)
    expired = StoredEvent(t - 10 * SECOND, "old", b"p", (), expires_at_us=now - SECOND)

    async def body(backend: CassandraTimeSeries) -> None:
        await backend.provision(ns, ns_config(retention=timedelta(seconds=retention_s)))
        await backend.write(ns, "s", [e, expired], now_micros())
        rows = await backend._run(
            f'SELECT event_id, TTL(body) FROM "{module_keyspace}".{EVENTS_TABLE}'
            " WHERE namespace = ? AND series = ? AND bucket = ?",
            (ns, "s", t // BUCKET_US),
            "test",
        )
        ttls = dict(rows)
        # The already-expired event never reached the table.
        assert set(ttls) == {"e"}
        expected = retention_s - 30
        assert expected - 5 <= ttls["e"] <= expected + 2

    run(cassandra_contact, module_keyspace, body)


def test_a_ttl_above_cassandras_maximum_is_refused(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("maxttl")
    t = now_micros()
    far = StoredEvent(t, "e", b"", (), expires_at_us=t + (MAX_TTL_SECONDS + 10) * SECOND)

    async def body(backend: CassandraTimeSeries) -> None:
        await backend.provision(ns, ns_config())
        with pytest.raises(InvalidArgument, match=r"timeseries\.retention|20 years") as refused:
            await backend.write(ns, "s", [far], now_micros())
        assert ns in str(refused.value)

    run(cassandra_contact, module_keyspace, body)


def test_many_events_of_one_bucket_in_one_write(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("many")
    t0 = (now_micros() // BUCKET_US - 2) * BUCKET_US
    events = [event(t0 + i, f"{i:04d}", os.urandom(2000)) for i in range(1000)]

    async def body(backend: CassandraTimeSeries) -> None:
        await backend.provision(ns, ns_config())
        await backend.write(ns, "s", events, now_micros())
        got = await backend.read(ns, "s", EventQuery(t0, t0 + BUCKET_US, False, 1000))
        assert got == events

    run(cassandra_contact, module_keyspace, body)


# -- end to end, through the public API ----------------------------------------------------


def test_end_to_end_through_prism_open(cassandra_contact: str, module_keyspace: str) -> None:
    from cassandra_support import split_contact

    import prism

    host, port = split_contact(cassandra_contact)
    ns = unique_ns("e2e")
    config = {
        "backends": {
            "cass": {
                "plugin": "cassandra",
                "contact_points": [host],
                "port": port,
                "replication_factor": 1,
                "keyspace": module_keyspace,
            }
        },
        "namespaces": {
            ns: {
                "abstraction": "timeseries",
                "backend": "cass",
                "timeseries": {"bucket": "10s", "retention": "1d"},
            }
        },
    }
    now = datetime.now(UTC)
    times = [now - timedelta(seconds=s) for s in (95, 61, 60, 30, 29, 5)]
    with prism.open(config) as db:
        ts = db.timeseries(ns)
        ts.write_events(
            "s", [prism.Event(t, f"e{i}", f"p{i}".encode(), {"i": str(i)}) for i, t in enumerate(times)]
        )
        ts.write_events("s", [prism.Event(times[2], "e2", b"replaced")])
        start, end = now - timedelta(seconds=100), now
        got: list[prism.Event] = []
        token: str | None = None
        while True:
            page = ts.read_events("s", start, end, order="desc", limit=2, page_token=token)
            got.extend(page.events)
            token = page.next_page_token
            if token is None:
                break
        assert [e.event_id for e in got] == ["e5", "e4", "e3", "e2", "e1", "e0"]
        assert [e.payload for e in got if e.event_id == "e2"] == [b"replaced"]
        asc = ts.read_events("s", times[2], times[4], order="asc")
        assert [e.event_id for e in asc.events] == ["e2", "e3"]
        with pytest.raises(prism.errors.InvalidArgument):
            ts.write_events("s", [prism.Event(now - timedelta(days=2), "old")])
