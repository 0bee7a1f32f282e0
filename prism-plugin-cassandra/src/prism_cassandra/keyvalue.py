"""The ``cassandra`` KeyValue backend: the Netflix KV data model on Apache Cassandra.

Data model
----------
One keyspace per configured backend (``keyspace``, created with the configured
replication) and one table per namespace, named after the namespace::

    CREATE TABLE "<namespace>" (
        record_id text, kind tinyint, key blob, row blob,
        PRIMARY KEY ((record_id, kind), key)
    ) WITH CLUSTERING ORDER BY (key ASC)

``kind`` splits one record into partitions that never mix:

* ``kind = 0``: the record's items. The record id is the partition key and the
  item key the clustering column, so a record is one partition read in key
  order; Cassandra orders ``blob`` clustering values bytewise unsigned, which is
  the SPI's order.
* ``kind = 1``: the chunks of the record's large values, clustered by
  ``chunk_set ‖ 0x00 ‖ index`` so that one chunk set is one clustering range.
* ``kind = 2`` under the record id ``""``: the namespace's record index, one
  clustering row per record id (its UTF-8 bytes), so that ``scan_records`` reads
  record ids in ascending UTF-8 order (partition keys come back in token order,
  which is no order at all).

Last write wins
---------------
Each item row is written with ``USING TIMESTAMP`` = the version's microseconds,
so Cassandra itself keeps the newest row on every replica, with no read and no
lock. Cassandra breaks timestamp ties by comparing cell *values*, per cell. That
is why an item row is one cell (``row``), whose bytes start with the version's
nonce in an order-preserving encoding: at equal microseconds the whole row with
the greater nonce wins, and two writes can never mix their columns. See
``README.md`` for the one case where a tie is decided otherwise (TTLs).
"""

from __future__ import annotations

import asyncio
import math
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Literal, TypeVar

import attrs
from cassandra import ConsistencyLevel, DriverException
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement, tuple_factory

from prism import capabilities
from prism.errors import BackendError
from prism.spi import KeyValueBackendType, KeyValueTraits, ReadQuery, StoredItem, Version
from prism.units import ByteSize

_T = TypeVar("_T")

MiB = 1024 * 1024

#: Cassandra refuses TTLs above 20 years.
MAX_TTL_SECONDS = 20 * 365 * 24 * 3600

KIND_ITEMS = 0
KIND_CHUNKS = 1
KIND_INDEX = 2

#: Namespaces are validated by the core already; checking again here means a
#: table name built from one can never carry CQL.
_NAMESPACE = re.compile(r"[a-z][a-z0-9_]{0,47}")
_KEYSPACE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")

#: Keys per ``IN ?`` lookup: a long IN list makes one coordinator fan out a lot.
_KEYS_PER_STATEMENT = 100

#: A non-atomic write is split into batches of about this many bytes; one
#: Cassandra mutation may not exceed half a commit-log segment (16 MiB by default).
_BATCH_BYTES = 4 * MiB

#: Record ids this process has put into the record index, per namespace; writes
#: of a known record skip the index insert. Bounded so it cannot grow forever.
_INDEX_CACHE = 10_000

#: ``any`` is left out: Cassandra refuses it for reads.
ConsistencyName = Literal["one", "two", "three", "quorum", "all", "local_quorum", "each_quorum", "local_one"]

_CONSISTENCY: dict[str, int] = {
    "one": ConsistencyLevel.ONE,
    "two": ConsistencyLevel.TWO,
    "three": ConsistencyLevel.THREE,
    "quorum": ConsistencyLevel.QUORUM,
    "all": ConsistencyLevel.ALL,
    "local_quorum": ConsistencyLevel.LOCAL_QUORUM,
    "each_quorum": ConsistencyLevel.EACH_QUORUM,
    "local_one": ConsistencyLevel.LOCAL_ONE,
}
#: What the driver raises: its own errors (timeouts, server errors), and
#: connection and socket errors that do not derive from DriverException.
_DRIVER_ERRORS = (DriverException, NoHostAvailable, ConnectionException, OSError)

_QUORUM_LEVELS = {"quorum", "all", "local_quorum", "each_quorum"}


def _positive_duration(_: Any, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name}: expected a duration above zero, got {value}")


def _keyspace_name(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not _KEYSPACE.fullmatch(value):
        raise ValueError(
            f"{attribute.name}: {value!r} is not a Cassandra keyspace name "
            "(a letter, then letters, digits or '_', at most 48)"
        )


def _not_empty(_: Any, attribute: attrs.Attribute[list[str]], value: list[str]) -> None:
    if not value:
        raise ValueError(f"{attribute.name}: name at least one contact point")


@attrs.frozen
class CassandraSettings:
    """The ``cassandra`` backend's keys in ``prism.yaml``."""

    contact_points: list[str] = attrs.field(factory=lambda: ["127.0.0.1"], validator=_not_empty)
    """Hosts the driver first connects to; it discovers the rest of the ring."""
    port: int = attrs.field(default=9042, validator=[attrs.validators.gt(0), attrs.validators.lt(65536)])
    """The native-transport (CQL) port."""
    keyspace: str = attrs.field(default="prism", validator=_keyspace_name)
    """The keyspace holding one table per namespace; created when missing."""
    replication_factor: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    """Replicas of each row under ``SimpleStrategy``; ignored when ``replication`` is set."""
    replication: dict[str, int] | None = None
    """Replicas per datacenter (``NetworkTopologyStrategy``), e.g. ``{dc1: 3, dc2: 3}``."""
    local_datacenter: str | None = None
    """The datacenter whose nodes coordinate requests; the driver picks one when unset."""
    consistency: ConsistencyName = "local_quorum"
    """The consistency level of every read and write."""
    connect_timeout: timedelta = attrs.field(default=timedelta(seconds=5), validator=_positive_duration)
    """How long connecting to one node may take; ``start`` gives up after about twice this."""
    request_timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive_duration)
    """How long one statement may take before it fails with ``BackendError``."""
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    max_item_bytes: ByteSize = attrs.field(default=ByteSize(MiB), validator=attrs.validators.gt(ByteSize(0)))
    """Values above this are chunked by the core. Cassandra handles rows of a few
    MiB well; far larger cells strain its heap and commit log."""
    max_value_bytes: ByteSize = attrs.field(
        default=ByteSize(64 * MiB), validator=attrs.validators.gt(ByteSize(0))
    )
    """The largest value, chunks included, a namespace on this backend may hold."""

    def __attrs_post_init__(self) -> None:
        if self.max_value_bytes < self.max_item_bytes:
            raise ValueError(
                f"max_value_bytes ({self.max_value_bytes}) must be at least max_item_bytes "
                f"({self.max_item_bytes})"
            )
        if self.max_item_bytes > _BATCH_BYTES * 2:
            raise ValueError(
                f"max_item_bytes ({self.max_item_bytes}) is above {_BATCH_BYTES * 2} bytes; Cassandra "
                "refuses mutations above half a commit-log segment, so keep items small"
            )
        if self.replication is not None and (
            not self.replication or any(n < 1 for n in self.replication.values())
        ):
            raise ValueError("replication: expected at least one datacenter, each with 1 or more replicas")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together: set both or neither")

    @property
    def address(self) -> str:
        return ", ".join(f"{host}:{self.port}" for host in self.contact_points)


# -- the row cell ----------------------------------------------------------------------

_FLAG_TOMBSTONE = 1
_FLAG_EXPIRES = 2
# flags, expires_at_us, chunk_count, value_size, len(chunk_set)
_HEADER = struct.Struct(">BqIqH")


def encode_nonce(nonce: str) -> bytes:
    """``nonce`` as bytes whose unsigned bytewise order is the string order.

    UTF-8 keeps code-point order; 0x00 becomes 0x00 0xFF and the end is 0x00 0x01,
    so a nonce that is a prefix of another sorts first, and the encoding is
    self-delimiting. Cassandra compares cell values this way to break a timestamp
    tie, which is what makes the greater nonce win.
    """
    return nonce.encode("utf-8").replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def _decode_nonce(data: bytes) -> tuple[str, int]:
    """The nonce at the start of ``data`` and the offset just after it."""
    out = bytearray()
    i = 0
    while True:
        j = data.index(b"\x00", i)
        out += data[i:j]
        marker = data[j + 1]
        if marker == 0x01:
            return out.decode("utf-8"), j + 2
        if marker != 0xFF:
            raise ValueError(f"bad nonce escape 0x{marker:02x} at {j + 1}")
        out.append(0)
        i = j + 2


def encode_row(item: StoredItem) -> bytes:
    """Everything of a row but its key and micros (the cell's write time) in one cell,
    the nonce first. See the module docstring for why one cell."""
    flags = (_FLAG_TOMBSTONE if item.tombstone else 0) | (
        _FLAG_EXPIRES if item.expires_at_us is not None else 0
    )
    chunk_set = item.chunk_set.encode("utf-8")
    header = _HEADER.pack(flags, item.expires_at_us or 0, item.chunk_count, item.value_size, len(chunk_set))
    return b"".join((encode_nonce(item.version.nonce), header, chunk_set, bytes(item.value)))


def decode_row(key: bytes, cell: bytes, micros: int) -> StoredItem:
    nonce, at = _decode_nonce(cell)
    flags, expires, chunk_count, value_size, set_len = _HEADER.unpack_from(cell, at)
    at += _HEADER.size
    chunk_set = cell[at : at + set_len].decode("utf-8")
    return StoredItem(
        key=bytes(key),
        value=bytes(cell[at + set_len :]),
        version=Version(micros, nonce),
        expires_at_us=expires if flags & _FLAG_EXPIRES else None,
        tombstone=bool(flags & _FLAG_TOMBSTONE),
        chunk_count=chunk_count,
        chunk_set=chunk_set,
        value_size=value_size,
    )


def ttl_seconds(expires_at_us: int | None, now_us: int) -> int:
    """The ``USING TTL`` for a row expiring at ``expires_at_us``; 0 means none.

    Cassandra counts TTLs in whole seconds from its own clock, so this rounds up
    and adds one second: a row never disappears before ``expires_at_us`` (unless
    the server's clock runs more than a second behind ours) and may linger up to
    two seconds after it, hidden by the core, which filters by ``expires_at_us``
    exactly. A row already expired gets the shortest TTL; one beyond Cassandra's
    longest TTL gets none and stays hidden by the core.
    """
    if expires_at_us is None:
        return 0
    seconds = math.ceil((expires_at_us - now_us) / 1_000_000) + 1
    if seconds > MAX_TTL_SECONDS:
        return 0
    return max(seconds, 1)


def chunk_prefix(chunk_set: str) -> bytes:
    return chunk_set.encode("utf-8") + b"\x00"


def chunk_key(chunk_set: str, index: int) -> bytes:
    return chunk_prefix(chunk_set) + index.to_bytes(4, "big")


def chunk_bounds(chunk_set: str) -> tuple[bytes, bytes]:
    """``[lo, hi)`` holding every chunk key of ``chunk_set`` and nothing else."""
    return chunk_prefix(chunk_set), chunk_set.encode("utf-8") + b"\x01"


def range_clause(query: ReadQuery) -> tuple[str, list[bytes]]:
    """The CQL key restrictions of a range query, and their values.

    Cassandra takes at most one lower bound per column, so ``start`` (inclusive)
    and ``after`` (exclusive) are merged into whichever is tighter.
    """
    clauses: list[str] = []
    params: list[bytes] = []
    start, after = query.start, query.after
    if after is not None and (start is None or after >= start):
        clauses.append("key > ?")
        params.append(bytes(after))
    elif start is not None:
        clauses.append("key >= ?")
        params.append(bytes(start))
    if query.end is not None:
        clauses.append("key < ?")
        params.append(bytes(query.end))
    return "".join(f" AND {c}" for c in clauses), params


def now_micros() -> int:
    return time.time_ns() // 1000


class _Statements:
    """CQL of one namespace; prepared on first use and kept."""

    def __init__(self, keyspace: str, namespace: str) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise BackendError(f"cassandra backend: {namespace!r} is not a valid namespace name")
        table = f'"{keyspace}"."{namespace}"'
        self.create = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " record_id text, kind tinyint, key blob, row blob,"
            " PRIMARY KEY ((record_id, kind), key)"
            ") WITH CLUSTERING ORDER BY (key ASC)"
        )
        where = "WHERE record_id = ? AND kind = ?"
        self.select = f"SELECT key, row, WRITETIME(row) FROM {table} {where}"
        self.select_keys = f"{self.select} AND key IN ?"
        # UPDATE, not INSERT: no row marker, so the one ``row`` cell is the whole
        # row, and deleting it leaves nothing behind.
        self.upsert = f"UPDATE {table} USING TIMESTAMP ? AND TTL ? SET row = ? {where} AND key = ?"
        self.remove = f"DELETE FROM {table} USING TIMESTAMP ? {where} AND key = ?"
        self.index_add = f"INSERT INTO {table} (record_id, kind, key) VALUES ('', {KIND_INDEX}, ?)"
        self.index_scan = f"SELECT key FROM {table} WHERE record_id = '' AND kind = {KIND_INDEX}"
        self.chunk_put = f"UPDATE {table} USING TTL ? SET row = ? {where} AND key = ?"
        self.chunk_select = f"SELECT key, row FROM {table} {where} AND key >= ? AND key < ?"
        self.chunk_delete = f"DELETE FROM {table} {where} AND key >= ? AND key < ?"

    def range_select(self, clause: str) -> str:
        return f"{self.select}{clause} LIMIT ?"

    def scan(self, after: bool) -> str:
        return f"{self.index_scan} AND key > ? LIMIT ?" if after else f"{self.index_scan} LIMIT ?"

    def everything(self) -> list[str]:
        """Every statement the namespace runs, so that all are prepared up front."""
        ranges = [
            self.range_select(lower + upper)
            for lower in ("", " AND key >= ?", " AND key > ?")
            for upper in ("", " AND key < ?")
        ]
        return [
            *ranges,
            self.select_keys,
            self.upsert,
            self.remove,
            self.index_add,
            self.scan(after=False),
            self.scan(after=True),
            self.chunk_put,
            self.chunk_select,
            self.chunk_delete,
        ]


class CassandraKeyValue:
    """The KeyValue SPI on one Cassandra cluster.

    Asyncio: every statement runs with ``Session.execute_async``; the driver's
    I/O thread completes its ``ResponseFuture`` and the callbacks hand the result
    to the event loop with ``call_soon_threadsafe``, so the loop never blocks on
    the network. Only connecting, schema changes, preparing and shutting down
    block, and those run on the loop's default executor.
    """

    def __init__(self, name: str, settings: CassandraSettings) -> None:
        self.name = name
        self.settings = settings
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._statements: dict[str, _Statements] = {}
        self._prepared: dict[str, PreparedStatement] = {}
        self._provisioned: set[str] = set()
        self._keyspace_ready = False
        self._indexed: dict[str, OrderedDict[str, None]] = {}

    # -- plumbing ---------------------------------------------------------------------

    def _error(self, exc: BaseException, doing: str) -> BackendError:
        hint = ""
        if "unconfigured table" in str(exc) or "does not exist" in str(exc):
            hint = " (the namespace was not provisioned in this keyspace)"
        return BackendError(
            f"cassandra backend {self.name!r} at {self.settings.address}: {doing} failed: "
            f"{type(exc).__name__}: {exc}{hint}"
        )

    def _sql(self, namespace: str) -> _Statements:
        statements = self._statements.get(namespace)
        if statements is None:
            statements = self._statements[namespace] = _Statements(self.settings.keyspace, namespace)
        return statements

    def _live_session(self) -> Session:
        if self._session is None:
            raise BackendError(f"cassandra backend {self.name!r} is not started, or already closed")
        return self._session

    async def _blocking(self, fn: Callable[[], _T], doing: str) -> _T:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn)
        except _DRIVER_ERRORS as exc:
            raise self._error(exc, doing) from exc

    async def _prepare(self, cql: str) -> PreparedStatement:
        prepared = self._prepared.get(cql)
        if prepared is None:
            session = self._live_session()
            prepared = await self._blocking(lambda: session.prepare(cql), "preparing a statement")
            self._prepared[cql] = prepared
        return prepared

    async def _execute(self, statement: Any, params: Sequence[object] | None, doing: str) -> list[Any]:
        """Run one statement without blocking the loop; its rows, unpaged."""
        session = self._live_session()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()

        def deliver(rows: Any) -> None:
            if not done.done():
                done.set_result(list(rows) if rows is not None else [])

        def fail(exc: BaseException) -> None:
            if not done.done():
                done.set_exception(exc)

        try:
            response = session.execute_async(
                statement, params, timeout=self.settings.request_timeout.total_seconds()
            )
        except _DRIVER_ERRORS as exc:
            raise self._error(exc, doing) from exc
        # The driver calls these on its I/O thread (or at once, here, when the
        # result is already in): hand over to the loop's thread either way.
        response.add_callbacks(
            lambda rows: loop.call_soon_threadsafe(deliver, rows),
            errback=lambda exc: loop.call_soon_threadsafe(fail, exc),
        )
        try:
            return await done
        except _DRIVER_ERRORS as exc:
            raise self._error(exc, doing) from exc

    async def _run(self, cql: str, params: Sequence[object], doing: str) -> list[Any]:
        prepared = await self._prepare(cql)
        return await self._execute(prepared.bind(params), None, doing)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is not None:
            return
        s = self.settings
        connect_s = s.connect_timeout.total_seconds()
        balancing = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=s.local_datacenter))
        profile = ExecutionProfile(
            load_balancing_policy=balancing,
            consistency_level=_CONSISTENCY[s.consistency],
            request_timeout=s.request_timeout.total_seconds(),
            row_factory=tuple_factory,
        )
        options: dict[str, Any] = {}
        try:
            # libev runs the driver's I/O on its own C loop; asyncore, the
            # fallback, is gone from Python 3.12.
            from cassandra.io.libevreactor import LibevConnection

            options["connection_class"] = LibevConnection
        except ImportError:  # pragma: no cover - depends on how the driver was built
            pass
        if s.username is not None and s.password is not None:
            options["auth_provider"] = PlainTextAuthProvider(username=s.username, password=s.password)
        cluster = Cluster(
            contact_points=list(s.contact_points),
            port=s.port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=connect_s,
            control_connection_timeout=connect_s,
            **options,
        )
        loop = asyncio.get_running_loop()
        connecting = loop.run_in_executor(None, cluster.connect)
        try:
            # The driver bounds each attempt by connect_timeout; this bounds the
            # whole of it, whatever the driver does on a half-open network.
            session = await asyncio.wait_for(asyncio.shield(connecting), timeout=connect_s * 2 + 5)
        except BaseException as exc:
            # Shut the half-made cluster down off the loop once the attempt ends.
            connecting.add_done_callback(lambda _: loop.run_in_executor(None, cluster.shutdown))
            if isinstance(exc, asyncio.TimeoutError):
                raise BackendError(
                    f"cassandra backend {self.name!r} at {s.address}: connecting did not finish "
                    f"within {connect_s * 2 + 5:g}s; is the server up and the port right?"
                ) from exc
            if isinstance(exc, NoHostAvailable):
                causes = "; ".join(f"{host}: {err}" for host, err in exc.errors.items()) or str(exc)
                raise BackendError(
                    f"cassandra backend {self.name!r} at {s.address}: no host reachable ({causes})"
                ) from exc
            if isinstance(exc, _DRIVER_ERRORS):
                raise self._error(exc, "connecting") from exc
            raise
        # No paging: every read is bounded by a LIMIT or a short key list, and a
        # paged result would hand back only its first page (5000 rows by default).
        session.default_fetch_size = None
        self._cluster, self._session = cluster, session

    async def close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        self._prepared.clear()
        if cluster is not None:
            await asyncio.get_running_loop().run_in_executor(None, cluster.shutdown)

    async def ensure_keyspace(self) -> None:
        """Create the keyspace, with the configured replication, unless this
        object already did (the TimeSeries and Counter backends use it too)."""
        if self._keyspace_ready:
            return
        session = self._live_session()
        s = self.settings
        if s.replication is not None:
            dcs = ", ".join(f"'{dc}': {n}" for dc, n in sorted(s.replication.items()))
            replication = f"{{'class': 'NetworkTopologyStrategy', {dcs}}}"
        else:
            replication = f"{{'class': 'SimpleStrategy', 'replication_factor': {s.replication_factor}}}"
        cql = f'CREATE KEYSPACE IF NOT EXISTS "{s.keyspace}" WITH replication = {replication}'
        # Schema changes go through the driver's blocking path, which waits
        # for schema agreement so that every node knows the table at once.
        await self._blocking(lambda: session.execute(cql), f"creating keyspace {s.keyspace!r}")
        self._keyspace_ready = True

    # -- the SPI -------------------------------------------------------------------------

    async def provision(self, namespace: str) -> None:
        if namespace in self._provisioned:
            return
        sql = self._sql(namespace)
        session = self._live_session()
        await self.ensure_keyspace()
        await self._blocking(lambda: session.execute(sql.create), f"creating the table of {namespace!r}")
        # Prepared here, all at once, so that no data call pays a prepare round trip.
        await asyncio.gather(*(self._prepare(cql) for cql in sql.everything()))
        self._provisioned.add(namespace)

    async def _current(self, namespace: str, record_id: str, keys: Sequence[bytes]) -> list[StoredItem]:
        """The stored rows of ``keys`` (any order)."""
        sql = self._sql(namespace)
        batches = [list(keys[i : i + _KEYS_PER_STATEMENT]) for i in range(0, len(keys), _KEYS_PER_STATEMENT)]
        results = await asyncio.gather(
            *(self._run(sql.select_keys, (record_id, KIND_ITEMS, b), "reading rows") for b in batches)
        )
        return [decode_row(key, cell, ts) for rows in results for key, cell, ts in rows if cell is not None]

    async def _index(self, namespace: str, record_id: str) -> None:
        """Put ``record_id`` into the namespace's record index, before its rows
        land, so that every record with rows is listed. Entries are never taken
        out: the core checks each listed record for live items."""
        seen = self._indexed.setdefault(namespace, OrderedDict())
        if record_id in seen:
            seen.move_to_end(record_id)
            return
        await self._run(self._sql(namespace).index_add, (record_id.encode("utf-8"),), "indexing a record")
        seen[record_id] = None
        if len(seen) > _INDEX_CACHE:
            seen.popitem(last=False)

    async def write(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        if not items:
            return []
        sql = self._sql(namespace)
        # One row per key, the newest, should a caller send a key twice.
        incoming: dict[bytes, StoredItem] = {}
        for item in items:
            key = bytes(item.key)
            if key not in incoming or item.version > incoming[key].version:
                incoming[key] = item
        # Reading first is not what decides LWW (USING TIMESTAMP does, on the
        # server); it skips rows that would lose anyway, so an equal version is
        # never re-sent, and it finds the chunked rows being replaced. A race
        # between this read and the write can only leave a chunk set behind.
        # The index insert goes alongside that read, not after it, to save a
        # round trip; both end before any row is written. Indexing a record
        # whose rows all lose is harmless: it has rows (the newer ones).
        current_rows, _ = await asyncio.gather(
            self._current(namespace, record_id, list(incoming)), self._index(namespace, record_id)
        )
        stored = {row.key: row for row in current_rows}
        winners: list[StoredItem] = []
        replaced: list[StoredItem] = []
        for key, item in incoming.items():
            current = stored.get(key)
            if current is not None and current.version >= item.version:
                continue
            winners.append(item)
            if current is not None and current.chunk_count:
                replaced.append(current)
        if not winners:
            return []
        prepared = await self._prepare(sql.upsert)
        now_us = now_micros()
        bound = [
            prepared.bind(
                (
                    item.version.micros,
                    ttl_seconds(item.expires_at_us, now_us),
                    encode_row(item),
                    record_id,
                    KIND_ITEMS,
                    bytes(item.key),
                )
            )
            for item in winners
        ]
        if len(bound) == 1:
            await self._execute(bound[0], None, "writing a row")
            return replaced
        # Rows of one partition in one batch are one mutation, which Cassandra
        # applies atomically and in isolation: that is kv.atomic_mutate. A
        # non-atomic write is split so that no mutation grows too large.
        groups: list[list[Any]] = [[]]
        size = 0
        for item, statement in zip(winners, bound, strict=True):
            weight = len(item.key) + len(item.value) + 64
            if not atomic and groups[-1] and size + weight > _BATCH_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(statement)
            size += weight
        for group in groups:
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for statement in group:
                batch.add(statement)
            await self._execute(batch, None, "writing rows")
        return replaced

    async def read(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        if query.limit <= 0:
            return []
        sql = self._sql(namespace)
        if query.keys is None:
            clause, bounds = range_clause(query)
            rows = await self._run(
                sql.range_select(clause), (record_id, KIND_ITEMS, *bounds, query.limit), "reading rows"
            )
            return [decode_row(key, cell, ts) for key, cell, ts in rows if cell is not None]
        keys = sorted({bytes(k) for k in query.keys if query.matches(bytes(k))})
        if not keys:
            return []
        found = await self._current(namespace, record_id, keys)
        found.sort(key=lambda row: row.key)
        return found[: query.limit]

    async def remove(self, namespace: str, record_id: str, rows: Sequence[tuple[bytes, Version]]) -> None:
        if not rows:
            return
        sql = self._sql(namespace)
        wanted = {bytes(key): version for key, version in rows}
        current = await self._current(namespace, record_id, sorted(wanted))
        # A delete at the row's own micros removes exactly that write and
        # anything older; a newer write (greater micros) survives it, whatever
        # happens between the read and the delete.
        await asyncio.gather(
            *(
                self._run(sql.remove, (row.version.micros, record_id, KIND_ITEMS, row.key), "removing a row")
                for row in current
                if wanted.get(row.key) == row.version
            )
        )

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        if limit <= 0:
            return []
        sql = self._sql(namespace)
        if after is None:
            rows = await self._run(sql.scan(after=False), (limit,), "scanning records")
        else:
            rows = await self._run(sql.scan(after=True), (after.encode("utf-8"), limit), "scanning records")
        return [bytes(key).decode("utf-8") for (key,) in rows]

    async def write_chunks(
        self,
        namespace: str,
        record_id: str,
        key: bytes,
        chunk_set: str,
        chunks: Sequence[bytes],
        expires_at_us: int | None,
    ) -> None:
        # Chunks carry no version: a chunk set is written once under a fresh id,
        # so the driver's own timestamps are fine for them.
        sql = self._sql(namespace)
        ttl = ttl_seconds(expires_at_us, now_micros())
        await asyncio.gather(
            *(
                self._run(
                    sql.chunk_put,
                    (ttl, bytes(chunk), record_id, KIND_CHUNKS, chunk_key(chunk_set, i)),
                    "writing a chunk",
                )
                for i, chunk in enumerate(chunks)
            )
        )

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, chunk_set: str, count: int
    ) -> list[bytes]:
        if count <= 0:
            return []
        sql = self._sql(namespace)
        rows = await self._run(
            sql.chunk_select,
            (record_id, KIND_CHUNKS, chunk_key(chunk_set, 0), chunk_key(chunk_set, count)),
            "reading chunks",
        )
        out: list[bytes] = []
        for i, (ckey, data) in enumerate(rows):
            # Only the unbroken run from chunk 0: a gap means the set is going.
            if bytes(ckey) != chunk_key(chunk_set, i) or data is None:
                break
            out.append(bytes(data))
        return out

    async def delete_chunks(self, namespace: str, record_id: str, key: bytes, chunk_set: str) -> None:
        # One range tombstone for the whole set, however many chunks it has.
        lo, hi = chunk_bounds(chunk_set)
        await self._run(
            self._sql(namespace).chunk_delete, (record_id, KIND_CHUNKS, lo, hi), "deleting chunks"
        )


def _traits(settings: CassandraSettings) -> KeyValueTraits:
    if settings.replication is not None:
        replicas = max(settings.replication.values())
    else:
        replicas = settings.replication_factor
    # Quorum reads after quorum writes overlap on a replica, so a read sees every
    # acknowledged write; with one replica any level does.
    strong = settings.consistency in _QUORUM_LEVELS or replicas == 1
    return KeyValueTraits(
        durability="durable",
        consistency="strong" if strong else "eventual",
        max_item_bytes=settings.max_item_bytes,
        max_value_bytes=settings.max_value_bytes,
        max_ttl=timedelta(seconds=MAX_TTL_SECONDS - 2),
    )


KEYVALUE = KeyValueBackendType(
    settings_type=CassandraSettings,
    create=CassandraKeyValue,
    capabilities=frozenset({capabilities.KV_ATOMIC_MUTATE, capabilities.KV_SCAN, capabilities.KV_NATIVE_TTL}),
    traits=_traits,
    description="Apache Cassandra: record = partition, item key = clustering column, LWW by USING TIMESTAMP",
)
