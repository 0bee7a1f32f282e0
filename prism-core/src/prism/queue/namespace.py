"""Queue semantics, written once for every backend.

:class:`AsyncQueue` is what ``db.queue("ns")`` returns in async code. It checks
requests against the namespace's limits and the backend's capabilities, caps how
long a consume may wait, and moves messages to the dead-letter topic, both after
``max_attempts`` deliveries and on ``nack(requeue=False)``. The backend only
stores messages and leases (see :class:`prism.spi.QueueBackend`).

Consumers. A delivery belongs to the consumer that received it. Leases taken
through :meth:`AsyncQueue.consume` belong to the handle's own anonymous consumer
and come back only after the visibility timeout; leases taken through an
:class:`AsyncConsumer` (``queue.consumer(topic, group)``) also come back as soon
as that consumer closes, which is what a worker that stops should use.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType

from prism import capabilities
from prism.config import NamespaceConfig
from prism.errors import InvalidArgument, LimitExceeded, Unsupported
from prism.models import Delivery, Message, datetime_to_micros, micros_to_datetime, now_micros
from prism.spi import Lease, OutgoingMessage, QueueBackend, QueueTraits, ReceiveRequest, StoredMessage
from prism.units import format_duration, format_size

#: Topic and group names: safe as Kafka topics, Redis keys and SQL values.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

#: Headers the core adds to a message it moves to a dead-letter topic.
DEAD_LETTER_TOPIC = "prism-dead-letter-topic"
DEAD_LETTER_GROUP = "prism-dead-letter-group"
DEAD_LETTER_ID = "prism-dead-letter-id"
DEAD_LETTER_REASON = "prism-dead-letter-reason"
DEAD_LETTER_ATTEMPTS = "prism-dead-letter-attempts"

DeliveryRef = str | Delivery


def _seconds(value: timedelta | float, what: str, namespace: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise InvalidArgument(
            f"{what} must be a non-negative number of seconds or a timedelta, got {value!r}",
            namespace=namespace,
            field=what,
        )
    return float(seconds)


class AsyncQueue:
    """One Queue namespace, async. Obtain it with ``db.queue(name)``."""

    def __init__(
        self,
        name: str,
        config: NamespaceConfig,
        *,
        backend_name: str,
        backend: QueueBackend,
        capabilities: frozenset[str],
        traits: QueueTraits,
        max_message_bytes: int,
        ensure_ready: Callable[[], Awaitable[None]],
    ) -> None:
        self.name = name
        self.config = config
        self.backend_name = backend_name
        self.capabilities = capabilities
        self.traits = traits
        self.max_message_bytes = max_message_bytes
        self.limits = config.queue
        self._backend = backend
        self._ensure_ready = ensure_ready
        # Leases taken by consume() without a consumer handle; nothing releases
        # them early, so they come back after the visibility timeout.
        self._anonymous = "anonymous-" + os.urandom(8).hex()

    def __repr__(self) -> str:
        return f"<AsyncQueue {self.name!r} on {self.backend_name!r}>"

    def dead_letter_topic(self, topic: str) -> str:
        """Where messages of ``topic`` go after ``max_attempts`` deliveries."""
        return topic + self.limits.dead_letter_suffix

    # -- validation -----------------------------------------------------------------

    def _check_name(self, value: object, field: str) -> str:
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise InvalidArgument(
                f"{field} name {value!r} is invalid: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit",
                namespace=self.name,
                field=field,
            )
        size = len(value.encode("utf-8"))
        limit = self.limits.max_topic_name_bytes
        suffix = self.limits.dead_letter_suffix
        if field == "topic" and value.endswith(suffix):
            # A dead-letter topic is its topic's name plus the suffix, so every
            # topic that may be published to has a dead-letter topic that may be
            # consumed.
            limit += len(suffix.encode("utf-8"))
        if size > limit:
            raise LimitExceeded(
                f"{field} name {value[:40]!r}... is {size} bytes, over the namespace limit of {limit} "
                "(queue.max_topic_name_bytes); use a shorter name",
                namespace=self.name,
                limit_name="max_topic_name_bytes",
                limit=limit,
                actual=size,
                field=field,
            )
        return value

    def _check_batch(self, count: int, what: str) -> None:
        limit = self.limits.max_batch
        if count > limit:
            raise LimitExceeded(
                f"{count} {what} in one call, over the namespace limit of {limit} (queue.max_batch); "
                f"split the call into batches of at most {limit}",
                namespace=self.name,
                limit_name="max_batch",
                limit=limit,
                actual=count,
            )

    def _outgoing(self, topic: str, index: int, message: object, now_us: int) -> OutgoingMessage:
        if not isinstance(message, Message):
            raise InvalidArgument(
                f"topic {topic!r}: message {index} must be a prism.Message, got {type(message).__name__}",
                namespace=self.name,
                field="messages",
            )
        size = len(message.key) + len(message.payload)
        size += sum(len(k.encode("utf-8")) + len(v) for k, v in message.headers.items())
        limit = self.max_message_bytes
        if size > limit:
            source = (
                "queue.max_message_bytes"
                if limit == self.limits.max_message_bytes
                else f"the most backend {self.backend_name!r} can store"
            )
            raise LimitExceeded(
                f"topic {topic!r}: message {index} is {format_size(size)} ({size} bytes of key, payload and "
                f"headers), over the namespace limit of {format_size(limit)} ({source}); store large "
                "payloads elsewhere and publish a reference",
                namespace=self.name,
                limit_name="max_message_bytes",
                limit=limit,
                actual=size,
                field="messages",
            )
        deliver_at = self._deliver_at(topic, index, message.deliver_after, now_us)
        headers = tuple(sorted(message.headers.items()))
        return OutgoingMessage(message.key, message.payload, headers, deliver_at)

    def _deliver_at(
        self, topic: str, index: int, deliver_after: timedelta | datetime | None, now_us: int
    ) -> int | None:
        if deliver_after is None:
            return None
        if capabilities.QUEUE_DELAY not in self.capabilities:
            raise Unsupported(capabilities.QUEUE_DELAY, namespace=self.name, backend=self.backend_name)
        if isinstance(deliver_after, timedelta):
            at = now_us + deliver_after // timedelta(microseconds=1)
        elif isinstance(deliver_after, datetime):
            try:
                at = datetime_to_micros(deliver_after)
            except ValueError as exc:
                raise InvalidArgument(
                    f"topic {topic!r}: message {index}: {exc}", namespace=self.name, field="deliver_after"
                ) from exc
        else:
            raise InvalidArgument(
                f"topic {topic!r}: message {index}: deliver_after must be a timedelta or datetime, "
                f"got {type(deliver_after).__name__}",
                namespace=self.name,
                field="deliver_after",
            )
        if at <= now_us:
            return None
        limit = self.limits.max_delay
        delay = timedelta(microseconds=at - now_us)
        if delay > limit:
            raise LimitExceeded(
                f"topic {topic!r}: message {index} is delayed by {format_duration(delay)}, over the "
                f"namespace limit of {format_duration(limit)} (queue.max_delay)",
                namespace=self.name,
                limit_name="max_delay",
                limit=limit // timedelta(microseconds=1),
                actual=delay // timedelta(microseconds=1),
                field="deliver_after",
            )
        return at

    def _ids(self, topic: str, group: str, refs: Iterable[DeliveryRef]) -> list[str]:
        if isinstance(refs, str | bytes | Delivery):
            raise InvalidArgument(
                f"topic {topic!r}, group {group!r}: pass a list of ids, not a single one",
                namespace=self.name,
                field="ids",
            )
        ids: list[str] = []
        for ref in refs:
            value = ref.id if isinstance(ref, Delivery) else ref
            if not isinstance(value, str) or not value:
                raise InvalidArgument(
                    f"topic {topic!r}, group {group!r}: ids must be non-empty strings from consume, "
                    f"got {value!r}",
                    namespace=self.name,
                    field="ids",
                )
            ids.append(value)
        self._check_batch(len(ids), "ids")
        return list(dict.fromkeys(ids))

    def _unknown(self, topic: str, group: str, unknown: Sequence[str]) -> InvalidArgument:
        shown = ", ".join(repr(i) for i in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        return InvalidArgument(
            f"topic {topic!r}, group {group!r}: unknown delivery ids {shown}: they were never delivered "
            "to this group; ack and nack only ids returned by consume for the same topic and group. "
            "Nothing was changed",
            namespace=self.name,
            field="ids",
        )

    # -- operations -------------------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        """Append ``messages`` to ``topic``; returns their ids, in order, once the
        messages are durable at the backend's durability level."""
        topic = self._check_name(topic, "topic")
        if isinstance(messages, Message):
            messages = [messages]
        batch = list(messages)
        if not batch:
            return []
        self._check_batch(len(batch), "messages")
        now_us = now_micros()
        outgoing = [self._outgoing(topic, i, m, now_us) for i, m in enumerate(batch)]
        await self._ensure_ready()
        return await self._backend.publish(self.name, topic, outgoing)

    async def consume(
        self,
        topic: str,
        group: str,
        max_messages: int = 10,
        wait: timedelta | float = 0,
        *,
        consumer: str | None = None,
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries for ``group``, waiting up to ``wait``
        for the first one; an empty list when none arrived in time.

        Each delivery stays with its consumer for the visibility timeout; unless
        it is acked by then it is delivered again with ``attempt`` one higher.
        After ``queue.max_attempts`` deliveries it moves to the dead-letter topic.
        """
        topic = self._check_name(topic, "topic")
        group = self._check_name(group, "group")
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise InvalidArgument(
                f"max_messages must be a positive integer, got {max_messages!r}",
                namespace=self.name,
                field="max_messages",
            )
        self._check_batch(max_messages, "messages asked for")
        wait_s = _seconds(wait, "wait", self.name)
        limit = self.limits.max_wait
        if wait_s > limit.total_seconds():
            raise LimitExceeded(
                f"wait of {wait_s:g}s is over the namespace limit of {format_duration(limit)} "
                "(queue.max_wait); consume again instead of waiting longer",
                namespace=self.name,
                limit_name="max_wait",
                limit=limit // timedelta(microseconds=1),
                actual=int(wait_s * 1_000_000),
                field="wait",
            )
        await self._ensure_ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        visibility_us = self.limits.visibility_timeout // timedelta(microseconds=1)
        while True:
            remaining = max(0.0, deadline - loop.time())
            request = ReceiveRequest(
                topic, group, consumer or self._anonymous, max_messages, visibility_us, remaining
            )
            leases = await self._backend.receive(self.name, request)
            live, exhausted = self._split_exhausted(topic, leases)
            if exhausted:
                await self._dead_letter(topic, group, [(lease.message, lease.attempt) for lease in exhausted])
            # A batch made only of exhausted messages is not an answer: they were
            # moved away, so look again (each round moves messages, so it ends).
            if live or not exhausted:
                return [self._delivery(topic, group, lease) for lease in live]

    def _split_exhausted(self, topic: str, leases: list[Lease]) -> tuple[list[Lease], list[Lease]]:
        if topic.endswith(self.limits.dead_letter_suffix):
            return leases, []  # dead letters are never moved again
        limit = self.limits.max_attempts
        return [le for le in leases if le.attempt <= limit], [le for le in leases if le.attempt > limit]

    async def _dead_letter(
        self, topic: str, group: str, messages: Sequence[tuple[StoredMessage, int | None]]
    ) -> None:
        """Publish copies to the dead-letter topic, then ack the originals. A crash
        in between leaves a duplicate dead letter, never a lost message."""
        outgoing: list[OutgoingMessage] = []
        for message, attempts in messages:
            extra = {
                DEAD_LETTER_TOPIC: topic.encode(),
                DEAD_LETTER_GROUP: group.encode(),
                DEAD_LETTER_ID: message.id.encode(),
                DEAD_LETTER_REASON: b"max_attempts" if attempts is not None else b"nack",
            }
            if attempts is not None:
                extra[DEAD_LETTER_ATTEMPTS] = str(attempts - 1).encode()
            headers = dict(message.headers)
            headers.update(extra)
            outgoing.append(OutgoingMessage(message.key, message.payload, tuple(sorted(headers.items()))))
        await self._backend.publish(self.name, self.dead_letter_topic(topic), outgoing)
        await self._backend.ack(self.name, topic, group, [message.id for message, _ in messages])

    def _delivery(self, topic: str, group: str, lease: Lease) -> Delivery:
        m = lease.message
        return Delivery(
            id=m.id,
            topic=topic,
            group=group,
            key=m.key,
            payload=m.payload,
            headers=dict(m.headers),
            attempt=lease.attempt,
            published_at=micros_to_datetime(m.published_at_us),
        )

    async def ack(self, topic: str, group: str, ids: Iterable[DeliveryRef]) -> None:
        """Acknowledge deliveries (ids or :class:`Delivery` objects) for ``group``.
        Acking twice is fine; an id never delivered to the group is an error and
        then nothing is acknowledged."""
        topic = self._check_name(topic, "topic")
        group = self._check_name(group, "group")
        wanted = self._ids(topic, group, ids)
        if not wanted:
            return
        await self._ensure_ready()
        unknown = await self._backend.ack(self.name, topic, group, wanted)
        if unknown:
            raise self._unknown(topic, group, unknown)

    async def nack(self, topic: str, group: str, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None:
        """Give deliveries back. With ``requeue=True`` they are delivered again
        right away (``attempt`` counts up, and ``max_attempts`` still applies);
        with ``requeue=False`` they move to the dead-letter topic now (on a
        dead-letter topic itself, they are dropped). Acknowledged ids are left
        alone; an unknown id is an error and then nothing changes."""
        topic = self._check_name(topic, "topic")
        group = self._check_name(group, "group")
        wanted = self._ids(topic, group, ids)
        if not wanted:
            return
        await self._ensure_ready()
        if requeue:
            unknown = await self._backend.release(self.name, topic, group, wanted)
            if unknown:
                raise self._unknown(topic, group, unknown)
            return
        found = await self._backend.lookup(self.name, topic, group, wanted)
        unknown = [i for i in wanted if i not in found]
        if unknown:
            raise self._unknown(topic, group, unknown)
        pending = [m for m in found.values() if m is not None]
        if not pending:
            return
        if topic.endswith(self.limits.dead_letter_suffix):
            await self._backend.ack(self.name, topic, group, [m.id for m in pending])
        else:
            await self._dead_letter(topic, group, [(m, None) for m in pending])

    def consumer(self, topic: str, group: str) -> AsyncConsumer:
        """A consumer of ``group`` on ``topic``: use it with ``async with`` (or
        close it) so that what it received and did not ack is delivered again at
        once when it stops, instead of after the visibility timeout."""
        return AsyncConsumer(self, self._check_name(topic, "topic"), self._check_name(group, "group"))

    async def _release_consumer(self, topic: str, group: str, consumer: str) -> None:
        await self._ensure_ready()
        await self._backend.release_consumer(self.name, topic, group, consumer)


class AsyncConsumer:
    """One consumer in a group: the unit that holds deliveries. Closing it makes
    every delivery it holds and has not acked deliverable again immediately."""

    def __init__(self, queue: AsyncQueue, topic: str, group: str) -> None:
        self.queue = queue
        self.topic = topic
        self.group = group
        self.id = "consumer-" + os.urandom(8).hex()
        self.closed = False

    def __repr__(self) -> str:
        return f"<AsyncConsumer {self.id} of {self.group!r} on {self.queue.name}/{self.topic}>"

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidArgument(
                f"topic {self.topic!r}, group {self.group!r}: this consumer is closed; open a new one",
                namespace=self.queue.name,
            )

    async def consume(self, max_messages: int = 10, wait: timedelta | float = 0) -> list[Delivery]:
        """See :meth:`AsyncQueue.consume`."""
        self._check_open()
        return await self.queue.consume(self.topic, self.group, max_messages, wait, consumer=self.id)

    async def ack(self, ids: Iterable[DeliveryRef]) -> None:
        """See :meth:`AsyncQueue.ack`."""
        await self.queue.ack(self.topic, self.group, ids)

    async def nack(self, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None:
        """See :meth:`AsyncQueue.nack`."""
        await self.queue.nack(self.topic, self.group, ids, requeue=requeue)

    async def close(self) -> None:
        """Give back every delivery this consumer holds and has not acked."""
        if self.closed:
            return
        self.closed = True
        await self.queue._release_consumer(self.topic, self.group, self.id)

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
