"""The ``cassandra`` TimeSeries backend: time-bucketed partitions with native TTL.

Data model
----------
Three tables in the backend's keyspace, shared by every TimeSeries namespace
(the namespace is part of each key)::

    prism_ts_meta    (namespace PRIMARY KEY, bucket_us)
    prism_ts_buckets ((namespace, series), bucket)          -- the bucket index
    prism_ts_events  ((namespace, series, bucket), time_us, event_id) -> body

* ``bucket = time_us // bucket_us``, with ``bucket_us`` the namespace's
  ``timeseries.bucket``. A partition holds one bucket of one series, so a hot
  series never grows an unbounded partition; its size is bounded by the write
  rate times the bucket length.
* ``bucket_us`` is stored in ``prism_ts_meta`` at the namespace's first
  provision (``INSERT ... IF NOT EXISTS``); a later provision with another
  bucket is refused, because events already written sit in partitions of the
  old length and would no longer be found.
* The bucket index lists, per series, the buckets that hold events. A read asks
  it for the non-empty buckets in its range, in the read's order, and reads
  those partitions one after another with ``LIMIT`` = what is still missing, so
  a sparse series costs one read per non-empty bucket, not one per bucket.
* The event itself is one cell, ``body`` (expiry, tags, payload): Cassandra
  resolves two writes at the same ``USING TIMESTAMP`` cell by cell, by value, so
  one cell means two writes of one position can never mix their parts.

Writes use ``USING TTL`` (retention is native: ``timeseries.native_retention``)
and ``USING TIMESTAMP`` = the core's ``write_us``, so the later write of a
position wins on every replica with no read. ``purge`` does nothing: TTLs
delete the events, and index entries carry a TTL that outlives their bucket's
last event.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.query import BatchStatement, BatchType

from prism import capabilities
from prism.config import NamespaceConfig
from prism.errors import BackendError, InvalidArgument
from prism.spi import EventQuery, StoredEvent, TimeSeriesBackendType, TimeSeriesTraits
from prism_cassandra.keyvalue import (
    _NAMESPACE,
    MAX_TTL_SECONDS,
    CassandraKeyValue,
    CassandraSettings,
    now_micros,
)

META_TABLE = "prism_ts_meta"
BUCKETS_TABLE = "prism_ts_buckets"
EVENTS_TABLE = "prism_ts_events"

#: Bucket-index rows fetched per step of a read.
_INDEX_PAGE = 64

#: Events of one partition are written in batches of about this many bytes (a
#: Cassandra mutation must stay below half a commit-log segment, 16 MiB by default).
_BATCH_BYTES = 4 * 1024 * 1024

#: (namespace, series, bucket) this process has put into the bucket index.
_INDEX_CACHE = 10_000

# expires_at_us, number of tags
_BODY = struct.Struct(">qI")
_LEN = struct.Struct(">I")


def micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_body(event: StoredEvent) -> bytes:
    """Expiry, tags and payload in one cell (see the module docstring for why one)."""
    parts = [_BODY.pack(event.expires_at_us, len(event.tags))]
    for name, value in event.tags:
        for text in (name, value):
            raw = text.encode("utf-8")
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
    parts.append(bytes(event.payload))
    return b"".join(parts)


def decode_body(time_us: int, event_id: str, body: bytes) -> StoredEvent:
    expires_at_us, count = _BODY.unpack_from(body, 0)
    at = _BODY.size
    tags: list[tuple[str, str]] = []
    for _ in range(count):
        texts: list[str] = []
        for _ in range(2):
            (length,) = _LEN.unpack_from(body, at)
            at += _LEN.size
            texts.append(body[at : at + length].decode("utf-8"))
            at += length
        tags.append((texts[0], texts[1]))
    return StoredEvent(
        time_us=time_us,
        event_id=event_id,
        payload=bytes(body[at:]),
        tags=tuple(tags),
        expires_at_us=expires_at_us,
    )


def ttl_until(expires_at_us: int, now_us: int) -> int:
    """Whole seconds from ``now_us`` until ``expires_at_us``, rounded up plus one
    (Cassandra counts TTLs in seconds on its own clock; the core filters by
    ``expires_at_us`` exactly, so lingering a second is harmless, vanishing
    early is not). 0 or less when already expired."""
    if expires_at_us <= now_us:
        return 0
    return math.ceil((expires_at_us - now_us) / 1_000_000) + 1


def event_clause(query: EventQuery) -> tuple[str, list[object]] | None:
    """The clustering restrictions of ``query`` within one partition, and their
    values; None when nothing can match. Only multi-column relations are used:
    Cassandra refuses mixing them with single-column ones on clustering columns."""
    start, end, after = query.start_us, query.end_us, query.after
    if not query.descending:
        if after is not None and after[0] >= end:
            return None
        if after is not None and after[0] >= start:
            return " AND (time_us, event_id) > (?, ?) AND (time_us) < (?)", [after[0], after[1], end]
        return " AND (time_us) >= (?) AND (time_us) < (?)", [start, end]
    if after is not None and after[0] < start:
        return None
    if after is not None and after[0] < end:
        return " AND (time_us) >= (?) AND (time_us, event_id) < (?, ?)", [start, after[0], after[1]]
    return " AND (time_us) >= (?) AND (time_us) < (?)", [start, end]


def bucket_span(query: EventQuery, bucket_us: int) -> tuple[int, int] | None:
    """The first and last bucket (inclusive, ascending) a read may touch."""
    lo, hi = query.start_us, query.end_us - 1
    if query.after is not None:
        if query.descending:
            hi = min(hi, query.after[0])
        else:
            lo = max(lo, query.after[0])
    if lo > hi:
        return None
    return lo // bucket_us, hi // bucket_us


def _executing(session: Any, cql: str) -> Callable[[], Any]:
    return lambda: session.execute(cql)


class CassandraStore:
    """Connection plumbing shared by the TimeSeries and Counter backends: it
    reuses the KeyValue backend's session handling (asyncio bridge, errors)."""

    def __init__(self, name: str, settings: CassandraSettings) -> None:
        self.name = name
        self.settings = settings
        self._conn = CassandraKeyValue(name, settings)
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()

    async def start(self) -> None:
        await self._conn.start()

    async def close(self) -> None:
        self._schema_ready = False
        await self._conn.close()

    def _table(self, table: str) -> str:
        return f'"{self.settings.keyspace}"."{table}"'

    def _check_namespace(self, namespace: str) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise BackendError(
                f"cassandra backend {self.name!r}: {namespace!r} is not a valid namespace name"
            )

    def _schema(self) -> list[str]:
        """The CREATE TABLE statements of the subclass's tables."""
        raise NotImplementedError

    async def _ensure_schema(self) -> None:
        """Create the keyspace (with the configured replication) and the tables,
        once per process. Schema changes block, so they run off the loop."""
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:
                return
            await self._conn.ensure_keyspace()
            session = self._conn._live_session()
            for cql in self._schema():
                await self._conn._blocking(_executing(session, cql), "creating a table")
            self._schema_ready = True

    async def _run(self, cql: str, params: Sequence[object], doing: str) -> list[Any]:
        return await self._conn._run(cql, params, doing)

    async def _bind(self, cql: str, params: Sequence[object]) -> Any:
        return (await self._conn._prepare(cql)).bind(params)

    async def _execute(self, statement: Any, doing: str) -> list[Any]:
        return await self._conn._execute(statement, None, doing)


class CassandraTimeSeries(CassandraStore):
    """The TimeSeries SPI on one Cassandra cluster."""

    def __init__(self, name: str, settings: CassandraSettings) -> None:
        super().__init__(name, settings)
        self._bucket_us: dict[str, int] = {}
        self._indexed: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        meta, buckets, events = (self._table(t) for t in (META_TABLE, BUCKETS_TABLE, EVENTS_TABLE))
        self._meta_claim = f"INSERT INTO {meta} (namespace, bucket_us) VALUES (?, ?) IF NOT EXISTS"
        self._meta_read = f"SELECT bucket_us FROM {meta} WHERE namespace = ?"
        self._index_add = f"INSERT INTO {buckets} (namespace, series, bucket) VALUES (?, ?, ?) USING TTL ?"
        self._index_scan = {
            desc: f"SELECT bucket FROM {buckets} WHERE namespace = ? AND series = ?"
            f" AND bucket >= ? AND bucket <= ? ORDER BY bucket {'DESC' if desc else 'ASC'} LIMIT ?"
            for desc in (False, True)
        }
        self._insert = (
            f"INSERT INTO {events} (namespace, series, bucket, time_us, event_id, body)"
            " VALUES (?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
        )
        self._events = events

    def _schema(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self._table(META_TABLE)} (namespace text PRIMARY KEY, bucket_us bigint)",
            f"CREATE TABLE IF NOT EXISTS {self._table(BUCKETS_TABLE)} ("
            " namespace text, series text, bucket bigint,"
            " PRIMARY KEY ((namespace, series), bucket)"
            ") WITH CLUSTERING ORDER BY (bucket ASC)",
            f"CREATE TABLE IF NOT EXISTS {self._table(EVENTS_TABLE)} ("
            " namespace text, series text, bucket bigint, time_us bigint, event_id text, body blob,"
            " PRIMARY KEY ((namespace, series, bucket), time_us, event_id)"
            ") WITH CLUSTERING ORDER BY (time_us ASC, event_id ASC)",
        ]

    def _select(self, clause: str, descending: bool) -> str:
        order = "DESC" if descending else "ASC"
        return (
            f"SELECT time_us, event_id, body FROM {self._events}"
            f" WHERE namespace = ? AND series = ? AND bucket = ?{clause}"
            f" ORDER BY time_us {order}, event_id {order} LIMIT ?"
        )

    # -- the SPI -------------------------------------------------------------------------

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        self._check_namespace(namespace)
        wanted = micros(config.timeseries.bucket)
        if self._bucket_us.get(namespace) == wanted:
            return
        await self._ensure_schema()
        # A lightweight transaction: of two processes provisioning the namespace
        # at once, one bucket length is stored and both then read it.
        await self._run(self._meta_claim, (namespace, wanted), "recording the bucket length")
        read = await self._bind(self._meta_read, (namespace,))
        read.consistency_level = ConsistencyLevel.LOCAL_SERIAL
        rows = await self._execute(read, "reading the bucket length")
        if not rows:
            raise BackendError(
                f"cassandra backend {self.name!r}: namespace {namespace!r} has no bucket length "
                "after recording one; retry"
            )
        stored = int(rows[0][0])
        if stored != wanted:
            raise InvalidArgument(
                f"timeseries.bucket is {config.timeseries.bucket}, but this namespace's events are stored "
                f"in buckets of {timedelta(microseconds=stored)} on cassandra backend {self.name!r}; "
                "the bucket is fixed once events exist: set timeseries.bucket back to "
                f"{timedelta(microseconds=stored)}, or move the events to a new namespace",
                namespace=namespace,
                field="timeseries.bucket",
            )
        # Prepared up front, so that no data call pays a prepare round trip.
        await asyncio.gather(
            *(self._conn._prepare(cql) for cql in (self._insert, self._index_add, *self._index_scan.values()))
        )
        self._bucket_us[namespace] = stored

    def _bucket_of(self, namespace: str) -> int:
        bucket_us = self._bucket_us.get(namespace)
        if bucket_us is None:
            raise BackendError(f"cassandra backend {self.name!r}: namespace {namespace!r} is not provisioned")
        return bucket_us

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        bucket_us = self._bucket_of(namespace)
        now_us = now_micros()
        by_bucket: dict[int, list[tuple[StoredEvent, int]]] = {}
        for event in events:
            ttl = ttl_until(event.expires_at_us, now_us)
            if ttl <= 0:
                # Already past retention: the core refuses these; were one to
                # come through, it would be invisible anyway.
                continue
            if ttl > MAX_TTL_SECONDS:
                raise InvalidArgument(
                    f"series {series!r}: an event at {event.time_us}us would need a TTL of {ttl}s, above "
                    f"Cassandra's longest ({MAX_TTL_SECONDS}s, 20 years); lower timeseries.retention",
                    namespace=namespace,
                    field="timeseries.retention",
                )
            by_bucket.setdefault(event.time_us // bucket_us, []).append((event, ttl))
        await asyncio.gather(
            *(
                self._write_bucket(namespace, series, bucket, bucket_us, group, write_us, now_us)
                for bucket, group in by_bucket.items()
            )
        )

    async def _write_bucket(
        self,
        namespace: str,
        series: str,
        bucket: int,
        bucket_us: int,
        group: list[tuple[StoredEvent, int]],
        write_us: int,
        now_us: int,
    ) -> None:
        # The index entry first, so that every stored event is in an indexed
        # bucket; it lives as long as the longest-lived event of its bucket can.
        key = (namespace, series, bucket)
        if key in self._indexed:
            self._indexed.move_to_end(key)
        else:
            bucket_end = (bucket + 1) * bucket_us
            expires = max(bucket_end + (event.expires_at_us - event.time_us) for event, _ in group)
            index_ttl = min(ttl_until(expires, now_us), MAX_TTL_SECONDS)
            await self._run(self._index_add, (namespace, series, bucket, index_ttl), "indexing a bucket")
            self._indexed[key] = None
            if len(self._indexed) > _INDEX_CACHE:
                self._indexed.popitem(last=False)
        prepared = await self._conn._prepare(self._insert)
        bound = [
            (
                prepared.bind((namespace, series, bucket, e.time_us, e.event_id, body, ttl, write_us)),
                len(body),
            )
            for e, ttl in group
            for body in (encode_body(e),)
        ]
        if len(bound) == 1:
            await self._execute(bound[0][0], "writing an event")
            return
        # One partition per batch: an UNLOGGED single-partition batch is one
        # mutation, applied at once, with no batch log.
        batches: list[list[Any]] = [[]]
        size = 0
        for statement, weight in bound:
            if batches[-1] and size + weight > _BATCH_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(statement)
            size += weight + 64
        for statements in batches:
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for statement in statements:
                batch.add(statement)
            await self._execute(batch, "writing events")

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        bucket_us = self._bucket_of(namespace)
        if query.limit <= 0:
            return []
        span = bucket_span(query, bucket_us)
        clause = event_clause(query)
        if span is None or clause is None:
            return []
        lo, hi = span
        where, bounds = clause
        select = self._select(where, query.descending)
        scan = self._index_scan[query.descending]
        out: list[StoredEvent] = []
        while lo <= hi:
            buckets = [
                int(b)
                for (b,) in await self._run(
                    scan, (namespace, series, lo, hi, _INDEX_PAGE), "reading the bucket index"
                )
            ]
            for bucket in buckets:
                rows = await self._run(
                    select,
                    (namespace, series, bucket, *bounds, query.limit - len(out)),
                    "reading events",
                )
                out.extend(
                    decode_body(int(t), str(i), bytes(body)) for t, i, body in rows if body is not None
                )
                if len(out) >= query.limit:
                    return out[: query.limit]
            if len(buckets) < _INDEX_PAGE:
                break
            if query.descending:
                hi = buckets[-1] - 1
            else:
                lo = buckets[-1] + 1
        return out

    async def purge(self, namespace: str, before_us: int, series: str | None = None) -> None:
        """Nothing to do: every event and bucket-index entry carries a TTL."""
        return None


def _traits(settings: CassandraSettings) -> TimeSeriesTraits:
    return TimeSeriesTraits(
        durability="durable",
        max_event_bytes=int(settings.max_item_bytes),
        # Cassandra's longest TTL, less a day of room for max_future_skew.
        max_retention=timedelta(seconds=MAX_TTL_SECONDS) - timedelta(days=1),
    )


TIMESERIES = TimeSeriesBackendType(
    settings_type=CassandraSettings,
    create=CassandraTimeSeries,
    capabilities=frozenset({capabilities.TIMESERIES_NATIVE_RETENTION}),
    traits=_traits,
    description="Apache Cassandra: one partition per series and time bucket, bucket index, native TTL",
)
