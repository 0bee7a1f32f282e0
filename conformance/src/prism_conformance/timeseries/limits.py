"""Limits and validation: every refusal is a ``LimitExceeded`` or
``InvalidArgument`` naming the namespace and the limit, a refused batch
writes nothing (not even its valid events), and exactly the limit is fine."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

import prism
from prism import Event
from prism_conformance.handles import TimeSeriesHandle
from prism_conformance.timeseries.base import TimeSeriesSuiteBase
from prism_conformance.timeseries.support import (
    US,
    assert_events,
    assert_names,
    base_time,
    event,
    everything,
    sorted_events,
)

LIMITS: dict[str, Any] = {
    "max_payload_bytes": "1KiB",
    "max_tags": 3,
    "max_tag_bytes": 16,
    "max_series_name_bytes": 16,
    "max_event_id_bytes": 12,
    "max_events_per_call": 5,
}


class LimitTests(TimeSeriesSuiteBase):
    def _refused(self, ts: TimeSeriesHandle, series: str, events: list[Event], name: str, limit: int) -> None:
        with pytest.raises(prism.InvalidArgument) as refused:
            ts.write_events(series, events)
        assert_names(refused.value, ts, name, limit)

    def test_each_limit_is_enforced_exactly_and_a_refused_batch_writes_nothing(self) -> None:
        ts = self.open_timeseries(timeseries=LIMITS)
        t0 = base_time()
        accepted: list[Event] = []
        n = iter(range(1000))

        def at() -> datetime:
            return t0 + US * next(n)

        def ok(series: str, events: list[Event]) -> None:
            ts.write_events(series, events)
            if series == "s":
                accepted.extend(events)

        # Payload: 1 KiB fits, one byte more does not.
        ok("s", [event(at(), "p-at", bytes(i % 251 for i in range(1024)))])
        self._refused(
            ts, "s", [event(at(), "p-fine"), event(at(), "p-over", b"x" * 1025)], "max_payload_bytes", 1024
        )
        # Tags: three fit, four do not.
        ok("s", [event(at(), "t-at", tags={"a": "1", "b": "2", "c": "3"})])
        self._refused(
            ts,
            "s",
            [event(at(), "t-fine"), event(at(), "t-over", tags={"a": "1", "b": "2", "c": "3", "d": "4"})],
            "max_tags",
            3,
        )
        # One tag's name and value: 16 UTF-8 bytes fit (é is two), 17 do not.
        ok("s", [event(at(), "tb-at", tags={"名前": "valueé123"})])
        self._refused(
            ts,
            "s",
            [event(at(), "tb-fine"), event(at(), "tb-over", tags={"名前": "valueé1234"})],
            "max_tag_bytes",
            16,
        )
        # Event ids: 12 UTF-8 bytes fit, 13 do not.
        ok("s", [event(at(), "ééééé12")])
        self._refused(ts, "s", [event(at(), "id-fine"), event(at(), "ééééé123")], "max_event_id_bytes", 12)
        # Events per call: five fit, six do not.
        ok("s", [event(at(), f"c{i}") for i in range(5)])
        self._refused(ts, "s", [event(at(), f"c-over{i}") for i in range(6)], "max_events_per_call", 5)
        # Series names: 16 UTF-8 bytes fit, 17 do not.
        ok("sérïes-ok-1234", [event(at(), "named")])
        self._refused(ts, "sérïes-ok-12345", [event(at(), "named")], "max_series_name_bytes", 16)
        assert_events(
            everything(ts, "s", t0, t0 + timedelta(seconds=1)),
            sorted_events(accepted),
            "the events at each limit are stored; nothing of a refused batch is",
        )
        assert [e.event_id for e in everything(ts, "sérïes-ok-1234", t0, t0 + timedelta(seconds=1))] == [
            "named"
        ]
        with pytest.raises(prism.InvalidArgument) as refused:
            ts.read_events("sérïes-ok-12345", t0, t0 + timedelta(seconds=1))
        assert_names(refused.value, ts, "max_series_name_bytes", 16)

    def test_malformed_writes_are_refused_and_write_nothing(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        good = event(t0, "good")
        bad: list[tuple[str, str, list[Event]]] = [
            ("a naive event_time", "s", [good, Event(datetime(2030, 1, 1), "naive")]),
            ("an empty event id", "s", [good, event(t0 + US, "")]),
            ("an empty series name", "", [good]),
        ]
        ts.write_events("s", [])  # an empty write does nothing
        for what, series, events in bad:
            with pytest.raises(prism.InvalidArgument) as refused:
                ts.write_events(series, events)
            assert ts.name in str(refused.value), (
                f"{what}: the refusal must name the namespace: {refused.value}"
            )
        assert everything(ts, "s", t0 - timedelta(days=1), t0 + timedelta(days=1)) == [], (
            "a refused write must write nothing"
        )

    def test_malformed_reads_are_refused(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        ts.write_events("s", [event(t0, "a")])
        end = t0 + timedelta(seconds=1)
        cases: list[tuple[str, dict[str, Any]]] = [
            ("start after end", {"start": end, "end": t0}),
            ("an empty range [t, t)", {"start": t0, "end": t0}),
            ("a naive start", {"start": datetime(2020, 1, 1), "end": end}),
            ("a naive end", {"start": t0, "end": datetime(2040, 1, 1)}),
            ("limit 0", {"start": t0, "end": end, "limit": 0}),
            ("a negative limit", {"start": t0, "end": end, "limit": -1}),
            ("an unknown order", {"start": t0, "end": end, "order": "sideways"}),
        ]
        for what, arguments in cases:
            with pytest.raises(prism.InvalidArgument) as refused:
                ts.read_events("s", **arguments)
            assert ts.name in str(refused.value), (
                f"{what}: the refusal must name the namespace: {refused.value}"
            )

    def test_a_limit_over_max_page_events_is_refused(self) -> None:
        ts = self.open_timeseries(timeseries={"max_page_events": 10})
        t0 = base_time()
        ts.write_events("s", [event(t0 + US * n, f"e{n}") for n in range(12)])
        with pytest.raises(prism.LimitExceeded) as refused:
            ts.read_events("s", t0, t0 + timedelta(seconds=1), limit=11)
        assert_names(refused.value, ts, "max_page_events", 10)
        page = ts.read_events("s", t0, t0 + timedelta(seconds=1), limit=10)
        assert [e.event_id for e in page.events] == [f"e{n}" for n in range(10)]
