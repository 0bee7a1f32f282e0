"""Queue ``Subscribe`` streams: one :class:`prism.AsyncConsumer` per stream, with
flow control.

A stream may hold at most ``max_in_flight`` unacknowledged deliveries. Ack and
Nack calls that name the stream's subscription id free room at once. A delivery
that is never acked frees its room when its lease runs out (the visibility
timeout), because by then the group may hand it to someone else; without that
a forgetful client would stall its own stream for good.

Deliveries are fetched with the backend's blocking receive (a long ``wait``),
which wakes on publish, so a stream reacts to new messages at once and never
polls at a fixed rate. When the stream ends for any reason, its consumer closes
and every delivery it holds and did not ack is delivered again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import TypeVar

from prism.models import Delivery
from prism.queue.namespace import AsyncConsumer, AsyncQueue

T = TypeVar("T")

#: max_in_flight when the request leaves it 0, as the proto documents.
DEFAULT_MAX_IN_FLIGHT = 10


class Stopped(Exception):
    """The gateway is shutting down; the stream must end."""


class Subscription:
    """One open Subscribe stream and the deliveries it holds."""

    def __init__(
        self, namespace: str, queue: AsyncQueue, consumer: AsyncConsumer, max_in_flight: int
    ) -> None:
        self.id = "sub-" + os.urandom(12).hex()
        self.namespace = namespace
        self.queue = queue
        self.consumer = consumer
        self.max_in_flight = max_in_flight
        self._visibility_s = queue.limits.visibility_timeout.total_seconds()
        #: delivery id -> loop time at which its lease runs out.
        self._held: dict[str, float] = {}
        self._changed = asyncio.Event()

    @property
    def topic(self) -> str:
        return self.consumer.topic

    @property
    def group(self) -> str:
        return self.consumer.group

    def matches(self, namespace: str, topic: str, group: str) -> bool:
        return (self.namespace, self.topic, self.group) == (namespace, topic, group)

    def _drop_expired(self, now: float) -> None:
        for delivery_id in [i for i, until in self._held.items() if until <= now]:
            del self._held[delivery_id]

    def room(self) -> int:
        self._drop_expired(asyncio.get_running_loop().time())
        return self.max_in_flight - len(self._held)

    def hold(self, deliveries: Iterable[Delivery]) -> None:
        until = asyncio.get_running_loop().time() + self._visibility_s
        for delivery in deliveries:
            self._held[delivery.id] = until

    def settle(self, ids: Iterable[str]) -> None:
        """Acked or nacked: the room is free again."""
        for delivery_id in ids:
            self._held.pop(delivery_id, None)
        self._changed.set()

    async def wait_for_room(self, stop: asyncio.Event) -> None:
        """Until an ack, a nack or a lease running out frees room.

        :raises Stopped: when ``stop`` is set first.
        """
        while self.room() <= 0:
            self._changed.clear()
            next_expiry = min(self._held.values()) - asyncio.get_running_loop().time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(next_expiry, 0.0)):
                    await _until_stopped(self._changed.wait(), stop)


async def _until_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T:
    """The result of ``awaitable``, unless ``stop`` is set first.

    :raises Stopped: ``stop`` was set before ``awaitable`` finished; it is cancelled.
    """
    if stop.is_set():
        # Do not start work that would be thrown away.
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise Stopped
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise Stopped
    # A result that arrived together with the stop is still delivered (the
    # caller's cleanup gives back what it cannot send).
    return task.result()


class Subscriptions:
    """Every open stream of one gateway, so Ack and Nack can find theirs and a
    shutdown can end them all."""

    def __init__(self) -> None:
        self._open: dict[str, Subscription] = {}
        self._stopping = asyncio.Event()
        #: subscription id -> its consumer's close, started once.
        self._closing: dict[str, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, subscription: Subscription) -> None:
        self._open[subscription.id] = subscription

    def get(self, subscription_id: str) -> Subscription | None:
        return self._open.get(subscription_id)

    async def close(self, subscription: Subscription) -> None:
        """Close the stream's consumer, giving back what it holds and did not
        ack, and forget the stream. Safe to call more than once and from more
        than one place (the stream's own cleanup and :meth:`close_all`); every
        caller waits for the one close. The close goes on even if the caller is
        cancelled, because the leases must come back.

        :raises prism.PrismError: the backend could not take the deliveries
            back; they come back after the visibility timeout instead.
        """
        closing = self._closing.get(subscription.id)
        if closing is None:
            closing = asyncio.ensure_future(subscription.consumer.close())
            self._closing[subscription.id] = closing

            def forget(_: asyncio.Future[None]) -> None:
                self._open.pop(subscription.id, None)
                self._closing.pop(subscription.id, None)

            closing.add_done_callback(forget)
        await asyncio.shield(closing)

    async def close_all(self) -> None:
        """Close every stream still open or closing, and wait until each has
        given back its deliveries (or failed to). The gateway calls this after
        its server stopped and before the backends close: a stream handler's
        own cleanup may still be running when the server reports it done."""
        for subscription in list(self._open.values()):
            with contextlib.suppress(Exception):
                await self.close(subscription)
        if self._closing:
            await asyncio.wait(list(self._closing.values()))

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop_all(self) -> None:
        """End every stream (the gateway is draining): each closes its consumer,
        so what it held is delivered again at once, to another gateway."""
        self._stopping.set()

    async def deliveries(self, subscription: Subscription) -> AsyncIterator[list[Delivery]]:
        """Batches of deliveries for ``subscription``, as they arrive, never
        more unacked at once than its ``max_in_flight``.

        :raises Stopped: the gateway is shutting down.
        """
        limits = subscription.queue.limits
        wait_s = limits.max_wait.total_seconds()
        while True:
            await subscription.wait_for_room(self._stopping)
            want = min(subscription.room(), limits.max_batch)
            batch = await _until_stopped(subscription.consumer.consume(want, wait_s), self._stopping)
            if batch:
                subscription.hold(batch)
                yield batch
