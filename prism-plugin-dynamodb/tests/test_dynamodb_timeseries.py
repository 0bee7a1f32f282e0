"""The dynamodb TimeSeries backend through its SPI, against a real
DynamoDB-compatible server (moto's server): reads across bucket boundaries in
both orders with a cursor, exact range ends, replacement of a duplicate
position, the pinned bucket length, the bucket index and purge."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from prism.config import NamespaceConfig, TimeSeriesSettings
from prism.errors import InvalidArgument
from prism.spi import EventQuery, StoredEvent, TimeSeriesBackend
from prism_dynamodb.keyvalue import DynamoSettings
from prism_dynamodb.timeseries import TIMESERIES, DynamoTimeSeries, _decode_tags, _encode_tags, _position_key

_T = TypeVar("_T")

NS = "ts"
SECOND = 1_000_000
BUCKET = 10 * SECOND
#: An arbitrary base time (µs), in bucket 170_000_000 with 10 s buckets.
T0 = 1_700_000_000 * SECOND
RETENTION = 3600 * SECOND


def _settings(url: str, prefix: str | None = None) -> DynamoSettings:
    return DynamoSettings(
        endpoint_url=url,
        table_prefix=prefix or f"pts{uuid.uuid4().hex[:10]}_",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def _config(bucket: timedelta = timedelta(seconds=10), **extra: Any) -> NamespaceConfig:
    return NamespaceConfig(abstraction="timeseries", timeseries=TimeSeriesSettings(bucket=bucket, **extra))


def _run(url: str, body: Callable[[DynamoTimeSeries], Awaitable[_T]], prefix: str | None = None) -> _T:
    async def main() -> _T:
        backend = DynamoTimeSeries("ddb", _settings(url, prefix))
        await backend.start()
        try:
            await backend.provision(NS, _config())
            return await body(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def _event(
    time_us: int, event_id: str, payload: bytes = b"p", tags: tuple[tuple[str, str], ...] = ()
) -> StoredEvent:
    return StoredEvent(
        time_us=time_us, event_id=event_id, payload=payload, tags=tags, expires_at_us=time_us + RETENTION
    )


async def _read_all(
    ts: DynamoTimeSeries, series: str, start: int, end: int, *, descending: bool, page: int
) -> list[StoredEvent]:
    """Every event of the range, ``page`` at a time, resuming from the last
    position like the core's page tokens do."""
    out: list[StoredEvent] = []
    after: tuple[int, str] | None = None
    while True:
        got = await ts.read(NS, series, EventQuery(start, end, descending, page, after))
        assert len(got) <= page
        out.extend(got)
        if len(got) < page:
            return out
        after = got[-1].position


def test_the_backend_type_declares_no_native_retention() -> None:
    assert "timeseries.native_retention" not in TIMESERIES.capabilities
    traits = TIMESERIES.traits(DynamoSettings())
    assert traits.durability == "durable"
    assert 300 * 1024 < traits.max_event_bytes < 400 * 1024
    assert isinstance(DynamoTimeSeries("x", DynamoSettings()), TimeSeriesBackend)


def test_sort_keys_order_like_positions_and_tags_round_trip() -> None:
    positions = [
        (-5 * SECOND, "z"),
        (0, ""),
        (0, "a"),
        (0, "a\x00"),
        (0, "ab"),
        (0, "b"),
        (0, "\u00e9"),
        (0, "\U0001f600"),
        (1, "a"),
        (2**62, "a"),
    ]
    assert sorted(positions, key=lambda p: _position_key(*p)) == sorted(positions)
    tags = (("", ""), ("a", "b\x00c"), ("\u00e9", "x" * 300))
    assert _decode_tags(_encode_tags(tags)) == tags


# Events in four buckets, with an empty bucket between the second and the
# third; several events share a microsecond and differ by id only.
EVENTS = [
    _event(T0 + 1, "a"),
    _event(T0 + 1, "b"),
    _event(T0 + BUCKET - 1, "a"),
    _event(T0 + BUCKET, "a"),  # the first µs of the next bucket
    _event(T0 + BUCKET, "b"),
    _event(T0 + BUCKET + 5 * SECOND, "x", b"", (("k", "v"), ("z", ""))),
    _event(T0 + 3 * BUCKET, "m"),
    _event(T0 + 3 * BUCKET + 1, "a"),
    _event(T0 + 4 * BUCKET + 2, "c", b"\x00\xff" * 50),
]


def test_reads_walk_buckets_in_both_orders_with_a_cursor(dynamodb_url: str) -> None:
    async def body(ts: DynamoTimeSeries) -> None:
        # Written out of order, in two calls.
        await ts.write(NS, "s", EVENTS[::2], 1)
        await ts.write(NS, "s", EVENTS[1::2], 2)
        await ts.write(NS, "other", [_event(T0 + 2, "zz")], 3)  # another series: never seen
        start, end = T0, T0 + 5 * BUCKET
        for page in (1, 2, 3, 100):
            assert await _read_all(ts, "s", start, end, descending=False, page=page) == EVENTS
            assert await _read_all(ts, "s", start, end, descending=True, page=page) == EVENTS[::-1]
        # A cursor from the middle of a bucket, both ways.
        up = await ts.read(NS, "s", EventQuery(start, end, False, 3, after=(T0 + BUCKET, "a")))
        assert up == EVENTS[4:7]
        down = await ts.read(NS, "s", EventQuery(start, end, True, 3, after=(T0 + BUCKET, "b")))
        assert down == [EVENTS[3], EVENTS[2], EVENTS[1]]
        # A cursor on the last event of the range: nothing after it.
        assert await ts.read(NS, "s", EventQuery(start, end, False, 5, after=EVENTS[-1].position)) == []
        assert await ts.read(NS, "s", EventQuery(start, end, True, 5, after=EVENTS[0].position)) == []

    _run(dynamodb_url, body)


def test_range_ends_are_exact_on_event_times(dynamodb_url: str) -> None:
    async def body(ts: DynamoTimeSeries) -> None:
        await ts.write(NS, "s", EVENTS, 1)
        edge = T0 + BUCKET  # two events at exactly this time
        # End exclusive: events at `edge` are out; start inclusive: they are in.
        before = await ts.read(NS, "s", EventQuery(T0, edge, False, 100))
        assert before == EVENTS[:3]
        assert await ts.read(NS, "s", EventQuery(T0, edge, True, 100)) == EVENTS[:3][::-1]
        from_edge = await ts.read(NS, "s", EventQuery(edge, edge + 1, False, 100))
        assert from_edge == EVENTS[3:5]
        assert await ts.read(NS, "s", EventQuery(edge, edge + 1, True, 100)) == EVENTS[3:5][::-1]
        # One µs short of an event on either side selects nothing.
        assert await ts.read(NS, "s", EventQuery(T0 + 2, T0 + BUCKET - 1, False, 100)) == []
        assert await ts.read(NS, "s", EventQuery(T0 + 2, T0 + BUCKET - 1, True, 100)) == []
        # A range inside the empty bucket, and one beyond every event.
        assert await ts.read(NS, "s", EventQuery(T0 + 2 * BUCKET, T0 + 3 * BUCKET, False, 100)) == []
        assert await ts.read(NS, "s", EventQuery(T0 + 9 * BUCKET, T0 + 99 * BUCKET, True, 100)) == []
        # limit cuts in read order.
        assert await ts.read(NS, "s", EventQuery(T0, T0 + 5 * BUCKET, True, 2)) == EVENTS[::-1][:2]

    _run(dynamodb_url, body)


def test_a_duplicate_position_is_replaced_by_the_later_write(dynamodb_url: str) -> None:
    async def body(ts: DynamoTimeSeries) -> None:
        await ts.write(NS, "s", [_event(T0, "e", b"first", (("v", "1"),)), _event(T0, "f")], 1)
        await ts.write(NS, "s", [_event(T0, "e", b"second")], 2)
        got = await ts.read(NS, "s", EventQuery(T0, T0 + 1, False, 10))
        assert got == [_event(T0, "e", b"second"), _event(T0, "f")]
        await ts.write(NS, "s", [_event(T0, "e", b"")], 3)
        [first, _] = await ts.read(NS, "s", EventQuery(T0, T0 + 1, False, 10))
        assert first.payload == b""
        assert first.tags == ()

    _run(dynamodb_url, body)


def test_a_sparse_series_is_read_through_its_bucket_index(dynamodb_url: str) -> None:
    # Two events 10^6 buckets apart: walking every bucket would take a million
    # Queries; the index makes it one Query per non-empty bucket plus the index.
    async def body(ts: DynamoTimeSeries) -> None:
        far = T0 + 1_000_000 * BUCKET
        await ts.write(NS, "s", [_event(T0, "a"), _event(far, "b")], 1)
        calls: list[str] = []
        real_query = ts._client.query

        def counting_query(**params: Any) -> Any:
            calls.append(params["TableName"])
            return real_query(**params)

        ts._client.query = counting_query
        got = await ts.read(NS, "s", EventQuery(T0, far + 1, False, 10))
        assert [e.event_id for e in got] == ["a", "b"]
        got = await ts.read(NS, "s", EventQuery(T0, far + 1, True, 10))
        assert [e.event_id for e in got] == ["b", "a"]
        assert len(calls) == 6  # per read: the index, then the two buckets

    _run(dynamodb_url, body)


def test_a_changed_bucket_is_refused_once_events_exist(dynamodb_url: str) -> None:
    prefix = f"ptb{uuid.uuid4().hex[:10]}_"

    async def body(ts: DynamoTimeSeries) -> None:
        # Provisioned (10 s) but still empty: another length may take over.
        other = DynamoTimeSeries("ddb2", _settings(dynamodb_url, prefix))
        await other.start()
        try:
            await other.provision(NS, _config(timedelta(seconds=20)))
            await other.write(NS, "s", [_event(T0, "a")], 1)
        finally:
            await other.close()
        # Now events exist under 20 s: another length is refused, naming the setting.
        with pytest.raises(InvalidArgument) as caught:
            await ts.provision(NS, _config(timedelta(seconds=30)))
        assert caught.value.field == "timeseries.bucket"
        message = str(caught.value)
        assert "timeseries.bucket" in message
        assert "20s" in message
        assert repr(NS) in message
        # The stored length is still served.
        await ts.provision(NS, _config(timedelta(seconds=20)))
        assert await ts.read(NS, "s", EventQuery(T0, T0 + 1, False, 10)) == [_event(T0, "a")]

    _run(dynamodb_url, body, prefix)


def test_limits_that_do_not_fit_dynamodb_keys_are_refused_at_provision(dynamodb_url: str) -> None:
    async def body(ts: DynamoTimeSeries) -> None:
        with pytest.raises(InvalidArgument, match=r"timeseries\.max_event_id_bytes"):
            await ts.provision("big", _config(max_event_id_bytes=2000))
        with pytest.raises(InvalidArgument, match=r"timeseries\.max_series_name_bytes"):
            await ts.provision("big", _config(max_series_name_bytes=4000))

    _run(dynamodb_url, body)


def test_purge_deletes_old_events_per_series_and_namespace_wide(dynamodb_url: str) -> None:
    async def body(ts: DynamoTimeSeries) -> None:
        for series in ("s1", "s2"):
            await ts.write(NS, series, EVENTS, 1)
        cut = T0 + BUCKET + 1  # inside a bucket: that bucket is purged in part
        await ts.purge(NS, cut, "s1")
        everything = (T0 - BUCKET, T0 + 10 * BUCKET)
        left = await ts.read(NS, "s1", EventQuery(*everything, False, 100))
        assert left == [e for e in EVENTS if e.time_us >= cut]
        assert await ts.read(NS, "s2", EventQuery(*everything, False, 100)) == EVENTS
        # The whole namespace, at a bucket boundary.
        await ts.purge(NS, T0 + 3 * BUCKET)
        for series in ("s1", "s2"):
            left = await ts.read(NS, series, EventQuery(*everything, True, 100))
            assert left == [e for e in EVENTS[::-1] if e.time_us >= T0 + 3 * BUCKET]
        # Index items of wholly purged buckets are gone, the others stay.
        index = ts._index_table(NS)
        raw = ts._client.scan(TableName=index, ConsistentRead=True)["Items"]
        remaining = sorted((i["pk"]["S"], int(i["sk"]["N"])) for i in raw if i["pk"]["S"] != "meta")
        first = T0 // BUCKET
        assert remaining == [(f"s|{s}", first + b) for s in ("s1", "s2") for b in (3, 4)]
        # Purging everything leaves nothing.
        await ts.purge(NS, T0 + 100 * BUCKET)
        for series in ("s1", "s2"):
            assert await ts.read(NS, series, EventQuery(*everything, False, 100)) == []

    _run(dynamodb_url, body)


def test_writes_of_many_events_span_several_batches(dynamodb_url: str) -> None:
    # 60 events in 3 buckets: three BatchWriteItem calls of at most 25.
    async def body(ts: DynamoTimeSeries) -> None:
        events = [_event(T0 + i * SECOND // 2, f"e{i:02d}") for i in range(60)]
        await ts.write(NS, "s", events, 1)
        assert await _read_all(ts, "s", T0, T0 + 30 * SECOND, descending=False, page=7) == events
        assert await _read_all(ts, "s", T0, T0 + 30 * SECOND, descending=True, page=25) == events[::-1]

    _run(dynamodb_url, body)


def test_calls_before_provision_are_refused() -> None:
    async def main() -> None:
        ts = DynamoTimeSeries("ddb", DynamoSettings(endpoint_url="http://127.0.0.1:9"))
        with pytest.raises(Exception, match="not provisioned"):
            await ts.read(NS, "s", EventQuery(0, 1, False, 1))

    asyncio.run(main())


def test_end_to_end_through_prism_open(dynamodb_url: str) -> None:
    import prism

    config = {
        "backends": {"ddb": {"plugin": "dynamodb", **_backend_keys(dynamodb_url)}},
        "namespaces": {
            "clicks": {
                "abstraction": "timeseries",
                "backend": "ddb",
                "timeseries": {"bucket": "1m", "retention": "1h"},
            }
        },
    }
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        prism.Event(now - timedelta(minutes=m), f"e{m}", f"p{m}".encode(), {"m": str(m)}) for m in range(5)
    ]
    with prism.open(config) as db:
        ts = db.timeseries("clicks")
        ts.write_events("user-1", events)
        ts.write_events("user-1", [prism.Event(now, "e0", b"replaced")])
        page = ts.read_events("user-1", now - timedelta(minutes=10), now + timedelta(seconds=1), limit=3)
        assert [e.event_id for e in page.events] == ["e4", "e3", "e2"]
        assert page.next_page_token is not None
        rest = ts.read_events(
            "user-1",
            now - timedelta(minutes=10),
            now + timedelta(seconds=1),
            limit=3,
            page_token=page.next_page_token,
        )
        assert [e.event_id for e in rest.events] == ["e1", "e0"]
        assert rest.events[-1].payload == b"replaced"
        assert page.events[0].tags == {"m": "4"}
        down = ts.read_events("user-1", now - timedelta(minutes=10), now + timedelta(seconds=1), order="desc")
        assert [e.event_id for e in down.events] == ["e0", "e1", "e2", "e3", "e4"]
        # Past the retention: refused, naming the namespace.
        with pytest.raises(InvalidArgument, match="clicks"):
            ts.write_events("user-1", [prism.Event(now - timedelta(hours=2), "old")])


def _backend_keys(url: str) -> dict[str, str]:
    return {
        "endpoint_url": url,
        "table_prefix": f"pte{uuid.uuid4().hex[:10]}_",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
    }
