"""The baselines for the TimeSeries and Counter scenarios: the raw driver doing
the storage work the ``sqlite`` and ``redis`` plugins do for each operation,
and nothing else.

The SQL and the Lua scripts are the plugins' own (imported from
``prism_sqlite.timeseries``, ``prism_sqlite.counter``, ``prism_redis.timeseries``
and ``prism_redis.counter``, not copied, so the baselines follow any change to
them), the keys and rows have the plugins' layout and encoding (the plugins'
encoders are imported too), so the datastore does exactly the same work. What
is *not* here is Prism's cost: validation of names, times, payloads and tags,
the retention and future-skew checks, de-duplication of positions within a
call, the SPI's row objects, the core's filtering and byte budget on reads,
page tokens, the token age checks, and the ``prism.Event`` objects handed back.

The baseline's events are ``StoredEvent`` rows built before the timed loop (an
application holds its data in some record type); encoding them to the stored
format (tags as JSON on sqlite, the binary event on redis) is timed. Reads
return plain tuples ``(time_us, event_id, payload, tags)``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from prism.models import now_micros
from prism.spi import StoredEvent
from prism_redis.counter import _ADD as _REDIS_COUNTER_ADD
from prism_redis.timeseries import _READ as _REDIS_TS_READ
from prism_redis.timeseries import _WRITE as _REDIS_TS_WRITE
from prism_redis.timeseries import decode_position, encode_event, position_member, time_bytes
from prism_sqlite.counter import _ADD_RETURNING, _FORGET_COUNTER, _GET, _REMEMBER, _bounds
from prism_sqlite.counter import _SCHEMA as _COUNTER_SCHEMA
from prism_sqlite.timeseries import _SCHEMA as _TS_SCHEMA
from prism_sqlite.timeseries import _UPSERT, READS, decode_tags, encode_tags

_T = TypeVar("_T")

#: A row as the baselines return it: time in µs, event id, payload, tags.
Row = tuple[int, str, bytes, tuple[tuple[str, str], ...]]

#: The plugins' default ``counter.token_window`` (10 min), in µs; the sqlite
#: plugin keeps tokens two windows, the redis plugin one window plus ``expiry_grace``.
TOKEN_WINDOW_US = 10 * 60 * 1_000_000
_HEAD = struct.Struct(">qI")
_LEN = struct.Struct(">I")


def new_token() -> tuple[int, str]:
    """What ``prism.IdempotencyToken.new()`` is made of: now in µs and 8 random bytes in hex."""
    return now_micros(), os.urandom(8).hex()


class _Worker:
    """One sqlite3 connection owned by one worker thread, with the plugin's
    pragmas; one function per operation shipped to the thread, writes in one
    ``BEGIN IMMEDIATE`` transaction, as the plugin does."""

    def __init__(self, path: str, synchronous: str, schema: Sequence[str], name: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._schema = schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None

    async def call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        assert conn is not None, "call start() first"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    async def write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def in_transaction(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self.call(in_transaction)

    async def start(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self._path, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            for statement in self._schema:
                conn.execute(statement)
            return conn

        self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)


class RawSqliteTsCounter:
    """sqlite3 as the plugin uses it: like the plugin's TimeSeries and Counter
    backend objects, one connection on its own worker thread for the events and
    another for the counters, on the same database file."""

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        self._ts = _Worker(path, synchronous, _TS_SCHEMA, "raw-sqlite-ts")
        self._counter = _Worker(path, synchronous, _COUNTER_SCHEMA, "raw-sqlite-counter")

    async def start(self) -> None:
        await self._ts.start()
        await self._counter.start()

    async def close(self) -> None:
        await self._ts.close()
        await self._counter.close()

    async def settle(self) -> None:
        """Between scenarios, untimed: checkpoint the WAL and truncate it, so a
        scenario never pays for (a random share of) the previous one's checkpoints."""

        def checkpoint(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

        await self._counter.call(checkpoint)

    # -- TimeSeries ----------------------------------------------------------------------

    async def write_events(self, namespace: str, series: str, events: Sequence[StoredEvent]) -> None:
        """The plugin's upsert per event, ``executemany`` in one transaction."""
        rows = [
            (namespace, series, e.time_us, e.event_id, e.payload, encode_tags(e.tags), e.expires_at_us)
            for e in events
        ]

        def upsert(conn: sqlite3.Connection) -> None:
            conn.executemany(_UPSERT, rows)

        await self._ts.write(upsert)

    async def read_events(
        self, namespace: str, series: str, start_us: int, end_us: int, limit: int
    ) -> list[Row]:
        """The plugin's ascending range read (no cursor), ``limit`` rows."""
        params = (namespace, series, start_us, end_us, limit)
        statement = READS[(False, False)]

        def select(conn: sqlite3.Connection) -> list[Row]:
            return [
                (int(t), str(i), bytes(p), decode_tags(tags))
                for t, i, p, tags, _ in conn.execute(statement, params)
            ]

        return await self._ts.call(select)

    # -- Counter -------------------------------------------------------------------------

    async def add(self, namespace: str, counter: str, delta: int) -> int:
        """best_effort: the plugin's bounded upsert with ``RETURNING``, one transaction."""
        lo, hi = _bounds(delta)
        params = (namespace, counter, delta, lo, hi)

        def add(conn: sqlite3.Connection) -> int:
            return int(conn.execute(_ADD_RETURNING, params).fetchall()[0][0])

        return await self._counter.write(add)

    async def add_exact(self, namespace: str, counter: str, delta: int) -> int:
        """exact: in one transaction, forget the counter's tokens older than two
        windows, remember the new token (``ON CONFLICT DO NOTHING``), then the
        bounded upsert; a replay would read the value instead."""
        generation_us, nonce = new_token()
        lo, hi = _bounds(delta)
        params = (namespace, counter, delta, lo, hi)

        def add(conn: sqlite3.Connection) -> int:
            conn.execute(_FORGET_COUNTER, (namespace, counter, now_micros() - 2 * TOKEN_WINDOW_US))
            if conn.execute(_REMEMBER, (namespace, counter, generation_us, nonce)).rowcount == 0:
                row = conn.execute(_GET, (namespace, counter)).fetchone()
                return 0 if row is None else int(row[0])
            return int(conn.execute(_ADD_RETURNING, params).fetchall()[0][0])

        return await self._counter.write(add)

    async def get(self, namespace: str, counter: str) -> int:
        def get(conn: sqlite3.Connection) -> int:
            row = conn.execute(_GET, (namespace, counter)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._counter.call(get)


def _decode(member: bytes, raw: bytes) -> Row:
    """A stored event in the redis plugin's format, as a plain tuple."""
    time_us, event_id = decode_position(member)
    _, count = _HEAD.unpack_from(raw)
    pos = _HEAD.size
    tags: list[tuple[str, str]] = []
    for _ in range(count):
        (n,) = _LEN.unpack_from(raw, pos)
        name = raw[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n
        (v,) = _LEN.unpack_from(raw, pos)
        tags.append((name, raw[pos + 4 : pos + 4 + v].decode()))
        pos += 4 + v
    return time_us, event_id, raw[pos:], tuple(tags)


class RawRedisTsCounter:
    """redis-py asyncio (a blocking pool, as the plugin uses) on the plugins'
    key layout under ``key_prefix``, running the plugins' scripts."""

    def __init__(self, url: str, key_prefix: str, *, grace_ms: int = 60_000) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=32, decode_responses=False)
        self.client = aioredis.Redis(connection_pool=pool)
        self._prefix = key_prefix
        self._grace_ms = grace_ms
        self._ts_write: AsyncScript = self.client.register_script(_REDIS_TS_WRITE)
        self._ts_read: AsyncScript = self.client.register_script(_REDIS_TS_READ)
        self._counter_add: AsyncScript = self.client.register_script(_REDIS_COUNTER_ADD)

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)

    async def settle(self) -> None:
        """Nothing to settle between scenarios on Redis."""

    def _series_keys(self, namespace: str, series: str) -> list[bytes]:
        base = f"{self._prefix}:{namespace}:ts:{{{series}".encode()
        return [base + b"}:z", base + b"}:h"]

    def _counter_keys(self, namespace: str, counter: str) -> list[bytes]:
        base = f"{self._prefix}:{namespace}:ctr:{{{counter}".encode()
        return [base + b"}:v", base + b"}:t"]

    # -- TimeSeries ----------------------------------------------------------------------

    async def write_events(self, namespace: str, series: str, events: Sequence[StoredEvent]) -> None:
        """The plugin's write script (``ZADD`` + ``HSET`` per event, expiry moved),
        then ``SADD`` of the series name when the script created the series."""
        latest_ms = -(-max(e.expires_at_us for e in events) // 1000)
        args: list[bytes | int] = [latest_ms + self._grace_ms]
        for event in events:
            args += [position_member(event.time_us, event.event_id), encode_event(event)]
        if await self._ts_write(keys=self._series_keys(namespace, series), args=args):
            await self.client.sadd(f"{self._prefix}:{namespace}:ts-series".encode(), series.encode())

    async def read_events(
        self, namespace: str, series: str, start_us: int, end_us: int, limit: int
    ) -> list[Row]:
        """The plugin's read script: ``ZRANGE BYLEX LIMIT`` then ``HMGET``, one snapshot."""
        low = b"[" + time_bytes(start_us)
        high = b"(" + time_bytes(end_us)
        reply: list[Any] = await self._ts_read(
            keys=self._series_keys(namespace, series), args=[low, high, limit, "0"]
        )
        return [_decode(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]

    # -- Counter -------------------------------------------------------------------------

    async def add(self, namespace: str, counter: str, delta: int) -> int:
        """best_effort: one ``INCRBY``."""
        value: Any = await self.client.incrby(self._counter_keys(namespace, counter)[0], delta)
        return int(value)

    async def add_exact(self, namespace: str, counter: str, delta: int) -> int:
        """exact: the plugin's add script with a new token (drop old tokens,
        replay check, ``INCRBY`` under ``pcall``, record the token, move the set's
        expiry, ``GET`` the value)."""
        generation_us, nonce = new_token()
        grace_us = self._grace_ms * 1000
        horizon = now_micros() - TOKEN_WINDOW_US - grace_us
        expire_ms = -(-(generation_us + TOKEN_WINDOW_US + grace_us) // 1000)
        member = f"{generation_us}:{nonce}".encode()
        reply: list[Any] = await self._counter_add(
            keys=self._counter_keys(namespace, counter),
            args=[member, generation_us, horizon, expire_ms, delta],
        )
        if reply[0] not in (b"ok", b"replay"):
            raise RuntimeError(f"counter add script answered {reply!r}")
        return int(reply[1])

    async def get(self, namespace: str, counter: str) -> int:
        value: Any = await self.client.get(self._counter_keys(namespace, counter)[0])
        return 0 if value is None else int(value)

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every key under ``prefix`` (SCAN, never KEYS or FLUSH: the server is shared)."""
        removed = 0
        batch: list[bytes] = []
        async for name in self.client.scan_iter(match=prefix.encode() + b"*", count=1000):
            batch.append(name)
            if len(batch) >= 500:
                removed += await self.client.unlink(*batch)
                batch = []
        if batch:
            removed += await self.client.unlink(*batch)
        return removed
