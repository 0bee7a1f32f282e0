"""The baseline for the embedded redis scenarios: redis-py's asyncio client
itself, sending the commands and Lua scripts the ``redis`` plugin sends for each
operation, and nothing else.

The scripts are the plugin's own (imported, not copied, so the baseline follows
any change to them), the keys have the plugin's layout and the rows its binary
format (see ``prism_redis.keyvalue``), so Redis does exactly the same work. The
connection pool is the plugin's kind (a blocking pool, hiredis parsing). What is
*not* here is Prism's cost: validation, versions, TTL and tombstone filtering,
paging, the SPI's row objects, and the core's checks around chunked values.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from prism_redis.keyvalue import _READ_RANGE, _WRITE

_BIAS = 1 << 63
_CHUNKED = 4
_TAIL = struct.Struct(">qI")
_SIZE = struct.Struct(">Q")


def encode_row(
    value: bytes, *, chunk_count: int = 0, chunk_set: str = "", value_size: int | None = None
) -> bytes:
    """A row in the plugin's format: the version (now, a fresh nonce) first, so
    the write script can compare it, then flags, chunk bookkeeping and the value."""
    version = struct.pack(">Q", time.time_ns() // 1000 + _BIAS) + ("~raw-" + os.urandom(6).hex()).encode()
    set_bytes = chunk_set.encode("ascii")
    return b"".join(
        (
            struct.pack(">H", len(version)),
            version,
            bytes((_CHUNKED if chunk_count else 0,)),
            _TAIL.pack(0, chunk_count),
            bytes((len(set_bytes),)),
            set_bytes,
            _SIZE.pack(len(value) if value_size is None else value_size),
            value,
        )
    )


def parse_row(raw: bytes) -> tuple[bytes, int, str]:
    """The value, chunk count and chunk set of a stored row."""
    (n,) = struct.unpack_from(">H", raw)
    pos = 2 + n + 1
    _, chunk_count = _TAIL.unpack_from(raw, pos)
    pos += _TAIL.size
    set_len = raw[pos]
    chunk_set = raw[pos + 1 : pos + 1 + set_len].decode("ascii")
    pos += 1 + set_len + _SIZE.size
    return raw[pos:], chunk_count, chunk_set


class RawRedis:
    """A redis-py asyncio client on the plugin's key layout under ``key_prefix``."""

    def __init__(self, url: str, key_prefix: str, namespace: str, *, grace_ms: int = 60_000) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=32, decode_responses=False)
        self.client = aioredis.Redis(connection_pool=pool)
        self._base = f"{key_prefix}:{namespace}:".encode()
        self._grace = str(grace_ms)
        self._write: AsyncScript = self.client.register_script(_WRITE)
        self._read_range: AsyncScript = self.client.register_script(_READ_RANGE)

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)

    def _keys(self, record_id: str) -> list[bytes]:
        rid = record_id.encode()
        b = self._base
        return [b + b"z:" + rid, b + b"h:" + rid, b + b"m:" + rid, b + b"records"]

    def _chunk_key(self, record_id: str, key: bytes, chunk_set: str) -> bytes:
        rid = record_id.encode()
        return b"%sc:%d:%s%d:%s:%s" % (self._base, len(rid), rid, len(key), key, chunk_set.encode())

    # -- the operations the scenarios time ----------------------------------------------

    async def get(self, record_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """One ``HMGET`` of the record's row hash."""
        rows: list[Any] = await self.client.hmget(self._keys(record_id)[1], list(keys))
        return {k: parse_row(r)[0] for k, r in zip(keys, rows, strict=True) if r is not None}

    async def get_range(self, record_id: str, start: bytes, end: bytes, limit: int) -> list[bytes]:
        """The plugin's range script: ``ZRANGEBYLEX`` then ``HMGET``, one snapshot."""
        zset, rows, _, _ = self._keys(record_id)
        reply: list[Any] = await self._read_range(
            keys=[zset, rows], args=[b"[" + start, b"(" + end, limit + 1]
        )
        return [parse_row(reply[i + 1])[0] for i in range(0, len(reply), 2)]

    async def _write_rows(self, record_id: str, rows: Sequence[tuple[bytes, bytes]]) -> list[Any]:
        args: list[bytes | str] = [record_id.encode(), self._grace]
        for key, row in rows:
            args += [key, row, ""]
        reply: list[Any] = await self._write(keys=self._keys(record_id), args=args)
        return reply

    async def put(self, record_id: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        """The plugin's write script: last-write-wins per row, in one call."""
        await self._write_rows(record_id, [(key, encode_row(value)) for key, value in items])

    async def put_chunked(self, record_id: str, key: bytes, value: bytes, chunk_bytes: int) -> None:
        """The chunk list replaced whole in MULTI/EXEC, then the row that points
        at it, then the chunk set it replaced deleted."""
        chunk_set = os.urandom(12).hex()
        chunks = [value[i : i + chunk_bytes] for i in range(0, len(value), chunk_bytes)]
        name = self._chunk_key(record_id, key, chunk_set)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(name)
            for chunk in chunks:
                pipe.rpush(name, chunk)
            await pipe.execute()
        row = encode_row(b"", chunk_count=len(chunks), chunk_set=chunk_set, value_size=len(value))
        replaced = await self._write_rows(record_id, [(key, row)])
        for i in range(0, len(replaced), 2):
            _, _, old_set = parse_row(replaced[i + 1])
            await self.client.delete(self._chunk_key(record_id, key, old_set))

    async def get_chunked(self, record_id: str, key: bytes) -> bytes:
        """``HMGET`` of the row, then ``LRANGE`` of its chunk list."""
        rows: list[Any] = await self.client.hmget(self._keys(record_id)[1], [key])
        value, chunk_count, chunk_set = parse_row(rows[0])
        if not chunk_count:
            return value
        chunks: list[Any] = await self.client.lrange(
            self._chunk_key(record_id, key, chunk_set), 0, chunk_count - 1
        )
        return b"".join(chunks)

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
