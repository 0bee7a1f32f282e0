"""The baseline for the embedded cassandra scenarios: the DataStax
cassandra-driver itself, running the CQL the ``cassandra`` plugin runs for
each operation, and nothing else.

The statements are the plugin's own (``prism_cassandra.keyvalue._Statements``)
and so are the row cell's layout helpers (``encode_nonce``, ``_HEADER``,
``chunk_key``, ``chunk_bounds``), imported rather than copied, so that the
baseline follows any change to them. The cluster is set up as the plugin sets
it up (token-aware DC-aware balancing, the plugin's default consistency
``local_quorum``, libev I/O, tuple rows, no paging), and each statement runs
the way any asyncio program drives this driver: ``execute_async`` with the
result handed to the loop by ``call_soon_threadsafe``.

Per operation the raw side does what the plugin does: a write first reads the
stored rows of its keys (the plugin does, to skip losing rows and find
replaced chunk sets), then one ``UPDATE ... USING TIMESTAMP`` (one row) or one
unlogged batch of them (several rows); a chunked value's chunks are written
in parallel, then its row, then the replaced chunk set is deleted with one
range delete. What is *not* here is Prism's cost: validation, versions, TTL
and tombstone filtering, paging, the SPI's row objects, the core's checks
around chunked values. (The record index insert the plugin makes once per
record and process is left out: after the first write of a record it is
cached and skipped, and every timed write goes to a known record.)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, ResponseFuture, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement, tuple_factory

from prism_cassandra.keyvalue import (
    _HEADER,
    KIND_CHUNKS,
    KIND_ITEMS,
    _decode_nonce,
    _Statements,
    chunk_bounds,
    chunk_key,
    encode_nonce,
)

#: Keep in step with the plugin's default consistency (``local_quorum``).
CONSISTENCY = ConsistencyLevel.LOCAL_QUORUM


def encode_cell(
    value: bytes, nonce: str, *, chunk_count: int = 0, chunk_set: str = "", size: int = 0
) -> bytes:
    """A row cell in the plugin's layout: the nonce, the header, the chunk set, the value."""
    set_bytes = chunk_set.encode("utf-8")
    header = _HEADER.pack(0, 0, chunk_count, size or len(value), len(set_bytes))
    return b"".join((encode_nonce(nonce), header, set_bytes, value))


def parse_cell(cell: bytes) -> tuple[bytes, int, str]:
    """The value, chunk count and chunk set of a stored cell."""
    _, at = _decode_nonce(cell)
    _, _, chunk_count, _, set_len = _HEADER.unpack_from(cell, at)
    at += _HEADER.size
    return cell[at + set_len :], chunk_count, cell[at : at + set_len].decode("utf-8")


class RawCassandra:
    """One cluster connection with the plugin's settings, on its keyspace and table."""

    def __init__(self, host: str, port: int, keyspace: str, namespace: str) -> None:
        self._host, self._port = host, port
        self._sql = _Statements(keyspace, namespace)
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, PreparedStatement] = {}

    async def start(self) -> None:
        """Connect and prepare every statement (the plugin prepares them all at provisioning)."""
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=CONSISTENCY,
            request_timeout=10.0,
            row_factory=tuple_factory,
        )
        options: dict[str, Any] = {}
        try:
            from cassandra.io.libevreactor import LibevConnection

            options["connection_class"] = LibevConnection
        except ImportError:  # pragma: no cover - depends on how the driver was built
            pass
        cluster = Cluster(
            contact_points=[self._host],
            port=self._port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=5.0,
            control_connection_timeout=5.0,
            **options,
        )
        session = await asyncio.to_thread(cluster.connect)
        session.default_fetch_size = None
        self._cluster, self._session = cluster, session
        for cql in self._sql.everything():
            self._prepared[cql] = await asyncio.to_thread(session.prepare, cql)

    async def close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    async def _execute(self, statement: Any) -> list[Any]:
        session = self._session
        assert session is not None, "call start() first"
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()

        def deliver(rows: Any) -> None:
            if not done.done():
                done.set_result(list(rows) if rows is not None else [])

        def fail(exc: BaseException) -> None:
            if not done.done():
                done.set_exception(exc)

        response: ResponseFuture = session.execute_async(statement, timeout=10.0)
        response.add_callbacks(
            lambda rows: loop.call_soon_threadsafe(deliver, rows),
            errback=lambda exc: loop.call_soon_threadsafe(fail, exc),
        )
        return await done

    def _bind(self, cql: str, params: Sequence[object]) -> Any:
        return self._prepared[cql].bind(params)

    # -- the operations the scenarios time ----------------------------------------------

    async def _rows(self, record_id: str, keys: Sequence[bytes]) -> list[Any]:
        return await self._execute(self._bind(self._sql.select_keys, (record_id, KIND_ITEMS, list(keys))))

    async def get(self, record_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """One ``SELECT ... key IN ?`` of the record's partition."""
        rows = await self._rows(record_id, keys)
        return {bytes(key): parse_cell(cell)[0] for key, cell, _ in rows if cell is not None}

    async def get_range(self, record_id: str, start: bytes, end: bytes, limit: int) -> list[bytes]:
        """The plugin's range select, ``limit + 1`` rows as the core asks for."""
        cql = self._sql.range_select(" AND key >= ? AND key < ?")
        rows = await self._execute(self._bind(cql, (record_id, KIND_ITEMS, start, end, limit + 1)))
        return [parse_cell(cell)[0] for _, cell, _ in rows if cell is not None]

    async def _write_cells(self, record_id: str, cells: Sequence[tuple[bytes, bytes]]) -> list[str]:
        """The plugin's write: read the stored rows, then upsert at the version's
        micros; returns the chunk sets the write replaced."""
        current = await self._rows(record_id, [key for key, _ in cells])
        replaced: list[str] = []
        for _, cell, _ in current:
            if cell is not None:
                _, chunk_count, chunk_set = parse_cell(cell)
                if chunk_count:
                    replaced.append(chunk_set)
        micros = time.time_ns() // 1000
        bound = [
            self._bind(self._sql.upsert, (micros, 0, cell, record_id, KIND_ITEMS, key)) for key, cell in cells
        ]
        if len(bound) == 1:
            await self._execute(bound[0])
        else:
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for statement in bound:
                batch.add(statement)
            await self._execute(batch)
        return replaced

    async def put(self, record_id: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        nonce = "~raw-" + os.urandom(6).hex()
        await self._write_cells(record_id, [(key, encode_cell(value, nonce)) for key, value in items])

    async def put_chunked(self, record_id: str, key: bytes, value: bytes, chunk_bytes: int) -> None:
        """The chunks in parallel, then the row pointing at them, then the replaced set deleted."""
        chunk_set = os.urandom(12).hex()
        chunks = [value[i : i + chunk_bytes] for i in range(0, len(value), chunk_bytes)]
        await asyncio.gather(
            *(
                self._execute(
                    self._bind(
                        self._sql.chunk_put, (0, chunk, record_id, KIND_CHUNKS, chunk_key(chunk_set, i))
                    )
                )
                for i, chunk in enumerate(chunks)
            )
        )
        cell = encode_cell(
            b"", "~raw-" + os.urandom(6).hex(), chunk_count=len(chunks), chunk_set=chunk_set, size=len(value)
        )
        for old in await self._write_cells(record_id, [(key, cell)]):
            lo, hi = chunk_bounds(old)
            await self._execute(self._bind(self._sql.chunk_delete, (record_id, KIND_CHUNKS, lo, hi)))

    async def get_chunked(self, record_id: str, key: bytes) -> bytes:
        """The row, then one range select of its chunks."""
        rows = await self._rows(record_id, [key])
        value, chunk_count, chunk_set = parse_cell(rows[0][1])
        if not chunk_count:
            return value
        params = (record_id, KIND_CHUNKS, chunk_key(chunk_set, 0), chunk_key(chunk_set, chunk_count))
        chunks = await self._execute(self._bind(self._sql.chunk_select, params))
        return b"".join(bytes(data) for _, data in chunks)
