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

import asyncio
import contextlib
import functools
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs

from prism import capabilities
from prism.errors import BackendError
from prism.log import get_logger
from prism.spi import KeyValueBackendType, KeyValueTraits, ReadQuery, StoredItem, Version
from prism.units import ByteSize

_T = TypeVar("_T")

MiB = 1024 * 1024
MEMORY_PATH = ":memory:"

#: UPSERT arrived in SQLite 3.24 and row values in 3.15; the LWW write needs both.
MIN_SQLITE_VERSION = (3, 24, 0)

#: Builds before SQLite 3.32 allow only 999 bound parameters per statement, so a
#: long key list is looked up in batches of this size.
_KEYS_PER_STATEMENT = 500

#: Namespaces are validated by the core already; checking again here means a
#: table name built from one can never carry SQL, quoting or not.
_NAMESPACE = re.compile(r"[a-z][a-z0-9_]{0,47}")

_ROW_COLUMNS = "key, value, ver_us, ver_nonce, expires_at_us, tombstone, chunk_count, chunk_set, value_size"

_log = get_logger(__name__)


def _is_memory(path: Path) -> bool:
    return str(path) == MEMORY_PATH


def _a_file(_: Any, attribute: attrs.Attribute[Path], value: Path) -> None:
    # Path("") is Path("."): a folder, never a database file.
    if str(value) in {"", "."}:
        raise ValueError(
            f"{attribute.name}: expected a file path, or {MEMORY_PATH!r} for a database in memory"
        )


def _not_negative(_: Any, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value < timedelta(0):
        raise ValueError(f"{attribute.name}: expected a duration of zero or more, got {value}")


@attrs.frozen
class SqliteSettings:
    """The ``sqlite`` backend's keys in ``prism.yaml``."""

    path: Path = attrs.field(default=Path("prism-data/prism.db"), converter=Path, validator=_a_file)
    """The database file; missing folders are created. A ``Path`` so that the
    runtime resolves a relative path against the folder of ``prism.yaml``; one
    still relative at start (the backend used on its own) is resolved against
    the working directory. ``:memory:`` keeps the data in the process."""
    synchronous: Literal["full", "normal"] = "full"
    """``full`` syncs the WAL on every commit, so a commit survives power loss;
    ``normal`` survives a crash of the process but may lose the last commits on
    power loss, and is faster."""
    busy_timeout: timedelta = attrs.field(default=timedelta(seconds=5), validator=_not_negative)
    """How long one call waits for other connections' write locks before it
    fails with ``BackendError``."""
    max_item_bytes: ByteSize = attrs.field(default=ByteSize(MiB), validator=attrs.validators.gt(ByteSize(0)))
    """Values above this are chunked by the core."""
    max_value_bytes: ByteSize = attrs.field(
        default=ByteSize(256 * MiB), validator=attrs.validators.gt(ByteSize(0))
    )
    """The largest value, chunks included, a namespace on this backend may hold."""

    def __attrs_post_init__(self) -> None:
        if self.max_value_bytes < self.max_item_bytes:
            raise ValueError(
                f"max_value_bytes ({self.max_value_bytes}) must be at least max_item_bytes "
                f"({self.max_item_bytes})"
            )


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


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        # The low byte is the primary code; SQLITE_BUSY_SNAPSHOT and
        # SQLITE_BUSY_RECOVERY are extended codes of SQLITE_BUSY.
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc)
    return "locked" in message or "busy" in message


def _row_to_item(row: tuple[Any, ...]) -> StoredItem:
    key, value, ver_us, ver_nonce, expires_at_us, tombstone, chunk_count, chunk_set, value_size = row
    return StoredItem(
        key=bytes(key),
        value=bytes(value),
        version=Version(ver_us, ver_nonce),
        expires_at_us=expires_at_us,
        tombstone=bool(tombstone),
        chunk_count=chunk_count,
        chunk_set=chunk_set,
        value_size=value_size,
    )


def _item_params(record_id: str, item: StoredItem) -> tuple[object, ...]:
    # bytes() because SQLite orders every TEXT before every BLOB: a key bound as
    # anything but a BLOB would compare wrongly.
    return (
        record_id,
        bytes(item.key),
        bytes(item.value),
        item.version.micros,
        item.version.nonce,
        item.expires_at_us,
        int(item.tombstone),
        item.chunk_count,
        item.chunk_set,
        item.value_size,
    )


def resolve_path(path: Path) -> str:
    """The absolute database path for ``path``, relative to the working directory."""
    if _is_memory(path):
        return MEMORY_PATH
    return str((Path.cwd() / path.expanduser()).absolute())


class SqliteKeyValue:
    """The KeyValue SPI on one SQLite database file.

    Threading: sqlite3 blocks, so each backend owns exactly one worker thread
    that creates and alone uses the connection. Every SPI call ships one whole
    Python function (all of its statements and the commit) to that thread with a
    single ``run_in_executor``: one thread hop per operation, where aiosqlite
    hops once per statement and per fetch. One thread also serialises this
    process's calls on the connection, which SQLite needs anyway, since a
    connection runs one transaction at a time.
    """

    def __init__(self, name: str, settings: SqliteSettings) -> None:
        self.name = name
        self.settings = settings
        self.path = str(settings.path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the worker thread only
        self._statements: dict[str, _Statements] = {}
        self._provisioned: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------

    def _sql(self, namespace: str) -> _Statements:
        statements = self._statements.get(namespace)
        if statements is None:
            statements = self._statements[namespace] = _Statements.build(namespace)
        return statements

    def _error(self, exc: BaseException) -> BackendError:
        hint = ""
        if "no such table" in str(exc):
            hint = " (the namespace was not provisioned on this database)"
        return BackendError(f"sqlite backend {self.name!r} at {self.path}: {exc}{hint}")

    def _run(self, fn: Callable[[sqlite3.Connection], _T], begin: str | None) -> _T:
        """Run ``fn`` on the worker thread, inside ``begin`` when given, retrying
        while another connection holds the lock.

        ``busy_timeout`` makes SQLite itself wait for most locks, but some busy
        cases return at once without waiting (a WAL snapshot gone stale, recovery
        by another process), so the whole attempt is retried until the deadline.
        """
        conn = self._conn
        if conn is None:
            raise BackendError(f"sqlite backend {self.name!r} is not started")
        deadline = time.monotonic() + self.settings.busy_timeout.total_seconds()
        pause = 0.001
        attempts = 0
        while True:
            attempts += 1
            try:
                if begin is None:
                    return fn(conn)
                return self._transaction(conn, fn, begin)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise self._error(exc) from exc
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError(
                        f"sqlite backend {self.name!r}: {self.path} stayed locked by another connection "
                        f"for longer than busy_timeout ({self.settings.busy_timeout}, {attempts} attempts): "
                        f"{exc}. Another process may hold a long write transaction; retry, or raise "
                        f"busy_timeout."
                    ) from exc
                # Backing off between attempts on the worker thread; the event loop is not blocked.
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.1)
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    @staticmethod
    def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T], begin: str) -> _T:
        conn.execute(begin)
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (busy) leaves the transaction open; roll it back so
            # the retry starts clean. A rollback error must not hide the cause.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return result

    async def _call(self, fn: Callable[[sqlite3.Connection], _T], *, begin: str | None = None) -> _T:
        executor = self._executor
        if executor is None:
            raise BackendError(f"sqlite backend {self.name!r} is not started, or already closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(self._run, fn, begin))

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        # IMMEDIATE takes the write lock up front. A deferred transaction would
        # take it at its first write and, in WAL mode, fail with SQLITE_BUSY at
        # once when another process committed since it began reading.
        return await self._call(fn, begin="BEGIN IMMEDIATE")

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is not None:
            return
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise BackendError(
                f"sqlite backend {self.name!r} needs SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} "
                f"or newer (upserts and row values); this Python has {sqlite3.sqlite_version}"
            )
        self.path = resolve_path(self.settings.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"prism-sqlite-{self.name}")
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open(self) -> None:
        try:
            if self.path != MEMORY_PATH:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: the module's implicit transactions are off,
            # so BEGIN IMMEDIATE / COMMIT are exactly the ones issued here.
            self._conn = sqlite3.connect(
                self.path, timeout=self.settings.busy_timeout.total_seconds(), isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._error(exc) from exc
        try:
            self._run(self._configure, None)
        except BaseException:
            conn, self._conn = self._conn, None
            conn.close()
            raise

    def _configure(self, conn: sqlite3.Connection) -> None:
        # Only effective while the file is still empty; keeps TEXT ordering by UTF-8 bytes.
        conn.execute("PRAGMA encoding = 'UTF-8'")
        conn.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout.total_seconds() * 1000)}")
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        if mode != "wal" and self.path != MEMORY_PATH:
            # Still correct (rollback journal, with readers and writers blocking
            # each other), just slower; WAL fails on some network filesystems.
            _log.warning("sqlite_wal_unavailable", backend=self.name, path=self.path, journal_mode=mode)
        conn.execute(f"PRAGMA synchronous = {self.settings.synchronous.upper()}")
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        if self.settings.max_item_bytes > limit:
            raise BackendError(
                f"sqlite backend {self.name!r}: max_item_bytes ({self.settings.max_item_bytes}) is above "
                f"this SQLite's largest value ({limit} bytes); lower max_item_bytes"
            )

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        self._executor = None
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_connection)
        finally:
            # The worker is idle by now, so this join returns at once.
            executor.shutdown(wait=True)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

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
        keys = sorted({bytes(item.key) for item in items})
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
                previous = chunked.pop(bytes(item.key), None)
                if previous is not None:
                    replaced.append(previous)
                if item.chunk_count > 0:
                    # A later row for the same key in this call replaces this one.
                    chunked[bytes(item.key)] = item
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
        keys = sorted({bytes(key) for key in query.keys if query.matches(bytes(key))})
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
        durability="ephemeral" if _is_memory(settings.path) else "durable",
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
