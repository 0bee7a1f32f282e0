"""Baselines for Queue on sqlite and redis: the raw driver doing the storage
work of the plugin's queue backend, and nothing else.

sqlite (``prism_sqlite.queue``): the plugin's schema, scan and lease statements
(``_SCHEMA``, ``_SCAN``, ``_LEASE``, ``_GROUP``, ``_MESSAGE_COLUMNS``) and its
header encoding are imported; the statements the plugin writes inline are the
same text here. One connection on one worker thread, the plugin's pragmas, one
``BEGIN IMMEDIATE`` transaction per call, as the plugin does:

* publish: ``SELECT max(seq)`` of the topic, then one ``INSERT`` per message;
* receive: ``PRAGMA data_version``, the group row created if missing
  (``INSERT ... DO NOTHING``) and its low-water mark read, the plugin's scan
  from that mark (messages left-joined with the group's deliveries) up to the
  first deliverable message, the lease written (the plugin's upsert), and the
  chosen message's row read;
* ack: the low-water mark, the delivery row of the id, the ``UPDATE`` marking
  it acknowledged, and the low-water mark moved over the acknowledged prefix
  (the rows below deleted, the group row updated).

What is left to Prism: the checks and objects of the core, waking waiters in
the process, handling several messages, ids and keys in general.

redis (``prism_redis.queue``): publish is ``XADD`` of the plugin's fields
(``k``, ``p``, ``t``) in one ``MULTI``/``EXEC`` per batch, on a blocking
connection pool with hiredis as the plugin's. The round trip is the idiomatic
Redis Streams one: ``XADD``, ``XREADGROUP ... COUNT 1 STREAMS key >``, ``XACK``.
The plugin instead runs its receive script (group check via ``XINFO GROUPS``,
``XPENDING IDLE`` for expired leases, then ``XREADGROUP``) and its ack script
(checks that the id is known to the group: ``XINFO GROUPS``, ``XPENDING``,
then ``XACK``): those checks are part of what Prism's ratio measures.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis.asyncio as aioredis

from prism_sqlite.queue import _GROUP, _LEASE, _MESSAGE_COLUMNS, _SCAN, _SCHEMA, _pack_headers, format_id

_T = TypeVar("_T")
_NO_HEADERS = _pack_headers(())


def _now_us() -> int:
    return time.time_ns() // 1000


class RawSqliteQueue:
    def __init__(self, path: str, namespace: str, *, synchronous: str = "FULL") -> None:
        self._path = path
        self._namespace = namespace
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-sqlite-queue")
        self._conn: sqlite3.Connection | None = None

    async def start(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self._path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA encoding = 'UTF-8'")
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            for statement in _SCHEMA:
                conn.execute(statement)
            return conn

        self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        assert conn is not None, "call start() first"

        def in_transaction(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, in_transaction, conn)

    async def publish(self, topic: str, payloads: Sequence[bytes]) -> list[str]:
        ns = self._namespace

        def append(conn: sqlite3.Connection) -> list[str]:
            (last,) = conn.execute(
                "SELECT max(seq) FROM queue_messages WHERE namespace = ? AND topic = ?", (ns, topic)
            ).fetchone()
            first = 0 if last is None else int(last) + 1
            now = _now_us()
            conn.executemany(
                "INSERT INTO queue_messages"
                " (namespace, topic, seq, key, payload, headers, published_at_us, deliver_at_us)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(ns, topic, first + i, b"", p, _NO_HEADERS, now, None) for i, p in enumerate(payloads)],
            )
            return [format_id(first + i) for i in range(len(payloads))]

        return await self._write(append)

    async def receive_one(
        self, topic: str, group: str, consumer: str, visibility_us: int
    ) -> tuple[int, bytes]:
        """Lease the first deliverable message of ``group``: its seq and payload."""
        ns = self._namespace

        def claim(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
            conn.execute("PRAGMA data_version").fetchone()
            now = _now_us()
            conn.execute(
                "INSERT INTO queue_groups (namespace, topic, grp, low) VALUES (?, ?, ?, 0)"
                " ON CONFLICT (namespace, topic, grp) DO NOTHING",
                (ns, topic, group),
            )
            (low,) = conn.execute(
                f"SELECT low FROM queue_groups WHERE {_GROUP}", (ns, topic, group)
            ).fetchone()
            chosen: tuple[int, int] | None = None
            cursor = conn.execute(_SCAN, (group, ns, topic, low))
            try:
                for seq, _, deliver_at_us, attempt, acked, lease_until_us in cursor:
                    if acked or (lease_until_us is not None and lease_until_us > now):
                        continue
                    if deliver_at_us is not None and deliver_at_us > now:
                        continue
                    chosen = (seq, (attempt or 0) + 1)
                    break
            finally:
                cursor.close()
            if chosen is None:
                return None
            seq, attempt = chosen
            conn.execute(_LEASE, (ns, topic, group, seq, attempt, consumer, now + visibility_us))
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM queue_messages WHERE namespace = ? AND topic = ? AND seq IN (?)",
                (ns, topic, seq),
            ).fetchone()
            return seq, bytes(row[2])

        while True:
            found = await self._write(claim)
            if found is not None:
                return found
            await asyncio.sleep(0.001)  # not reached in the round trip: the message is there

    async def ack(self, topic: str, group: str, seq: int) -> None:
        ns = self._namespace

        def acknowledge(conn: sqlite3.Connection) -> None:
            (low,) = conn.execute(
                f"SELECT low FROM queue_groups WHERE {_GROUP}", (ns, topic, group)
            ).fetchone()
            delivered = conn.execute(
                f"SELECT seq, acked FROM queue_deliveries WHERE {_GROUP} AND seq IN (?)",
                (ns, topic, group, seq),
            ).fetchall()
            if not delivered:
                raise RuntimeError(f"seq {seq} was never delivered to {group}")
            conn.execute(
                "UPDATE queue_deliveries SET acked = 1, consumer = NULL, lease_until_us = NULL"
                f" WHERE {_GROUP} AND seq = ?",
                (ns, topic, group, seq),
            )
            if seq != low:
                return
            new_low = low
            for (done,) in conn.execute(
                f"SELECT seq FROM queue_deliveries WHERE {_GROUP} AND seq >= ? AND acked = 1 ORDER BY seq",
                (ns, topic, group, low),
            ).fetchall():
                if done != new_low:
                    break
                new_low += 1
            conn.execute(
                f"DELETE FROM queue_deliveries WHERE {_GROUP} AND seq < ?", (ns, topic, group, new_low)
            )
            conn.execute(f"UPDATE queue_groups SET low = ? WHERE {_GROUP}", (new_low, ns, topic, group))

        await self._write(acknowledge)


class RawRedisQueue:
    def __init__(self, url: str, key_prefix: str, namespace: str) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=32, decode_responses=False)
        self.client = aioredis.Redis(connection_pool=pool)
        self._base = f"{key_prefix}:{namespace}:"

    def stream(self, topic: str) -> bytes:
        return f"{self._base}stream:{topic}".encode()

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)

    async def publish(self, topic: str, payloads: Sequence[bytes]) -> list[bytes]:
        """``XADD`` per message with the plugin's fields, in one ``MULTI``/``EXEC``."""
        stream = self.stream(topic)
        now = str(_now_us()).encode()
        async with self.client.pipeline(transaction=True) as pipe:
            for payload in payloads:
                pipe.xadd(stream, {b"k": b"", b"p": payload, b"t": now})
            ids: list[Any] = await pipe.execute()
        return [bytes(i) for i in ids]

    async def create_group(self, topic: str, group: str) -> None:
        await self.client.xgroup_create(self.stream(topic), group, id="0", mkstream=True)

    async def receive_one(self, topic: str, group: str, consumer: str) -> tuple[bytes, bytes]:
        """``XREADGROUP COUNT 1 ... >`` (blocking up to 5 s if nothing is there yet)."""
        reply: Any = await self.client.xreadgroup(
            group, consumer, {self.stream(topic): ">"}, count=1, block=5000
        )
        message_id, fields = reply[0][1][0]
        return bytes(message_id), bytes(fields[b"p"])

    async def ack(self, topic: str, group: str, message_id: bytes) -> None:
        done: Any = await self.client.xack(self.stream(topic), group, message_id)
        if done != 1:
            raise RuntimeError(f"XACK of {message_id!r} acknowledged {done} entries")
