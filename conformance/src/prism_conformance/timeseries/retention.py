"""Retention and the clock: an event older than the namespace's retention is
never returned, however the backend gets rid of it (natively with
``timeseries.native_retention``, or the core's filter and purge), and is
never refused early or purged too soon; a write already past retention, or
further than ``max_future_skew`` in the future, is refused.

``timeseries.native_retention`` only says who deletes, so these are core
tests for every backend, as TTL is for KeyValue."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

import prism
from prism import Event
from prism_conformance.support import wait_until
from prism_conformance.timeseries.base import TimeSeriesSuiteBase
from prism_conformance.timeseries.support import (
    CLOCK_TOLERANCE,
    assert_events,
    assert_names,
    describe,
    event,
    everything,
    now,
    sorted_events,
)

RETENTION = timedelta(seconds=3)


class RetentionTests(TimeSeriesSuiteBase):
    def test_events_vanish_once_past_retention_and_not_before(self) -> None:
        """Events 2 s, 1.5 s and 1 s old and of now, in two series, with a
        retention of 3 s: each must be returned until its time + 3 s and never
        after, whoever deletes it (a purge must take only what is past retention)."""
        ts = self.open_timeseries(timeseries={"retention": "3s", "bucket": "1s"})
        # Provision the namespace first, so the writes below are not slowed by it.
        ts.read_events("warm-up", now() - timedelta(seconds=1), now())
        written_at = now()
        ages = [timedelta(milliseconds=ms) for ms in (2000, 1500, 1000, 0)]
        events = {
            series: [event(written_at - age, f"{series}-{int(age.total_seconds() * 1000)}ms") for age in ages]
            for series in ("a", "b")
        }
        for series, batch in events.items():
            # Series b is written in two calls: a purge of one call's events must
            # not take the other's.
            if series == "b":
                ts.write_events(series, batch[:2])
                ts.write_events(series, batch[2:])
            else:
                ts.write_events(series, batch)
        start, end = written_at - timedelta(hours=1), written_at + timedelta(minutes=1)
        if (now() - written_at) < timedelta(milliseconds=250):
            for series, batch in events.items():
                assert_events(
                    everything(ts, series, start, end), sorted_events(batch), "events within retention"
                )

        def expires(e: Event) -> datetime:
            return e.event_time + RETENTION

        def check() -> bool:
            """One read per series: what it returns must be exactly the events
            not yet past retention when it ran (within the clock tolerance)."""
            done = True
            for series, batch in events.items():
                began = now()
                got = everything(ts, series, start, end)
                ended = now()
                live = [e for e in batch if expires(e) > ended + CLOCK_TOLERANCE]
                dead = [e for e in batch if expires(e) < began - CLOCK_TOLERANCE]
                got_set = set((e.event_time, e.event_id) for e in got)
                lost = [e for e in live if (e.event_time, e.event_id) not in got_set]
                kept = [e for e in dead if (e.event_time, e.event_id) in got_set]
                assert not lost, (
                    f"series {series!r}: events still within the 3 s retention were not returned at "
                    f"{ended.isoformat()}: {describe(lost)} (deleted or purged too early)"
                )
                assert not kept, (
                    f"series {series!r}: events past the 3 s retention were returned at {began.isoformat()}: "
                    f"{describe(kept)}"
                )
                done = done and not got
            return done

        wait_until(check, what="events written 0 to 2 s ago with a retention of 3 s are still returned")
        assert all(expires(e) <= now() + CLOCK_TOLERANCE for batch in events.values() for e in batch)

    def test_an_event_can_be_written_again_after_it_expired(self) -> None:
        ts = self.open_timeseries(timeseries={"retention": "3s"})
        ts.read_events("warm-up", now() - timedelta(seconds=1), now())
        first = now() - timedelta(milliseconds=2000)
        ts.write_events("s", [event(first, "old")])
        wait_until(
            lambda: not everything(ts, "s", first - timedelta(minutes=1), now() + timedelta(minutes=1)),
            what="an event written 2 s ago with a retention of 3 s is still returned",
        )
        fresh = now()
        ts.write_events("s", [event(fresh, "old", b"again")])
        assert_events(
            everything(ts, "s", fresh - timedelta(minutes=1), fresh + timedelta(minutes=1)),
            [event(fresh, "old", b"again")],
            "an event written after an older one of the same id expired",
        )

    def test_a_write_older_than_retention_is_refused(self) -> None:
        ts = self.open_timeseries(timeseries={"retention": "1h"})
        moment = now()
        fine = event(moment - timedelta(minutes=30), "fine")
        for age in (timedelta(hours=1, seconds=5), timedelta(days=400)):
            with pytest.raises(prism.InvalidArgument) as refused:
                ts.write_events("s", [fine, event(moment - age, "too-old")])
            assert_names(refused.value, ts, "retention")
        assert everything(ts, "s", moment - timedelta(days=500), moment + timedelta(minutes=1)) == [], (
            "a refused batch must write nothing, not even its events within retention"
        )
        ts.write_events("s", [fine])
        assert everything(ts, "s", moment - timedelta(days=500), moment + timedelta(minutes=1)) == [fine]

    def test_a_read_reaching_past_retention_returns_the_live_events(self) -> None:
        ts = self.open_timeseries(timeseries={"retention": "1h"})
        moment = now()
        events = [
            event(moment - timedelta(minutes=59), "edge"),
            event(moment - timedelta(minutes=1), "recent"),
        ]
        ts.write_events("s", events)
        for start in (
            moment - timedelta(days=3650),
            moment - timedelta(hours=2),
            moment - timedelta(hours=1),
        ):
            for order in ("asc", "desc"):
                got = ts.read_events("s", start, moment + timedelta(minutes=1), order=order).events
                assert_events(got, sorted_events(events, order), f"a {order} read from {start.isoformat()}")
        assert ts.read_events("s", moment - timedelta(days=10), moment - timedelta(days=9)).events == [], (
            "a read entirely before retention must be empty"
        )

    def test_future_events_within_max_future_skew_are_kept_and_beyond_it_refused(self) -> None:
        ts = self.open_timeseries(timeseries={"max_future_skew": "1m"})
        moment = now()
        soon = event(moment + timedelta(seconds=30), "soon")
        ts.write_events("s", [soon])
        for ahead in (timedelta(minutes=2), timedelta(days=1)):
            with pytest.raises(prism.InvalidArgument) as refused:
                ts.write_events("s", [event(moment, "now"), event(moment + ahead, "too-far")])
            assert_names(refused.value, ts, "max_future_skew")
        got = everything(ts, "s", moment - timedelta(minutes=1), moment + timedelta(days=2))
        assert_events(got, [soon], "an event 30 s ahead is kept; a refused batch writes nothing")
