"""The ``memory`` backend: the reference implementation of every KeyValue capability,
and of every Queue capability (in :mod:`prism.backends.memory_queue`), of
TimeSeries (:mod:`prism.backends.memory_timeseries`) and of both Counter modes
(:mod:`prism.backends.memory_counter`).

Data lives in the process and is lost when it exits. Every operation runs without
awaiting in between, so on one event loop each call is atomic, which is what
``kv.atomic_mutate`` asks for.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import attrs

from prism import capabilities
from prism.backends.memory_counter import MemoryCounter
from prism.backends.memory_queue import MemoryQueue
from prism.backends.memory_timeseries import MemoryTimeSeries
from prism.plugins import hookimpl
from prism.plugins.registry import BackendRegistry
from prism.spi import (
    CounterBackendType,
    CounterTraits,
    KeyValueBackendType,
    KeyValueTraits,
    QueueBackendType,
    QueueTraits,
    ReadQuery,
    StoredItem,
    TimeSeriesBackendType,
    TimeSeriesTraits,
    Version,
)
from prism.units import ByteSize

MiB = 1024 * 1024

#: Why memory is never durable, for refused plans.
MEMORY_NOTE = "data lives in the process and is lost when it exits"


@attrs.frozen
class MemorySettings:
    max_item_bytes: ByteSize = ByteSize(MiB)
    """Values above this are chunked by the core (as Netflix does above 1 MiB)."""
    max_value_bytes: ByteSize = ByteSize(64 * MiB)


@attrs.define
class _Record:
    keys: list[bytes] = attrs.Factory(list)  # sorted
    rows: dict[bytes, StoredItem] = attrs.Factory(dict)


class MemoryKeyValue:
    def __init__(self, name: str, settings: MemorySettings) -> None:
        self.name = name
        self.settings = settings
        self._namespaces: dict[str, dict[str, _Record]] = {}
        self._chunks: dict[tuple[str, str, bytes, str], list[bytes]] = {}

    async def start(self) -> None:
        return None

    async def provision(self, namespace: str) -> None:
        self._namespaces.setdefault(namespace, {})

    def _records(self, namespace: str) -> dict[str, _Record]:
        return self._namespaces.setdefault(namespace, {})

    async def write(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        record = self._records(namespace).setdefault(record_id, _Record())
        replaced: list[StoredItem] = []
        for item in items:
            current = record.rows.get(item.key)
            if current is None:
                bisect.insort(record.keys, item.key)
            elif current.version >= item.version:
                continue
            elif current.chunk_count:
                replaced.append(current)
            record.rows[item.key] = item
        return replaced

    async def read(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        record = self._records(namespace).get(record_id)
        if record is None:
            return []
        if query.keys is not None:
            candidates = sorted(k for k in set(query.keys) if k in record.rows)
        else:
            lower = query.start if query.start is not None else b""
            lo = bisect.bisect_left(record.keys, lower)
            if query.after is not None:
                lo = max(lo, bisect.bisect_right(record.keys, query.after))
            candidates = record.keys[lo:]
        out: list[StoredItem] = []
        for key in candidates:
            if len(out) >= query.limit:
                break
            if query.end is not None and key >= query.end:
                break
            if query.matches(key):
                out.append(record.rows[key])
        return out

    async def remove(self, namespace: str, record_id: str, rows: Sequence[tuple[bytes, Version]]) -> None:
        records = self._records(namespace)
        record = records.get(record_id)
        if record is None:
            return
        for key, version in rows:
            current = record.rows.get(key)
            if current is not None and current.version == version:
                del record.rows[key]
                record.keys.pop(bisect.bisect_left(record.keys, key))
        if not record.rows:
            del records[record_id]

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        ids = sorted(self._records(namespace), key=lambda r: r.encode("utf-8"))
        if after is not None:
            cut = after.encode("utf-8")
            ids = [r for r in ids if r.encode("utf-8") > cut]
        return ids[:limit]

    async def write_chunks(
        self,
        namespace: str,
        record_id: str,
        key: bytes,
        chunk_set: str,
        chunks: Sequence[bytes],
        expires_at_us: int | None,
    ) -> None:
        self._chunks[(namespace, record_id, key, chunk_set)] = list(chunks)

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, chunk_set: str, count: int
    ) -> list[bytes]:
        return list(self._chunks.get((namespace, record_id, key, chunk_set), [])[:count])

    async def delete_chunks(self, namespace: str, record_id: str, key: bytes, chunk_set: str) -> None:
        self._chunks.pop((namespace, record_id, key, chunk_set), None)

    async def close(self) -> None:
        self._namespaces.clear()
        self._chunks.clear()


def _traits(settings: MemorySettings) -> KeyValueTraits:
    return KeyValueTraits(
        durability="ephemeral",
        consistency="strong",
        max_item_bytes=settings.max_item_bytes,
        max_value_bytes=settings.max_value_bytes,
        durability_note=MEMORY_NOTE,
    )


KEYVALUE = KeyValueBackendType(
    settings_type=MemorySettings,
    create=MemoryKeyValue,
    capabilities=frozenset({capabilities.KV_ATOMIC_MUTATE, capabilities.KV_SCAN}),
    traits=_traits,
    description="in-process reference backend; data is lost when the process exits",
)


@hookimpl
def prism_register_keyvalue(registry: BackendRegistry) -> None:
    registry.add_keyvalue("memory", KEYVALUE)


def _queue_traits(settings: MemorySettings) -> QueueTraits:
    return QueueTraits(
        durability="ephemeral", max_message_bytes=settings.max_value_bytes, durability_note=MEMORY_NOTE
    )


QUEUE = QueueBackendType(
    settings_type=MemorySettings,
    create=MemoryQueue,
    capabilities=frozenset({capabilities.QUEUE_ORDERED_BY_KEY, capabilities.QUEUE_DELAY}),
    traits=_queue_traits,
    description="in-process reference backend; messages are lost when the process exits",
)


@hookimpl
def prism_register_queue(registry: BackendRegistry) -> None:
    registry.add_queue("memory", QUEUE)


def _timeseries_traits(settings: MemorySettings) -> TimeSeriesTraits:
    # Memory could hold any size; max_value_bytes (64 MiB by default) is the
    # same bound the KeyValue side puts on one value.
    return TimeSeriesTraits(
        durability="ephemeral", max_event_bytes=settings.max_value_bytes, durability_note=MEMORY_NOTE
    )


TIMESERIES = TimeSeriesBackendType(
    settings_type=MemorySettings,
    create=MemoryTimeSeries,
    # No timeseries.native_retention: nothing expires by itself here; the core
    # filters old events out of reads and purges them.
    capabilities=frozenset(),
    traits=_timeseries_traits,
    description="in-process reference backend; events are lost when the process exits",
)


@hookimpl
def prism_register_timeseries(registry: BackendRegistry) -> None:
    registry.add_timeseries("memory", TIMESERIES)


def _counter_traits(settings: MemorySettings) -> CounterTraits:
    return CounterTraits(durability="ephemeral", durability_note=MEMORY_NOTE)


COUNTER = CounterBackendType(
    settings_type=MemorySettings,
    create=MemoryCounter,
    capabilities=frozenset({capabilities.COUNTER_BEST_EFFORT, capabilities.COUNTER_EXACT}),
    traits=_counter_traits,
    description="in-process reference backend; counters are lost when the process exits",
)


@hookimpl
def prism_register_counter(registry: BackendRegistry) -> None:
    registry.add_counter("memory", COUNTER)
