"""The TimeSeries and Counter cores on the memory backend: validation and its
messages, retention and future-skew refusals, pagination by count and bytes,
page tokens bound to their read, config checks and planning by counter mode.
What every backend must do is the conformance suites' job; this is what the
core does once for all of them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

import prism
from prism.config import parse_config
from prism.errors import ConfigError
from prism.planner import plan_namespace
from prism.plugins.manager import load_plugins

NOW = datetime.now(UTC)


def config(**namespaces: dict[str, Any]) -> dict[str, Any]:
    return {"backends": {"mem": {"plugin": "memory"}}, "namespaces": namespaces}


@pytest.fixture
def db() -> Iterator[prism.Prism]:
    with prism.open(
        config(
            metrics={"abstraction": "timeseries", "timeseries": {"retention": "1h", "max_future_skew": "1m"}},
            small={
                "abstraction": "timeseries",
                "timeseries": {
                    "max_payload_bytes": 10,
                    "max_tags": 1,
                    "max_tag_bytes": 8,
                    "max_events_per_call": 3,
                    "max_page_events": 5,
                    "page_size_bytes": 40,
                    "max_series_name_bytes": 8,
                    "max_event_id_bytes": 4,
                },
            },
            views={"abstraction": "counter"},
            exact={"abstraction": "counter", "counter": {"mode": "exact", "token_window": "1m"}},
        )
    ) as opened:
        yield opened


def at(seconds_ago: float, event_id: str = "e", payload: bytes = b"", **tags: str) -> prism.Event:
    return prism.Event(NOW - timedelta(seconds=seconds_ago), event_id, payload, tags)


# -- TimeSeries ------------------------------------------------------------------------------


def test_a_refused_batch_writes_nothing_and_names_the_event_and_limit(db: prism.Prism) -> None:
    ts = db.timeseries("small")
    with pytest.raises(prism.LimitExceeded) as info:
        ts.write_events("s", [at(1, "a", b"ok"), at(2, "b", b"x" * 11)])
    assert info.value.limit_name == "timeseries.max_payload_bytes"
    assert info.value.field == "events[1].payload"
    assert "events[1].payload in series 's' is 11B" in str(info.value)
    assert ts.read_events("s", NOW - timedelta(minutes=1), NOW + timedelta(seconds=1)).events == []


@pytest.mark.parametrize(
    ("events", "limit_name"),
    [
        ([at(1, "a", b"", x="1", y="2")], "timeseries.max_tags"),
        ([at(1, "a", b"", name="toolong")], "timeseries.max_tag_bytes"),
        ([at(1, "abcde")], "timeseries.max_event_id_bytes"),
        ([at(1, "a"), at(2, "b"), at(3, "c"), at(4, "d")], "timeseries.max_events_per_call"),
    ],
)
def test_each_limit_is_named(db: prism.Prism, events: list[prism.Event], limit_name: str) -> None:
    with pytest.raises(prism.LimitExceeded) as info:
        db.timeseries("small").write_events("s", events)
    assert info.value.limit_name == limit_name
    assert info.value.namespace == "small"


def test_series_names_are_checked(db: prism.Prism) -> None:
    ts = db.timeseries("small")
    with pytest.raises(prism.LimitExceeded, match="max_series_name_bytes"):
        ts.write_events("series-too-long", [at(1)])
    for bad in ("", "a\x00b", 7):
        with pytest.raises(prism.InvalidArgument) as info:
            ts.write_events(bad, [at(1)])  # type: ignore[arg-type]
        assert info.value.field == "series"


def test_old_and_future_events_are_refused_with_the_setting_to_change(db: prism.Prism) -> None:
    ts = db.timeseries("metrics")
    with pytest.raises(
        prism.InvalidArgument, match=r"older than the namespace's retention of 1h \(timeseries.retention\)"
    ):
        ts.write_events("s", [at(2 * 3600)])
    with pytest.raises(prism.InvalidArgument, match=r"beyond the allowed 1m \(timeseries.max_future_skew\)"):
        ts.write_events("s", [at(-300)])
    ts.write_events("s", [at(3500, "late"), at(-30, "soon")])  # late and slightly early are fine
    page = ts.read_events("s", NOW - timedelta(hours=2), NOW + timedelta(minutes=1))
    assert [e.event_id for e in page.events] == ["late", "soon"]


def test_times_must_be_aware_and_ranges_non_empty(db: prism.Prism) -> None:
    ts = db.timeseries("metrics")
    with pytest.raises(prism.InvalidArgument, match="has no timezone"):
        ts.write_events("s", [prism.Event(datetime.now(), "a")])  # naive: the point of the test
    with pytest.raises(prism.InvalidArgument, match="must be before end"):
        ts.read_events("s", NOW, NOW)
    with pytest.raises(prism.InvalidArgument, match="order must be 'asc' or 'desc'"):
        ts.read_events("s", NOW - timedelta(minutes=1), NOW, order="up")  # type: ignore[arg-type]
    with pytest.raises(prism.InvalidArgument, match="events must be a list"):
        ts.write_events("s", at(1))  # type: ignore[arg-type]


def test_the_later_duplicate_in_one_call_wins(db: prism.Prism) -> None:
    ts = db.timeseries("metrics")
    ts.write_events("s", [at(1, "a", b"first"), at(1, "a", b"second")])
    page = ts.read_events("s", NOW - timedelta(minutes=1), NOW)
    assert [(e.event_id, e.payload) for e in page.events] == [("a", b"second")]


def test_pages_stop_at_the_limit_and_at_the_byte_budget(db: prism.Prism) -> None:
    ts = db.timeseries("small")
    # Each event: 10 B payload + 1 B id = 11 B; the budget of 40 B holds three.
    for start in range(0, 9, 3):
        ts.write_events("s", [at(i + 1, str(i), b"p" * 10) for i in range(start, start + 3)])
    window = (NOW - timedelta(minutes=1), NOW)
    with pytest.raises(prism.LimitExceeded, match="max_page_events"):
        ts.read_events("s", *window, limit=6)
    seen: list[str] = []
    token = None
    sizes = []
    while True:
        page = ts.read_events("s", *window, order="desc", page_token=token)
        sizes.append(len(page.events))
        seen += [e.event_id for e in page.events]
        token = page.next_page_token
        if token is None:
            break
    assert seen == [str(i) for i in range(9)]  # newest first: i seconds ago
    assert sizes == [3, 3, 3]


def test_a_page_token_only_continues_its_own_read(db: prism.Prism) -> None:
    ts = db.timeseries("metrics")
    ts.write_events("s", [at(i + 1, str(i)) for i in range(3)])
    window = (NOW - timedelta(minutes=1), NOW)
    token = ts.read_events("s", *window, limit=1).next_page_token
    assert token is not None
    for kwargs in (
        {"series": "t", "start": window[0], "end": window[1]},
        {"series": "s", "start": window[0] - timedelta(seconds=1), "end": window[1]},
        {"series": "s", "start": window[0], "end": window[1], "order": "desc"},
    ):
        with pytest.raises(prism.InvalidPageToken):
            ts.read_events(page_token=token, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(prism.InvalidPageToken):
        ts.read_events("s", *window, page_token=token[:-2] + "xx")


def test_the_remaining_range_after_retention_can_be_empty(db: prism.Prism) -> None:
    ts = db.timeseries("metrics")
    page = ts.read_events("s", NOW - timedelta(hours=5), NOW - timedelta(hours=2))
    assert page.events == []
    assert page.next_page_token is None


# -- Counter ---------------------------------------------------------------------------------


def test_counter_checks_names_and_deltas(db: prism.Prism) -> None:
    counter = db.counter("views")
    for bad in ("", "a\x00"):
        with pytest.raises(prism.InvalidArgument) as info:
            counter.add(bad)
        assert info.value.field == "counter"
    with pytest.raises(prism.LimitExceeded, match="max_counter_name_bytes"):
        counter.get("x" * 257)
    for delta in (1.5, True, "1"):
        with pytest.raises(prism.InvalidArgument, match="delta must be an int"):
            counter.add("c", delta)  # type: ignore[arg-type]
    with pytest.raises(prism.LimitExceeded, match="64-bit"):
        counter.add("c", 2**63)
    assert counter.get("c") == 0


def test_best_effort_ignores_tokens_and_exact_honours_them(db: prism.Prism) -> None:
    token = prism.IdempotencyToken.new()
    best = db.counter("views")
    assert best.mode == "best_effort"
    best.add("c", 2, token=token)
    best.add("c", 2, token=token)
    assert best.get("c") == 4  # documented: a retry counts again
    exact = db.counter("exact")
    assert exact.add("c", 2, token=token) == 2
    assert exact.add("c", 2, token=token) == 2
    exact.add("c", 1)  # no token: a new operation each time
    exact.add("c", 1)
    assert exact.get("c") == 4


def test_exact_tokens_outside_the_window_are_refused(db: prism.Prism) -> None:
    exact = db.counter("exact")
    old = prism.IdempotencyToken.at(NOW - timedelta(minutes=2))
    with pytest.raises(
        prism.InvalidArgument, match=r"older than the namespace's counter.token_window of 1m"
    ) as info:
        exact.add("c", 1, token=old)
    assert info.value.field == "token"
    future = prism.IdempotencyToken.at(NOW + timedelta(hours=1))
    with pytest.raises(prism.InvalidArgument, match=r"limits\.max_token_skew"):
        exact.clear("c", token=future)
    assert exact.get("c") == 0


def test_overflow_changes_nothing(db: prism.Prism) -> None:
    counter = db.counter("views")
    counter.add("c", 2**63 - 2)
    with pytest.raises(prism.LimitExceeded, match="nothing changed"):
        counter.add("c", 5)
    assert counter.get("c") == 2**63 - 2


def test_async_handles_have_the_same_shape() -> None:
    async def body() -> tuple[list[str], int]:
        async with prism.open_async(
            config(m={"abstraction": "timeseries"}, c={"abstraction": "counter"})
        ) as db:
            await db.timeseries("m").write_events("s", [at(1, "a")])
            page = await db.timeseries("m").read_events("s", NOW - timedelta(minutes=1), NOW)
            await asyncio.gather(*(db.counter("c").add("n") for _ in range(20)))
            return [e.event_id for e in page.events], await db.counter("c").get("n")

    assert asyncio.run(body()) == (["a"], 20)


# -- config and planning ------------------------------------------------------------------------


def test_settings_of_another_abstraction_and_bad_values_are_config_errors() -> None:
    registry = load_plugins().registry
    with pytest.raises(ConfigError) as info:
        parse_config(
            config(
                kv={"abstraction": "keyvalue", "timeseries": {"retention": "1d"}},
                ts={"abstraction": "timeseries", "timeseries": {"retention": "0s", "bucket": "1500ms"}},
                c={"abstraction": "counter", "counter": {"mode": "sometimes"}},
            ),
            registry,
        )
    text = str(info.value)
    assert "namespaces.kv.timeseries: only timeseries namespaces take timeseries settings" in text
    assert "namespaces.ts.timeseries.retention: must be longer than 0" in text
    assert "namespaces.ts.timeseries.bucket: use whole seconds" in text
    assert "namespaces.c.counter.mode" in text


def test_the_planner_picks_by_counter_mode() -> None:
    registry = load_plugins().registry
    memory = registry.counter["memory"]
    # A backend type that serves best_effort only, as Cassandra's counter tables would alone.
    registry.counter["memory"] = attrs.evolve(memory, capabilities=frozenset({"counter.best_effort"}))
    cfg = parse_config(
        config(
            fast={"abstraction": "counter"},
            exact={"abstraction": "counter", "counter": {"mode": "exact"}},
        ),
        registry,
    )
    assert "counter.mode best_effort" in plan_namespace("fast", cfg.namespaces["fast"], cfg, registry).reason
    with pytest.raises(prism.PlanError, match=r"does not serve counter.mode exact \(lacks counter.exact\)"):
        plan_namespace("exact", cfg.namespaces["exact"], cfg, registry)


def test_capabilities_of_another_abstraction_are_config_errors() -> None:
    with pytest.raises(prism.ConfigError, match=r"kv\.scan do not apply to counter"):
        prism.open(
            {
                "backends": {"mem": {"plugin": "memory"}},
                "namespaces": {"c": {"abstraction": "counter", "needs": {"capabilities": ["kv.scan"]}}},
            }
        )


def test_wrong_abstraction_is_named(db: prism.Prism) -> None:
    with pytest.raises(prism.WrongAbstraction):
        db.counter("metrics")
    with pytest.raises(prism.WrongAbstraction):
        db.timeseries("views")
