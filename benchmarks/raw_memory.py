"""The baseline for the embedded memory scenarios: a plain Python dict store.

It does the equivalent work of the ``memory`` backend without Prism around it:
records of rows kept in a dict with a sorted key list (``bisect``), each row
with its version so that a write is last-write-wins, large values split into
chunks stored apart and joined on read. The methods are ``async`` (with no
await inside) so the call costs the same coroutine step on both sides. As the
datastore is the process itself, the ratio against it is **pure core
overhead**: validation, versions, TTL and tombstone filtering, paging, the
SPI's row objects and the ``Item`` objects handed back.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Sequence


class _Record:
    __slots__ = ("keys", "rows")

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.rows: dict[bytes, tuple[int, bytes, int, str]] = {}  # key -> (version, value, chunks, set)


class RawDict:
    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}
        self._chunks: dict[tuple[str, bytes, str], list[bytes]] = {}

    def _write(self, record_id: str, key: bytes, row: tuple[int, bytes, int, str]) -> str | None:
        """Last write wins; returns the chunk set a write replaced."""
        record = self._records.get(record_id)
        if record is None:
            record = self._records[record_id] = _Record()
        current = record.rows.get(key)
        if current is None:
            bisect.insort(record.keys, key)
        elif current[0] >= row[0]:
            return None
        record.rows[key] = row
        return current[3] if current is not None and current[2] else None

    async def get(self, record_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        record = self._records.get(record_id)
        if record is None:
            return {}
        return {k: record.rows[k][1] for k in sorted(set(keys)) if k in record.rows}

    async def get_range(self, record_id: str, start: bytes, end: bytes, limit: int) -> list[bytes]:
        record = self._records.get(record_id)
        if record is None:
            return []
        lo = bisect.bisect_left(record.keys, start)
        hi = bisect.bisect_left(record.keys, end, lo)
        return [record.rows[k][1] for k in record.keys[lo : min(hi, lo + limit)]]

    async def put(self, record_id: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        version = time.time_ns()
        for key, value in items:
            self._write(record_id, key, (version, value, 0, ""))

    async def put_chunked(self, record_id: str, key: bytes, value: bytes, chunk_bytes: int) -> None:
        chunk_set = os.urandom(12).hex()
        self._chunks[(record_id, key, chunk_set)] = [
            value[i : i + chunk_bytes] for i in range(0, len(value), chunk_bytes)
        ]
        count = len(self._chunks[(record_id, key, chunk_set)])
        old = self._write(record_id, key, (time.time_ns(), b"", count, chunk_set))
        if old is not None:
            self._chunks.pop((record_id, key, old), None)

    async def get_chunked(self, record_id: str, key: bytes) -> bytes:
        _, value, count, chunk_set = self._records[record_id].rows[key]
        if not count:
            return value
        return b"".join(self._chunks[(record_id, key, chunk_set)][:count])
