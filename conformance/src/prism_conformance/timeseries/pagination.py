"""Pagination: pages of at most ``limit`` events, in either order, that reach
every event exactly once; a page token is a position (events written between
pages are found by position, not skipped or repeated), and is refused
anywhere but in the read it came from."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

import prism
from prism_conformance.handles import TimeSeriesHandle
from prism_conformance.timeseries.base import TimeSeriesSuiteBase
from prism_conformance.timeseries.support import (
    US,
    Order,
    assert_events,
    base_time,
    event,
    read_all,
    sorted_events,
)


def _tampered(token: str) -> list[str]:
    """Ways to change a token: one character in the middle, the last one, cut short."""
    middle = len(token) // 2
    flip = "A" if token[middle] != "A" else "B"
    last = "A" if token[-1] != "A" else "B"
    return [token[:middle] + flip + token[middle + 1 :], token[:-1] + last, token[: max(1, len(token) - 4)]]


class PaginationTests(TimeSeriesSuiteBase):
    def test_pages_reach_every_event_exactly_once_in_both_orders(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        # Runs of equal times, so a page often ends between two events of one microsecond.
        events = [event(t0 + timedelta(milliseconds=n // 3), f"e{n % 3}-{n:02d}", f"p{n}") for n in range(47)]
        ts.write_events("s", events)
        end = t0 + timedelta(seconds=1)
        for order in ("asc", "desc"):
            expected = sorted_events(events, order)
            for limit in (1, 2, 3, 7, 46, 47, 48, 1000):
                walk = read_all(ts, "s", t0, end, order=order, limit=limit)
                what = f"a {order} read in pages of {limit}"
                assert_events(walk.events, expected, what)
                sizes = [len(page) for page in walk.pages]
                assert all(size <= limit for size in sizes), f"{what}: a page exceeded the limit: {sizes}"
                assert len(walk.pages) <= len(events) // limit + 2, f"{what}: too many pages: {sizes}"
                assert all(sizes[:-1]), f"{what}: an empty page came before the end: {sizes}"

    def test_limit_returns_the_first_events_of_the_order(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        events = [event(t0 + timedelta(seconds=n), f"e{n}") for n in range(10)]
        ts.write_events("s", events)
        end = t0 + timedelta(minutes=1)
        page = ts.read_events("s", t0, end, limit=3)
        assert_events(page.events, events[:3], "an ascending read with limit 3")
        assert page.next_page_token is not None, "a read that stopped at its limit must return a page token"
        page = ts.read_events("s", t0, end, order="desc", limit=3)
        assert_events(page.events, events[::-1][:3], "a descending read with limit 3")
        assert page.next_page_token is not None

    def test_default_page_is_max_page_events(self) -> None:
        ts = self.open_timeseries(timeseries={"max_page_events": 4})
        t0 = base_time()
        events = [event(t0 + timedelta(seconds=n), f"e{n}") for n in range(9)]
        ts.write_events("s", events)
        end = t0 + timedelta(minutes=1)
        page = ts.read_events("s", t0, end)
        assert_events(page.events, events[:4], "a read without a limit in a namespace with max_page_events 4")
        walk = read_all(ts, "s", t0, end, order="desc")
        assert_events(walk.events, events[::-1], "a descending read in pages of max_page_events")

    def test_a_page_token_is_a_position_not_an_offset(self, ts: TimeSeriesHandle) -> None:
        """Events written between two pages: those before the cursor are not
        returned (and do not push an event back onto the next page), those after
        it are."""
        t0 = base_time()
        end = t0 + timedelta(minutes=1)
        for order in ("asc", "desc"):
            series = f"s-{order}"
            events = [event(t0 + timedelta(seconds=n), f"e{n}") for n in range(10, 20)]
            ts.write_events(series, events)
            expected = sorted_events(events, order)
            first = ts.read_events(series, t0, end, order=order, limit=4)
            assert_events(first.events, expected[:4], f"{order}: the first page")
            assert first.next_page_token is not None
            edge = first.events[-1].event_time
            behind = timedelta(seconds=-1) if order == "asc" else timedelta(seconds=1)
            ahead = -behind
            # Behind the cursor (already passed), at the cursor's time with an id
            # on either side of it, and ahead of it.
            late = [
                event(edge + behind / 2, "behind"),
                event(edge, "e0"),
                event(edge, "zz"),
                event(edge + ahead / 2, "ahead"),
            ]
            ts.write_events(series, late)
            rest = read_all_from(ts, series, t0, end, order, first.next_page_token, limit=4)
            all_now = sorted_events([*events, *late], order)
            cursor = all_now.index(first.events[-1])
            assert_events(
                rest,
                all_now[cursor + 1 :],
                f"{order}: the pages after events were written behind and ahead of the cursor",
            )

    def test_page_token_is_refused_outside_its_read(self) -> None:
        ts, other = self.open_many_timeseries(2)
        t0 = base_time()
        end = t0 + timedelta(minutes=1)
        for target in (ts, other):
            for series in ("a", "b"):
                target.write_events(series, [event(t0 + timedelta(seconds=n), f"e{n}") for n in range(6)])
        first = ts.read_events("a", t0, end, limit=2)
        token = first.next_page_token
        assert token is not None
        # The token works where it belongs, more than once.
        for _ in range(2):
            page = ts.read_events("a", t0, end, limit=2, page_token=token)
            assert [e.event_id for e in page.events] == ["e2", "e3"]
        elsewhere: list[tuple[str, TimeSeriesHandle, str, tuple[datetime, datetime], Order]] = [
            ("another series", ts, "b", (t0, end), "asc"),
            ("another start", ts, "a", (t0 + US, end), "asc"),
            ("another end", ts, "a", (t0, end - US), "asc"),
            ("the other order", ts, "a", (t0, end), "desc"),
            ("another namespace", other, "a", (t0, end), "asc"),
        ]
        for what, target, series, (start, stop), order in elsewhere:
            with pytest.raises(prism.InvalidArgument) as refused:
                target.read_events(series, start, stop, order=order, limit=2, page_token=token)
            assert target.name in str(refused.value), f"the refusal must name the namespace: {refused.value}"
            assert "token" in str(refused.value), (
                f"{what}: the refusal must say the page token is refused: {refused.value}"
            )
        for bad in _tampered(token):
            with pytest.raises(prism.InvalidArgument):
                ts.read_events("a", t0, end, limit=2, page_token=bad)
        with pytest.raises(prism.InvalidArgument):
            ts.read_events("a", t0, end, limit=2, page_token="not a token")


def read_all_from(
    ts: TimeSeriesHandle, series: str, start: datetime, end: datetime, order: Order, token: str, *, limit: int
) -> list[prism.Event]:
    """Every event of the pages from ``token`` on."""
    events: list[prism.Event] = []
    next_token: str | None = token
    for _ in range(1000):
        page = ts.read_events(series, start, end, order=order, limit=limit, page_token=next_token)
        events += page.events
        next_token = page.next_page_token
        if next_token is None:
            return events
    raise AssertionError(f"series {series!r}: the page cursor does not advance")
