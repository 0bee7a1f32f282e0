"""TimeSeries through the gateway: the same application code embedded and
remote on memory and SQLite, every error mapped both ways (status code,
BadRequest field, ErrorInfo limit, and back to the same Python exception),
page tokens, microsecond times, retried writes, and the admin description of
a TimeSeries namespace."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

import prism
import prism.remote
from prism.gateway.status import DETAILS_KEY
from prism.gateway.testing import GatewayThread
from prism.spi import TimeSeriesTraits
from prism.v1 import admin_pb2, admin_pb2_grpc, timeseries_pb2, timeseries_pb2_grpc

SETTINGS = {
    "retention": "1d",
    "max_future_skew": "1m",
    "max_tags": 2,
    "max_payload_bytes": "1KiB",
    "max_page_events": 50,
    "max_events_per_call": 20,
}


def memory_config(_: Path) -> dict[str, Any]:
    return {
        "backends": {"mem": {"plugin": "memory"}},
        "namespaces": {
            "metrics": {"abstraction": "timeseries", "timeseries": SETTINGS},
            "other": {"abstraction": "timeseries"},
            "counts": {"abstraction": "counter"},
        },
        "gateway": {"create_namespaces": {"allow": True}},
    }


def sqlite_config(data_dir: Path) -> dict[str, Any]:
    config = memory_config(data_dir)
    config["backends"] = {"local": {"plugin": "sqlite", "path": str(data_dir / "prism.db")}}
    return config


CONFIGS = {"memory": memory_config, "sqlite": sqlite_config}


@pytest.fixture(params=sorted(CONFIGS))
def config_factory(request: pytest.FixtureRequest) -> Any:
    return CONFIGS[request.param]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    with GatewayThread(memory_config(tmp_path_factory.mktemp("ts"))) as running:
        yield running


def _shape(page: prism.EventsPage) -> list[tuple[datetime, str, bytes, dict[str, str]]]:
    return [(e.event_time, e.event_id, e.payload, dict(e.tags)) for e in page.events]


def timeseries_app(db: Any, base: datetime) -> dict[str, Any]:
    """Application code written once against the public TimeSeries API."""
    out: dict[str, Any] = {}
    metrics = db.timeseries("metrics")
    same = base + timedelta(seconds=2)
    metrics.write_events(
        "cpu",
        [
            prism.Event(base, "e0", b"10", {"host": "a"}),
            prism.Event(base + timedelta(seconds=1, microseconds=7), "e1", b"11"),
            # Two events at one microsecond: ordered by id.
            prism.Event(same, "z", b"12-z", {"host": "b", "dc": "x"}),
            prism.Event(same, "a", b"12-a"),
            prism.Event(base + timedelta(seconds=3), "e3", b"first"),
        ],
    )
    # The same (time, id) again: the later write wins, nothing is added.
    metrics.write_events("cpu", [prism.Event(base + timedelta(seconds=3), "e3", b"second")])
    metrics.write_events("mem", [prism.Event(base, "m0", b"other series")])
    end = base + timedelta(minutes=1)
    out["asc"] = _shape(metrics.read_events("cpu", base, end))
    out["desc"] = _shape(metrics.read_events("cpu", base, end, order="desc"))
    # start inclusive, end exclusive.
    out["window"] = _shape(metrics.read_events("cpu", base + timedelta(seconds=1, microseconds=7), same))
    pages: list[list[str]] = []
    token = None
    while True:
        page = metrics.read_events("cpu", base, end, order="desc", limit=2, page_token=token)
        pages.append([e.event_id for e in page.events])
        token = page.next_page_token
        if token is None:
            break
    out["pages"] = pages
    out["mem"] = _shape(metrics.read_events("mem", base, end))
    out["empty"] = _shape(metrics.read_events("nothing-here", base, end))
    first = metrics.read_events("cpu", base, end, limit=1)

    errors: list[tuple[str, str, str | None, str | None]] = []
    attempts: list[Callable[[], object]] = [
        lambda: metrics.read_events("cpu", base.replace(tzinfo=None), end),
        lambda: metrics.read_events("cpu", end, base),
        lambda: metrics.read_events("cpu", base, end, order="sideways"),
        lambda: metrics.read_events("cpu", base, end, limit=0),
        lambda: metrics.read_events("cpu", base, end, limit=51),
        lambda: metrics.read_events("cpu", base, end, page_token="not-a-token"),
        lambda: metrics.read_events("mem", base, end, limit=1, page_token=first.next_page_token),
        lambda: metrics.read_events(
            "cpu", base, end, order="desc", limit=1, page_token=first.next_page_token
        ),
        lambda: metrics.write_events("cpu", [prism.Event(base - timedelta(days=2), "old")]),
        lambda: metrics.write_events("cpu", [prism.Event(base + timedelta(hours=3), "future")]),
        lambda: metrics.write_events("cpu", [prism.Event(base, "tags", tags={"a": "1", "b": "2", "c": "3"})]),
        lambda: metrics.write_events("cpu", [prism.Event(base, "big", b"x" * 1025)]),
        lambda: metrics.write_events("cpu", [prism.Event(base, f"n{i}") for i in range(21)]),
        lambda: metrics.write_events("cpu", [prism.Event(base, "")]),
        lambda: metrics.write_events("cpu", prism.Event(base, "not in a list")),
        lambda: metrics.write_events("cpu", ["not an event"]),
        lambda: metrics.write_events("", [prism.Event(base, "e")]),
        lambda: metrics.write_events("s" * 300, [prism.Event(base, "e")]),
        lambda: db.timeseries("missing").read_events("cpu", base, end),
        lambda: db.timeseries("counts").read_events("cpu", base, end),
        lambda: db.counter("metrics").get("cpu"),
    ]
    for attempt in attempts:
        try:
            attempt()
        except prism.PrismError as exc:
            # How far ahead a future event is depends on the clock at the call.
            message = re.sub(r"is \S+ in the future", "is ... in the future", str(exc))
            errors.append(
                (type(exc).__name__, message, getattr(exc, "field", None), getattr(exc, "limit_name", None))
            )
        else:
            errors.append(("no error", "", None, None))
    out["errors"] = errors
    # Nothing a refused write carried was stored.
    out["after_errors"] = [e.event_id for e in metrics.read_events("cpu", base, end).events]
    return out


def test_the_same_timeseries_code_gives_the_same_results_embedded_and_remote(
    config_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "embedded").mkdir()
    (tmp_path / "gateway").mkdir()
    base = datetime.now(UTC).replace(microsecond=250_001) - timedelta(hours=1)
    with prism.open(config_factory(tmp_path / "embedded")) as db:
        embedded = timeseries_app(db, base)
    with (
        GatewayThread(config_factory(tmp_path / "gateway")) as gateway,
        prism.remote.connect(gateway.target, timeout=10) as db,
    ):
        remote = timeseries_app(db, base)
    assert remote == embedded
    # And the results are the right ones, not merely equal.
    same = base + timedelta(seconds=2)
    assert embedded["asc"] == [
        (base, "e0", b"10", {"host": "a"}),
        (base + timedelta(seconds=1, microseconds=7), "e1", b"11", {}),
        (same, "a", b"12-a", {}),
        (same, "z", b"12-z", {"host": "b", "dc": "x"}),
        (base + timedelta(seconds=3), "e3", b"second", {}),
    ]
    assert embedded["desc"] == embedded["asc"][::-1]
    assert [event_id for _, event_id, _, _ in embedded["window"]] == ["e1"]
    assert embedded["pages"] == [["e3", "z"], ["a", "e1"], ["e0"]]
    assert embedded["mem"] == [(base, "m0", b"other series", {})]
    assert embedded["empty"] == []
    assert [(name, field, limit) for name, _, field, limit in embedded["errors"]] == [
        ("InvalidArgument", "start", None),
        ("InvalidArgument", "end", None),
        ("InvalidArgument", "order", None),
        ("InvalidArgument", "limit", None),
        ("LimitExceeded", "limit", "timeseries.max_page_events"),
        ("InvalidPageToken", "page_token", None),
        ("InvalidPageToken", "page_token", None),
        ("InvalidPageToken", "page_token", None),
        ("InvalidArgument", "events[0].event_time", None),
        ("InvalidArgument", "events[0].event_time", None),
        ("LimitExceeded", "events[0].tags", "timeseries.max_tags"),
        ("LimitExceeded", "events[0].payload", "timeseries.max_payload_bytes"),
        ("LimitExceeded", "events", "timeseries.max_events_per_call"),
        ("InvalidArgument", "events[0].event_id", None),
        ("InvalidArgument", "events", None),
        ("InvalidArgument", "events[0]", None),
        ("InvalidArgument", "series", None),
        ("LimitExceeded", "series", "timeseries.max_series_name_bytes"),
        ("NamespaceNotFound", None, None),
        ("WrongAbstraction", None, None),
        ("WrongAbstraction", None, None),
    ]
    assert all(message.startswith("namespace '") for _, message, _, _ in embedded["errors"])
    assert embedded["after_errors"] == ["e0", "e1", "a", "z", "e3"]


# -- the wire: status codes and details -------------------------------------------------------------


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    whole = int(seconds)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=int((seconds - whole) * 1e9))


def _rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _details(error: grpc.RpcError) -> tuple[str | None, dict[str, str], str]:
    """The BadRequest field, the ErrorInfo metadata (with its reason) and the request id."""
    raw = dict(error.trailing_metadata() or ()).get(DETAILS_KEY)  # type: ignore[attr-defined]
    assert isinstance(raw, bytes), "no google.rpc.Status in the trailing metadata"
    status = status_pb2.Status.FromString(raw)
    field: str | None = None
    meta: dict[str, str] = {}
    request_id = ""
    for packed in status.details:
        if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            field = bad.field_violations[0].field
        elif packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            meta = {"reason": info.reason, **info.metadata}
        elif packed.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            rid = error_details_pb2.RequestInfo()
            packed.Unpack(rid)
            request_id = rid.request_id
    return field, meta, request_id


@pytest.fixture(scope="module")
def stub(gateway: GatewayThread) -> Iterator[timeseries_pb2_grpc.TimeSeriesServiceStub]:
    with grpc.insecure_channel(gateway.address) as channel:
        yield timeseries_pb2_grpc.TimeSeriesServiceStub(channel)


def test_wire_errors_carry_the_status_code_the_field_and_the_limit(
    stub: timeseries_pb2_grpc.TimeSeriesServiceStub,
) -> None:
    now = datetime.now(UTC).timestamp()
    read = timeseries_pb2.ReadEventsRequest
    cases: list[tuple[Any, Any, grpc.StatusCode, str | None, str]] = [
        (stub.ReadEvents, read(namespace="metrics", series="s", end=_ts(now)), grpc.StatusCode.INVALID_ARGUMENT, "start", "InvalidArgument"),
        (stub.ReadEvents, read(namespace="metrics", series="s", start=_ts(now)), grpc.StatusCode.INVALID_ARGUMENT, "end", "InvalidArgument"),
        (stub.ReadEvents, read(namespace="metrics", series="s", start=_ts(now - 5), end=_ts(now), order=7), grpc.StatusCode.INVALID_ARGUMENT, "order", "InvalidArgument"),
        (stub.ReadEvents, read(namespace="metrics", series="s", start=timestamp_pb2.Timestamp(seconds=10**12), end=_ts(now)), grpc.StatusCode.INVALID_ARGUMENT, "start", "InvalidArgument"),
        (stub.ReadEvents, read(namespace="metrics", series="s", start=_ts(now - 5), end=_ts(now), limit=51), grpc.StatusCode.INVALID_ARGUMENT, "limit", "LimitExceeded"),
        (stub.ReadEvents, read(namespace="metrics", series="s", start=_ts(now - 5), end=_ts(now), page_token="x"), grpc.StatusCode.INVALID_ARGUMENT, "page_token", "InvalidPageToken"),
        (stub.WriteEvents, timeseries_pb2.WriteEventsRequest(namespace="metrics", series="s", events=[timeseries_pb2.Event(event_id="no-time")]), grpc.StatusCode.INVALID_ARGUMENT, "events[0].event_time", "InvalidArgument"),
        (stub.ReadEvents, read(namespace="nope", series="s", start=_ts(now - 5), end=_ts(now)), grpc.StatusCode.NOT_FOUND, None, "NamespaceNotFound"),
        (stub.WriteEvents, timeseries_pb2.WriteEventsRequest(namespace="counts", series="s"), grpc.StatusCode.FAILED_PRECONDITION, None, "WrongAbstraction"),
        (stub.WriteEvents, timeseries_pb2.WriteEventsRequest(series="s"), grpc.StatusCode.INVALID_ARGUMENT, "namespace", ""),
    ]  # fmt: skip
    for method, request, code, field, reason in cases:
        error = _rpc_error(lambda m=method, r=request: m(r, timeout=10))
        assert error.code() is code, (request, error.details())
        got_field, meta, request_id = _details(error)
        assert (got_field, meta.get("reason", "")) == (field, reason), (request, error.details())
        assert request_id
    limited = _rpc_error(
        lambda: stub.ReadEvents(
            read(namespace="metrics", series="s", start=_ts(now - 5), end=_ts(now), limit=51)
        )
    )
    meta = _details(limited)[1]
    assert (meta["limit_name"], meta["limit"], meta["actual"], meta["namespace"]) == (
        "timeseries.max_page_events",
        "50",
        "51",
        "metrics",
    )
    assert "(timeseries.max_page_events)" in (limited.details() or "")


def test_times_travel_to_the_microsecond_and_finer_nanos_are_truncated(
    gateway: GatewayThread, stub: timeseries_pb2_grpc.TimeSeriesServiceStub
) -> None:
    base = int(datetime.now(UTC).timestamp()) - 60
    stub.WriteEvents(
        timeseries_pb2.WriteEventsRequest(
            namespace="other",
            series="nanos",
            events=[
                timeseries_pb2.Event(
                    event_time=timestamp_pb2.Timestamp(seconds=base, nanos=123_456_789),
                    event_id="n",
                    payload=b"\x00\xff",
                    tags={"k": "v"},
                )
            ],
        ),
        timeout=10,
    )
    response = stub.ReadEvents(
        timeseries_pb2.ReadEventsRequest(
            namespace="other",
            series="nanos",
            start=timestamp_pb2.Timestamp(seconds=base),
            end=timestamp_pb2.Timestamp(seconds=base + 1),
        ),
        timeout=10,
    )
    (event,) = response.events
    assert (event.event_time.seconds, event.event_time.nanos) == (base, 123_456_000)
    assert (event.event_id, event.payload, dict(event.tags)) == ("n", b"\x00\xff", {"k": "v"})
    assert response.next_page_token == ""
    with prism.remote.connect(gateway.target, timeout=10) as db:
        page = db.timeseries("other").read_events(
            "nanos", datetime.fromtimestamp(base, UTC), datetime.fromtimestamp(base + 1, UTC)
        )
    assert [e.event_time for e in page.events] == [
        datetime.fromtimestamp(base, UTC) + timedelta(microseconds=123_456)
    ]


def test_an_unset_order_is_ascending_and_zero_limit_is_the_namespace_limit(
    stub: timeseries_pb2_grpc.TimeSeriesServiceStub,
) -> None:
    base = int(datetime.now(UTC).timestamp()) - 120
    events = [
        timeseries_pb2.Event(event_time=timestamp_pb2.Timestamp(seconds=base + i), event_id=f"{i:03}")
        for i in range(20)
    ]
    stub.WriteEvents(
        timeseries_pb2.WriteEventsRequest(namespace="metrics", series="wire", events=events), timeout=10
    )
    request = timeseries_pb2.ReadEventsRequest(
        namespace="metrics",
        series="wire",
        start=timestamp_pb2.Timestamp(seconds=base),
        end=timestamp_pb2.Timestamp(seconds=base + 60),
    )
    response = stub.ReadEvents(request, timeout=10)
    assert [e.event_id for e in response.events] == [f"{i:03}" for i in range(20)]
    request.order = timeseries_pb2.EVENT_ORDER_DESCENDING
    request.limit = 15
    first = stub.ReadEvents(request, timeout=10)
    assert [e.event_id for e in first.events] == [f"{i:03}" for i in range(19, 4, -1)]
    request.page_token = first.next_page_token
    rest = stub.ReadEvents(request, timeout=10)
    assert ([e.event_id for e in rest.events], rest.next_page_token) == (
        [f"{i:03}" for i in range(4, -1, -1)],
        "",
    )


def test_a_page_token_is_bound_to_its_namespace(gateway: GatewayThread) -> None:
    base = datetime.now(UTC) - timedelta(minutes=5)
    end = base + timedelta(minutes=1)
    with prism.remote.connect(gateway.target, timeout=10) as db:
        for name in ("metrics", "other"):
            db.timeseries(name).write_events("bound", [prism.Event(base, "a"), prism.Event(base, "b")])
        page = db.timeseries("metrics").read_events("bound", base, end, limit=1)
        assert page.next_page_token
        with pytest.raises(prism.InvalidPageToken, match="issued for namespace 'metrics'") as caught:
            db.timeseries("other").read_events("bound", base, end, limit=1, page_token=page.next_page_token)
        assert (caught.value.namespace, caught.value.field) == ("other", "page_token")
        # The token still works where it was issued.
        rest = db.timeseries("metrics").read_events(
            "bound", base, end, limit=1, page_token=page.next_page_token
        )
        assert [e.event_id for e in rest.events] == ["b"]


# -- retries ---------------------------------------------------------------------------------------


class FailFirst(grpc.aio.ServerInterceptor):
    """Refuses the first ``failures[method]`` calls of each method with
    UNAVAILABLE, after (``after=True``) or before running them."""

    def __init__(self, after: bool) -> None:
        self.after = after
        self.failures: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method.rsplit("/", 1)[-1]
        self.calls[method] = self.calls.get(method, 0) + 1
        handler = await continuation(handler_call_details)
        if self.failures.get(method, 0) <= 0 or handler is None or handler.unary_unary is None:
            return handler
        self.failures[method] -= 1
        inner = handler.unary_unary

        async def fail(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self.after:
                await inner(request, context)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the connection dropped")

        return grpc.unary_unary_rpc_method_handler(
            fail,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


FAST = prism.remote.RetryPolicy(attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


def test_a_write_whose_answer_was_lost_is_retried_and_stored_once(tmp_path: Path) -> None:
    interceptor = FailFirst(after=True)
    base = datetime.now(UTC) - timedelta(minutes=1)
    with (
        GatewayThread(memory_config(tmp_path), interceptors=[interceptor]) as gateway,
        prism.remote.connect(gateway.target, retry=FAST, timeout=10) as db,
    ):
        interceptor.failures["WriteEvents"] = 2
        db.timeseries("metrics").write_events("retried", [prism.Event(base, "once", b"p")])
        assert interceptor.calls["WriteEvents"] == 3
        page = db.timeseries("metrics").read_events("retried", base, base + timedelta(seconds=1))
        assert [(e.event_id, e.payload) for e in page.events] == [("once", b"p")]
        interceptor.failures["ReadEvents"] = 1
        again = db.timeseries("metrics").read_events("retried", base, base + timedelta(seconds=1))
        assert again == page
        assert interceptor.calls["ReadEvents"] == 3


# -- admin -------------------------------------------------------------------------------------------


def test_the_admin_service_describes_and_creates_timeseries_namespaces(gateway: GatewayThread) -> None:
    with prism.remote.connect(gateway.target, timeout=10) as db:
        served = db.namespace("metrics")
        assert (served.abstraction, served.backend, served.plugin) == ("timeseries", "mem", "memory")
        assert served.timeseries is not None
        assert served.timeseries.retention == timedelta(days=1)
        assert served.timeseries.max_tags == 2
        assert served.timeseries.max_payload_bytes == 1024
        assert served.timeseries.max_page_events == 50
        assert served.timeseries.bucket == timedelta(hours=1)
        assert isinstance(served.traits, TimeSeriesTraits)
        assert served.traits.durability == "ephemeral"
        assert served.traits.max_event_bytes > 0
        assert db.plan("metrics").abstraction == "timeseries"

        created = db.create_namespace("events", "timeseries", timeseries={"retention": "2h", "max_tags": 4})
        assert created.runtime
        assert created.timeseries is not None
        assert (created.timeseries.retention, created.timeseries.max_tags) == (timedelta(hours=2), 4)
        now = datetime.now(UTC)
        db.timeseries("events").write_events("s", [prism.Event(now - timedelta(hours=1), "in")])
        with pytest.raises(prism.InvalidArgument, match="retention of 2h"):
            db.timeseries("events").write_events("s", [prism.Event(now - timedelta(hours=3), "out")])
        # The same declaration again is a success.
        assert (
            db.create_namespace("events", "timeseries", timeseries={"retention": "2h", "max_tags": 4})
            == created
        )
        with pytest.raises(prism.InvalidArgument) as refused:
            db.create_namespace("bad", "timeseries", timeseries={"retention": "soon"})
        assert refused.value.field == "timeseries.retention"
    with grpc.insecure_channel(gateway.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.CreateNamespaceRequest(
            name="negative",
            abstraction=admin_pb2.ABSTRACTION_TIMESERIES,
            timeseries=admin_pb2.TimeSeriesSettings(retention=duration_pb2.Duration(seconds=-5)),
        )
        error = _rpc_error(lambda: admin.CreateNamespace(request, timeout=10))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert _details(error)[0] == "timeseries.retention"
        assert "timeseries.retention: must be longer than 0" in (error.details() or "")
        listed = admin.ListNamespaces(admin_pb2.ListNamespacesRequest(), timeout=10)
        by_name = {n.name: n for n in listed.namespaces}
        assert by_name["metrics"].abstraction == admin_pb2.ABSTRACTION_TIMESERIES
        assert by_name["metrics"].timeseries.max_page_events == 50
        assert by_name["counts"].abstraction == admin_pb2.ABSTRACTION_COUNTER


def test_the_async_remote_client_writes_and_reads(gateway: GatewayThread) -> None:
    async def body() -> list[str]:
        base = datetime.now(UTC) - timedelta(seconds=30)
        async with prism.remote.connect_async(gateway.target, timeout=10) as db:
            ts = db.timeseries("other")
            await ts.write_events(
                "async", [prism.Event(base + timedelta(seconds=i), f"a{i}") for i in range(3)]
            )
            page = await ts.read_events("async", base, base + timedelta(seconds=10), order="desc")
            return [e.event_id for e in page.events]

    assert asyncio.run(body()) == ["a2", "a1", "a0"]
