"""Small helpers the TimeSeries suite tests share: times relative to now,
building events, walking every page of a read, and readable diffs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import attrs

import prism
from prism import Event
from prism_conformance.handles import TimeSeriesHandle

Order = Literal["asc", "desc"]

#: Guards against a page token that never ends a read.
MAX_PAGES = 5_000
#: Room for a datastore that keeps times in milliseconds when a test compares
#: wall-clock moments (retention), never for event times (kept to the microsecond).
CLOCK_TOLERANCE = timedelta(milliseconds=50)

US = timedelta(microseconds=1)


def now() -> datetime:
    return datetime.now(UTC)


def whole_second(moment: datetime) -> datetime:
    """``moment`` truncated to its second."""
    return moment.replace(microsecond=0)


def base_time() -> datetime:
    """A moment safely inside the default retention (30 days) and before now:
    ten minutes ago, on a whole second, so tests can put events right on and
    right beside bucket boundaries (buckets of whole seconds)."""
    return whole_second(now()) - timedelta(minutes=10)


def event(
    when: datetime, event_id: str, payload: bytes | str = b"", tags: Mapping[str, str] | None = None
) -> Event:
    return Event(when, event_id, payload, dict(tags or {}))


def key(e: Event) -> tuple[datetime, str]:
    """An event's position: the order reads return events in (ascending)."""
    return (e.event_time, e.event_id)


def sorted_events(events: Iterable[Event], order: Order = "asc") -> list[Event]:
    return sorted(events, key=key, reverse=order == "desc")


@attrs.frozen
class Walk:
    """Everything one paginated read returned."""

    events: list[Event]
    pages: list[list[Event]]


def read_all(
    ts: TimeSeriesHandle,
    series: str,
    start: datetime,
    end: datetime,
    *,
    order: Order = "asc",
    limit: int | None = None,
) -> Walk:
    """Follow page tokens until the read ends; fail if it never does."""
    events: list[Event] = []
    pages: list[list[Event]] = []
    token: str | None = None
    for _ in range(MAX_PAGES):
        page = ts.read_events(series, start, end, order=order, limit=limit, page_token=token)
        pages.append(list(page.events))
        events += page.events
        token = page.next_page_token
        if token is None:
            return Walk(events, pages)
    raise AssertionError(
        f"series {series!r}: a read was still returning page tokens after {MAX_PAGES} pages "
        f"({len(events)} events so far): the page cursor does not advance"
    )


def everything(ts: TimeSeriesHandle, series: str, start: datetime, end: datetime) -> list[Event]:
    """Every event of ``series`` in ``[start, end)``, ascending, over all pages."""
    return read_all(ts, series, start, end).events


def describe(events: Sequence[Event]) -> str:
    """Events as ``time/id`` for failure messages (at most 40)."""
    shown = [f"{e.event_time.isoformat()}/{e.event_id}" for e in events[:40]]
    more = f", ... ({len(events)} in all)" if len(events) > 40 else ""
    return "[" + ", ".join(shown) + more + "]"


def difference(got: Sequence[Event], expected: Sequence[Event]) -> str:
    """What is missing, extra, duplicated or out of order, for failure messages."""
    got_keys = [key(e) for e in got]
    want_keys = [key(e) for e in expected]
    missing = [k for k in want_keys if k not in set(got_keys)]
    extra = [k for k in got_keys if k not in set(want_keys)]
    duplicated = sorted({k for k in got_keys if got_keys.count(k) > 1})
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {_keys(missing)}")
    if extra:
        parts.append(f"unexpected {len(extra)}: {_keys(extra)}")
    if duplicated:
        parts.append(f"returned more than once: {_keys(duplicated)}")
    if not parts and got_keys != want_keys:
        first = next(i for i, (a, b) in enumerate(zip(got_keys, want_keys, strict=False)) if a != b)
        parts.append(
            f"out of order from position {first}: got {_keys(got_keys[first : first + 5])}, "
            f"expected {_keys(want_keys[first : first + 5])}"
        )
    if not parts:
        for g, w in zip(got, expected, strict=True):
            if g != w:
                parts.append(f"event {w.event_id!r} came back as {g!r}, expected {w!r}")
                break
    return "; ".join(parts) or "equal"


def _keys(keys: Sequence[tuple[datetime, str]]) -> str:
    shown = [f"{t.isoformat()}/{i}" for t, i in keys[:10]]
    return "[" + ", ".join(shown) + (", ..." if len(keys) > 10 else "") + "]"


def assert_events(got: Sequence[Event], expected: Sequence[Event], what: str) -> None:
    """``got`` must be exactly ``expected``: the same events, fields and order."""
    assert list(got) == list(expected), f"{what}: {difference(got, expected)}"


def assert_names(
    exc: prism.InvalidArgument, ts: TimeSeriesHandle, name: str, limit: int | None = None
) -> None:
    """A refusal must name the namespace and the limit or setting it enforces."""
    assert exc.namespace == ts.name, (
        f"the refusal must name the namespace {ts.name!r}, got {exc.namespace!r}: {exc}"
    )
    assert ts.name in str(exc), f"the message must name the namespace {ts.name!r}: {exc}"
    assert name in str(exc), f"the message must name {name!r}: {exc}"
    if isinstance(exc, prism.LimitExceeded):
        assert name in exc.limit_name, f"expected the limit {name!r} to be named, got {exc.limit_name!r}"
        if limit is not None:
            assert exc.limit == limit, f"{name}: expected the limit {limit}, got {exc.limit}"
