"""Small helpers the Queue suite tests share: consuming until enough has
arrived (with a deadline), showing that nothing is deliverable, and readable
messages.

A backend may need time before a new group or consumer receives anything (a
Kafka group joins and rebalances first), so no test expects one consume call to
return everything: it collects until the expected deliveries arrived, or fails
at a generous deadline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta

import prism
from prism import Delivery
from prism_conformance.handles import ConsumerHandle, QueueHandle

#: How long a consume waits to show that nothing is deliverable. Long enough for
#: a backend that wakes on publish to have delivered what it had.
QUIET = timedelta(milliseconds=500)
#: How long expected deliveries may take to arrive by default: generous,
#: because a CI machine or a broker can be slow; collecting returns as soon as
#: they are in. A suite class sets its own with ``delivery_deadline``.
DELIVERY_DEADLINE = timedelta(seconds=60)

_deadline = DELIVERY_DEADLINE


def delivery_deadline() -> timedelta:
    """The deadline of the running test's suite class (see :func:`use_delivery_deadline`)."""
    return _deadline


@contextlib.contextmanager
def use_delivery_deadline(deadline: timedelta) -> Iterator[None]:
    """Make ``deadline`` the delivery deadline while a test runs. Tests of one
    process run one at a time, so one module-level value is enough."""
    global _deadline
    previous, _deadline = _deadline, deadline
    try:
        yield
    finally:
        _deadline = previous


#: How long one consume call of a collecting loop waits.
CONSUME_WAIT = timedelta(seconds=1)

#: A consume call: (max_messages, wait) -> deliveries.
Source = Callable[[int, timedelta], list[Delivery]]


def of_group(queue: QueueHandle, topic: str, group: str) -> Source:
    """Consume ``topic`` for ``group`` with the queue handle's own consumer."""

    def consume(max_messages: int, wait: timedelta) -> list[Delivery]:
        return queue.consume(topic, group, max_messages=max_messages, wait=wait)

    return consume


def of_consumer(consumer: ConsumerHandle) -> Source:
    """Consume with one :class:`prism.Consumer` of a group."""

    def consume(max_messages: int, wait: timedelta) -> list[Delivery]:
        return consumer.consume(max_messages=max_messages, wait=wait)

    return consume


def collect(
    source: Source,
    count: int,
    *,
    what: str,
    deadline: timedelta | None = None,
    max_messages: int = 100,
) -> list[Delivery]:
    """Consume until at least ``count`` deliveries arrived; fail naming
    ``what`` at the deadline (the suite's delivery deadline by default).

    Every call asks for up to ``max_messages``, not just for what is still
    missing, and everything received is returned, in order: a caller sees any
    extra or duplicate delivery too."""
    deadline = deadline if deadline is not None else delivery_deadline()
    got: list[Delivery] = []
    give_up = time.monotonic() + deadline.total_seconds()
    while len(got) < count:
        remaining = give_up - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"{what}: {len(got)} of {count} expected deliveries arrived within "
                f"{deadline.total_seconds():g}s (got payloads {payloads(got)!r})"
            )
        wait = min(CONSUME_WAIT, timedelta(seconds=remaining))
        got += source(max_messages, wait)
    return got


def assert_nothing(source: Source, *, what: str, wait: timedelta = QUIET) -> None:
    """Fail if ``source`` delivers anything within ``wait``."""
    got = source(100, wait)
    assert got == [], f"{what}, but got {describe(got)}"


def payloads(deliveries: Iterable[Delivery]) -> list[bytes]:
    return [d.payload for d in deliveries]


def ids_of(deliveries: Iterable[Delivery]) -> list[str]:
    return [d.id for d in deliveries]


def describe(deliveries: Iterable[Delivery]) -> str:
    """Deliveries as ``payload@attempt`` for failure messages."""
    return "[" + ", ".join(f"{d.payload!r}@{d.attempt} (id {d.id})" for d in deliveries) + "]"


def numbered(
    count: int, *, prefix: str = "m", key: Callable[[int], bytes] | None = None
) -> list[prism.Message]:
    """``count`` messages with payloads ``m0``, ``m1``... and the keys ``key(i)``
    (empty by default)."""
    return [prism.Message(key(i) if key is not None else b"", f"{prefix}{i}".encode()) for i in range(count)]


def now() -> datetime:
    return datetime.now(UTC)
