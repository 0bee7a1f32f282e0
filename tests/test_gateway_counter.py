"""Counter through the gateway: the same application code embedded and remote
on memory and SQLite, errors mapped both ways, tokens on the wire, and the
remote client's retry rule for adds: retried (with the same token) in exact
mode, or when the gateway refused the call before running it; never in
best_effort mode when the add may have counted."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

import prism
import prism.remote
from prism.errors import BreakerOpen
from prism.gateway.status import DETAILS_KEY, status_for, to_grpc_status
from prism.gateway.testing import GatewayThread
from prism.models import IdempotencyToken
from prism.spi import COUNTER_MAX, COUNTER_MIN, CounterTraits
from prism.v1 import admin_pb2, admin_pb2_grpc, common_pb2, counter_pb2, counter_pb2_grpc


def memory_config(_: Path) -> dict[str, Any]:
    return {
        "backends": {"mem": {"plugin": "memory"}},
        "namespaces": {
            "views": {"abstraction": "counter", "counter": {"max_counter_name_bytes": 16}},
            "exact": {"abstraction": "counter", "counter": {"mode": "exact", "token_window": "1m"}},
            "series": {"abstraction": "timeseries"},
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
    with GatewayThread(memory_config(tmp_path_factory.mktemp("counter"))) as running:
        yield running


def counter_app(db: Any) -> dict[str, Any]:
    """Application code written once against the public Counter API."""
    out: dict[str, Any] = {}
    views = db.counter("views")
    out["best_effort"] = [
        views.add("home"),
        views.add("home", 41),
        views.add("home", -2),
        views.add("home", 0),
    ]
    out["home"] = views.get("home")
    out["never"] = views.get("never-added")
    views.clear("home")
    out["cleared"] = views.get("home")
    # best_effort ignores tokens: the same token twice counts twice.
    token = IdempotencyToken.new()
    views.add("tokened", 5, token=token)
    views.add("tokened", 5, token=token)
    out["best_effort_replay"] = views.get("tokened")

    exact = db.counter("exact")
    token = IdempotencyToken.new()
    out["exact_first"] = exact.add("orders", 3, token=token)
    out["exact_replay"] = exact.add("orders", 3, token=token)
    out["exact_new"] = exact.add("orders", 4)
    out["orders"] = exact.get("orders")
    clear_token = IdempotencyToken.new()
    exact.clear("orders", token=clear_token)
    exact.add("orders", 10)
    exact.clear("orders", token=clear_token)  # a replay: the add since the first clear stays
    out["after_clear_replay"] = exact.get("orders")
    exact.add("edge", COUNTER_MAX)

    errors: list[tuple[str, str, str | None, str | None, int | None]] = []
    old = IdempotencyToken(IdempotencyToken.new().generation_time_us - 3_600_000_000, "old-nonce")
    attempts: list[Callable[[], object]] = [
        lambda: exact.add("edge", 1),
        lambda: exact.add("low", COUNTER_MIN) and exact.add("low", -1),
        lambda: views.add("home", 2**63),
        lambda: views.add("home", True),
        lambda: views.add("home", 1.5),
        lambda: views.add(""),
        lambda: views.add(7),
        lambda: views.add("a-name-longer-than-16"),
        lambda: views.get("a-name-longer-than-16"),
        lambda: exact.add("orders", 1, token=old),
        lambda: exact.clear("orders", token=old),
        lambda: exact.add("orders", 1, token="not a token"),
        lambda: db.counter("missing").get("x"),
        lambda: db.counter("series").add("x"),
        lambda: db.timeseries("views").read_events("x", datetime.now(UTC) - timedelta(1), datetime.now(UTC)),
    ]
    for attempt in attempts:
        try:
            attempt()
        except prism.PrismError as exc:
            # A stale token's age and time depend on the clock at the call.
            message = re.sub(r"generated at \S+ is \S+ old", "generated at ... is ... old", str(exc))
            errors.append(
                (
                    type(exc).__name__,
                    message,
                    getattr(exc, "field", None),
                    getattr(exc, "limit_name", None),
                    getattr(exc, "limit", None),
                )
            )
        else:
            errors.append(("no error", "", None, None, None))
    out["errors"] = errors
    out["edge"] = exact.get("edge")
    out["orders_after_errors"] = exact.get("orders")
    return out


def test_the_same_counter_code_gives_the_same_results_embedded_and_remote(
    config_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "embedded").mkdir()
    (tmp_path / "gateway").mkdir()
    with prism.open(config_factory(tmp_path / "embedded")) as db:
        embedded = counter_app(db)
    with (
        GatewayThread(config_factory(tmp_path / "gateway")) as gateway,
        prism.remote.connect(gateway.target, timeout=10) as db,
    ):
        remote = counter_app(db)
    assert remote == embedded
    # And the results are the right ones, not merely equal (a backend may not
    # return the new value: None is allowed, a wrong value is not).
    assert all(
        got in (None, want) for got, want in zip(embedded["best_effort"], [1, 42, 40, 40], strict=True)
    )
    assert (embedded["home"], embedded["never"], embedded["cleared"]) == (40, 0, 0)
    assert embedded["best_effort_replay"] == 10
    assert embedded["exact_first"] in (None, 3)
    assert embedded["exact_replay"] in (None, 3)
    assert embedded["exact_new"] in (None, 7)
    assert embedded["orders"] == 7
    assert embedded["after_clear_replay"] == 10
    assert [(name, field, limit_name, limit) for name, _, field, limit_name, limit in embedded["errors"]] == [
        ("LimitExceeded", "delta", "counter value range", COUNTER_MAX),
        ("LimitExceeded", "delta", "counter value range", COUNTER_MIN),
        ("LimitExceeded", "delta", "counter value range", COUNTER_MAX),
        ("InvalidArgument", "delta", None, None),
        ("InvalidArgument", "delta", None, None),
        ("InvalidArgument", "counter", None, None),
        ("InvalidArgument", "counter", None, None),
        ("LimitExceeded", "counter", "counter.max_counter_name_bytes", 16),
        ("LimitExceeded", "counter", "counter.max_counter_name_bytes", 16),
        ("InvalidArgument", "token", None, None),
        ("InvalidArgument", "token", None, None),
        ("InvalidArgument", "token", None, None),
        ("NamespaceNotFound", None, None, None),
        ("WrongAbstraction", None, None, None),
        ("WrongAbstraction", None, None, None),
    ]
    assert "older than the namespace's counter.token_window of 1m" in embedded["errors"][9][1]
    assert embedded["edge"] == COUNTER_MAX
    assert embedded["orders_after_errors"] == 10


# -- the wire ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(gateway: GatewayThread) -> Iterator[counter_pb2_grpc.CounterServiceStub]:
    with grpc.insecure_channel(gateway.address) as channel:
        yield counter_pb2_grpc.CounterServiceStub(channel)


def _wire_token(nonce: str, age: timedelta = timedelta(0)) -> common_pb2.IdempotencyToken:
    when = datetime.now(UTC) - age
    return common_pb2.IdempotencyToken(
        generation_time=timestamp_pb2.Timestamp(seconds=int(when.timestamp())), nonce=nonce
    )


def _details(error: grpc.RpcError) -> tuple[str | None, dict[str, str]]:
    raw = dict(error.trailing_metadata() or ()).get(DETAILS_KEY)  # type: ignore[attr-defined]
    assert isinstance(raw, bytes), "no google.rpc.Status in the trailing metadata"
    field: str | None = None
    meta: dict[str, str] = {}
    for packed in status_pb2.Status.FromString(raw).details:
        if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            field = bad.field_violations[0].field
        elif packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            meta = {"reason": info.reason, **info.metadata}
    return field, meta


def _rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_an_unset_delta_adds_one_and_the_value_comes_back_when_known(
    stub: counter_pb2_grpc.CounterServiceStub,
) -> None:
    response = stub.Add(counter_pb2.AddRequest(namespace="views", counter="wire"), timeout=10)
    assert response.HasField("value")  # memory returns the value
    assert response.value == 1
    response = stub.Add(counter_pb2.AddRequest(namespace="views", counter="wire", delta=0), timeout=10)
    assert response.value == 1
    response = stub.Add(counter_pb2.AddRequest(namespace="views", counter="wire", delta=-5), timeout=10)
    assert response.value == -4
    assert stub.Get(counter_pb2.GetRequest(namespace="views", counter="wire"), timeout=10).value == -4
    stub.Clear(counter_pb2.ClearRequest(namespace="views", counter="wire"), timeout=10)
    assert stub.Get(counter_pb2.GetRequest(namespace="views", counter="wire"), timeout=10).value == 0


def test_a_token_replayed_on_the_wire_counts_once_in_exact_mode(
    stub: counter_pb2_grpc.CounterServiceStub,
) -> None:
    token = _wire_token("wire-replay")
    request = counter_pb2.AddRequest(namespace="exact", counter="replayed", delta=5, token=token)
    assert stub.Add(request, timeout=10).value == 5
    assert stub.Add(request, timeout=10).value == 5
    # Without a token, the gateway makes one per call: two calls, two adds.
    bare = counter_pb2.AddRequest(namespace="exact", counter="replayed", delta=1)
    stub.Add(bare, timeout=10)
    stub.Add(bare, timeout=10)
    assert stub.Get(counter_pb2.GetRequest(namespace="exact", counter="replayed"), timeout=10).value == 7


def test_wire_errors_carry_the_status_code_the_field_and_the_limit(
    stub: counter_pb2_grpc.CounterServiceStub,
) -> None:
    add = counter_pb2.AddRequest
    cases: list[tuple[Any, Any, grpc.StatusCode, str | None, str]] = [
        (stub.Add, add(namespace="exact", counter="c", token=common_pb2.IdempotencyToken(nonce="n")), grpc.StatusCode.INVALID_ARGUMENT, "token.generation_time", "InvalidArgument"),
        (stub.Clear, counter_pb2.ClearRequest(namespace="exact", counter="c", token=common_pb2.IdempotencyToken(nonce="n")), grpc.StatusCode.INVALID_ARGUMENT, "token.generation_time", "InvalidArgument"),
        (stub.Add, add(namespace="exact", counter="c", token=_wire_token("stale", timedelta(hours=1))), grpc.StatusCode.INVALID_ARGUMENT, "token", "InvalidArgument"),
        (stub.Add, add(namespace="exact", counter="c", token=_wire_token("", timedelta(0))), grpc.StatusCode.INVALID_ARGUMENT, "token", "InvalidArgument"),
        (stub.Add, add(namespace="views", counter=""), grpc.StatusCode.INVALID_ARGUMENT, "counter", "InvalidArgument"),
        (stub.Get, counter_pb2.GetRequest(namespace="views", counter="x" * 17), grpc.StatusCode.INVALID_ARGUMENT, "counter", "LimitExceeded"),
        (stub.Get, counter_pb2.GetRequest(namespace="nope", counter="c"), grpc.StatusCode.NOT_FOUND, None, "NamespaceNotFound"),
        (stub.Get, counter_pb2.GetRequest(namespace="series", counter="c"), grpc.StatusCode.FAILED_PRECONDITION, None, "WrongAbstraction"),
        (stub.Get, counter_pb2.GetRequest(counter="c"), grpc.StatusCode.INVALID_ARGUMENT, "namespace", ""),
    ]  # fmt: skip
    for method, request, code, field, reason in cases:
        error = _rpc_error(lambda m=method, r=request: m(r, timeout=10))
        assert error.code() is code, (request, error.details())
        got_field, meta = _details(error)
        assert (got_field, meta.get("reason", "")) == (field, reason), (request, error.details())
    stub.Add(add(namespace="views", counter="low", delta=COUNTER_MIN), timeout=10)
    error = _rpc_error(lambda: stub.Add(add(namespace="views", counter="low", delta=-1), timeout=10))
    field, meta = _details(error)
    assert (field, meta["reason"], meta["limit_name"], meta["limit"], meta["actual"]) == (
        "delta",
        "LimitExceeded",
        "counter value range",
        str(COUNTER_MIN),
        "-1",
    )
    assert "nothing changed" in (error.details() or "")
    assert stub.Get(counter_pb2.GetRequest(namespace="views", counter="low"), timeout=10).value == COUNTER_MIN


# -- retries ---------------------------------------------------------------------------------------


class Flaky(grpc.aio.ServerInterceptor):
    """Fails the first ``failures[method]`` calls of a method with UNAVAILABLE:
    after running them (``lose_answer``: the add counted, the answer was lost),
    or before, with the status the gateway sends when the backend's breaker is
    open (``breaker``). Records every request of each method."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}
        self.how = "lose_answer"
        self.requests: dict[str, list[Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method.rsplit("/", 1)[-1]
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        failing = self.failures.get(method, 0) > 0
        if failing:
            self.failures[method] -= 1

        async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self.requests.setdefault(method, []).append(request)
            if not failing:
                return await inner(request, context)
            if self.how == "lose_answer":
                await inner(request, context)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the connection dropped")
            refusal = BreakerOpen(
                "mem", namespace=request.namespace, failures=5, retry_after_s=0.0, cause="a test"
            )
            await context.abort_with_status(to_grpc_status(status_for(refusal, "test-request")))

        return grpc.unary_unary_rpc_method_handler(
            run,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


FAST = prism.remote.RetryPolicy(attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[tuple[prism.remote.RemotePrism, Flaky]]:
    interceptor = Flaky()
    with (
        GatewayThread(memory_config(tmp_path), interceptors=[interceptor]) as gateway,
        prism.remote.connect(gateway.target, retry=FAST, timeout=10) as db,
    ):
        yield db, interceptor


def test_an_exact_add_whose_answer_was_lost_is_retried_with_its_token_and_counts_once(
    flaky: tuple[prism.remote.RemotePrism, Flaky],
) -> None:
    db, interceptor = flaky
    interceptor.failures["Add"] = 2
    assert db.counter("exact").add("retried", 5) == 5
    first, second, third = interceptor.requests["Add"]
    assert first.token.nonce
    assert first.token == second.token == third.token
    assert db.counter("exact").get("retried") == 5
    # The mode was asked once (GetPlan) and remembered.
    interceptor.failures["Clear"] = 1
    db.counter("exact").clear("retried")
    assert len(interceptor.requests["Clear"]) == 2
    assert len(interceptor.requests["GetPlan"]) == 1
    assert db.counter("exact").get("retried") == 0


def test_a_best_effort_add_that_may_have_counted_is_not_retried(
    flaky: tuple[prism.remote.RemotePrism, Flaky],
) -> None:
    db, interceptor = flaky
    interceptor.failures["Add"] = 1
    with pytest.raises(prism.remote.Unavailable, match="the connection dropped"):
        db.counter("views").add("once", 5)
    assert len(interceptor.requests["Add"]) == 1
    # It did count, once: a retry would have made it 10.
    assert db.counter("views").get("once") == 5
    interceptor.failures["Clear"] = 1
    with pytest.raises(prism.remote.Unavailable):
        db.counter("views").clear("once")
    assert len(interceptor.requests["Clear"]) == 1


def test_a_best_effort_add_refused_before_it_ran_is_retried(
    flaky: tuple[prism.remote.RemotePrism, Flaky],
) -> None:
    db, interceptor = flaky
    interceptor.how = "breaker"
    interceptor.failures["Add"] = 2
    assert db.counter("views").add("breaker", 3) == 3
    assert len(interceptor.requests["Add"]) == 3
    assert "GetPlan" not in interceptor.requests  # the status said enough
    assert db.counter("views").get("breaker") == 3
    # Past the retry budget the refusal reaches the caller as the same error as embedded.
    interceptor.failures["Add"] = FAST.attempts
    with pytest.raises(BreakerOpen) as caught:
        db.counter("views").add("breaker", 3)
    assert (caught.value.namespace, caught.value.backend) == ("views", "mem")
    assert db.counter("views").get("breaker") == 3


def test_a_get_is_retried_like_any_read(flaky: tuple[prism.remote.RemotePrism, Flaky]) -> None:
    db, interceptor = flaky
    db.counter("views").add("read", 2)
    interceptor.failures["Get"] = 2
    assert db.counter("views").get("read") == 2
    assert len(interceptor.requests["Get"]) == 3


def test_replaying_a_token_through_the_client_counts_once(gateway: GatewayThread) -> None:
    async def body() -> tuple[list[int | None], int]:
        async with prism.remote.connect_async(gateway.target, timeout=10) as db:
            exact = db.counter("exact")
            token = IdempotencyToken.new()
            # Concurrent replays of one token race on the backend: still one count.
            values = await asyncio.gather(*(exact.add("raced", 2, token=token) for _ in range(8)))
            return list(values), await exact.get("raced")

    values, final = asyncio.run(body())
    assert final == 2
    assert all(value in (None, 2) for value in values)


# -- admin -------------------------------------------------------------------------------------------


def test_the_admin_service_describes_and_creates_counter_namespaces(gateway: GatewayThread) -> None:
    with prism.remote.connect(gateway.target, timeout=10) as db:
        served = db.namespace("exact")
        assert (served.abstraction, served.backend) == ("counter", "mem")
        assert served.counter is not None
        assert (served.counter.mode, served.counter.token_window) == ("exact", timedelta(minutes=1))
        assert isinstance(served.traits, CounterTraits)
        assert "counter.exact" in served.capabilities
        views = db.namespace("views")
        assert views.counter is not None
        assert (views.counter.mode, views.counter.max_counter_name_bytes) == ("best_effort", 16)
        assert db.plan("exact").abstraction == "counter"

        created = db.create_namespace("likes", "counter", counter={"mode": "exact", "token_window": "5m"})
        assert created.runtime
        assert created.counter is not None
        assert (created.counter.mode, created.counter.token_window) == ("exact", timedelta(minutes=5))
        token = IdempotencyToken.new()
        db.counter("likes").add("post", 1, token=token)
        db.counter("likes").add("post", 1, token=token)
        assert db.counter("likes").get("post") == 1
        with pytest.raises(prism.InvalidArgument) as refused:
            db.create_namespace("bad", "counter", counter={"mode": "sometimes"})
        assert refused.value.field == "counter.mode"
        with pytest.raises(prism.InvalidArgument) as refused:
            db.create_namespace("bad", "counter", counter={"token_window": "0s"})
        assert refused.value.field == "counter.token_window"
    with grpc.insecure_channel(gateway.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.CreateNamespaceRequest(
            name="badmode",
            abstraction=admin_pb2.ABSTRACTION_COUNTER,
            counter=admin_pb2.CounterSettings(mode=9),
        )
        error = _rpc_error(lambda: admin.CreateNamespace(request, timeout=10))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert _details(error)[0] == "counter.mode"
        plan = admin.GetPlan(admin_pb2.GetPlanRequest(name="exact"), timeout=10)
        assert plan.abstraction == admin_pb2.ABSTRACTION_COUNTER
        assert plan.counter.mode == admin_pb2.COUNTER_MODE_EXACT
        assert plan.counter.token_window.seconds == 60
