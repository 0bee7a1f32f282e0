"""The baseline for the embedded sqlite scenarios: sqlite3 itself, doing the
storage work the ``sqlite`` plugin does for each operation, and nothing else.

The SQL is the plugin's own (``prism_sqlite.keyvalue._Statements``, imported
rather than copied, so that the baseline follows any change to it), on the
same database file, with the same pragmas and the same transactions. Like the
plugin, and like any asyncio program that uses sqlite3 without blocking its
event loop, each operation is one function run on one worker thread that owns
the connection: one thread hop per operation. What is *not* here is exactly
Prism's cost: validation, versions, TTL and tombstone filtering, paging, the
SPI's row objects, and the core's checks around chunked values.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from prism_sqlite.keyvalue import _Statements

_T = TypeVar("_T")


def _version() -> tuple[int, str]:
    # What a careful application would store to get last-write-wins: a time and a nonce.
    return time.time_ns() // 1000, "~raw-" + os.urandom(6).hex()


class RawSqlite:
    """One connection on its own thread, as the plugin has."""

    def __init__(self, path: str, namespace: str, *, synchronous: str = "FULL") -> None:
        self._path = path
        self._sql = _Statements.build(namespace)
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        assert conn is not None, "call start() first"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def in_transaction(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._call(in_transaction)

    async def start(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self._path, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(self._sql.create_rows)
            conn.execute(self._sql.create_chunks)
            return conn

        self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    # -- the operations the scenarios time ----------------------------------------------

    async def get(self, record_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The rows of ``keys``: one ``SELECT ... key IN (...)``."""
        statement = f"{self._sql.select} AND key IN ({', '.join('?' * len(keys))}) ORDER BY key LIMIT ?"
        params: list[object] = [record_id, *keys, len(keys) + 1]

        def select(conn: sqlite3.Connection) -> dict[bytes, bytes]:
            return {bytes(row[0]): bytes(row[1]) for row in conn.execute(statement, params)}

        return await self._call(select)

    async def get_range(self, record_id: str, start: bytes, end: bytes, limit: int) -> list[bytes]:
        statement = f"{self._sql.select} AND key >= ? AND key < ? ORDER BY key LIMIT ?"
        params = (record_id, start, end, limit + 1)

        def select(conn: sqlite3.Connection) -> list[bytes]:
            return [bytes(row[1]) for row in conn.execute(statement, params)]

        return await self._call(select)

    def _upsert_rows(
        self, conn: sqlite3.Connection, record_id: str, rows: Sequence[tuple[object, ...]]
    ) -> list[str]:
        """The plugin's write: the chunked rows about to be replaced, then one
        LWW upsert per row; returns the chunk sets the write replaced."""
        keys = [row[0] for row in rows]
        marks = ", ".join("?" * len(keys))
        statement = f"{self._sql.select} AND chunk_count > 0 AND key IN ({marks})"
        old_sets = [str(r[7]) for r in conn.execute(statement, [record_id, *keys])]
        for row in rows:
            conn.execute(self._sql.upsert, (record_id, *row))
        return old_sets

    async def put(self, record_id: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        micros, nonce = _version()
        rows = [(key, value, micros, nonce, None, 0, 0, "", len(value)) for key, value in items]
        await self._write(lambda conn: self._upsert_rows(conn, record_id, rows))

    async def put_chunked(self, record_id: str, key: bytes, value: bytes, chunk_bytes: int) -> None:
        """A value above ``max_item_bytes``: its chunks in one transaction, then
        the row that points at them, then the replaced chunk set deleted."""
        chunk_set = os.urandom(12).hex()
        chunks = [value[i : i + chunk_bytes] for i in range(0, len(value), chunk_bytes)]
        params = [(record_id, key, chunk_set, i, chunk, None) for i, chunk in enumerate(chunks)]

        def store_chunks(conn: sqlite3.Connection) -> None:
            conn.executemany(self._sql.chunk_upsert, params)
            conn.execute(self._sql.chunk_trim, (record_id, key, chunk_set, len(params)))

        await self._write(store_chunks)
        micros, nonce = _version()
        row = (key, b"", micros, nonce, None, 0, len(chunks), chunk_set, len(value))
        replaced = await self._write(lambda conn: self._upsert_rows(conn, record_id, [row]))
        for old in replaced:
            # One transaction per replaced set, as the core deletes them one by one.
            await self._write(self._chunk_deleter(record_id, key, old))

    def _chunk_deleter(
        self, record_id: str, key: bytes, chunk_set: str
    ) -> Callable[[sqlite3.Connection], None]:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute(self._sql.chunk_delete, (record_id, key, chunk_set))

        return delete

    async def get_chunked(self, record_id: str, key: bytes) -> bytes:
        """The row, then its chunks, in one call on the connection's thread."""
        statement = f"{self._sql.select} AND key IN (?) ORDER BY key LIMIT 2"

        def load(conn: sqlite3.Connection) -> bytes:
            row: Any = conn.execute(statement, (record_id, key)).fetchall()[0]
            value, chunk_count, chunk_set = bytes(row[1]), int(row[6]), str(row[7])
            if not chunk_count:
                return value
            rows = conn.execute(self._sql.chunk_select, (record_id, key, chunk_set, chunk_count))
            return b"".join(bytes(r[1]) for r in rows)

        return await self._call(load)
