"""Writes are idempotent on ``(series, event_time, event_id)``: a rewrite of a
position replaces the event (the later write wins, and it appears once), a
replayed batch changes nothing, and concurrent writers lose nothing."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta

from prism_conformance.handles import TimeSeriesHandle
from prism_conformance.support import run_threads
from prism_conformance.timeseries.base import TimeSeriesSuiteBase
from prism_conformance.timeseries.support import (
    US,
    assert_events,
    base_time,
    event,
    everything,
    sorted_events,
)


class WriteTests(TimeSeriesSuiteBase):
    def test_rewriting_a_position_replaces_the_event_later_write_wins(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        ts.write_events(
            "s", [event(t0, "x", b"first", {"v": "1", "old": "tag"}), event(t0 + US, "y", b"keep")]
        )
        ts.write_events("s", [event(t0, "x", b"second", {"v": "2"})])
        expected = [event(t0, "x", b"second", {"v": "2"}), event(t0 + US, "y", b"keep")]
        end = t0 + timedelta(seconds=1)
        assert_events(
            everything(ts, "s", t0, end),
            expected,
            "a rewrite of (series, event_time, event_id) must replace the event, tags and all (the later write wins), once",
        )
        assert_events(
            ts.read_events("s", t0, end, order="desc").events, expected[::-1], "descending, after the rewrite"
        )
        # Again, to an older payload: still the later write that wins, not the larger or first one.
        ts.write_events("s", [event(t0, "x", b"first", {"v": "1", "old": "tag"})])
        assert_events(
            everything(ts, "s", t0, end),
            [event(t0, "x", b"first", {"v": "1", "old": "tag"}), expected[1]],
            "a third write of one position must win over the second",
        )

    def test_within_one_write_the_later_event_of_a_position_wins(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        ts.write_events(
            "s",
            [event(t0, "x", b"first"), event(t0 + US, "y", b"other"), event(t0, "x", b"second", {"t": "2"})],
        )
        assert_events(
            everything(ts, "s", t0, t0 + timedelta(seconds=1)),
            [event(t0, "x", b"second", {"t": "2"}), event(t0 + US, "y", b"other")],
            "a write holding two events of one position stores the later one, once",
        )

    def test_position_is_time_and_id_together(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        events = [
            event(t0, "same-id", b"1"),
            event(t0 + US, "same-id", b"2"),
            event(t0 + timedelta(minutes=5), "same-id", b"3"),
            event(t0, "other-id", b"4"),
        ]
        ts.write_events("s", events)
        ts.write_events("t", [event(t0, "same-id", b"another series")])
        assert_events(
            everything(ts, "s", t0, t0 + timedelta(minutes=6)),
            sorted_events(events),
            "events that share only an id, or only a time, are different events",
        )

    def test_replaying_a_batch_changes_nothing(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        batch = [
            event(t0 + timedelta(milliseconds=n // 2), f"e{n}", bytes([n]) * n, {"n": str(n)})
            for n in range(60)
        ]
        ts.write_events("s", batch)
        end = t0 + timedelta(seconds=1)
        once = everything(ts, "s", t0, end)
        assert_events(once, sorted_events(batch), "the batch")
        ts.write_events("s", batch)
        ts.write_events("s", list(reversed(batch)))
        assert_events(
            everything(ts, "s", t0, end), once, "replaying a batch (also reversed) must change nothing"
        )
        # A replay of part of it, as a retry after a partial failure would.
        ts.write_events("s", batch[10:20])
        assert_events(everything(ts, "s", t0, end), once, "replaying part of a batch must change nothing")

    def test_concurrent_writers_lose_nothing(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        writers, batches, per_batch = 6, 12, 4
        finished: list[int] = []

        def writer(w: int) -> Callable[[], None]:
            def run() -> None:
                rng = random.Random(w)
                for b in range(batches):
                    # Every writer uses the same few times, so events collide on
                    # time (never on id) and share buckets and pages.
                    ts.write_events(
                        "s",
                        [
                            event(
                                t0 + timedelta(milliseconds=rng.randrange(5)),
                                f"w{w}-b{b:02d}-{i}",
                                f"{w}/{b}/{i}",
                            )
                            for i in range(per_batch)
                        ],
                    )
                finished.append(w)

            return run

        run_threads([writer(w) for w in range(writers)])
        assert sorted(finished) == list(range(writers))
        got = everything(ts, "s", t0, t0 + timedelta(seconds=1))
        ids = sorted(e.event_id for e in got)
        expected_ids = sorted(
            f"w{w}-b{b:02d}-{i}" for w in range(writers) for b in range(batches) for i in range(per_batch)
        )
        assert ids == expected_ids, (
            f"{len(expected_ids)} events were written by {writers} concurrent writers; {len(got)} came back, "
            f"{len(set(expected_ids) - set(ids))} missing, {len(ids) - len(set(ids))} duplicated"
        )
        assert got == sorted_events(got), "events written concurrently must still come back in order"

    def test_concurrent_rewrites_of_one_position_leave_one_event(self, ts: TimeSeriesHandle) -> None:
        t0 = base_time()
        rounds = 20

        def rewriter(w: int) -> Callable[[], None]:
            def run() -> None:
                for n in range(rounds):
                    ts.write_events(
                        "s", [event(t0, "contended", f"w{w}-{n}"), event(t0 + US * (w + 1), f"own-{w}-{n}")]
                    )

            return run

        run_threads([rewriter(w) for w in range(4)])
        got = everything(ts, "s", t0, t0 + timedelta(seconds=1))
        contended = [e for e in got if e.event_id == "contended"]
        assert len(contended) == 1, (
            f"a position rewritten concurrently must hold one event, got {len(contended)}"
        )
        assert contended[0].payload in {f"w{w}-{rounds - 1}".encode() for w in range(4)}, (
            f"the surviving event must be one writer's last write, got {contended[0].payload!r}"
        )
        assert len(got) == 1 + 4 * rounds, f"expected {1 + 4 * rounds} events, got {len(got)}"
