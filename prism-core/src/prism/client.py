"""The embedded client: Prism in process, no server.

``prism.open()`` gives a synchronous handle and ``prism.open_async()`` an async
one; both have the same shape::

    with prism.open("prism.yaml") as db:
        users = db.keyvalue("users")
        users.put_items("user:1", {b"name": b"Ada"})

    async with prism.open_async("prism.yaml") as db:
        users = db.keyvalue("users")
        await users.put_items("user:1", {b"name": b"Ada"})

Queues, time series and counters work the same way: ``db.queue("orders")``,
``db.timeseries("metrics")``, ``db.counter("views")`` (see
:mod:`prism.queue.namespace`, :mod:`prism.timeseries.namespace` and
:mod:`prism.counter.namespace`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from prism.config import (
    Config,
    CounterMode,
    CounterSettings,
    NamespaceConfig,
    QueueLimits,
    TimeSeriesSettings,
    resolve_config,
)
from prism.counter.namespace import AsyncCounter
from prism.keyvalue.namespace import AsyncKeyValue
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
from prism.planner import NamespacePlan
from prism.plugins.manager import PluginSet, load_plugins
from prism.queue.namespace import AsyncConsumer, AsyncQueue, DeliveryRef
from prism.runtime import Runtime, namespace_from_mapping
from prism.spi import CounterTraits, KeyValueTraits, QueueTraits, TimeSeriesTraits
from prism.timeseries.namespace import AsyncTimeSeries, Order

T = TypeVar("T")
Inner = TypeVar("Inner", AsyncKeyValue, AsyncQueue, AsyncTimeSeries, AsyncCounter)

ConfigSource = Config | Mapping[str, Any] | str | os.PathLike[str] | None


class AsyncPrism:
    """An open Prism, for async code. Close it (or use ``async with``) when done."""

    def __init__(self, config: ConfigSource = None, *, plugins: PluginSet | None = None) -> None:
        self.plugins = plugins if plugins is not None else load_plugins()
        self.config = resolve_config(config, self.plugins.registry)
        self._runtime = Runtime(self.config, self.plugins)

    def keyvalue(self, namespace: str) -> AsyncKeyValue:
        """The KeyValue namespace ``namespace``.

        :raises prism.NamespaceNotFound: it is not configured.
        :raises prism.PlanError: no configured backend meets its needs.
        """
        return self._runtime.keyvalue(namespace)

    def queue(self, namespace: str) -> AsyncQueue:
        """The Queue namespace ``namespace``.

        :raises prism.NamespaceNotFound: it is not configured.
        :raises prism.PlanError: no configured backend meets its needs.
        """
        return self._runtime.queue(namespace)

    def timeseries(self, namespace: str) -> AsyncTimeSeries:
        """The TimeSeries namespace ``namespace``.

        :raises NamespaceNotFound: it is not configured (and auto_namespaces is off).
        :raises WrongAbstraction: it is declared as another abstraction.
        :raises PlanError: no configured backend meets its needs.
        """
        return self._runtime.timeseries(namespace)

    def counter(self, namespace: str) -> AsyncCounter:
        """The Counter namespace ``namespace``.

        :raises NamespaceNotFound: it is not configured (and auto_namespaces is off).
        :raises WrongAbstraction: it is declared as another abstraction.
        :raises PlanError: no configured backend serves its ``counter.mode``.
        """
        return self._runtime.counter(namespace)

    def plan(self, namespace: str) -> NamespacePlan:
        """Which backend serves ``namespace``, and why."""
        return self._runtime.plan(namespace)

    async def declare(
        self, namespace: str, declaration: NamespaceConfig | Mapping[str, Any]
    ) -> NamespacePlan:
        """Declare ``namespace`` now, as an entry under ``namespaces:`` would
        (a mapping in the same form, e.g. ``{"abstraction": "keyvalue",
        "needs": {"ttl": "1d"}}``, or a NamespaceConfig), then plan and
        provision it. It lasts as long as this handle; the data stays on the
        backend. Declaring it again with the same settings is a no-op.

        :raises prism.InvalidArgument: settings prism.yaml would refuse.
        :raises prism.runtime.NamespaceConflict: declared already with other settings.
        :raises prism.PlanError: no configured backend meets its needs.
        """
        ns = (
            declaration
            if isinstance(declaration, NamespaceConfig)
            else namespace_from_mapping(namespace, declaration, self.config)
        )
        chosen, _ = await self._runtime.declare(namespace, ns)
        return chosen

    def namespaces(self) -> dict[str, NamespaceConfig]:
        """Every declared namespace: those of prism.yaml, then those declared at run time."""
        return self._runtime.namespaces()

    async def close(self) -> None:
        await self._runtime.close()

    async def __aenter__(self) -> AsyncPrism:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def open_async(config: ConfigSource = None, *, plugins: PluginSet | None = None) -> AsyncPrism:
    """Open Prism in process for async code.

    :param config: a path to ``prism.yaml``, a mapping with the same content, a
        :class:`prism.config.Config`, or None for ``./prism.yaml`` if present and
        else the embedded default (SQLite in ``./prism-data/``).
    """
    return AsyncPrism(config, plugins=plugins)


class _LoopThread:
    """An event loop on a daemon thread. Sync calls run their coroutine there and
    wait, so the sync client works from any thread, even one with its own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="prism-embedded", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class AsyncKeyValueCalls(Protocol):
    """What the sync KeyValue operations drive: an embedded ``AsyncKeyValue`` or
    a remote one (:mod:`prism.remote`)."""

    async def put_items(
        self, record_id: str, items: ItemsInput, *, token: IdempotencyToken | None = None
    ) -> None: ...

    async def get_items(
        self,
        record_id: str,
        predicate: Predicate | None = None,
        *,
        limit: int | None = None,
        page_size_bytes: int | None = None,
        page_token: str | None = None,
    ) -> ItemsPage: ...

    async def delete_items(
        self, record_id: str, predicate: Predicate | None = None, *, token: IdempotencyToken | None = None
    ) -> None: ...

    async def mutate_items(
        self, record_id: str, mutations: Sequence[Mutation], *, token: IdempotencyToken | None = None
    ) -> None: ...

    async def scan(self, *, limit: int | None = None, page_token: str | None = None) -> RecordsPage: ...


class AsyncConsumerCalls(Protocol):
    """What a sync :class:`Consumer` drives: an embedded ``AsyncConsumer`` or a
    remote one."""

    @property
    def id(self) -> str: ...

    @property
    def topic(self) -> str: ...

    @property
    def group(self) -> str: ...

    async def consume(self, max_messages: int = 10, wait: timedelta | float = 0) -> list[Delivery]: ...

    async def ack(self, ids: Iterable[DeliveryRef]) -> None: ...

    async def nack(self, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None: ...

    async def close(self) -> None: ...


KV = TypeVar("KV", bound=AsyncKeyValueCalls)
C = TypeVar("C", bound=AsyncConsumerCalls)


class KeyValueCalls(Generic[KV]):
    """The KeyValue operations, synchronous: each runs its async twin on the
    loop thread. Shared by :class:`KeyValue` and the remote client's."""

    _inner: KV
    _portal: _LoopThread

    def put_items(
        self,
        record_id: str,
        items: ItemsInput,
        *,
        token: IdempotencyToken | None = None,
    ) -> None:
        return self._portal.run(self._inner.put_items(record_id, items, token=token))

    def get_items(
        self,
        record_id: str,
        predicate: Predicate | None = None,
        *,
        limit: int | None = None,
        page_size_bytes: int | None = None,
        page_token: str | None = None,
    ) -> ItemsPage:
        return self._portal.run(
            self._inner.get_items(
                record_id, predicate, limit=limit, page_size_bytes=page_size_bytes, page_token=page_token
            )
        )

    def delete_items(
        self, record_id: str, predicate: Predicate | None = None, *, token: IdempotencyToken | None = None
    ) -> None:
        return self._portal.run(self._inner.delete_items(record_id, predicate, token=token))

    def mutate_items(
        self, record_id: str, mutations: Sequence[Mutation], *, token: IdempotencyToken | None = None
    ) -> None:
        return self._portal.run(self._inner.mutate_items(record_id, mutations, token=token))

    def scan(self, *, limit: int | None = None, page_token: str | None = None) -> RecordsPage:
        return self._portal.run(self._inner.scan(limit=limit, page_token=page_token))


class _SyncNamespace(Generic[Inner]):
    """What the sync handles of every abstraction share: the async handle they
    drive on the loop thread, and its identity."""

    def __init__(self, inner: Inner, portal: _LoopThread) -> None:
        self._inner: Inner = inner
        self._portal = portal

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def backend_name(self) -> str:
        return self._inner.backend_name

    @property
    def capabilities(self) -> frozenset[str]:
        return self._inner.capabilities

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.backend_name!r}>"


class KeyValue(_SyncNamespace[AsyncKeyValue], KeyValueCalls[AsyncKeyValue]):
    """One KeyValue namespace, synchronous. Same methods as :class:`AsyncKeyValue`."""

    @property
    def traits(self) -> KeyValueTraits:
        """What the backend serving this namespace offers (row size, durability…)."""
        return self._inner.traits

    @property
    def max_value_bytes(self) -> int:
        """The largest value this namespace accepts."""
        return self._inner.max_value_bytes


class Consumer(Generic[C]):
    """One consumer of a group, synchronous. Same methods as :class:`AsyncConsumer`;
    use it with ``with`` so undelivered work comes back when it stops."""

    def __init__(self, inner: C, portal: _LoopThread) -> None:
        self._inner = inner
        self._portal = portal

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def topic(self) -> str:
        return self._inner.topic

    @property
    def group(self) -> str:
        return self._inner.group

    def __repr__(self) -> str:
        return repr(self._inner)

    def consume(self, max_messages: int = 10, wait: timedelta | float = 0) -> list[Delivery]:
        return self._portal.run(self._inner.consume(max_messages, wait))

    def ack(self, ids: Iterable[DeliveryRef]) -> None:
        return self._portal.run(self._inner.ack(ids))

    def nack(self, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None:
        return self._portal.run(self._inner.nack(ids, requeue=requeue))

    def close(self) -> None:
        return self._portal.run(self._inner.close())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Queue(_SyncNamespace[AsyncQueue]):
    """One Queue namespace, synchronous. Same methods as :class:`AsyncQueue`."""

    @property
    def traits(self) -> QueueTraits:
        return self._inner.traits

    @property
    def max_message_bytes(self) -> int:
        """The largest message (key, payload and headers) this namespace accepts."""
        return self._inner.max_message_bytes

    @property
    def limits(self) -> QueueLimits:
        """The namespace's ``queue:`` settings: batch size, visibility timeout, ..."""
        return self._inner.limits

    def dead_letter_topic(self, topic: str) -> str:
        return self._inner.dead_letter_topic(topic)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} on {self.backend_name!r}>"

    def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        return self._portal.run(self._inner.publish(topic, messages))

    def consume(
        self, topic: str, group: str, max_messages: int = 10, wait: timedelta | float = 0
    ) -> list[Delivery]:
        return self._portal.run(self._inner.consume(topic, group, max_messages, wait))

    def ack(self, topic: str, group: str, ids: Iterable[DeliveryRef]) -> None:
        return self._portal.run(self._inner.ack(topic, group, ids))

    def nack(self, topic: str, group: str, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None:
        return self._portal.run(self._inner.nack(topic, group, ids, requeue=requeue))

    def consumer(self, topic: str, group: str) -> Consumer[AsyncConsumer]:
        return Consumer(self._inner.consumer(topic, group), self._portal)


class TimeSeries(_SyncNamespace[AsyncTimeSeries]):
    """One TimeSeries namespace, synchronous. Same methods as :class:`AsyncTimeSeries`."""

    @property
    def traits(self) -> TimeSeriesTraits:
        return self._inner.traits

    @property
    def settings(self) -> TimeSeriesSettings:
        """The namespace's ``timeseries:`` settings: retention, limits, ..."""
        return self._inner.settings

    @property
    def max_payload_bytes(self) -> int:
        """The largest event payload this namespace accepts."""
        return self._inner.max_payload_bytes

    def write_events(self, series: str, events: Sequence[Event]) -> None:
        return self._portal.run(self._inner.write_events(series, events))

    def read_events(
        self,
        series: str,
        start: datetime,
        end: datetime,
        *,
        order: Order = "asc",
        limit: int | None = None,
        page_token: str | None = None,
    ) -> EventsPage:
        return self._portal.run(
            self._inner.read_events(series, start, end, order=order, limit=limit, page_token=page_token)
        )


class Counter(_SyncNamespace[AsyncCounter]):
    """One Counter namespace, synchronous. Same methods as :class:`AsyncCounter`."""

    @property
    def traits(self) -> CounterTraits:
        return self._inner.traits

    @property
    def mode(self) -> CounterMode:
        return self._inner.mode

    @property
    def settings(self) -> CounterSettings:
        return self._inner.settings

    def add(self, counter: str, delta: int = 1, *, token: IdempotencyToken | None = None) -> int | None:
        return self._portal.run(self._inner.add(counter, delta, token=token))

    def get(self, counter: str) -> int:
        return self._portal.run(self._inner.get(counter))

    def clear(self, counter: str, *, token: IdempotencyToken | None = None) -> None:
        return self._portal.run(self._inner.clear(counter, token=token))


class Prism:
    """An open Prism, for synchronous code. Close it (or use ``with``) when done."""

    def __init__(self, config: ConfigSource = None, *, plugins: PluginSet | None = None) -> None:
        self._async = AsyncPrism(config, plugins=plugins)
        self._portal = _LoopThread()
        self._handles: dict[str, KeyValue] = {}
        self._queues: dict[str, Queue] = {}
        self._timeseries: dict[str, TimeSeries] = {}
        self._counters: dict[str, Counter] = {}
        self._closed = False

    @property
    def config(self) -> Config:
        return self._async.config

    @property
    def plugins(self) -> PluginSet:
        return self._async.plugins

    def keyvalue(self, namespace: str) -> KeyValue:
        """The KeyValue namespace ``namespace``; see :meth:`AsyncPrism.keyvalue`."""
        handle = self._handles.get(namespace)
        if handle is None:
            handle = KeyValue(self._async.keyvalue(namespace), self._portal)
            self._handles[namespace] = handle
        return handle

    def queue(self, namespace: str) -> Queue:
        """The Queue namespace ``namespace``; see :meth:`AsyncPrism.queue`."""
        handle = self._queues.get(namespace)
        if handle is None:
            handle = Queue(self._async.queue(namespace), self._portal)
            self._queues[namespace] = handle
        return handle

    def timeseries(self, namespace: str) -> TimeSeries:
        """The TimeSeries namespace ``namespace``; see :meth:`AsyncPrism.timeseries`."""
        handle = self._timeseries.get(namespace)
        if handle is None:
            handle = TimeSeries(self._async.timeseries(namespace), self._portal)
            self._timeseries[namespace] = handle
        return handle

    def counter(self, namespace: str) -> Counter:
        """The Counter namespace ``namespace``; see :meth:`AsyncPrism.counter`."""
        handle = self._counters.get(namespace)
        if handle is None:
            handle = Counter(self._async.counter(namespace), self._portal)
            self._counters[namespace] = handle
        return handle

    def plan(self, namespace: str) -> NamespacePlan:
        return self._async.plan(namespace)

    def declare(self, namespace: str, declaration: NamespaceConfig | Mapping[str, Any]) -> NamespacePlan:
        """Declare a namespace now; see :meth:`AsyncPrism.declare`."""
        return self._portal.run(self._async.declare(namespace, declaration))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.run(self._async.close())
        finally:
            self._portal.stop()

    def __enter__(self) -> Prism:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open(config: ConfigSource = None, *, plugins: PluginSet | None = None) -> Prism:
    """Open Prism in process for synchronous code; see :func:`open_async`."""
    return Prism(config, plugins=plugins)
