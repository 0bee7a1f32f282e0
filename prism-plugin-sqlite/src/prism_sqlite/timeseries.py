"""The ``sqlite`` TimeSeries backend: durable event series in one local file.

It shares the database file (and :class:`~prism_sqlite.connection.SqliteConnection`,
one worker thread and one connection per backend object) with the other
``sqlite`` backends, in one table of its own, created on first use:

* ``ts_events``: one row per ``(namespace, series, time_us, event_id)``, the
  primary key. Its index serves range reads in both orders (SQLite walks an
  index backwards as cheaply as forwards) and the per-series purge. A second
  index on ``(namespace, time_us)`` serves the whole-namespace purge. A rowid
  table on purpose: payloads may be large, and SQLite advises against
  WITHOUT ROWID for large rows.

``event_id`` is TEXT in a UTF-8 database under the BINARY collation, so ids at
one microsecond order by their UTF-8 bytes, which is code point order, the
order of Python strings and of :attr:`StoredEvent.position`. Tags are stored as
JSON (a list of ``[name, value]`` pairs, in the order given, which the core
sorts by name), so equal tags always encode to equal text.

A write is one ``BEGIN IMMEDIATE`` transaction of upserts: a stored position is
replaced, and since the write lock serialises writers across processes, the
later write wins. A read is one indexed query, resuming after a page cursor
with a row-value comparison. Retention is not native: the core filters old
events and purges them with :meth:`SqliteTimeSeries.purge`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from prism.config import NamespaceConfig
from prism.errors import BackendError
from prism.spi import EventQuery, StoredEvent, TimeSeriesBackendType, TimeSeriesTraits
from prism_sqlite.connection import SqliteConnection, SqliteSettings, is_memory_path

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ts_events ("
    " namespace TEXT NOT NULL,"
    " series TEXT NOT NULL,"
    " time_us INTEGER NOT NULL,"
    " event_id TEXT NOT NULL,"
    " payload BLOB NOT NULL,"
    " tags TEXT NOT NULL,"
    " expires_at_us INTEGER NOT NULL,"
    " PRIMARY KEY (namespace, series, time_us, event_id)"
    ")",
    "CREATE INDEX IF NOT EXISTS ts_events_by_time ON ts_events (namespace, time_us)",
)

_UPSERT = (
    "INSERT INTO ts_events (namespace, series, time_us, event_id, payload, tags, expires_at_us)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (namespace, series, time_us, event_id) DO UPDATE SET"
    " payload = excluded.payload, tags = excluded.tags, expires_at_us = excluded.expires_at_us"
)

_SELECT = (
    "SELECT time_us, event_id, payload, tags, expires_at_us FROM ts_events WHERE namespace = ? AND series = ?"
)
_ASC = "ORDER BY time_us, event_id LIMIT ?"
_DESC = "ORDER BY time_us DESC, event_id DESC LIMIT ?"

#: The reads, by (descending, resumes after a cursor), each one cached
#: statement. A cursor inside the range replaces the range's bound on the side
#: the read starts from: SQLite bounds an index range by one term per side, and
#: given both ``time_us >= ?`` and the row value it would seek by the former and
#: only filter by the latter, rereading every earlier page of the range.
READS: dict[tuple[bool, bool], str] = {
    (False, False): f"{_SELECT} AND time_us >= ? AND time_us < ? {_ASC}",
    (False, True): f"{_SELECT} AND (time_us, event_id) > (?, ?) AND time_us < ? {_ASC}",
    (True, False): f"{_SELECT} AND time_us >= ? AND time_us < ? {_DESC}",
    (True, True): f"{_SELECT} AND time_us >= ? AND (time_us, event_id) < (?, ?) {_DESC}",
}


def read_statement(query: EventQuery) -> tuple[str, tuple[object, ...]]:
    """The statement for ``query`` and its parameters after namespace and series."""
    after = query.after
    if query.descending:
        if after is not None and after[0] < query.end_us:
            # Everything before the cursor is before the end too.
            return READS[(True, True)], (query.start_us, *after, query.limit)
        # No cursor, or one at or past the end: everything in range comes before it.
        return READS[(True, False)], (query.start_us, query.end_us, query.limit)
    if after is not None and after[0] >= query.start_us:
        # Everything after the cursor is at or after the start too.
        return READS[(False, True)], (*after, query.end_us, query.limit)
    # No cursor, or one before the start: everything in range comes after it.
    return READS[(False, False)], (query.start_us, query.end_us, query.limit)


MEMORY_NOTE = "path is ':memory:', so the data is lost when the process exits; give a file path"

PURGE_SERIES = "DELETE FROM ts_events WHERE namespace = ? AND series = ? AND time_us < ?"
PURGE_NAMESPACE = "DELETE FROM ts_events WHERE namespace = ? AND time_us < ?"


def encode_tags(tags: Sequence[tuple[str, str]]) -> str:
    return json.dumps([[name, value] for name, value in tags], ensure_ascii=False, separators=(",", ":"))


def decode_tags(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(value)) for name, value in json.loads(text))


class SqliteTimeSeries(SqliteConnection):
    """The TimeSeries SPI on one SQLite database file, on its own connection
    (see :class:`~prism_sqlite.connection.SqliteConnection` for the threading)."""

    def __init__(self, name: str, settings: SqliteSettings) -> None:
        super().__init__(name, settings)
        self._schema_ready = False

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        # One table holds every namespace; nothing depends on the namespace's
        # bucket, since an index range scan needs no partitions.
        if self._schema_ready:
            return

        def create(conn: sqlite3.Connection) -> None:
            for statement in _SCHEMA:
                conn.execute(statement)

        await self._write(create)
        self._schema_ready = True

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        # The write lock orders writers, so ``write_us`` is not needed: of two
        # writes of one position, the one that commits later wins.
        rows = [
            (namespace, series, e.time_us, e.event_id, bytes(e.payload), encode_tags(e.tags), e.expires_at_us)
            for e in events
        ]
        if not rows:
            return

        def upsert(conn: sqlite3.Connection) -> None:
            conn.executemany(_UPSERT, rows)

        await self._write(upsert)

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        if query.limit <= 0:
            return []
        sql, bounds = read_statement(query)
        params = (namespace, series, *bounds)

        def select(conn: sqlite3.Connection) -> list[StoredEvent]:
            return [
                StoredEvent(
                    time_us=int(time_us),
                    event_id=str(event_id),
                    payload=bytes(payload),
                    tags=decode_tags(tags),
                    expires_at_us=int(expires_at_us),
                )
                for time_us, event_id, payload, tags, expires_at_us in conn.execute(sql, params)
            ]

        try:
            return await self._call(select)
        except (ValueError, TypeError) as exc:
            raise BackendError(
                f"sqlite backend {self.name!r} at {self.path}: series {series!r} in namespace "
                f"{namespace!r} has a row whose tags do not decode: {exc}"
            ) from exc

    async def purge(self, namespace: str, before_us: int, series: str | None = None) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            if series is None:
                conn.execute(PURGE_NAMESPACE, (namespace, before_us))
            else:
                conn.execute(PURGE_SERIES, (namespace, series, before_us))

        await self._write(delete)


def _traits(settings: SqliteSettings) -> TimeSeriesTraits:
    # One event is one row, like one Queue message, so the same bound applies;
    # the connection checks at start that SQLite's own length limit is above it.
    memory = is_memory_path(settings.path)
    return TimeSeriesTraits(
        durability="ephemeral" if memory else "durable",
        max_event_bytes=settings.max_message_bytes,
        durability_note=MEMORY_NOTE if memory else "",
    )


TIMESERIES = TimeSeriesBackendType(
    settings_type=SqliteSettings,
    create=SqliteTimeSeries,
    # No timeseries.native_retention: SQLite never drops rows by itself, so the
    # core filters old events out of reads and purges them with purge().
    capabilities=frozenset(),
    traits=_traits,
    description="durable TimeSeries in one local SQLite file (WAL), safe across processes",
)
