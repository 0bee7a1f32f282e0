"""Writing and reading: exact round trips, order (with ties broken by event
id), the range's bounds, reads across bucket boundaries, empty reads, and
series and namespaces kept apart."""

from __future__ import annotations

import random
from datetime import timedelta

from prism_conformance.handles import TimeSeriesHandle
from prism_conformance.timeseries.base import TimeSeriesSuiteBase
from prism_conformance.timeseries.support import (
    US,
    assert_events,
    base_time,
    event,
    everything,
    read_all,
    sorted_events,
)


class BasicTests(TimeSeriesSuiteBase):
    def test_events_round_trip_exactly(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        events = [
            event(t0 + timedelta(microseconds=123_457), "every-byte", bytes(range(256)), {"k": "v"}),
            event(t0 + timedelta(seconds=1, microseconds=1), "empty"),
            event(
                t0 + timedelta(seconds=2, microseconds=999_999), "trailing-nuls", b"\x00\x00trailing\x00\x00"
            ),
            event(
                t0 + timedelta(seconds=3, microseconds=500_001),
                "ünïcødé-✓",
                "payload ✓".encode(),
                {"région": "île-de-france", "empty": "", "sp ace": "a=b,c"},
            ),
        ]
        ts.write_events("s", events)
        got = everything(ts, "s", t0, t0 + timedelta(seconds=10))
        assert_events(
            got, events, "events read back must equal those written (payload bytes, tags, microsecond time)"
        )
        for e in got:
            assert e.event_time.tzinfo is not None, f"event {e.event_id!r} came back with a naive event_time"

    def test_reads_are_ordered_by_time_then_event_id_in_both_orders(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        times = [t0, t0 + US, t0 + timedelta(milliseconds=1), t0 + timedelta(seconds=1)]
        ids = ["b", "a", "c", "a0", "B", "10", "9"]
        events = [event(t, i, f"{t.isoformat()}/{i}") for t in times for i in ids]
        shuffled = list(events)
        random.Random(7).shuffle(shuffled)
        for start in range(0, len(shuffled), 5):
            ts.write_events("s", shuffled[start : start + 5])
        end = t0 + timedelta(seconds=2)
        asc = ts.read_events("s", t0, end, order="asc").events
        assert_events(asc, sorted_events(events, "asc"), "ascending read (time, then event id)")
        desc = ts.read_events("s", t0, end, order="desc").events
        assert_events(desc, sorted_events(events, "desc"), "descending read (the exact reverse of ascending)")

    def test_range_includes_start_and_excludes_end(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        t1, t2, t3 = t0 + US, t0 + timedelta(seconds=1), t0 + timedelta(seconds=1, microseconds=1)
        events = [event(t, f"e{n}") for n, t in enumerate((t0, t1, t2, t3))] + [event(t2, "e2b")]
        ts.write_events("s", events)
        by_time = {t: [e for e in sorted_events(events) if e.event_time == t] for t in (t0, t1, t2, t3)}
        cases = [
            (t0, t1, by_time[t0]),
            (t1, t2, by_time[t1]),
            (t0, t2, by_time[t0] + by_time[t1]),
            (t2, t3, by_time[t2]),
            (t1 + US, t2, []),
            (t2, t2 + US, by_time[t2]),
            (t3, t3 + US, by_time[t3]),
            (t0 - timedelta(seconds=5), t0, []),
        ]
        for start, end, expected in cases:
            what = f"range [{start.isoformat()}, {end.isoformat()})"
            assert_events(ts.read_events("s", start, end).events, expected, f"{what} ascending")
            assert_events(
                ts.read_events("s", start, end, order="desc").events, expected[::-1], f"{what} descending"
            )

    def test_reads_cross_bucket_boundaries(self) -> None:
        t0 = base_time()
        for bucket, step in (("1s", timedelta(seconds=1)), ("1m", timedelta(minutes=1))):
            ts = self.open_timeseries(timeseries={"bucket": bucket})
            # Buckets start on whole multiples of their length; t0 is on a whole
            # minute or second, so the boundary is right on an event time.
            boundary = t0.replace(second=0) if step == timedelta(minutes=1) else t0
            events = [
                event(boundary - step / 2, "half-before"),
                event(boundary - US, "just-before"),
                event(boundary, "on"),
                event(boundary, "on-2"),
                event(boundary + US, "just-after"),
                event(boundary + step / 2, "half-after"),
                # Several empty buckets between these and the next ones.
                event(boundary + 5 * step, "later"),
                event(boundary + 5 * step + US, "later-2"),
            ]
            ts.write_events("s", events)
            start, end = boundary - step, boundary + 6 * step
            for order in ("asc", "desc"):
                expected = sorted_events(events, order)
                what = f"bucket {bucket}: a {order} read across bucket boundaries"
                assert_events(ts.read_events("s", start, end, order=order).events, expected, what)
                for limit in (1, 2, 3):
                    walk = read_all(ts, "s", start, end, order=order, limit=limit)
                    assert_events(walk.events, expected, f"{what} in pages of {limit}")
            assert_events(
                ts.read_events("s", boundary, boundary + step).events,
                sorted_events(events[2:6]),
                f"bucket {bucket}: a read of exactly one bucket",
            )
            assert_events(
                ts.read_events("s", boundary - US, boundary + US).events,
                sorted_events(events[1:4]),
                f"bucket {bucket}: a read of two microseconds around a boundary",
            )

    def test_empty_reads(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        page = ts.read_events("never-written", t0, t0 + timedelta(hours=1))
        assert (list(page.events), page.next_page_token) == ([], None), page
        page = ts.read_events("never-written", t0, t0 + timedelta(hours=1), order="desc", limit=1)
        assert (list(page.events), page.next_page_token) == ([], None), page
        ts.write_events("s", [event(t0, "a"), event(t0 + timedelta(seconds=10), "b")])
        for order in ("asc", "desc"):
            page = ts.read_events("s", t0 + US, t0 + timedelta(seconds=10), order=order, limit=5)
            assert (list(page.events), page.next_page_token) == ([], None), (
                f"a {order} read of a range without events must be empty with no page token: {page}"
            )

    def test_series_are_isolated(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        names = ["s", "S", "s1", "s:1", "s/1", "s 1", "s\u00e9rie", "s\u0065\u0301rie", "1s", "s-"]
        written = {}
        for n, name in enumerate(names):
            # The same positions in every series, with different payloads.
            written[name] = [
                event(t0 + timedelta(seconds=s), f"id{s}", f"{name}:{s}") for s in range(n % 3 + 1)
            ]
            ts.write_events(name, written[name])
        for name in names:
            assert_events(
                everything(ts, name, t0, t0 + timedelta(minutes=1)),
                written[name],
                f"series {name!r} must hold exactly its own events",
            )

    def test_namespaces_are_isolated(self) -> None:
        first, second = self.open_many_timeseries(2)
        t0 = base_time()
        first.write_events("s", [event(t0, "a", b"first"), event(t0 + US, "b", b"first")])
        second.write_events("s", [event(t0, "a", b"second")])
        assert_events(
            everything(first, "s", t0, t0 + timedelta(seconds=1)),
            [event(t0, "a", b"first"), event(t0 + US, "b", b"first")],
            "the first namespace's series",
        )
        assert_events(
            everything(second, "s", t0, t0 + timedelta(seconds=1)),
            [event(t0, "a", b"second")],
            "the same series name in a second namespace",
        )
