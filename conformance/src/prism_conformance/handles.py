"""What a suite test holds: the shape shared by embedded and gateway handles.

A test gets a ``prism.KeyValue`` (embedded, :func:`prism.open`) or, when the
suite runs through a gateway, a handle built on :func:`prism.connect`. Both
have the same operations; these Protocols name exactly what the tests use, so
mypy checks that a test uses nothing one of them lacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Literal, Protocol

from prism.config import QueueLimits
from prism.models import (
    Delivery,
    Event,
    EventsPage,
    IdempotencyToken,
    ItemsInput,
    ItemsPage,
    Message,
    Mutation,
    Predicate,
    RecordsPage,
)
from prism.spi import QueueTraits

#: A delivery or its id, as ack and nack take them.
DeliveryRef = str | Delivery


class KeyValueHandle(Protocol):
    """One KeyValue namespace, synchronous."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[str]: ...

    def put_items(
        self, record_id: str, items: ItemsInput, *, token: IdempotencyToken | None = None
    ) -> None: ...

    def get_items(
        self,
        record_id: str,
        predicate: Predicate | None = None,
        *,
        limit: int | None = None,
        page_size_bytes: int | None = None,
        page_token: str | None = None,
    ) -> ItemsPage: ...

    def delete_items(
        self, record_id: str, predicate: Predicate | None = None, *, token: IdempotencyToken | None = None
    ) -> None: ...

    def mutate_items(
        self, record_id: str, mutations: Sequence[Mutation], *, token: IdempotencyToken | None = None
    ) -> None: ...

    def scan(self, *, limit: int | None = None, page_token: str | None = None) -> RecordsPage: ...


class ConsumerHandle(Protocol):
    """One consumer of a group, synchronous; close it (``with``) to give back what it holds."""

    @property
    def id(self) -> str: ...

    def consume(self, max_messages: int = 10, wait: timedelta | float = 0) -> list[Delivery]: ...

    def ack(self, ids: Iterable[DeliveryRef]) -> None: ...

    def nack(self, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> ConsumerHandle: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class QueueHandle(Protocol):
    """One Queue namespace, synchronous."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[str]: ...

    @property
    def traits(self) -> QueueTraits: ...

    @property
    def max_message_bytes(self) -> int: ...

    @property
    def limits(self) -> QueueLimits: ...

    def dead_letter_topic(self, topic: str) -> str: ...

    def publish(self, topic: str, messages: Sequence[Message]) -> list[str]: ...

    def consume(
        self, topic: str, group: str, max_messages: int = 10, wait: timedelta | float = 0
    ) -> list[Delivery]: ...

    def ack(self, topic: str, group: str, ids: Iterable[DeliveryRef]) -> None: ...

    def nack(self, topic: str, group: str, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None: ...

    def consumer(self, topic: str, group: str) -> ConsumerHandle: ...


class TimeSeriesHandle(Protocol):
    """One TimeSeries namespace, synchronous: ``prism.TimeSeries`` embedded,
    ``prism.remote.RemoteTimeSeries`` through a gateway."""

    @property
    def name(self) -> str: ...

    def write_events(self, series: str, events: Sequence[Event]) -> None: ...

    def read_events(
        self,
        series: str,
        start: datetime,
        end: datetime,
        *,
        order: Literal["asc", "desc"] = "asc",
        limit: int | None = None,
        page_token: str | None = None,
    ) -> EventsPage: ...


class CounterHandle(Protocol):
    """One Counter namespace, synchronous: ``prism.Counter`` embedded,
    ``prism.remote.RemoteCounter`` through a gateway."""

    @property
    def name(self) -> str: ...

    def add(self, counter: str, delta: int = 1, *, token: IdempotencyToken | None = None) -> int | None: ...

    def get(self, counter: str) -> int: ...

    def clear(self, counter: str, *, token: IdempotencyToken | None = None) -> None: ...


class AsyncCounterHandle(Protocol):
    """One Counter namespace of :func:`prism.open_async`, for tests that
    start many calls at once with ``asyncio.gather``."""

    @property
    def name(self) -> str: ...

    async def add(
        self, counter: str, delta: int = 1, *, token: IdempotencyToken | None = None
    ) -> int | None: ...

    async def get(self, counter: str) -> int: ...

    async def clear(self, counter: str, *, token: IdempotencyToken | None = None) -> None: ...


class PrismHandle(Protocol):
    """An open Prism: where a test looks up a namespace by name."""

    def keyvalue(self, namespace: str) -> KeyValueHandle: ...

    def queue(self, namespace: str) -> QueueHandle: ...

    def close(self) -> None: ...
