"""TimeSeries semantics, written once for every backend.

:class:`AsyncTimeSeries` is what ``db.timeseries("ns")`` returns in async code.
It validates events against the namespace's ``timeseries:`` limits, refuses
events past the retention or too far in the future, applies the retention
cut-off to every read, paginates with signed page tokens, and purges old
events on backends without ``timeseries.native_retention``. The backend only
stores events by position (see :class:`prism.spi.TimeSeriesBackend`).

Semantics users rely on:

* An event's identity is ``(series, event_time, event_id)``. Writing an event
  whose identity is stored replaces it: a retried write changes nothing, and of
  two writes with different payloads the later one wins.
* ``read_events`` returns events with ``start <= event_time < end``, ordered by
  ``(event_time, event_id)`` (reversed with ``order="desc"``), so events at the
  same microsecond come back in a stable order.
* An event older than the retention (by event time) is never returned. Purging
  is housekeeping: it runs after writes, at most once a minute per series and
  once an hour per namespace in each process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Literal

from prism.capabilities import TIMESERIES_NATIVE_RETENTION
from prism.config import NamespaceConfig
from prism.errors import InvalidArgument, LimitExceeded
from prism.log import get_logger
from prism.models import Event, EventsPage, datetime_to_micros, micros_to_datetime, now_micros
from prism.pagetokens import PageTokenSigner
from prism.spi import EventQuery, StoredEvent, TimeSeriesBackend, TimeSeriesTraits
from prism.units import format_duration, format_elapsed, format_size

log = get_logger(__name__)

Order = Literal["asc", "desc"]

_MICRO = timedelta(microseconds=1)
#: Housekeeping: how often one process purges one series, and a whole namespace.
_SERIES_PURGE_EVERY_S = 60.0
_NAMESPACE_PURGE_EVERY_S = 3600.0
#: Series whose last purge time a handle remembers (it forgets them all beyond).
_PURGE_MEMORY = 10_000


class _WriteClock:
    """Increasing microsecond stamps for writes (``write_us``), so that of two
    writes of one position from this process the later call wins on backends
    that order writes by a timestamp."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            now = max(now_micros(), self._last + 1)
            self._last = now
            return now


_write_clock = _WriteClock()


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


class AsyncTimeSeries:
    """One TimeSeries namespace, async. Obtain it with ``db.timeseries(name)``."""

    def __init__(
        self,
        name: str,
        config: NamespaceConfig,
        *,
        backend_name: str,
        backend: TimeSeriesBackend,
        capabilities: frozenset[str],
        traits: TimeSeriesTraits,
        signer: PageTokenSigner,
        max_payload_bytes: int,
        ensure_ready: Callable[[], Awaitable[None]],
    ) -> None:
        self.name = name
        self.config = config
        self.settings = config.timeseries
        self.backend_name = backend_name
        self.capabilities = capabilities
        self.traits = traits
        self.max_payload_bytes = max_payload_bytes
        self._backend = backend
        self._signer = signer
        self._ensure_ready = ensure_ready
        self._retention_us = self.settings.retention // _MICRO
        self._skew_us = self.settings.max_future_skew // _MICRO
        self._native_retention = TIMESERIES_NATIVE_RETENTION in capabilities
        self._series_purged: dict[str, float] = {}
        self._namespace_purged: float | None = None

    def __repr__(self) -> str:
        return f"<AsyncTimeSeries {self.name!r} on {self.backend_name!r}>"

    # -- validation -------------------------------------------------------------------

    def _check_series(self, series: object) -> str:
        if not isinstance(series, str) or not series:
            raise InvalidArgument(
                f"series must be a non-empty str, got {series!r}", namespace=self.name, field="series"
            )
        if "\x00" in series:
            raise InvalidArgument(
                f"series {series[:40]!r} contains a NUL character", namespace=self.name, field="series"
            )
        size = _utf8_len(series)
        limit = self.settings.max_series_name_bytes
        if size > limit:
            raise LimitExceeded(
                f"series name {series[:40]!r}... is {size} bytes, over the namespace limit of {limit} "
                "(timeseries.max_series_name_bytes); use a shorter name",
                namespace=self.name,
                limit_name="timeseries.max_series_name_bytes",
                limit=limit,
                actual=size,
                field="series",
            )
        return series

    def _time_us(self, value: object, field: str) -> int:
        if not isinstance(value, datetime):
            raise InvalidArgument(
                f"{field} must be a timezone-aware datetime, got {type(value).__name__}",
                namespace=self.name,
                field=field,
            )
        if value.tzinfo is None:
            raise InvalidArgument(
                f"{field} {value.isoformat()} has no timezone; use an aware datetime (datetime.now(UTC))",
                namespace=self.name,
                field=field,
            )
        return datetime_to_micros(value)

    def _stored(self, series: str, index: int, event: object, now_us: int) -> StoredEvent:
        field = f"events[{index}]"
        if not isinstance(event, Event):
            raise InvalidArgument(
                f"{field} must be a prism.Event, got {type(event).__name__}", namespace=self.name, field=field
            )
        settings = self.settings
        time_us = self._time_us(event.event_time, f"{field}.event_time")
        oldest_us = now_us - self._retention_us
        if time_us < oldest_us:
            raise InvalidArgument(
                f"{field}.event_time {event.event_time.isoformat()} in series {series!r} is older than the "
                f"namespace's retention of {format_duration(settings.retention)} (timeseries.retention): "
                "it would never be returned; drop it, or raise the retention",
                namespace=self.name,
                field=f"{field}.event_time",
            )
        if time_us > now_us + self._skew_us:
            ahead = timedelta(microseconds=time_us - now_us)
            raise InvalidArgument(
                f"{field}.event_time {event.event_time.isoformat()} in series {series!r} is "
                f"{format_elapsed(ahead)} in the future, beyond the allowed "
                f"{format_duration(settings.max_future_skew)} (timeseries.max_future_skew); check the "
                "writer's clock",
                namespace=self.name,
                field=f"{field}.event_time",
            )
        if not isinstance(event.event_id, str) or not event.event_id:
            raise InvalidArgument(
                f"{field}.event_id must be a non-empty str (the event's id within its time, which makes a "
                f"retried write idempotent), got {event.event_id!r}",
                namespace=self.name,
                field=f"{field}.event_id",
            )
        id_size = _utf8_len(event.event_id)
        if id_size > settings.max_event_id_bytes:
            raise LimitExceeded(
                f"{field}.event_id is {id_size} bytes, over the namespace limit of "
                f"{settings.max_event_id_bytes} (timeseries.max_event_id_bytes)",
                namespace=self.name,
                limit_name="timeseries.max_event_id_bytes",
                limit=settings.max_event_id_bytes,
                actual=id_size,
                field=f"{field}.event_id",
            )
        size = len(event.payload)
        if size > self.max_payload_bytes:
            raise LimitExceeded(
                f"{field}.payload in series {series!r} is {format_size(size)}, over the namespace limit of "
                f"{format_size(self.max_payload_bytes)} (timeseries.max_payload_bytes, capped by the "
                f"backend {self.backend_name!r}); split it or store it in a KeyValue namespace",
                namespace=self.name,
                limit_name="timeseries.max_payload_bytes",
                limit=self.max_payload_bytes,
                actual=size,
                field=f"{field}.payload",
            )
        tags = event.tags
        if len(tags) > settings.max_tags:
            raise LimitExceeded(
                f"{field} has {len(tags)} tags, over the namespace limit of {settings.max_tags} "
                "(timeseries.max_tags)",
                namespace=self.name,
                limit_name="timeseries.max_tags",
                limit=settings.max_tags,
                actual=len(tags),
                field=f"{field}.tags",
            )
        for tag, value in tags.items():
            tag_size = _utf8_len(tag) + _utf8_len(value)
            if tag_size > settings.max_tag_bytes:
                raise LimitExceeded(
                    f"{field}.tags[{tag[:40]!r}] is {tag_size} bytes (name and value), over the namespace "
                    f"limit of {settings.max_tag_bytes} (timeseries.max_tag_bytes)",
                    namespace=self.name,
                    limit_name="timeseries.max_tag_bytes",
                    limit=settings.max_tag_bytes,
                    actual=tag_size,
                    field=f"{field}.tags",
                )
        return StoredEvent(
            time_us=time_us,
            event_id=event.event_id,
            payload=event.payload,
            tags=tuple(sorted(tags.items())),
            expires_at_us=time_us + self._retention_us,
        )

    # -- operations -------------------------------------------------------------------

    async def write_events(self, series: str, events: Sequence[Event]) -> None:
        """Store ``events`` in ``series``; all of them, or (on a refusal) none.

        Idempotent on ``(series, event_time, event_id)``: an event whose identity
        is stored replaces it (the later write wins; within one call, the later
        event in the list). Returns once every event is durable at the
        namespace's durability level.

        :raises InvalidArgument: a bad series or event; an event older than the
            retention or beyond the allowed future skew. Nothing is written.
        :raises LimitExceeded: over one of the ``timeseries:`` limits, named.
        """
        series = self._check_series(series)
        if isinstance(events, Event) or not isinstance(events, Sequence):
            raise InvalidArgument(
                f"events must be a list of prism.Event, got {type(events).__name__}",
                namespace=self.name,
                field="events",
            )
        limit = self.settings.max_events_per_call
        if len(events) > limit:
            raise LimitExceeded(
                f"{len(events)} events in one write to series {series!r}, over the namespace limit of "
                f"{limit} (timeseries.max_events_per_call); split the write",
                namespace=self.name,
                limit_name="timeseries.max_events_per_call",
                limit=limit,
                actual=len(events),
                field="events",
            )
        if not events:
            return
        now_us = now_micros()
        by_position: dict[tuple[int, str], StoredEvent] = {}
        for index, event in enumerate(events):
            stored = self._stored(series, index, event, now_us)
            by_position.pop(stored.position, None)  # the later one wins, in its own place
            by_position[stored.position] = stored
        await self._ensure_ready()
        await self._backend.write(self.name, series, list(by_position.values()), _write_clock.next())
        await self._housekeep(series)

    async def read_events(
        self,
        series: str,
        start: datetime,
        end: datetime,
        *,
        order: Order = "asc",
        limit: int | None = None,
        page_token: str | None = None,
    ) -> EventsPage:
        """Events of ``series`` with ``start <= event_time < end``, ordered by
        ``(event_time, event_id)``, ascending or (``order="desc"``) descending.

        A page holds at most ``limit`` events (default and maximum
        ``timeseries.max_page_events``) and stops before its payloads pass
        ``timeseries.page_size_bytes``. Pass ``next_page_token`` back, with
        the same series, range and order, for the next page.

        :raises InvalidPageToken: the token was issued for another namespace,
            series, range or order, or was altered.
        """
        series = self._check_series(series)
        start_us = self._time_us(start, "start")
        end_us = self._time_us(end, "end")
        if start_us >= end_us:
            raise InvalidArgument(
                f"start {start.isoformat()} must be before end {end.isoformat()} (end is exclusive)",
                namespace=self.name,
                field="end",
            )
        if order not in ("asc", "desc"):
            raise InvalidArgument(
                f"order must be 'asc' or 'desc', got {order!r}", namespace=self.name, field="order"
            )
        max_events = self.settings.max_page_events
        if limit is None:
            limit = max_events
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument(
                f"limit must be a positive int, got {limit!r}", namespace=self.name, field="limit"
            )
        if limit > max_events:
            raise LimitExceeded(
                f"limit {limit} is over the namespace's page limit of {max_events} "
                "(timeseries.max_page_events); ask for fewer and follow next_page_token",
                namespace=self.name,
                limit_name="timeseries.max_page_events",
                limit=max_events,
                actual=limit,
                field="limit",
            )
        binding = f"{series}\x00{start_us}\x00{end_us}\x00{order}".encode()
        after: tuple[int, str] | None = None
        if page_token is not None:
            cursor = self._signer.open(page_token, self.name, "events", binding)
            after = (int(cursor["t"]), str(cursor["i"]))
        cut_off_us = now_micros() - self._retention_us
        effective_start = max(start_us, cut_off_us)
        if effective_start >= end_us:
            return EventsPage(events=[])
        await self._ensure_ready()
        query = EventQuery(
            start_us=effective_start, end_us=end_us, descending=order == "desc", limit=limit + 1, after=after
        )
        rows = await self._backend.read(self.name, series, query)
        events: list[Event] = []
        budget = self.settings.page_size_bytes
        used = 0
        last: StoredEvent | None = None
        more = False
        for row in rows:
            if not query.matches(row.position) or row.time_us < cut_off_us:
                continue  # a backend's stray row, or one that aged out during the read
            if len(events) == limit:
                more = True
                break
            size = (
                len(row.payload)
                + _utf8_len(row.event_id)
                + sum(_utf8_len(k) + _utf8_len(v) for k, v in row.tags)
            )
            if events and used + size > budget:
                more = True
                break
            used += size
            events.append(
                Event(
                    event_time=micros_to_datetime(row.time_us),
                    event_id=row.event_id,
                    payload=row.payload,
                    tags=dict(row.tags),
                )
            )
            last = row
        token = None
        if more and last is not None:
            token = self._signer.issue(self.name, "events", binding, {"t": last.time_us, "i": last.event_id})
        return EventsPage(events=events, next_page_token=token)

    # -- housekeeping -------------------------------------------------------------------

    async def _housekeep(self, series: str) -> None:
        """Purge events past the retention, now and then, on backends that do
        not drop them natively. Reads never return them either way; a failed
        purge is logged and retried later, never failing the write."""
        if self._native_retention:
            return
        now = time.monotonic()
        whole = self._namespace_purged is None or now - self._namespace_purged >= _NAMESPACE_PURGE_EVERY_S
        last = self._series_purged.get(series)
        if not whole and last is not None and now - last < _SERIES_PURGE_EVERY_S:
            return
        if len(self._series_purged) >= _PURGE_MEMORY:
            self._series_purged.clear()
        self._series_purged[series] = now
        if whole:
            self._namespace_purged = now
        before_us = now_micros() - self._retention_us
        try:
            await self._backend.purge(self.name, before_us, None if whole else series)
        except Exception as exc:
            log.warning(
                "timeseries purge failed; old events stay stored (never returned) until the next purge",
                namespace=self.name,
                backend=self.backend_name,
                series=None if whole else series,
                error=f"{type(exc).__name__}: {exc}",
            )
