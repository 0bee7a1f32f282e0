"""The remote client's retry rules against a real gateway whose first calls
fail with UNAVAILABLE (a server interceptor refuses them before they reach the
service, as a restarting gateway behind a load balancer would).

Safe calls are retried, boundedly, with the same idempotency token and request
id; Publish is never retried, because a retry after a lost answer would
publish twice."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

import prism
import prism.remote
from prism.gateway.testing import GatewayThread
from prism.v1 import keyvalue_pb2, queue_pb2

CONFIG: dict[str, Any] = {
    "backends": {"mem": {"plugin": "memory"}},
    "namespaces": {"users": {"abstraction": "keyvalue"}, "orders": {"abstraction": "queue"}},
}

REQUEST_TYPES: dict[str, Any] = {
    "PutItems": keyvalue_pb2.PutItemsRequest,
    "GetItems": keyvalue_pb2.GetItemsRequest,
    "Publish": queue_pb2.PublishRequest,
}

FAST = prism.remote.RetryPolicy(attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


class FailFirst(grpc.aio.ServerInterceptor):
    """Refuses the first ``failures[method]`` calls of each method with
    UNAVAILABLE, and records every call and each refused request."""

    def __init__(self) -> None:
        self.failures: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.refused: list[tuple[str, Any, dict[str, Any]]] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method.rsplit("/", 1)[-1]
        self.calls[method] += 1
        if self.failures[method] <= 0:
            return await continuation(handler_call_details)
        self.failures[method] -= 1
        metadata = dict(handler_call_details.invocation_metadata or ())

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self.refused.append((method, request, metadata))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is restarting")

        return grpc.unary_unary_rpc_method_handler(
            refuse, request_deserializer=REQUEST_TYPES[method].FromString
        )


@pytest.fixture
def flaky() -> Iterator[tuple[GatewayThread, FailFirst]]:
    interceptor = FailFirst()
    with GatewayThread(CONFIG, interceptors=[interceptor]) as running:
        yield running, interceptor


def test_a_write_is_retried_with_the_same_token_and_request_id(
    flaky: tuple[GatewayThread, FailFirst],
) -> None:
    gateway, interceptor = flaky
    interceptor.failures["PutItems"] = 2
    with prism.remote.connect(gateway.target, retry=FAST) as db:
        db.keyvalue("users").put_items("r", {b"k": b"v"})
        assert db.keyvalue("users").get_items("r").as_dict() == {b"k": b"v"}
    assert interceptor.calls["PutItems"] == 3
    (_, first, first_meta), (_, second, second_meta) = interceptor.refused
    assert first.token.nonce
    assert first.token == second.token
    assert first_meta["x-request-id"] == second_meta["x-request-id"]


def test_a_read_is_retried_and_the_retries_are_bounded(flaky: tuple[GatewayThread, FailFirst]) -> None:
    gateway, interceptor = flaky
    interceptor.failures["GetItems"] = 2
    with prism.remote.connect(gateway.target, retry=FAST) as db:
        assert db.keyvalue("users").get_items("r").items == []
        assert interceptor.calls["GetItems"] == 3
        interceptor.failures["GetItems"] = 100
        with pytest.raises(prism.remote.Unavailable, match="the gateway is restarting"):
            db.keyvalue("users").get_items("r")
    assert interceptor.calls["GetItems"] == 3 + FAST.attempts


def test_no_retry_past_the_deadline(flaky: tuple[GatewayThread, FailFirst]) -> None:
    gateway, interceptor = flaky
    interceptor.failures["GetItems"] = 100
    slow = prism.remote.RetryPolicy(attempts=10, initial_backoff_s=60, max_backoff_s=60)
    # Jitter may pick a short pause; every pause that would end past the
    # deadline is refused, so at most a few tries happen, never ten.
    with (
        prism.remote.connect(gateway.target, retry=slow, timeout=2) as db,
        pytest.raises(prism.remote.Unavailable),
    ):
        db.keyvalue("users").get_items("r")
    assert 1 <= interceptor.calls["GetItems"] < slow.attempts


def test_publish_is_never_retried(flaky: tuple[GatewayThread, FailFirst]) -> None:
    gateway, interceptor = flaky
    interceptor.failures["Publish"] = 1
    with prism.remote.connect(gateway.target, retry=FAST) as db:
        orders = db.queue("orders")
        with pytest.raises(prism.remote.Unavailable):
            orders.publish("t", [prism.Message(b"", b"once")])
        assert interceptor.calls["Publish"] == 1
        # The caller decides: here it publishes again, and exactly one copy exists.
        orders.publish("t", [prism.Message(b"", b"once")])
        assert [d.payload for d in orders.consume("t", "g", max_messages=10)] == [b"once"]


def test_no_gateway_at_the_address_is_unavailable_and_says_what_to_check() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        prism.remote.connect(f"grpc://127.0.0.1:{port}", retry=FAST, timeout=5) as db,
        pytest.raises(prism.remote.Unavailable) as caught,
    ):
        db.keyvalue("users").get_items("r")
    assert f"the Prism gateway at grpc://127.0.0.1:{port} is unavailable" in str(caught.value)
    assert "check that `prism serve` runs there" in str(caught.value)
