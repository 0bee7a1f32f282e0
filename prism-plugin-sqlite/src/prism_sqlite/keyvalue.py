"""The ``sqlite`` KeyValue backend: durable rows in one local database file.

Each namespace gets two tables: ``kv_<namespace>`` holds one row per
``(record_id, key)`` and ``kvc_<namespace>`` holds the chunks of values above
``max_item_bytes``. Keys are BLOBs, which SQLite compares with ``memcmp``, so key
order is the unsigned bytewise order the SPI asks for; record ids are TEXT in a
UTF-8 database under the BINARY collation, which is also ``memcmp``, so they
order by their UTF-8 bytes.

Last-write-wins is decided inside SQLite by the ``WHERE`` clause of an upsert,
never by a read followed by a write, and every write runs in a ``BEGIN
IMMEDIATE`` transaction. Together with WAL mode this keeps LWW correct when
several processes write the same file.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any

import attrs

from prism import capabilities
from prism.errors import BackendError
from prism.spi import KeyValueBackendType, KeyValueTraits, ReadQuery, StoredItem, Version
from prism_sqlite.connection import (
    MEMORY_PATH,
    MIN_SQLITE_VERSION,
    SqliteConnection,
    SqliteSettings,
    is_memory_path,
    resolve_path,
)

__all__ = [
    "KEYVALUE",
    "MEMORY_PATH",
    "MIN_SQLITE_VERSION",
    "SqliteKeyValue",
    "SqliteSettings",
    "resolve_path",
]

#: Builds before SQLite 3.32 allow only 999 bound parameters per statement, so a
#: long key list is looked up in batches of this size.
_KEYS_PER_STATEMENT = 500

#: Namespaces are validated by the core already; checking again here means a
#: table name built from one can never carry SQL, quoting or not.
_NAMESPACE = re.compile(r"[a-z][a-z0-9_]{0,47}")

_ROW_COLUMNS = "key, value, ver_us, ver_nonce, expires_at_us, tombstone, chunk_count, chunk_set, value_size"


@attrs.frozen
class _Statements:
    """The SQL of one namespace, built once so the connection's statement cache hits."""

    create_rows: str
    create_chunks: str
    upsert: str
    select: str
    delete_row: str
    scan_first: str
    scan_after: str
    chunk_upsert: str
    chunk_trim: str
    chunk_select: str
    chunk_delete: str

    @classmethod
    def build(cls, namespace: str) -> _Statements:
        if not _NAMESPACE.fullmatch(namespace):
            raise BackendError(f"sqlite backend: {namespace!r} is not a valid namespace name")
        kv = _quote(f"kv_{namespace}")
        kvc = _quote(f"kvc_{namespace}")
        # Loose index scan: one index seek per record id instead of reading every
        # row of every record, which DISTINCT would do.
        scan = (
            "WITH RECURSIVE ids(id) AS ("
            f" SELECT (SELECT min(record_id) FROM {kv} {{first}})"
            f" UNION ALL SELECT (SELECT min(record_id) FROM {kv} WHERE record_id > ids.id)"
            " FROM ids WHERE ids.id IS NOT NULL"
            ") SELECT id FROM ids WHERE id IS NOT NULL LIMIT ?"
        )
        return cls(
            create_rows=(
                f"CREATE TABLE IF NOT EXISTS {kv} ("
                " record_id TEXT NOT NULL,"
                " key BLOB NOT NULL,"
                " value BLOB NOT NULL,"
                " ver_us INTEGER NOT NULL,"
                " ver_nonce TEXT NOT NULL,"
                " expires_at_us INTEGER,"
                " tombstone INTEGER NOT NULL,"
                " chunk_count INTEGER NOT NULL,"
                " chunk_set TEXT NOT NULL,"
                " value_size INTEGER NOT NULL,"
                " PRIMARY KEY (record_id, key)"
                ") WITHOUT ROWID"
            ),
            # A rowid table on purpose: chunks are up to max_item_bytes each, and
            # SQLite advises against WITHOUT ROWID for rows that large.
            create_chunks=(
                f"CREATE TABLE IF NOT EXISTS {kvc} ("
                " record_id TEXT NOT NULL,"
                " key BLOB NOT NULL,"
                " chunk_set TEXT NOT NULL,"
                " idx INTEGER NOT NULL,"
                " data BLOB NOT NULL,"
                " expires_at_us INTEGER,"
                " PRIMARY KEY (record_id, key, chunk_set, idx)"
                ")"
            ),
            # The WHERE of DO UPDATE is the whole LWW decision, taken under the
            # write lock: an equal or older version leaves the stored row alone.
            upsert=(
                f"INSERT INTO {kv} (record_id, {_ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (record_id, key) DO UPDATE SET"
                " value = excluded.value, ver_us = excluded.ver_us, ver_nonce = excluded.ver_nonce,"
                " expires_at_us = excluded.expires_at_us, tombstone = excluded.tombstone,"
                " chunk_count = excluded.chunk_count, chunk_set = excluded.chunk_set,"
                " value_size = excluded.value_size"
                f" WHERE (excluded.ver_us, excluded.ver_nonce) > ({kv}.ver_us, {kv}.ver_nonce)"
            ),
            select=f"SELECT {_ROW_COLUMNS} FROM {kv} WHERE record_id = ?",
            delete_row=f"DELETE FROM {kv} WHERE record_id = ? AND key = ? AND ver_us = ? AND ver_nonce = ?",
            scan_first=scan.format(first=""),
            scan_after=scan.format(first="WHERE record_id > ?"),
            chunk_upsert=(
                f"INSERT INTO {kvc} (record_id, key, chunk_set, idx, data, expires_at_us)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (record_id, key, chunk_set, idx) DO UPDATE SET"
                " data = excluded.data, expires_at_us = excluded.expires_at_us"
            ),
            chunk_trim=f"DELETE FROM {kvc} WHERE record_id = ? AND key = ? AND chunk_set = ? AND idx >= ?",
            chunk_select=(
                f"SELECT idx, data FROM {kvc} WHERE record_id = ? AND key = ? AND chunk_set = ? AND idx < ?"
                " ORDER BY idx"
            ),
            chunk_delete=f"DELETE FROM {kvc} WHERE record_id = ? AND key = ? AND chunk_set = ?",
        )


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _row_to_item(row: tuple[Any, ...]) -> StoredItem:
    key, value, ver_us, ver_nonce, expires_at_us, tombstone, chunk_count, chunk_set, value_size = row
    # sqlite3 returns BLOB columns as bytes: no copy needed.
    return StoredItem(
        key=key,
        value=value,
        version=Version(ver_us, ver_nonce),
        expires_at_us=expires_at_us,
        tombstone=bool(tombstone),
        chunk_count=chunk_count,
        chunk_set=chunk_set,
        value_size=value_size,
    )


def _item_params(record_id: str, item: StoredItem) -> tuple[object, ...]:
    # Key and value are bytes (the core copies them to bytes once, where they
    # enter the API), which sqlite3 binds as BLOBs. They must be: SQLite orders
    # every TEXT before every BLOB, so a key bound as TEXT would compare wrongly.
    return (
        record_id,
        item.key,
        item.value,
        item.version.micros,
        item.version.nonce,
        item.expires_at_us,
        int(item.tombstone),
        item.chunk_count,
        item.chunk_set,
        item.value_size,
    )


class SqliteKeyValue(SqliteConnection):
    """The KeyValue SPI on one SQLite database file, on its own connection
    (see :class:`SqliteConnection` for the threading)."""

    def __init__(self, name: str, settings: SqliteSettings) -> None:
        super().__init__(name, settings)
        self._statements: dict[str, _Statements] = {}
        self._provisioned: set[str] = set()

    def _sql(self, namespace: str) -> _Statements:
        statements = self._statements.get(namespace)
        if statements is None:
            statements = self._statements[namespace] = _Statements.build(namespace)
        return statements

    # -- the SPI -------------------------------------------------------------------------

    async def provision(self, namespace: str) -> None:
        if namespace in self._provisioned:
            return
        sql = self._sql(namespace)

        def create(conn: sqlite3.Connection) -> None:
            conn.execute(sql.create_rows)
            conn.execute(sql.create_chunks)

        await self._write(create)
        self._provisioned.add(namespace)

    async def write(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        # One transaction per call whatever ``atomic`` says: it is what makes a
        # batch cheap in SQLite (one commit, one sync), and it gives atomic=True.
        if not items:
            return []
        sql = self._sql(namespace)
        params = [_item_params(record_id, item) for item in items]
        keys = sorted({item.key for item in items})
        batches = [keys[i : i + _KEYS_PER_STATEMENT] for i in range(0, len(keys), _KEYS_PER_STATEMENT)]

        def upsert(conn: sqlite3.Connection) -> list[StoredItem]:
            # BEGIN IMMEDIATE holds the database's write lock from here to the
            # commit, so the rows read now are exactly the rows the upserts
            # replace: reading first is atomic here, and LWW is still decided by
            # the upsert itself. Only chunked rows matter, and few rows are.
            chunked: dict[bytes, StoredItem] = {}
            for batch in batches:
                marks = ", ".join("?" * len(batch))
                statement = f"{sql.select} AND chunk_count > 0 AND key IN ({marks})"
                for row in conn.execute(statement, [record_id, *batch]):
                    item = _row_to_item(row)
                    chunked[item.key] = item
            replaced: list[StoredItem] = []
            for item, row_params in zip(items, params, strict=True):
                # rowcount is 0 when the upsert's WHERE kept the stored row.
                if conn.execute(sql.upsert, row_params).rowcount != 1:
                    continue
                previous = chunked.pop(item.key, None)
                if previous is not None:
                    replaced.append(previous)
                if item.chunk_count > 0:
                    # A later row for the same key in this call replaces this one.
                    chunked[item.key] = item
            return replaced

        return await self._write(upsert)

    async def read(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        if query.limit <= 0:
            return []
        sql = self._sql(namespace)
        if query.keys is None:
            clauses = [sql.select]
            params: list[object] = [record_id]
            for clause, bound in (
                ("key >= ?", query.start),
                ("key < ?", query.end),
                ("key > ?", query.after),
            ):
                if bound is not None:
                    clauses.append(clause)
                    params.append(bytes(bound))
            statement = " AND ".join(clauses) + " ORDER BY key LIMIT ?"
            params.append(query.limit)

            def select_range(conn: sqlite3.Connection) -> list[StoredItem]:
                return [_row_to_item(row) for row in conn.execute(statement, params)]

            return await self._call(select_range)

        # Bounds are applied here, so SQL only looks the keys up. Sorted and
        # deduplicated in bytes order, which is SQLite's BLOB order, so the
        # batches come back already in key order, one after the other.
        keys = sorted({key for key in query.keys if query.matches(key)})
        if not keys:
            return []
        batches = [keys[i : i + _KEYS_PER_STATEMENT] for i in range(0, len(keys), _KEYS_PER_STATEMENT)]

        def select_keys(conn: sqlite3.Connection) -> list[StoredItem]:
            out: list[StoredItem] = []
            for batch in batches:
                left = query.limit - len(out)
                if left <= 0:
                    break
                marks = ", ".join("?" * len(batch))
                statement = f"{sql.select} AND key IN ({marks}) ORDER BY key LIMIT ?"
                out += [_row_to_item(row) for row in conn.execute(statement, [record_id, *batch, left])]
            return out

        # Several statements read one snapshot only inside a transaction; a
        # deferred one takes no write lock.
        return await self._call(select_keys, begin="BEGIN" if len(batches) > 1 else None)

    async def remove(self, namespace: str, record_id: str, rows: Sequence[tuple[bytes, Version]]) -> None:
        if not rows:
            return
        sql = self._sql(namespace)
        params = [(record_id, bytes(key), version.micros, version.nonce) for key, version in rows]

        def delete(conn: sqlite3.Connection) -> None:
            conn.executemany(sql.delete_row, params)

        await self._write(delete)

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        if limit <= 0:
            return []
        sql = self._sql(namespace)
        params: list[object]
        if after is None:
            statement, params = sql.scan_first, [limit]
        else:
            statement, params = sql.scan_after, [after, limit]

        def scan(conn: sqlite3.Connection) -> list[str]:
            return [str(row[0]) for row in conn.execute(statement, params)]

        return await self._call(scan)

    async def write_chunks(
        self,
        namespace: str,
        record_id: str,
        key: bytes,
        chunk_set: str,
        chunks: Sequence[bytes],
        expires_at_us: int | None,
    ) -> None:
        sql = self._sql(namespace)
        blob_key = bytes(key)
        params = [
            (record_id, blob_key, chunk_set, i, bytes(chunk), expires_at_us) for i, chunk in enumerate(chunks)
        ]

        def store(conn: sqlite3.Connection) -> None:
            conn.executemany(sql.chunk_upsert, params)
            # A set is exactly what the last write gave it, even if a retry wrote fewer chunks.
            conn.execute(sql.chunk_trim, (record_id, blob_key, chunk_set, len(params)))

        await self._write(store)

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, chunk_set: str, count: int
    ) -> list[bytes]:
        if count <= 0:
            return []
        sql = self._sql(namespace)

        def load(conn: sqlite3.Connection) -> list[bytes]:
            out: list[bytes] = []
            for idx, data in conn.execute(sql.chunk_select, (record_id, bytes(key), chunk_set, count)):
                # Only the unbroken run from chunk 0: a gap means the set is being
                # deleted, and the core must not stitch a value around it.
                if idx != len(out):
                    break
                out.append(bytes(data))
            return out

        return await self._call(load)

    async def delete_chunks(self, namespace: str, record_id: str, key: bytes, chunk_set: str) -> None:
        sql = self._sql(namespace)

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute(sql.chunk_delete, (record_id, bytes(key), chunk_set))

        await self._write(delete)


def _traits(settings: SqliteSettings) -> KeyValueTraits:
    return KeyValueTraits(
        durability="ephemeral" if is_memory_path(settings.path) else "durable",
        consistency="strong",
        max_item_bytes=settings.max_item_bytes,
        max_value_bytes=settings.max_value_bytes,
    )


KEYVALUE = KeyValueBackendType(
    settings_type=SqliteSettings,
    create=SqliteKeyValue,
    # No kv.native_ttl: SQLite never expires rows, so the core filters expired
    # rows out of reads and purges them with remove().
    capabilities=frozenset({capabilities.KV_ATOMIC_MUTATE, capabilities.KV_SCAN}),
    traits=_traits,
    description="durable KeyValue in one local SQLite file (WAL), safe across processes",
)
