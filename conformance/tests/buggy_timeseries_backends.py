"""Planted TimeSeries bugs: variants of the reference ``memory`` TimeSeries
backend, each wrong in one way a real backend could plausibly be, to prove the
TimeSeries suite notices.

Every variant builds on :class:`YieldingMemoryTimeSeries`, which is correct
but yields to the event loop (and to other threads) around each call, as a
networked datastore does, so concurrent writes interleave.

The core filters every row a backend returns against the read's range,
cursor and retention, so a backend that returns *too much* is harmless; the
bugs planted here are the ones that survive that filter: rows missing, in the
wrong order, duplicated, stale, altered or deleted too early.

Each variant becomes a plugin module (a ``prism_register_timeseries``
hookimpl) registered with ``load_plugins(extra={name: module})``.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import attrs
from buggy_backends import pause

from prism import capabilities
from prism.backends import memory
from prism.backends.memory import MemorySettings
from prism.backends.memory_timeseries import MemoryTimeSeries, _Series
from prism.config import NamespaceConfig
from prism.plugins import hookimpl
from prism.plugins.manager import PluginSet, load_plugins
from prism.plugins.registry import BackendRegistry
from prism.spi import EventQuery, StoredEvent, TimeSeriesBackendType

NO_CAPABILITIES: frozenset[str] = frozenset()
EVERYTHING = 1 << 30


class YieldingMemoryTimeSeries(MemoryTimeSeries):
    """The memory TimeSeries backend, correct, with a yield around every call."""

    def __init__(self, name: str, settings: object) -> None:
        super().__init__(name, settings)
        self.configs: dict[str, NamespaceConfig] = {}

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        self.configs[namespace] = config
        await MemoryTimeSeries.provision(self, namespace, config)

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        await pause()
        await MemoryTimeSeries.write(self, namespace, series, events, write_us)
        await pause()

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        await pause()
        rows = await MemoryTimeSeries.read(self, namespace, series, query)
        await pause()
        return rows

    async def purge(self, namespace: str, before_us: int, series: str | None = None) -> None:
        await pause()
        await MemoryTimeSeries.purge(self, namespace, before_us, series)
        await pause()

    def state(self, namespace: str, series: str) -> _Series:
        return self._series(namespace).setdefault(series, _Series())


def _ordered(rows: list[StoredEvent], query: EventQuery) -> list[StoredEvent]:
    return sorted(rows, key=lambda r: r.position, reverse=query.descending)


# -- ranges and order ------------------------------------------------------------------


class StartExclusive(YieldingMemoryTimeSeries):
    """Treats the range's start as exclusive: an event exactly at ``start`` is lost."""

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        rows = await super().read(namespace, series, query)
        return [row for row in rows if row.time_us != query.start_us]


class DescTiesByIdAscending(YieldingMemoryTimeSeries):
    """Descending reads order by time only descending: events of one microsecond
    come back by id ascending (a clustering order declared per column, half wrong)."""

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        rows = await super().read(namespace, series, query)
        if not query.descending:
            return rows
        return sorted(rows, key=lambda r: (-r.time_us, r.event_id))


class OneBucketPerRead(YieldingMemoryTimeSeries):
    """Reads only the first time bucket that holds a matching event, as a
    bucketed backend that forgets to walk on to the next partition."""

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        rows = await super().read(namespace, series, query)
        if not rows:
            return rows
        bucket_us = int(self.configs[namespace].timeseries.bucket.total_seconds() * 1_000_000)
        first = rows[0].time_us // bucket_us
        return [row for row in rows if row.time_us // bucket_us == first]


# -- writes --------------------------------------------------------------------------------


class DuplicateKeptTwice(YieldingMemoryTimeSeries):
    """A rewrite of a stored position adds a second event instead of replacing
    it (an append-only log keyed by write, not by position)."""

    def __init__(self, name: str, settings: object) -> None:
        super().__init__(name, settings)
        self.replaced: dict[tuple[str, str], list[StoredEvent]] = {}

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        state = self.state(namespace, series)
        old = [state.events[e.position] for e in events if e.position in state.events]
        self.replaced.setdefault((namespace, series), []).extend(old)
        await super().write(namespace, series, events, write_us)

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        rows = await super().read(namespace, series, query)
        extra = [r for r in self.replaced.get((namespace, series), []) if query.matches(r.position)]
        return _ordered(rows + extra, query)[: query.limit]


class FirstWriteWins(YieldingMemoryTimeSeries):
    """A rewrite of a stored position is ignored (an insert-if-absent): the first write wins."""

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        state = self.state(namespace, series)
        fresh = [e for e in events if e.position not in state.events]
        await super().write(namespace, series, fresh, write_us)


class MillisecondsOnly(YieldingMemoryTimeSeries):
    """Stores event times in milliseconds (a datastore timestamp type)."""

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        truncated = [attrs.evolve(e, time_us=e.time_us // 1000 * 1000) for e in events]
        await super().write(namespace, series, truncated, write_us)


class TagsDropped(YieldingMemoryTimeSeries):
    """Does not store tags."""

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        await super().write(namespace, series, [attrs.evolve(e, tags=()) for e in events], write_us)


class LostConcurrentWrites(YieldingMemoryTimeSeries):
    """Writes read the series, then store it back with the new events: a
    concurrent write in between is lost (a read-modify-write of one blob)."""

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        await pause()
        before = self.state(namespace, series)
        copy = _Series(list(before.positions), dict(before.events))
        await pause()
        for e in events:
            if e.position not in copy.events:
                copy.positions.append(e.position)
            copy.events[e.position] = e
        copy.positions.sort()
        self._series(namespace)[series] = copy
        await pause()


# -- isolation -------------------------------------------------------------------------------


class SeriesCaseInsensitive(YieldingMemoryTimeSeries):
    """Folds series names to lower case (a case-insensitive collation)."""

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        await super().write(namespace, series.lower(), events, write_us)

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        return await super().read(namespace, series.lower(), query)

    async def purge(self, namespace: str, before_us: int, series: str | None = None) -> None:
        await super().purge(namespace, before_us, None if series is None else series.lower())


class NamespacesShared(YieldingMemoryTimeSeries):
    """Keeps every namespace's series in one table without the namespace in the key."""

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        await super().write("shared", series, events, write_us)

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        return await super().read("shared", series, query)

    async def purge(self, namespace: str, before_us: int, series: str | None = None) -> None:
        await super().purge("shared", before_us, series)


# -- pagination ------------------------------------------------------------------------------


class CursorInclusive(YieldingMemoryTimeSeries):
    """Resumes a page *at* its cursor instead of after it (``>=`` for ``>``)."""

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        if query.after is None:
            return await super().read(namespace, series, query)
        after = query.after
        rows = await super().read(namespace, series, attrs.evolve(query, after=None, limit=EVERYTHING))
        kept = [r for r in rows if (r.position <= after if query.descending else r.position >= after)]
        return kept[: query.limit]


class CursorSkipsOne(YieldingMemoryTimeSeries):
    """Skips the first event after the cursor (an off-by-one on resume)."""

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        if query.after is None:
            return await super().read(namespace, series, query)
        rows = await super().read(namespace, series, attrs.evolve(query, limit=query.limit + 1))
        return rows[1:]


# -- retention -------------------------------------------------------------------------------


class PurgeTooMuch(YieldingMemoryTimeSeries):
    """Purges with a cut-off 40% of the retention too late (it mixes up an
    event's expiry and its time), deleting events still within retention."""

    async def purge(self, namespace: str, before_us: int, series: str | None = None) -> None:
        retention_us = int(self.configs[namespace].timeseries.retention.total_seconds() * 1_000_000)
        await super().purge(namespace, before_us + retention_us * 4 // 10, series)


#: Name -> (backend class, declared capabilities, suite tests meant to catch it).
PLANTED_TIMESERIES_BUGS: dict[str, tuple[type[YieldingMemoryTimeSeries], frozenset[str], tuple[str, ...]]] = {
    "start_exclusive": (StartExclusive, NO_CAPABILITIES, ("test_range_includes_start_and_excludes_end",)),
    "desc_ties_by_id_ascending": (
        DescTiesByIdAscending,
        NO_CAPABILITIES,
        ("test_reads_are_ordered_by_time_then_event_id_in_both_orders",),
    ),
    "one_bucket_per_read": (OneBucketPerRead, NO_CAPABILITIES, ("test_reads_cross_bucket_boundaries",)),
    "duplicate_kept_twice": (
        DuplicateKeptTwice,
        NO_CAPABILITIES,
        ("test_rewriting_a_position_replaces_the_event_later_write_wins",),
    ),
    "first_write_wins": (
        FirstWriteWins,
        NO_CAPABILITIES,
        ("test_rewriting_a_position_replaces_the_event_later_write_wins",),
    ),
    "milliseconds_only": (MillisecondsOnly, NO_CAPABILITIES, ("test_events_round_trip_exactly",)),
    "tags_dropped": (TagsDropped, NO_CAPABILITIES, ("test_events_round_trip_exactly",)),
    "lost_concurrent_writes": (
        LostConcurrentWrites,
        NO_CAPABILITIES,
        ("test_concurrent_writers_lose_nothing", "test_concurrent_rewrites_of_one_position_leave_one_event"),
    ),
    "series_case_insensitive": (SeriesCaseInsensitive, NO_CAPABILITIES, ("test_series_are_isolated",)),
    "namespaces_shared": (NamespacesShared, NO_CAPABILITIES, ("test_namespaces_are_isolated",)),
    "cursor_inclusive": (
        CursorInclusive,
        NO_CAPABILITIES,
        ("test_pages_reach_every_event_exactly_once_in_both_orders",),
    ),
    "cursor_skips_one": (
        CursorSkipsOne,
        NO_CAPABILITIES,
        ("test_pages_reach_every_event_exactly_once_in_both_orders",),
    ),
    "purge_too_much": (
        PurgeTooMuch,
        NO_CAPABILITIES,
        ("test_events_vanish_once_past_retention_and_not_before",),
    ),
}

#: Correct variants: they must pass the suite.
TIMESERIES_CONTROLS: dict[str, tuple[type[YieldingMemoryTimeSeries], frozenset[str]]] = {
    "yielding_memory_timeseries": (YieldingMemoryTimeSeries, NO_CAPABILITIES),
    # Declaring native retention only stops the core's purge; the core still filters.
    "native_retention_declared": (
        YieldingMemoryTimeSeries,
        frozenset({capabilities.TIMESERIES_NATIVE_RETENTION}),
    ),
}


def variant(name: str) -> tuple[type[YieldingMemoryTimeSeries], frozenset[str]]:
    if name in PLANTED_TIMESERIES_BUGS:
        backend_class, declared, _ = PLANTED_TIMESERIES_BUGS[name]
        return backend_class, declared
    return TIMESERIES_CONTROLS[name]


def plugin_module(name: str) -> types.ModuleType:
    """A plugin module registering the TimeSeries variant ``name`` under that name."""
    backend_class, declared = variant(name)
    backend_type = TimeSeriesBackendType(
        settings_type=MemorySettings,
        create=backend_class,
        capabilities=declared,
        traits=memory.TIMESERIES.traits,
        description=f"planted bug: {backend_class.__doc__}",
    )

    @hookimpl
    def prism_register_timeseries(registry: BackendRegistry) -> None:
        registry.add_timeseries(name, backend_type)

    module = types.ModuleType(f"prism_conformance_planted_timeseries_{name}")
    module.prism_register_timeseries = prism_register_timeseries  # type: ignore[attr-defined]
    return module


def plugin_set(name: str) -> PluginSet:
    return load_plugins(extra={name: plugin_module(name)})
