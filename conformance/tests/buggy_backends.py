"""Planted bugs: variants of the reference ``memory`` backend, each wrong in one
way a real backend could plausibly be, to prove the suite notices.

Every variant builds on :class:`YieldingMemory`, which is correct but yields to
the event loop before and after each call, as a networked datastore does.
Without that, each memory call runs to completion on the loop and no two
requests could ever interleave, so concurrency bugs would be unobservable.

Each variant becomes a plugin module (a ``prism_register_keyvalue`` hookimpl)
registered with ``load_plugins(extra={name: module})``.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from prism import capabilities
from prism.backends import memory
from prism.backends.memory import MemoryKeyValue, MemorySettings
from prism.plugins import hookimpl
from prism.plugins.manager import PluginSet, load_plugins
from prism.plugins.registry import BackendRegistry
from prism.spi import KeyValueBackendType, ReadQuery, StoredItem, Version

EVERYTHING = 1 << 30
ALL_CAPABILITIES = frozenset({capabilities.KV_ATOMIC_MUTATE, capabilities.KV_SCAN})


async def pause() -> None:
    """Let other coroutines on the loop run, and other threads submit theirs,
    as a network round trip would (the loop thread waits on a socket without
    the GIL). Without the thread switch, the sync client's threads could never
    get a request onto the loop while another one is between two calls."""
    time.sleep(0)  # noqa: ASYNC251 - the point: give other threads the GIL, as socket I/O does
    await asyncio.sleep(0)


class YieldingMemory(MemoryKeyValue):
    """The memory backend, correct, with a yield around every call."""

    async def write(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        await pause()
        replaced = await self.store_rows(namespace, record_id, items, atomic=atomic)
        await pause()
        return replaced

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        return await MemoryKeyValue.write(self, namespace, record_id, items, atomic=atomic)

    async def read(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        await pause()
        rows = await self.select_rows(namespace, record_id, query)
        await pause()
        return rows

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        return await MemoryKeyValue.read(self, namespace, record_id, query)

    async def remove(self, namespace: str, record_id: str, rows: Sequence[tuple[bytes, Version]]) -> None:
        await pause()
        await MemoryKeyValue.remove(self, namespace, record_id, rows)
        await pause()

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        await pause()
        ids = await MemoryKeyValue.scan_records(self, namespace, after, limit)
        await pause()
        return ids

    async def write_chunks(
        self,
        namespace: str,
        record_id: str,
        key: bytes,
        chunk_set: str,
        chunks: Sequence[bytes],
        expires_at_us: int | None,
    ) -> None:
        await pause()
        await MemoryKeyValue.write_chunks(self, namespace, record_id, key, chunk_set, chunks, expires_at_us)
        await pause()

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, chunk_set: str, count: int
    ) -> list[bytes]:
        await pause()
        chunks = await MemoryKeyValue.read_chunks(self, namespace, record_id, key, chunk_set, count)
        await pause()
        return chunks

    async def delete_chunks(self, namespace: str, record_id: str, key: bytes, chunk_set: str) -> None:
        await pause()
        await MemoryKeyValue.delete_chunks(self, namespace, record_id, key, chunk_set)
        await pause()

    async def force_write(self, namespace: str, record_id: str, item: StoredItem) -> None:
        """Store ``item`` whatever the stored version, in one step (no yield):
        the unconditional write some buggy variants do."""
        current = await MemoryKeyValue.read(self, namespace, record_id, ReadQuery(limit=1, keys=(item.key,)))
        if current:
            await MemoryKeyValue.remove(self, namespace, record_id, [(item.key, current[0].version)])
        await MemoryKeyValue.write(self, namespace, record_id, [item], atomic=False)


def _everything_then(
    query: ReadQuery, keep: Callable[[bytes], bool], **changes: Any
) -> tuple[ReadQuery, Callable[[list[StoredItem]], list[StoredItem]]]:
    """A wider query and a filter that re-applies the limit: how the read-side
    variants bend one rule while keeping the others."""
    wide = attrs.evolve(query, limit=EVERYTHING, **changes)

    def narrow(rows: list[StoredItem]) -> list[StoredItem]:
        return [row for row in rows if keep(row.key)][: query.limit]

    return wide, narrow


# -- read side --------------------------------------------------------------------------


class RangeEndInclusive(YieldingMemory):
    """``[start, end]`` instead of ``[start, end)``."""

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        if query.end is None:
            return await super().select_rows(namespace, record_id, query)
        end = query.end
        wide, narrow = _everything_then(query, lambda key: key <= end, end=None)
        return narrow(await super().select_rows(namespace, record_id, wide))


class RangeStartExclusive(YieldingMemory):
    """``(start, end)``: the start key is left out."""

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        if query.start is None:
            return await super().select_rows(namespace, record_id, query)
        start = query.start
        wide, narrow = _everything_then(query, lambda key: key > start)
        return narrow(await super().select_rows(namespace, record_id, wide))


class AfterInclusive(YieldingMemory):
    """The pagination cursor is inclusive: the last item of a page repeats."""

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        if query.after is None:
            return await super().select_rows(namespace, record_id, query)
        after = query.after
        wide, narrow = _everything_then(query, lambda key: key >= after, after=None)
        return narrow(await super().select_rows(namespace, record_id, wide))


class AfterSkipsNext(YieldingMemory):
    """Off by one past the cursor: the first item of every later page is dropped."""

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        rows = await super().select_rows(namespace, record_id, attrs.evolve(query, limit=query.limit + 1))
        return (rows[1:] if query.after is not None else rows)[: query.limit]


class LimitShortByOne(YieldingMemory):
    """Returns one row fewer than asked for."""

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        return await super().select_rows(
            namespace, record_id, attrs.evolve(query, limit=max(1, query.limit - 1))
        )


class LimitIgnored(YieldingMemory):
    """Returns every matching row, however many were asked for."""

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        return await super().select_rows(namespace, record_id, attrs.evolve(query, limit=EVERYTHING))


class KeysFilterIgnored(YieldingMemory):
    """A key list selects every item."""

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        return await super().select_rows(namespace, record_id, attrs.evolve(query, keys=None))


class LengthFirstKeyOrder(YieldingMemory):
    """Orders keys by length, then bytes (as an index on a length-prefixed key would)."""

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        rows = await super().select_rows(namespace, record_id, attrs.evolve(query, limit=EVERYTHING))
        return sorted(rows, key=lambda row: (len(row.key), row.key))[: query.limit]


# -- write side -------------------------------------------------------------------------


class TtlDropped(YieldingMemory):
    """Forgets the expiry of every item it stores."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        kept = [row if row.tombstone else attrs.evolve(row, expires_at_us=None) for row in items]
        return await super().store_rows(namespace, record_id, kept, atomic=atomic)


class ExpiryTruncatedToSeconds(YieldingMemory):
    """Keeps expiries in whole seconds, rounding down: items expire early."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        def truncate(row: StoredItem) -> StoredItem:
            if row.expires_at_us is None:
                return row
            return attrs.evolve(row, expires_at_us=row.expires_at_us // 1_000_000 * 1_000_000)

        return await super().store_rows(namespace, record_id, [truncate(r) for r in items], atomic=atomic)


class OlderWriteWins(YieldingMemory):
    """Last-write-wins reversed: a row replaces the stored one only if it is older."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        for item in items:
            current = await MemoryKeyValue.read(
                self, namespace, record_id, ReadQuery(limit=1, keys=(item.key,))
            )
            if not current or item.version < current[0].version:
                await self.force_write(namespace, record_id, item)
        return []


class EqualVersionOverwrites(YieldingMemory):
    """A row with the same version as the stored one replaces it: replays change data."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        for item in items:
            current = await MemoryKeyValue.read(
                self, namespace, record_id, ReadQuery(limit=1, keys=(item.key,))
            )
            if not current or item.version >= current[0].version:
                await self.force_write(namespace, record_id, item)
        return []


class ReadThenWriteVersionCheck(YieldingMemory):
    """Decides last-write-wins by reading, then writing in a second round trip:
    concurrent writers can overwrite a newer row with an older one."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        for item in items:
            current = await MemoryKeyValue.read(
                self, namespace, record_id, ReadQuery(limit=1, keys=(item.key,))
            )
            await pause()
            if not current or item.version > current[0].version:
                await self.force_write(namespace, record_id, item)
        return []


class TombstonesNotKept(YieldingMemory):
    """A delete removes the row instead of keeping a tombstone, so an older
    write arriving later brings the item back."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        rows = [row for row in items if not row.tombstone]
        for row in items:
            if row.tombstone:
                current = await MemoryKeyValue.read(
                    self, namespace, record_id, ReadQuery(limit=1, keys=(row.key,))
                )
                if current and current[0].version < row.version:
                    await MemoryKeyValue.remove(self, namespace, record_id, [(row.key, current[0].version)])
        return await super().store_rows(namespace, record_id, rows, atomic=atomic)


class EmptyValuesDropped(YieldingMemory):
    """Treats an empty value as nothing to store."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        kept = [row for row in items if row.tombstone or row.chunk_count or row.value]
        return await super().store_rows(namespace, record_id, kept, atomic=atomic)


class TrailingNulsStripped(YieldingMemory):
    """Strips trailing NUL bytes from keys, as fixed-width SQL strings do."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        rows = [attrs.evolve(row, key=row.key.rstrip(b"\x00") or b"\x00") for row in items]
        return await super().store_rows(namespace, record_id, rows, atomic=atomic)


class LastRowOfBatchDropped(YieldingMemory):
    """An off-by-one in a batch loop: the last row of a multi-row write is lost."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        rows = list(items[:-1]) if len(items) > 1 else list(items)
        return await super().store_rows(namespace, record_id, rows, atomic=atomic)


class MutationNotAtomic(YieldingMemory):
    """Declares kv.atomic_mutate but applies the rows of a mutation one by one."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        replaced: list[StoredItem] = []
        for row in items:
            replaced += await super().store_rows(namespace, record_id, [row], atomic=False)
            await pause()
        return replaced


class RemoveIgnoresVersion(YieldingMemory):
    """Purging an expired row deletes whatever row the key holds by then."""

    async def remove(self, namespace: str, record_id: str, rows: Sequence[tuple[bytes, Version]]) -> None:
        await pause()
        keys = tuple(sorted({key for key, _ in rows}))
        current = await MemoryKeyValue.read(self, namespace, record_id, ReadQuery(limit=len(keys), keys=keys))
        await MemoryKeyValue.remove(self, namespace, record_id, [(row.key, row.version) for row in current])
        await pause()


class CaseInsensitiveRecordIds(YieldingMemory):
    """Record ids compare case-insensitively, as under a default MySQL collation."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        return await super().store_rows(namespace, record_id.lower(), items, atomic=atomic)

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        return await super().select_rows(namespace, record_id.lower(), query)

    async def remove(self, namespace: str, record_id: str, rows: Sequence[tuple[bytes, Version]]) -> None:
        await super().remove(namespace, record_id.lower(), rows)


class SharedNamespaces(YieldingMemory):
    """Every namespace lands in the same place: no isolation."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        return await super().store_rows("shared", record_id, items, atomic=atomic)

    async def select_rows(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        return await super().select_rows("shared", record_id, query)

    async def remove(self, namespace: str, record_id: str, rows: Sequence[tuple[bytes, Version]]) -> None:
        await super().remove("shared", record_id, rows)

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        return await super().scan_records("shared", after, limit)


# -- scan -----------------------------------------------------------------------------------


class ScanSkipsAfterCursor(YieldingMemory):
    """Off by one past the scan cursor: the first record of every later page is lost."""

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        ids = await super().scan_records(namespace, after, limit + 1)
        return (ids[1:] if after is not None else ids)[:limit]


class ScanUnordered(YieldingMemory):
    """Lists records in the order they were created, not by id."""

    def __init__(self, name: str, settings: MemorySettings) -> None:
        super().__init__(name, settings)
        self.created: dict[str, list[str]] = {}

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        order = self.created.setdefault(namespace, [])
        if record_id not in order:
            order.append(record_id)
        return await super().store_rows(namespace, record_id, items, atomic=atomic)

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        existing = set(await super().scan_records(namespace, None, EVERYTHING))
        ids = [r for r in self.created.get(namespace, []) if r in existing]
        if after is not None and after in ids:
            ids = ids[ids.index(after) + 1 :]
        return ids[:limit]


class ScanDeclaredButBroken(YieldingMemory):
    """Declares kv.scan, but listing records fails."""

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        raise NotImplementedError("scan is not implemented yet")


# -- chunks -------------------------------------------------------------------------------


class ChunksReversed(YieldingMemory):
    """Returns a value's chunks in reverse order."""

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, chunk_set: str, count: int
    ) -> list[bytes]:
        return list(reversed(await super().read_chunks(namespace, record_id, key, chunk_set, count)))


class ChunksSharedPerKey(YieldingMemory):
    """Stores chunks per key, ignoring the chunk set, overwriting them in
    place: readers of the old value can get a mix of old and new chunks."""

    def __init__(self, name: str, settings: MemorySettings) -> None:
        super().__init__(name, settings)
        self.by_key: dict[tuple[str, str, bytes], list[bytes]] = {}

    async def write_chunks(
        self,
        namespace: str,
        record_id: str,
        key: bytes,
        chunk_set: str,
        chunks: Sequence[bytes],
        expires_at_us: int | None,
    ) -> None:
        slot = self.by_key.setdefault((namespace, record_id, key), [])
        # Written in two batches (one round trip each), read back one chunk per
        # round trip: a reader can see the first batch new and the rest old.
        half = (len(chunks) + 1) // 2
        for batch in (range(half), range(half, len(chunks))):
            await pause()
            for index in batch:
                if index < len(slot):
                    slot[index] = chunks[index]
                else:
                    slot.append(chunks[index])

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, chunk_set: str, count: int
    ) -> list[bytes]:
        slot = self.by_key.get((namespace, record_id, key), [])
        out = []
        for index in range(min(count, len(slot))):
            await pause()
            out.append(slot[index])
        return out

    async def delete_chunks(self, namespace: str, record_id: str, key: bytes, chunk_set: str) -> None:
        await pause()  # "the next write overwrites them anyway"


class ChunksWrittenLazily(YieldingMemory):
    """Acknowledges a chunk write before it is done: the row becomes visible
    before its chunks."""

    def __init__(self, name: str, settings: MemorySettings) -> None:
        super().__init__(name, settings)
        self.pending: set[asyncio.Future[None]] = set()

    async def write_chunks(
        self,
        namespace: str,
        record_id: str,
        key: bytes,
        chunk_set: str,
        chunks: Sequence[bytes],
        expires_at_us: int | None,
    ) -> None:
        await MemoryKeyValue.write_chunks(
            self, namespace, record_id, key, chunk_set, chunks[:1], expires_at_us
        )

        def finish() -> None:
            task = asyncio.ensure_future(
                MemoryKeyValue.write_chunks(self, namespace, record_id, key, chunk_set, chunks, expires_at_us)
            )
            # Keep a reference until done, or the task may be collected half-way.
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

        asyncio.get_running_loop().call_later(0.5, finish)


class ChunkSizeForgotten(YieldingMemory):
    """Does not keep a chunked row's total size."""

    async def store_rows(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        rows = [attrs.evolve(row, value_size=0) if row.chunk_count else row for row in items]
        return await super().store_rows(namespace, record_id, rows, atomic=atomic)


#: name -> (backend class, declared capabilities, the suite tests expected to catch it).
#: At least one of the expected tests must fail, and no variant may pass the suite.
PLANTED_BUGS: dict[str, tuple[type[YieldingMemory], frozenset[str], tuple[str, ...]]] = {
    "range_end_inclusive": (
        RangeEndInclusive,
        ALL_CAPABILITIES,
        ("test_range_includes_start_and_excludes_end",),
    ),
    "range_start_exclusive": (
        RangeStartExclusive,
        ALL_CAPABILITIES,
        ("test_range_includes_start_and_excludes_end",),
    ),
    "after_inclusive": (
        AfterInclusive,
        ALL_CAPABILITIES,
        ("test_pagination_by_count_returns_every_item_once_in_order",),
    ),
    "after_skips_next": (
        AfterSkipsNext,
        ALL_CAPABILITIES,
        ("test_pagination_by_count_returns_every_item_once_in_order",),
    ),
    "limit_short_by_one": (
        LimitShortByOne,
        ALL_CAPABILITIES,
        ("test_pagination_by_count_returns_every_item_once_in_order",),
    ),
    "limit_ignored": (
        LimitIgnored,
        ALL_CAPABILITIES,
        ("test_pagination_by_count_returns_every_item_once_in_order",),
    ),
    "keys_filter_ignored": (
        KeysFilterIgnored,
        ALL_CAPABILITIES,
        ("test_keys_predicate_returns_existing_keys_in_key_order",),
    ),
    "length_first_key_order": (
        LengthFirstKeyOrder,
        ALL_CAPABILITIES,
        ("test_binary_keys_sort_bytewise_unsigned",),
    ),
    "ttl_dropped": (TtlDropped, ALL_CAPABILITIES, ("test_item_ttl_expires_and_reports_expires_at",)),
    "expiry_truncated_to_seconds": (
        ExpiryTruncatedToSeconds,
        ALL_CAPABILITIES,
        (
            "test_item_ttl_expires_and_reports_expires_at",
            "test_namespace_default_ttl_applies_to_items_without_one",
        ),
    ),
    "older_write_wins": (OlderWriteWins, ALL_CAPABILITIES, ("test_newer_token_wins",)),
    "equal_version_overwrites": (
        EqualVersionOverwrites,
        ALL_CAPABILITIES,
        ("test_replaying_the_same_token_changes_nothing",),
    ),
    "read_then_write_version_check": (
        ReadThenWriteVersionCheck,
        ALL_CAPABILITIES,
        ("test_concurrent_writers_leave_the_highest_token",),
    ),
    "tombstones_not_kept": (
        TombstonesNotKept,
        ALL_CAPABILITIES,
        ("test_put_with_an_older_token_does_not_resurrect_a_deleted_item",),
    ),
    "empty_values_dropped": (
        EmptyValuesDropped,
        ALL_CAPABILITIES,
        ("test_empty_value_is_stored_and_differs_from_a_missing_item",),
    ),
    "trailing_nuls_stripped": (
        TrailingNulsStripped,
        ALL_CAPABILITIES,
        ("test_binary_keys_sort_bytewise_unsigned",),
    ),
    "last_row_of_batch_dropped": (
        LastRowOfBatchDropped,
        ALL_CAPABILITIES,
        ("test_put_then_get_returns_items_in_key_order",),
    ),
    "mutation_not_atomic": (
        MutationNotAtomic,
        ALL_CAPABILITIES,
        ("test_mutate_is_atomic_for_concurrent_readers",),
    ),
    "remove_ignores_version": (
        RemoveIgnoresVersion,
        ALL_CAPABILITIES,
        ("test_purging_expired_items_never_removes_newer_writes",),
    ),
    "case_insensitive_record_ids": (
        CaseInsensitiveRecordIds,
        ALL_CAPABILITIES,
        ("test_records_are_independent",),
    ),
    "shared_namespaces": (
        SharedNamespaces,
        ALL_CAPABILITIES,
        ("test_namespaces_are_isolated", "test_isolation_2_the_probe_is_gone"),
    ),
    "scan_skips_after_cursor": (
        ScanSkipsAfterCursor,
        ALL_CAPABILITIES,
        ("test_scan_lists_every_record_once_in_order_across_pages",),
    ),
    "scan_unordered": (
        ScanUnordered,
        ALL_CAPABILITIES,
        ("test_scan_lists_every_record_once_in_order_across_pages",),
    ),
    "scan_declared_but_broken": (
        ScanDeclaredButBroken,
        ALL_CAPABILITIES,
        (
            "test_scan_of_an_empty_namespace_is_empty",
            "test_scan_lists_every_record_once_in_order_across_pages",
        ),
    ),
    "chunks_reversed": (ChunksReversed, ALL_CAPABILITIES, ("test_chunked_value_round_trips_byte_for_byte",)),
    "chunks_shared_per_key": (
        ChunksSharedPerKey,
        ALL_CAPABILITIES,
        (
            "test_concurrent_reader_never_sees_a_partial_chunked_value",
            "test_older_chunked_write_does_not_replace_a_newer_one",
        ),
    ),
    "chunks_written_lazily": (
        ChunksWrittenLazily,
        ALL_CAPABILITIES,
        ("test_chunked_value_round_trips_byte_for_byte",),
    ),
    "chunk_size_forgotten": (
        ChunkSizeForgotten,
        ALL_CAPABILITIES,
        ("test_chunked_value_round_trips_byte_for_byte",),
    ),
}

#: Correct variants: they must pass the suite (tests of undeclared
#: capabilities reported as not applicable, their refusal verified).
CONTROLS: dict[str, tuple[type[YieldingMemory], frozenset[str]]] = {
    "yielding_memory": (YieldingMemory, ALL_CAPABILITIES),
    "no_optional_capabilities": (YieldingMemory, frozenset()),
}


def variant(name: str) -> tuple[type[YieldingMemory], frozenset[str]]:
    if name in PLANTED_BUGS:
        backend_class, declared, _ = PLANTED_BUGS[name]
        return backend_class, declared
    return CONTROLS[name]


def plugin_module(name: str) -> types.ModuleType:
    """A plugin module registering the variant ``name`` under that name."""
    backend_class, declared = variant(name)
    backend_type = KeyValueBackendType(
        settings_type=MemorySettings,
        create=backend_class,
        capabilities=declared,
        traits=memory.KEYVALUE.traits,
        description=f"planted bug: {backend_class.__doc__}",
    )

    @hookimpl
    def prism_register_keyvalue(registry: BackendRegistry) -> None:
        registry.add_keyvalue(name, backend_type)

    module = types.ModuleType(f"prism_conformance_planted_{name}")
    module.prism_register_keyvalue = prism_register_keyvalue  # type: ignore[attr-defined]
    return module


def plugin_set(name: str) -> PluginSet:
    return load_plugins(extra={name: plugin_module(name)})
