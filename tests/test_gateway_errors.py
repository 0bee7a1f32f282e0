"""Every error mapping of the gateway, one test each: the status code, the rich
details (BadRequest naming the field, ErrorInfo, RequestInfo), and the
exception the remote client raises for it.

The unavailable and deadline cases use a real Redis plugin against a real
socket: a closed port (refused) and a listener that never answers (a hung
server). The INTERNAL case needs a backend that fails unexpectedly, so a test
plugin built on the memory backend raises from ``read``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

import prism
import prism.remote
from prism.backends.memory import MemoryKeyValue, MemorySettings, _traits
from prism.gateway.status import DETAILS_KEY, error_from_status, status_for
from prism.gateway.testing import GatewayThread
from prism.plugins import hookimpl, load_plugins
from prism.plugins.manager import PluginSet
from prism.plugins.registry import BackendRegistry
from prism.spi import KeyValueBackendType, ReadQuery, StoredItem
from prism.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    keyvalue_pb2,
    keyvalue_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
)

SECRET = "password=hunter2"


class BrokenKeyValue(MemoryKeyValue):
    """The memory backend, except that reading record ``boom`` hits a bug."""

    async def read(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        if record_id == "boom":
            raise RuntimeError(f"bug with internals in its message: {SECRET}")
        return await super().read(namespace, record_id, query)


def _broken_plugin() -> ModuleType:
    module = ModuleType("broken_keyvalue_plugin")

    @hookimpl
    def prism_register_keyvalue(registry: BackendRegistry) -> None:
        # No capabilities: mutate_items and scan are refused with Unsupported.
        registry.add_keyvalue(
            "brokenkv",
            KeyValueBackendType(
                settings_type=MemorySettings, create=BrokenKeyValue, capabilities=frozenset(), traits=_traits
            ),
        )

    module.prism_register_keyvalue = prism_register_keyvalue  # type: ignore[attr-defined]
    return module


def _plugins() -> PluginSet:
    return load_plugins(disabled=(), extra={"brokenkv": _broken_plugin()})


CONFIG: dict[str, Any] = {
    "backends": {"mem": {"plugin": "memory"}, "broken": {"plugin": "brokenkv"}},
    "namespaces": {
        "kv": {"abstraction": "keyvalue", "backend": "mem", "limits": {"max_page_items": 10}},
        "plain": {"abstraction": "keyvalue", "backend": "broken"},
        "orders": {"abstraction": "queue", "backend": "mem"},
        "nowait": {"abstraction": "queue", "backend": "mem", "queue": {"max_wait": "0s"}},
        # Pinned to a backend that lacks a capability it needs: no plan.
        "unplannable": {
            "abstraction": "keyvalue",
            "backend": "broken",
            "needs": {"capabilities": ["kv.scan"]},
        },
    },
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread(CONFIG, plugins=_plugins()) as running:
        yield running


@pytest.fixture
def channel(gateway: GatewayThread) -> Iterator[Any]:
    async def make() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(gateway.address)

    loop = asyncio.new_event_loop()
    chan = loop.run_until_complete(make())
    yield loop, chan
    loop.run_until_complete(chan.close())
    loop.close()


def _fail(channel: Any, call: Any) -> grpc.aio.AioRpcError:
    """Run one call that must fail and return its error."""
    loop, chan = channel

    async def go() -> grpc.aio.AioRpcError:
        try:
            await call(chan)
        except grpc.aio.AioRpcError as exc:
            return exc
        raise AssertionError("the call succeeded")

    result: grpc.aio.AioRpcError = loop.run_until_complete(go())
    return result


def _details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The rich status details, unpacked by type name."""
    raw = dict(error.trailing_metadata() or ()).get(DETAILS_KEY)
    assert isinstance(raw, bytes), "no google.rpc.Status in the trailing metadata"
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    out: dict[str, Any] = {}
    packed: any_pb2.Any
    for packed in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RequestInfo,
        ):
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                out[kind.DESCRIPTOR.name] = message
    assert out["RequestInfo"].request_id
    return out


def _text(error: grpc.aio.AioRpcError) -> str:
    return error.details() or ""


def _field(error: grpc.aio.AioRpcError) -> str:
    violations = _details(error)["BadRequest"].field_violations
    assert len(violations) == 1
    field: str = violations[0].field
    return field


def kv(chan: Any) -> keyvalue_pb2_grpc.KeyValueServiceAsyncStub:
    stub: keyvalue_pb2_grpc.KeyValueServiceAsyncStub = keyvalue_pb2_grpc.KeyValueServiceStub(chan)
    return stub


def queue(chan: Any) -> queue_pb2_grpc.QueueServiceAsyncStub:
    stub: queue_pb2_grpc.QueueServiceAsyncStub = queue_pb2_grpc.QueueServiceStub(chan)
    return stub


# -- INVALID_ARGUMENT ---------------------------------------------------------------------------


def test_invalid_argument_names_the_field_and_the_namespace(channel: Any) -> None:
    error = _fail(channel, lambda c: kv(c).GetItems(keyvalue_pb2.GetItemsRequest(namespace="kv", id="")))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _text(error) == "namespace 'kv': record id must not be empty"
    assert _field(error) == "id"
    info = _details(error)["ErrorInfo"]
    assert (info.reason, info.domain, info.metadata["namespace"]) == ("InvalidArgument", "prism.v1", "kv")


def test_limit_exceeded_is_invalid_argument_with_the_limit(channel: Any) -> None:
    error = _fail(
        channel, lambda c: kv(c).GetItems(keyvalue_pb2.GetItemsRequest(namespace="kv", id="r", limit=11))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "over the namespace's page limit of 10 items (limits.max_page_items)" in _text(error)
    assert _field(error) == "limit"
    meta = _details(error)["ErrorInfo"].metadata
    assert (meta["limit_name"], meta["limit"], meta["actual"]) == ("max_page_items", "10", "11")


def test_invalid_page_token_is_invalid_argument(channel: Any) -> None:
    request = keyvalue_pb2.GetItemsRequest(namespace="kv", id="r", page_token="forged")
    error = _fail(channel, lambda c: kv(c).GetItems(request))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _field(error) == "page_token"
    assert _details(error)["ErrorInfo"].reason == "InvalidPageToken"


def test_missing_namespace_is_invalid_argument(channel: Any) -> None:
    error = _fail(channel, lambda c: queue(c).Publish(queue_pb2.PublishRequest(topic="t")))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _text(error) == "Publish: namespace is required; name the namespace to use"
    assert _field(error) == "namespace"


def test_both_deliver_after_and_deliver_at_is_invalid_argument(channel: Any) -> None:
    message = queue_pb2.Message(payload=b"x")
    message.deliver_after.FromTimedelta(timedelta(seconds=5))
    message.deliver_at.FromDatetime(datetime.now(UTC) + timedelta(seconds=5))
    request = queue_pb2.PublishRequest(namespace="orders", topic="t", messages=[message])
    error = _fail(channel, lambda c: queue(c).Publish(request))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "sets both deliver_after and deliver_at; set at most one" in _text(error)
    assert _field(error) == "messages[0].deliver_at"


def test_bad_predicate_is_invalid_argument(channel: Any) -> None:
    predicate = keyvalue_pb2.Predicate(range=keyvalue_pb2.KeyRange(start=b"z", end=b"a"))
    request = keyvalue_pb2.GetItemsRequest(namespace="kv", id="r", predicate=predicate)
    error = _fail(channel, lambda c: kv(c).GetItems(request))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _field(error) == "predicate"


def test_empty_mutation_and_token_without_time_are_invalid_argument(channel: Any) -> None:
    request = keyvalue_pb2.MutateItemsRequest(namespace="kv", id="r", mutations=[keyvalue_pb2.Mutation()])
    error = _fail(channel, lambda c: kv(c).MutateItems(request))
    assert (error.code(), _field(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "mutations[0]")
    put = keyvalue_pb2.PutItemsRequest(
        namespace="kv",
        id="r",
        items=[keyvalue_pb2.Item(key=b"k", value=b"v")],
        token=common_pb2.IdempotencyToken(nonce="n"),
    )
    error = _fail(channel, lambda c: kv(c).PutItems(put))
    assert (error.code(), _field(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "token.generation_time")


def test_subscribe_without_any_wait_allowed_is_refused(channel: Any) -> None:
    loop, chan = channel

    async def go() -> grpc.aio.AioRpcError:
        stream = queue(chan).Subscribe(queue_pb2.SubscribeRequest(namespace="nowait", topic="t", group="g"))
        try:
            await stream.read()
        except grpc.aio.AioRpcError as exc:
            return exc
        raise AssertionError("the stream opened")

    error = loop.run_until_complete(go())
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "queue.max_wait is 0" in _text(error)


# -- NOT_FOUND and FAILED_PRECONDITION ---------------------------------------------------------------


def test_unknown_namespace_is_not_found(channel: Any, gateway: GatewayThread) -> None:
    error = _fail(channel, lambda c: kv(c).GetItems(keyvalue_pb2.GetItemsRequest(namespace="nope", id="r")))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "namespace 'nope' is not configured" in _text(error)
    assert _details(error)["ErrorInfo"].reason == "NamespaceNotFound"
    plan_error = _fail(
        channel, lambda c: admin_pb2_grpc.AdminServiceStub(c).GetPlan(admin_pb2.GetPlanRequest(name="nope"))
    )
    assert plan_error.code() is grpc.StatusCode.NOT_FOUND
    with prism.remote.connect(gateway.target) as db, pytest.raises(prism.NamespaceNotFound) as caught:
        db.keyvalue("nope").get_items("r")
    assert caught.value.namespace == "nope"


def test_unsupported_is_failed_precondition(channel: Any, gateway: GatewayThread) -> None:
    request = keyvalue_pb2.ScanRequest(namespace="plain")
    error = _fail(channel, lambda c: kv(c).Scan(request))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    meta = _details(error)["ErrorInfo"].metadata
    assert (meta["capability"], meta["backend"]) == ("kv.scan", "broken")
    with prism.remote.connect(gateway.target) as db, pytest.raises(prism.Unsupported) as caught:
        db.keyvalue("plain").mutate_items("r", [prism.Put(b"k", b"v")])
    assert (caught.value.capability, caught.value.backend) == ("kv.atomic_mutate", "broken")


def test_plan_error_is_failed_precondition(channel: Any, gateway: GatewayThread) -> None:
    error = _fail(
        channel, lambda c: kv(c).GetItems(keyvalue_pb2.GetItemsRequest(namespace="unplannable", id="r"))
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "lacks capabilities kv.scan" in _text(error)
    with prism.remote.connect(gateway.target) as db, pytest.raises(prism.PlanError) as caught:
        db.plan("unplannable")
    assert caught.value.reasons == {"broken": "lacks capabilities kv.scan"}


def test_wrong_abstraction_is_failed_precondition(channel: Any) -> None:
    request = queue_pb2.ConsumeRequest(namespace="kv", topic="t", group="g")
    error = _fail(channel, lambda c: queue(c).Consume(request))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert _text(error) == "namespace 'kv' is declared as keyvalue, not queue; open it with .keyvalue('kv')"


# -- PERMISSION_DENIED and INTERNAL --------------------------------------------------------------------


def test_create_namespace_is_permission_denied(channel: Any) -> None:
    request = admin_pb2.CreateNamespaceRequest(name="fresh", abstraction=admin_pb2.ABSTRACTION_KEYVALUE)
    error = _fail(channel, lambda c: admin_pb2_grpc.AdminServiceStub(c).CreateNamespace(request))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "creating namespaces at run time is not enabled" in _text(error)
    assert "declare the namespace under `namespaces:`" in _text(error)


def test_unexpected_errors_are_internal_with_a_request_id_and_no_leak(gateway: GatewayThread) -> None:
    with (
        structlog.testing.capture_logs() as logs,
        prism.remote.connect(gateway.target) as db,
        pytest.raises(prism.remote.InternalError) as caught,
    ):
        db.keyvalue("plain").get_items("boom")
    error = caught.value
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.request_id
    assert error.request_id in str(error)
    for leak in (SECRET, "Traceback", "RuntimeError"):
        assert leak not in str(error)
    logged = [entry for entry in logs if entry.get("request_id") == error.request_id]
    assert [entry["event"] for entry in logged] == ["rpc started", "rpc failed unexpectedly", "rpc"]
    assert logged[1]["log_level"] == "error"
    assert logged[2]["code"] == "INTERNAL"  # the access log line
    assert isinstance(logged[1]["exc_info"], RuntimeError)


def test_the_callers_request_id_is_used(channel: Any) -> None:
    request = keyvalue_pb2.GetItemsRequest(namespace="kv", id="")
    error = _fail(channel, lambda c: kv(c).GetItems(request, metadata=(("x-request-id", "trace-42"),)))
    assert _details(error)["RequestInfo"].request_id == "trace-42"


# -- UNAVAILABLE and DEADLINE_EXCEEDED, with a real Redis client ---------------------------------------


def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.01)
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_config(port: int) -> dict[str, Any]:
    return {
        "backends": {
            "cache": {
                "plugin": "redis",
                "url": f"redis://127.0.0.1:{port}/0",
                "connect_timeout": "1s",
                "socket_timeout": "60s",
                "retries": 0,
            }
        },
        "namespaces": {"kv": {"abstraction": "keyvalue"}},
    }


def test_a_datastore_that_is_down_is_unavailable() -> None:
    port = _free_port()  # nothing listens there: connections are refused
    fast = prism.remote.RetryPolicy(attempts=2, initial_backoff_s=0.01)
    with (
        GatewayThread(_redis_config(port)) as gateway,
        prism.remote.connect(gateway.target, retry=fast) as db,
        pytest.raises(prism.BackendError) as caught,
    ):
        db.keyvalue("kv").get_items("r")
    assert isinstance(caught.value, prism.remote.Unavailable)
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_a_call_past_its_deadline_is_deadline_exceeded() -> None:
    # A server that accepts connections and never answers: a hung datastore.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        with GatewayThread(_redis_config(port)) as gateway:
            with (
                structlog.testing.capture_logs() as logs,
                prism.remote.connect(gateway.target, timeout=0.5) as db,
                pytest.raises(prism.remote.DeadlineExceeded) as caught,
            ):
                db.keyvalue("kv").get_items("r")
            assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
            assert isinstance(caught.value, TimeoutError)
            # The gateway stopped the work at the caller's deadline too (its own
            # timer, not the client's); wait for its log line with a deadline.
            assert _eventually(lambda: any(e.get("code") == "DEADLINE_EXCEEDED" for e in logs))
            assert any(
                e["event"] == "rpc" and e["code"] == "DEADLINE_EXCEEDED" and e["namespace"] == "kv"
                for e in logs
            )
            # Closing the listener resets the hung connections, so the gateway can stop.
            silent.close()


def test_a_consume_waiting_past_the_deadline_answers_before_it(channel: Any) -> None:
    loop, chan = channel
    request = queue_pb2.ConsumeRequest(namespace="orders", topic="quiet", group="g")
    request.wait.FromSeconds(10)

    async def consume() -> Any:
        # The call is made inside the loop: grpc.aio binds it to the running loop.
        return await queue(chan).Consume(request, timeout=1.5)

    response = loop.run_until_complete(consume())
    assert list(response.deliveries) == []


# -- the mapping itself, and the way back -------------------------------------------------------------


MAPPED: list[tuple[BaseException, grpc.StatusCode]] = [
    (prism.InvalidArgument("bad", namespace="ns", field="id"), grpc.StatusCode.INVALID_ARGUMENT),
    (
        prism.LimitExceeded("too many", namespace="ns", limit_name="max_batch", limit=10, actual=11),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (prism.InvalidPageToken("tampered", namespace="ns"), grpc.StatusCode.INVALID_ARGUMENT),
    (prism.NamespaceNotFound("ns", ["a", "b"]), grpc.StatusCode.NOT_FOUND),
    (prism.Unsupported("queue.delay", namespace="ns", backend="plain"), grpc.StatusCode.FAILED_PRECONDITION),
    (
        prism.PlanError("ns", "queue", {"a": "too small", "b": "ephemeral"}),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    (prism.WrongAbstraction("ns", "queue", "keyvalue"), grpc.StatusCode.FAILED_PRECONDITION),
    (prism.ConfigError(["namespaces.x: bad"]), grpc.StatusCode.FAILED_PRECONDITION),
    (prism.BackendError("redis at 127.0.0.1:1 refused the connection"), grpc.StatusCode.UNAVAILABLE),
    (ConnectionResetError("peer reset"), grpc.StatusCode.UNAVAILABLE),
    (TimeoutError("read timed out"), grpc.StatusCode.UNAVAILABLE),
    (KeyError("internal detail"), grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("error", "code"), MAPPED, ids=[type(e).__name__ for e, _ in MAPPED])
def test_each_error_maps_to_its_code_and_comes_back_as_the_same_error(
    error: BaseException, code: grpc.StatusCode
) -> None:
    status = status_for(error, "rid-1")
    assert status.code == code.value[0]
    trailing = ((DETAILS_KEY, status.SerializeToString()),)
    back = error_from_status(code, status.message, trailing)
    if isinstance(error, prism.BackendError | ConnectionError | TimeoutError):
        assert isinstance(back, prism.remote.Unavailable)
        assert isinstance(back, prism.BackendError)
    elif code is grpc.StatusCode.INTERNAL:
        assert isinstance(back, prism.remote.InternalError)
        assert back.request_id == "rid-1"
        assert "internal detail" not in str(back)
    elif isinstance(error, prism.ConfigError):
        assert isinstance(back, prism.remote.RemoteError)
        assert str(back) == str(error)
    else:
        assert type(back) is type(error)
        assert str(back) == str(error)
        for name in (
            "namespace",
            "field",
            "limit_name",
            "limit",
            "actual",
            "capability",
            "backend",
            "reasons",
        ):
            assert getattr(back, name, None) == getattr(error, name, None), name
