"""The ``memory`` TimeSeries backend: the reference implementation of the
TimeSeries SPI. Registered by the ``memory`` plugin (:mod:`prism.backends.memory`).

Each series keeps its positions ``(time_us, event_id)`` in a sorted list (kept
with :mod:`bisect`) beside a dict from position to event, so a write of a stored
position replaces the event in place and a read of a time range, in either
order, starts with a binary search and stops at the first position outside it.
Events live in the process and are lost when it exits. No method awaits, so on
one event loop each call is atomic.

There is no native retention: old events stay until the core purges them with
:meth:`MemoryTimeSeries.purge`, and the core filters them out of reads until then.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

import attrs

from prism.config import NamespaceConfig
from prism.spi import EventQuery, StoredEvent

Position = tuple[int, str]

#: Sorts before every position at the same microsecond (every event id is a
#: string, and no string is smaller than the empty one).
_FIRST_ID = ""


@attrs.define
class _Series:
    positions: list[Position] = attrs.Factory(list)  # sorted
    events: dict[Position, StoredEvent] = attrs.Factory(dict)

    def cut(self, before_us: int) -> None:
        """Drop every event whose time is before ``before_us``."""
        end = bisect.bisect_left(self.positions, (before_us, _FIRST_ID))
        for position in self.positions[:end]:
            del self.events[position]
        del self.positions[:end]


class MemoryTimeSeries:
    def __init__(self, name: str, settings: object) -> None:
        self.name = name
        self.settings = settings
        self._namespaces: dict[str, dict[str, _Series]] = {}

    async def start(self) -> None:
        return None

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        self._namespaces.setdefault(namespace, {})

    def _series(self, namespace: str) -> dict[str, _Series]:
        return self._namespaces.setdefault(namespace, {})

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        # One event loop and no await: the later call is the later write, so
        # ``write_us`` is not needed to order two writes of one position.
        state = self._series(namespace).setdefault(series, _Series())
        for event in events:
            position = event.position
            if position not in state.events:
                bisect.insort(state.positions, position)
            state.events[position] = event

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        state = self._series(namespace).get(series)
        if state is None or query.limit <= 0:
            return []
        out: list[StoredEvent] = []
        for position in self._candidates(state.positions, query):
            if not query.matches(position):
                break  # candidates run in the read's order, so the range has ended
            out.append(state.events[position])
            if len(out) >= query.limit:
                break
        return out

    @staticmethod
    def _candidates(positions: list[Position], query: EventQuery) -> Iterator[Position]:
        """Positions from where the read starts, in its order. The first one that
        does not match ``query`` marks the end of the range."""
        if query.descending:
            # Everything before (end_us, "") has a time below end_us.
            hi = bisect.bisect_left(positions, (query.end_us, _FIRST_ID))
            if query.after is not None:
                hi = min(hi, bisect.bisect_left(positions, query.after))
            return (positions[i] for i in range(hi - 1, -1, -1))
        lo = bisect.bisect_left(positions, (query.start_us, _FIRST_ID))
        if query.after is not None:
            lo = max(lo, bisect.bisect_right(positions, query.after))
        return (positions[i] for i in range(lo, len(positions)))

    async def purge(self, namespace: str, before_us: int, series: str | None = None) -> None:
        all_series = self._series(namespace)
        names = list(all_series) if series is None else [series]
        for name in names:
            state = all_series.get(name)
            if state is None:
                continue
            state.cut(before_us)
            if not state.positions:
                del all_series[name]

    async def close(self) -> None:
        self._namespaces.clear()
