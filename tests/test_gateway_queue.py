"""Queue through the gateway: the remote client end to end on memory and SQLite,
the same application code embedded and remote, and Subscribe streams (flow
control by max_in_flight, room freed by Ack, redelivery at once when a stream
goes away). Waiting is done by the queue's own blocking ``wait`` or a read
with a deadline, never by sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import prism
import prism.remote
from prism.gateway.testing import GatewayThread
from prism.queue.namespace import DEAD_LETTER_REASON
from prism.v1 import queue_pb2, queue_pb2_grpc

QUEUE_SETTINGS = {"visibility_timeout": "10m", "max_attempts": 3, "max_wait": "10s", "max_batch": 20}


def memory_config(_: Path) -> dict[str, Any]:
    return {
        "backends": {"mem": {"plugin": "memory"}},
        "namespaces": {"orders": {"abstraction": "queue", "queue": QUEUE_SETTINGS}},
    }


def sqlite_config(data_dir: Path) -> dict[str, Any]:
    return {
        "backends": {"local": {"plugin": "sqlite", "path": str(data_dir / "prism.db")}},
        "namespaces": {"orders": {"abstraction": "queue", "queue": QUEUE_SETTINGS}},
    }


CONFIGS = {"memory": memory_config, "sqlite": sqlite_config}


@pytest.fixture(params=sorted(CONFIGS))
def config_factory(request: pytest.FixtureRequest) -> Any:
    return CONFIGS[request.param]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayThread]:
    with GatewayThread(memory_config(tmp_path)) as running:
        yield running


def _shape(delivery: prism.Delivery) -> tuple[bytes, bytes, int, dict[str, bytes]]:
    return delivery.key, delivery.payload, delivery.attempt, dict(delivery.headers)


def queue_app(db: Any) -> dict[str, Any]:
    """Application code written once against the public Queue API."""
    out: dict[str, Any] = {}
    orders = db.queue("orders")
    ids = orders.publish(
        "created",
        [
            prism.Message(b"a", b"one", {"trace": b"t1"}),
            prism.Message(b"b", b"two"),
            prism.Message(b"c", b"three"),
        ],
    )
    out["published"] = len(set(ids))
    with orders.consumer("created", "billing") as consumer:
        first = consumer.consume(max_messages=2, wait=5)
        out["first"] = [_shape(d) for d in first]
        consumer.ack([first[0]])
    # The consumer closed holding `two`: it is delivered again at once (the
    # visibility timeout is ten minutes), with its attempt counted.
    again = orders.consume("created", "billing", max_messages=10, wait=5)
    out["again"] = [_shape(d) for d in again]
    orders.ack("created", "billing", [again[0]])
    orders.nack("created", "billing", [again[1]], requeue=False)
    dead = orders.consume("created.dlq", "ops", max_messages=10, wait=5)
    out["dead"] = [(d.payload, d.headers.get(DEAD_LETTER_REASON)) for d in dead]
    out["audit"] = [_shape(d) for d in orders.consume("created", "audit", max_messages=10, wait=5)]
    out["billing_done"] = orders.consume("created", "billing", max_messages=10)

    errors: list[tuple[str, str, str | None]] = []
    attempts: list[Callable[[], object]] = [
        lambda: orders.ack("created", "billing", ["nope"]),
        lambda: orders.ack("created", "billing", "one-id"),
        lambda: orders.publish("bad topic!", [prism.Message(b"", b"x")]),
        lambda: orders.publish("created", ["not a message"]),
        lambda: orders.publish("created", [prism.Message(b"", b"x")] * 21),
        lambda: orders.consume("created", "billing", max_messages=0),
        lambda: orders.consume("created", "billing", wait=60),
        lambda: db.queue("missing").consume("created", "billing"),
        lambda: db.keyvalue("orders").get_items("r"),
    ]
    for attempt in attempts:
        try:
            attempt()
        except prism.PrismError as exc:
            errors.append((type(exc).__name__, str(exc), getattr(exc, "field", None)))
        else:
            errors.append(("no error", "", None))
    out["errors"] = errors
    return out


def test_the_same_queue_code_gives_the_same_results_embedded_and_remote(
    config_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "embedded").mkdir()
    (tmp_path / "gateway").mkdir()
    with prism.open(config_factory(tmp_path / "embedded")) as db:
        embedded = queue_app(db)
    with (
        GatewayThread(config_factory(tmp_path / "gateway")) as gateway,
        prism.remote.connect(gateway.target) as db,
    ):
        remote = queue_app(db)
    assert remote == embedded
    assert embedded["published"] == 3
    assert embedded["first"] == [(b"a", b"one", 1, {"trace": b"t1"}), (b"b", b"two", 1, {})]
    assert embedded["again"] == [(b"b", b"two", 2, {}), (b"c", b"three", 1, {})]
    assert embedded["dead"] == [(b"three", b"nack")]
    assert [payload for _, payload, _, _ in embedded["audit"]] == [b"one", b"two", b"three"]
    assert embedded["billing_done"] == []
    assert [name for name, _, _ in embedded["errors"]] == [
        "InvalidArgument",
        "InvalidArgument",
        "InvalidArgument",
        "InvalidArgument",
        "LimitExceeded",
        "InvalidArgument",
        "LimitExceeded",
        "NamespaceNotFound",
        "WrongAbstraction",
    ]


# -- Subscribe ------------------------------------------------------------------------------------


async def _next(stream: Any) -> queue_pb2.SubscribeResponse:
    """The stream's next response, or fail after a deadline of ten seconds."""
    async with asyncio.timeout(10):
        response = await stream.read()
    assert response is not grpc.aio.EOF, "the stream ended"
    assert isinstance(response, queue_pb2.SubscribeResponse)
    return response


def test_subscribe_pushes_deliveries_within_max_in_flight_and_ack_frees_room(gateway: GatewayThread) -> None:
    async def body() -> None:
        async with (
            prism.remote.connect_async(gateway.target) as db,
            grpc.aio.insecure_channel(gateway.address) as channel,
        ):
            orders = db.queue("orders")
            stub = queue_pb2_grpc.QueueServiceStub(channel)
            stream = stub.Subscribe(
                queue_pb2.SubscribeRequest(namespace="orders", topic="t", group="g", max_in_flight=2)
            )
            opening = await _next(stream)
            assert opening.WhichOneof("event") == "subscription_id"
            subscription_id = opening.subscription_id
            assert subscription_id

            # Published after subscribing: pushed as they arrive.
            await orders.publish("t", [prism.Message(b"", p) for p in (b"m1", b"m2", b"m3")])
            got = [(await _next(stream)).delivery for _ in range(2)]
            assert [d.payload for d in got] == [b"m1", b"m2"]
            assert all(d.attempt == 1 and d.group == "g" for d in got)

            # The stream is full: m3 was not leased to it, so another consumer
            # of the group gets it right away.
            other = await orders.consume("t", "g", max_messages=10)
            assert [d.payload for d in other] == [b"m3"]
            await orders.nack("t", "g", other)  # give it back to the group

            # Acking one of the stream's deliveries with its subscription id
            # makes room: m3 arrives on the stream (its second attempt).
            await orders.ack("t", "g", [got[0].id], subscription_id=subscription_id)
            third = (await _next(stream)).delivery
            assert (third.payload, third.attempt) == (b"m3", 2)
            stream.cancel()

    asyncio.run(body())


def test_a_stream_that_goes_away_gives_its_deliveries_back_at_once(gateway: GatewayThread) -> None:
    async def body() -> None:
        async with prism.remote.connect_async(gateway.target) as db:
            orders = db.queue("orders")
            await orders.publish("t", [prism.Message(b"", b"m1"), prism.Message(b"", b"m2")])
            async with orders.subscribe("t", "g", max_in_flight=5) as subscription:
                assert subscription.id
                held = [await anext(subscription), await anext(subscription)]
                assert [d.payload for d in held] == [b"m1", b"m2"]
            # The client cancelled the stream. The visibility timeout is ten
            # minutes, so only the closed consumer can bring them back this soon.
            again = await orders.consume("t", "g", max_messages=10, wait=10)
            assert [(d.payload, d.attempt) for d in again] == [(b"m1", 2), (b"m2", 2)]
            assert gateway.run(_open_streams(gateway)) == 0

    asyncio.run(body())


async def _open_streams(gateway: GatewayThread) -> int:
    assert gateway.gateway is not None
    return len(gateway.gateway.subscriptions)


def test_a_dropped_connection_gives_deliveries_back_at_once(gateway: GatewayThread) -> None:
    """Not a polite cancel: the client's whole channel closes mid-stream."""

    async def body() -> None:
        async with prism.remote.connect_async(gateway.target) as db:
            orders = db.queue("orders")
            await orders.publish("t", [prism.Message(b"", b"m1")])
            channel = grpc.aio.insecure_channel(gateway.address)
            stream = queue_pb2_grpc.QueueServiceStub(channel).Subscribe(
                queue_pb2.SubscribeRequest(namespace="orders", topic="t", group="g")
            )
            await _next(stream)
            assert (await _next(stream)).delivery.payload == b"m1"
            await channel.close()
            again = await orders.consume("t", "g", max_messages=10, wait=10)
            assert [(d.payload, d.attempt) for d in again] == [(b"m1", 2)]

    asyncio.run(body())


def test_ack_with_another_streams_subscription_id_is_refused(gateway: GatewayThread) -> None:
    async def body() -> None:
        async with prism.remote.connect_async(gateway.target) as db:
            orders = db.queue("orders")
            await orders.publish("t", [prism.Message(b"", b"m1")])
            async with orders.subscribe("t", "g") as subscription:
                delivery = await anext(subscription)
                with pytest.raises(prism.InvalidArgument) as caught:
                    await orders.ack("t", "other-group", [delivery], subscription_id=subscription.id)
                assert caught.value.field == "subscription_id"
                assert "ack with the topic and group of the stream" in str(caught.value)
                await subscription.ack([delivery])
            assert await orders.consume("t", "g", max_messages=10) == []

    asyncio.run(body())


def test_sync_subscription_and_consumer(gateway: GatewayThread) -> None:
    with prism.remote.connect(gateway.target) as db:
        orders = db.queue("orders")
        orders.publish("t", [prism.Message(b"k", b"m1")])
        with orders.subscribe("t", "g", max_in_flight=1) as subscription:
            delivery = next(iter(subscription))
            assert delivery.payload == b"m1"
            subscription.ack([delivery])
        orders.publish("t", [prism.Message(b"k", b"m2")])
        with orders.consumer("t", "g") as consumer:
            got = consumer.consume(wait=5)
            assert [d.payload for d in got] == [b"m2"]
            consumer.nack(got)
            assert [d.attempt for d in consumer.consume(wait=5)] == [2]
        # Closed while holding m2: it comes back at once, attempt 3.
        assert [d.attempt for d in orders.consume("t", "g", wait=5)] == [3]
        with pytest.raises(prism.InvalidArgument, match="this consumer is closed"):
            consumer.consume()


def test_a_stream_close_abandoned_by_its_handler_finishes_before_the_gateway_lets_go(tmp_path: Path) -> None:
    """The gateway stops its server, then closes the backends. A stream
    handler's cleanup can still be running in between (its status already
    sent); ``close_all`` must wait for that close, or the deliveries it holds
    are not given back and wait out a ten-minute visibility timeout."""
    from prism.gateway.subscriptions import Subscription, Subscriptions

    async def body() -> list[tuple[bytes, int]]:
        async with prism.open_async(sqlite_config(tmp_path)) as db:
            queue = db.queue("orders")
            await queue.publish("t", [prism.Message(key=b"k", payload=b"m1")])
            consumer = queue.consumer("t", "g")
            assert [d.payload for d in await consumer.consume(1, 0)] == [b"m1"]
            subscriptions = Subscriptions()
            subscription = Subscription("orders", queue, consumer, 10)
            subscriptions.add(subscription)
            handler = asyncio.create_task(subscriptions.close(subscription))
            await asyncio.sleep(0)  # the handler starts the close ...
            handler.cancel()  # ... and is cancelled, as grpc does at the end of the grace period
            await subscriptions.close_all()
            assert len(subscriptions) == 0
            again = await queue.consume("t", "g", 10, 0)
            return [(d.payload, d.attempt) for d in again]

    assert asyncio.run(body()) == [(b"m1", 2)]
