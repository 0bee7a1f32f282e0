"""Fresh, empty namespaces for suite tests, opened through the public API.

Each call to :meth:`NamespaceHarness.open` (KeyValue) or
:meth:`NamespaceHarness.open_queues` (Queue) builds a configuration with the
backend under test (named ``under_test``) and one or more namespaces with new,
unique names, and opens it with :func:`prism.open`. Unique names are what make
a namespace empty on a backend that keeps data between runs (a database file,
a server), so no test needs a clean-up step to stay independent.

:class:`GatewayHarness` does the same through a running gateway (``prism
serve``): it declares each fresh namespace with AdminService.CreateNamespace,
pinned to the backend under test, and hands the test :func:`prism.connect`
handles. What a test learns about the backend (capabilities, traits, the
effective limits) comes from the gateway's answers, so the suite runs from a
machine without the plugin installed, and proves the gateway transparent.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import attrs

import prism
from prism.config import QueueLimits
from prism.models import (
    Delivery,
    IdempotencyToken,
    ItemsInput,
    ItemsPage,
    Message,
    Mutation,
    Predicate,
    RecordsPage,
)
from prism.planner import effective_max_value_bytes
from prism.plugins.manager import PluginSet, load_plugins
from prism.remote import (
    AsyncRemotePrism,
    RemoteConsumer,
    RemoteCounter,
    RemoteKeyValue,
    RemotePrism,
    RemoteQueue,
    RemoteTimeSeries,
    ServedNamespace,
    connect_async,
)
from prism.spi import KeyValueTraits, QueueTraits
from prism_conformance.handles import (
    AsyncCounterHandle,
    CounterHandle,
    DeliveryRef,
    KeyValueHandle,
    PrismHandle,
    QueueHandle,
    TimeSeriesHandle,
)

T = TypeVar("T")
H = TypeVar("H")

BACKEND_NAME = "under_test"

_namespace_numbers = itertools.count(1)
_default_plugins: PluginSet | None = None


def default_plugins() -> PluginSet:
    """The installed plugins, loaded once per process: loading entry points for
    every test would only repeat the same work."""
    global _default_plugins
    if _default_plugins is None:
        _default_plugins = load_plugins()
    return _default_plugins


def unique_namespace_name() -> str:
    """``t_<counter>_<random>``: unique within the process by the counter and
    across processes sharing a datastore by the random part. Well inside the
    48 characters a namespace name may have."""
    return f"t_{next(_namespace_numbers)}_{secrets.token_hex(5)}"


def backend_config(backend: Mapping[str, Any]) -> dict[str, Any]:
    """The backend's settings as ``prism.yaml`` would hold them. Path objects
    are turned into strings, since a ``tmp_path / "db"`` is the natural thing to
    write in a fixture and YAML never holds one."""
    return {
        key: os.fspath(value) if isinstance(value, os.PathLike) else value for key, value in backend.items()
    }


@attrs.frozen
class OpenedNamespaces:
    """One open Prism and the fresh KeyValue namespaces declared in it."""

    db: PrismHandle
    namespaces: tuple[KeyValueHandle, ...]


@attrs.frozen
class OpenedQueues:
    """One open Prism and the fresh Queue namespaces declared in it."""

    db: PrismHandle
    queues: tuple[QueueHandle, ...]


@attrs.frozen
class OpenedTimeSeries:
    """One open Prism and the fresh TimeSeries namespaces declared in it."""

    db: PrismHandle
    namespaces: tuple[TimeSeriesHandle, ...]


@attrs.frozen
class OpenedCounters:
    """One open Prism and the fresh Counter namespaces declared in it."""

    db: PrismHandle
    namespaces: tuple[CounterHandle, ...]


Opened = OpenedNamespaces | OpenedQueues | OpenedTimeSeries | OpenedCounters


class Harness(Protocol):
    """What a suite needs from a harness, embedded or through a gateway."""

    @property
    def backend(self) -> dict[str, Any]:
        """The backend under test, for the report (no secrets)."""
        ...

    @property
    def declared_capabilities(self) -> frozenset[str]: ...

    def open(
        self,
        count: int = 1,
        *,
        limits: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedNamespaces: ...

    def open_queues(
        self,
        count: int = 1,
        *,
        queue: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedQueues: ...

    def open_timeseries(
        self,
        count: int = 1,
        *,
        timeseries: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedTimeSeries: ...

    def open_counters(
        self,
        count: int = 1,
        *,
        counter: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedCounters: ...

    def run_with_async_counter(
        self,
        body: Callable[[AsyncCounterHandle], Awaitable[T]],
        *,
        counter: Mapping[str, Any] | None = None,
    ) -> T: ...

    def backend_traits_of(self, kv: KeyValueHandle) -> KeyValueTraits: ...

    def max_value_bytes_of(self, kv: KeyValueHandle) -> int: ...

    def close(self) -> None: ...


class NamespaceHarness:
    """Opens fresh namespaces on one backend and closes them after the test."""

    def __init__(
        self, backend: Mapping[str, Any], plugins: PluginSet, *, abstraction: str = "keyvalue"
    ) -> None:
        if not isinstance(backend, Mapping) or not isinstance(backend.get("plugin"), str):
            raise TypeError(
                "the backend under test must be a mapping like prism.yaml's backends entries, "
                f"with a plugin: key, e.g. {{'plugin': 'sqlite', 'path': ...}}; got {backend!r}"
            )
        self.backend = backend_config(backend)
        self.plugins = plugins
        self.abstraction = abstraction
        self.page_token_secret = secrets.token_hex(16)
        self._opened: list[Opened] = []

    @property
    def plugin_name(self) -> str:
        return str(self.backend["plugin"])

    @property
    def declared_capabilities(self) -> frozenset[str]:
        """What the backend's plugin declares for the harness's abstraction;
        empty if the plugin is not loaded or does not offer that abstraction."""
        types = self.plugins.registry.by_abstraction().get(self.abstraction, {})
        backend_type = types.get(self.plugin_name)
        return backend_type.capabilities if backend_type is not None else frozenset()

    def open(
        self,
        count: int = 1,
        *,
        limits: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedNamespaces:
        """Open ``count`` fresh namespaces in one Prism, so they share one backend
        instance (which is what isolation between namespaces has to hold against).

        Every namespace is pinned to the backend under test, so a namespace whose
        needs the backend cannot meet fails loudly with ``PlanError`` instead of
        landing elsewhere. All Prisms of one test share a page-token secret, so a
        token used in the wrong namespace is refused for its binding, not merely
        for a foreign signature.
        """
        body: dict[str, Any] = {"abstraction": "keyvalue", "backend": BACKEND_NAME}
        if limits:
            body["limits"] = dict(limits)
        if needs:
            body["needs"] = dict(needs)
        db, handles = self._fresh(count, body, lambda db, name: db.keyvalue(name))
        opened = OpenedNamespaces(db, handles)
        self._opened.append(opened)
        return opened

    def open_queues(
        self,
        count: int = 1,
        *,
        queue: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedQueues:
        """Open ``count`` fresh Queue namespaces in one Prism, with the
        ``queue:`` settings and ``needs`` given (as in ``prism.yaml``, e.g.
        ``queue={"visibility_timeout": "2s"}``). As for :meth:`open`, every
        namespace is pinned to the backend under test, so a need it cannot meet
        raises ``PlanError``."""
        body = self._body("queue", queue, needs)
        db, queues = self._fresh(count, body, lambda db, name: db.queue(name))
        opened = OpenedQueues(db, queues)
        self._opened.append(opened)
        return opened

    def open_timeseries(
        self,
        count: int = 1,
        *,
        timeseries: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedTimeSeries:
        """``count`` fresh TimeSeries namespaces in one Prism, with the
        ``timeseries:`` settings given (as in ``prism.yaml``, e.g.
        ``timeseries={"retention": "2s", "bucket": "1s"}``), pinned to the
        backend under test."""
        body = self._body("timeseries", timeseries, needs)
        db, series = self._fresh(count, body, lambda db, name: db.timeseries(name))
        opened = OpenedTimeSeries(db, series)
        self._opened.append(opened)
        return opened

    def open_counters(
        self,
        count: int = 1,
        *,
        counter: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedCounters:
        """``count`` fresh Counter namespaces in one Prism, with the ``counter:``
        settings given (e.g. ``counter={"mode": "exact", "token_window": "2s"}``),
        pinned to the backend under test: a mode the backend does not declare
        raises ``PlanError``."""
        body = self._body("counter", counter, needs)
        db, counters = self._fresh(count, body, lambda db, name: db.counter(name))
        opened = OpenedCounters(db, counters)
        self._opened.append(opened)
        return opened

    def run_with_async_counter(
        self,
        body: Callable[[AsyncCounterHandle], Awaitable[T]],
        *,
        counter: Mapping[str, Any] | None = None,
    ) -> T:
        """Run ``body`` on a fresh Counter namespace of a Prism opened with
        :func:`prism.open_async`, on an event loop of its own, and close it."""
        name = unique_namespace_name()
        config = self._config([name], self._body("counter", counter, None))

        async def run() -> T:
            async with prism.open_async(config, plugins=self.plugins) as db:
                return await body(db.counter(name))

        return asyncio.run(run())

    @staticmethod
    def _body(
        abstraction: str, settings: Mapping[str, Any] | None, needs: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"abstraction": abstraction, "backend": BACKEND_NAME}
        if settings:
            body[abstraction] = dict(settings)
        if needs:
            body["needs"] = dict(needs)
        return body

    def _config(self, names: list[str], body: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "backends": {BACKEND_NAME: dict(self.backend)},
            "namespaces": {name: dict(body) for name in names},
            "page_token_secret": self.page_token_secret,
        }

    def _open_prism(self, names: list[str], body: Mapping[str, Any]) -> prism.Prism:
        return prism.open(self._config(names, body), plugins=self.plugins)

    def _fresh(
        self, count: int, body: Mapping[str, Any], open_one: Callable[[prism.Prism, str], H]
    ) -> tuple[prism.Prism, tuple[H, ...]]:
        """``count`` fresh namespaces declared with ``body`` in one new Prism,
        and their handles (``open_one``); the Prism is closed if one fails."""
        names = [unique_namespace_name() for _ in range(count)]
        db = self._open_prism(names, body)
        try:
            return db, tuple(open_one(db, name) for name in names)
        except BaseException:
            db.close()
            raise

    def owner_of(self, kv: KeyValueHandle) -> OpenedNamespaces:
        """The Prism a namespace handle of this harness belongs to."""
        for opened in self._opened:
            if isinstance(opened, OpenedNamespaces) and any(handle is kv for handle in opened.namespaces):
                return opened
        raise ValueError(f"{kv!r} was not opened by this harness")

    def _prism_of(self, kv: KeyValueHandle) -> prism.Prism:
        db = self.owner_of(kv).db
        assert isinstance(db, prism.Prism), f"{db!r} is not an embedded Prism"
        return db

    def traits(self, db: prism.Prism) -> KeyValueTraits:
        """What the backend under test offers with its settings, from public
        pieces: the plugin's registered type applied to the structured settings."""
        backend_type = db.plugins.registry.keyvalue[db.config.backends[BACKEND_NAME].plugin]
        return backend_type.traits(db.config.backends[BACKEND_NAME].settings)

    def max_value_bytes(self, db: prism.Prism, namespace: str) -> int:
        """The largest value ``namespace`` accepts: its limit or need, else 8 MiB,
        never more than the backend holds (the planner's own rule)."""
        return effective_max_value_bytes(db.config.namespaces[namespace], self.traits(db))

    def backend_traits_of(self, kv: KeyValueHandle) -> KeyValueTraits:
        """What the backend under ``kv`` offers."""
        return self.traits(self._prism_of(kv))

    def max_value_bytes_of(self, kv: KeyValueHandle) -> int:
        """The largest value ``kv`` accepts."""
        return self.max_value_bytes(self._prism_of(kv), kv.name)

    def close(self) -> None:
        """Close every Prism this harness opened, the last one first. Every one
        is closed even if one fails; the first failure is raised afterwards."""
        failure: BaseException | None = None
        while self._opened:
            opened = self._opened.pop()
            try:
                opened.db.close()
            except BaseException as exc:  # keep closing the others
                failure = failure or exc
        if failure is not None:
            raise failure


# -- through a gateway ----------------------------------------------------------------------


@attrs.frozen
class Gateway:
    """A running gateway and the backend (a name under its ``backends:``) to test
    through it. The gateway's ``gateway.create_namespaces`` must allow run-time
    namespaces on that backend.

    ``token``: the bearer token (it needs the ``admin`` grant on the suite's
    namespace names, ``t_*``; a ``"*"`` grant is simplest); unset, it is read
    from the environment variable ``token_env``, so it never has to be written
    into a test module. ``ca``, ``cert``, ``key``: as :func:`prism.connect`."""

    target: str
    backend: str
    token: str | None = attrs.field(default=None, repr=False)
    token_env: str = "PRISM_TOKEN"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def connect(self) -> RemotePrism:
        token = self.token or os.environ.get(self.token_env) or None
        return prism.connect(self.target, token=token, ca=self.ca, cert=self.cert, key=self.key)

    def connect_async(self) -> AsyncRemotePrism:
        """As :meth:`connect`, for async code (its calls run on the caller's loop)."""
        token = self.token or os.environ.get(self.token_env) or None
        return connect_async(self.target, token=token, ca=self.ca, cert=self.cert, key=self.key)

    def describe(self, plugin: str) -> dict[str, Any]:
        """The backend under test as the report shows it."""
        return {"plugin": plugin, "gateway": self.target, "backend": self.backend}


class GatewayKeyValue:
    """A gateway KeyValue handle, with what the gateway said about the namespace."""

    def __init__(self, handle: RemoteKeyValue, served: ServedNamespace) -> None:
        self._handle = handle
        self.served = served

    def __repr__(self) -> str:
        return f"<GatewayKeyValue {self.name!r} on {self.served.backend!r}>"

    @property
    def name(self) -> str:
        return self._handle.name

    @property
    def backend_name(self) -> str:
        return self.served.backend

    @property
    def capabilities(self) -> frozenset[str]:
        return self.served.capabilities

    def put_items(self, record_id: str, items: ItemsInput, *, token: IdempotencyToken | None = None) -> None:
        self._handle.put_items(record_id, items, token=token)

    def get_items(
        self,
        record_id: str,
        predicate: Predicate | None = None,
        *,
        limit: int | None = None,
        page_size_bytes: int | None = None,
        page_token: str | None = None,
    ) -> ItemsPage:
        return self._handle.get_items(
            record_id, predicate, limit=limit, page_size_bytes=page_size_bytes, page_token=page_token
        )

    def delete_items(
        self, record_id: str, predicate: Predicate | None = None, *, token: IdempotencyToken | None = None
    ) -> None:
        self._handle.delete_items(record_id, predicate, token=token)

    def mutate_items(
        self, record_id: str, mutations: Sequence[Mutation], *, token: IdempotencyToken | None = None
    ) -> None:
        self._handle.mutate_items(record_id, mutations, token=token)

    def scan(self, *, limit: int | None = None, page_token: str | None = None) -> RecordsPage:
        return self._handle.scan(limit=limit, page_token=page_token)


class GatewayQueue:
    """A gateway Queue handle, with what the gateway said about the namespace."""

    def __init__(self, handle: RemoteQueue, served: ServedNamespace) -> None:
        if served.queue is None or not isinstance(served.traits, QueueTraits):
            raise AssertionError(
                f"the gateway described queue namespace {served.name!r} without its queue settings and traits"
            )
        self._handle = handle
        self.served = served
        self._limits = served.queue
        self._traits = served.traits

    def __repr__(self) -> str:
        return f"<GatewayQueue {self.name!r} on {self.served.backend!r}>"

    @property
    def name(self) -> str:
        return self._handle.name

    @property
    def backend_name(self) -> str:
        return self.served.backend

    @property
    def capabilities(self) -> frozenset[str]:
        return self.served.capabilities

    @property
    def traits(self) -> QueueTraits:
        return self._traits

    @property
    def limits(self) -> QueueLimits:
        return self._limits

    @property
    def max_message_bytes(self) -> int:
        """The effective limit, as the gateway computed it."""
        return int(self._limits.max_message_bytes)

    def dead_letter_topic(self, topic: str) -> str:
        return topic + self._limits.dead_letter_suffix

    def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        return self._handle.publish(topic, messages)

    def consume(
        self, topic: str, group: str, max_messages: int = 10, wait: timedelta | float = 0
    ) -> list[Delivery]:
        return self._handle.consume(topic, group, max_messages, wait)

    def ack(self, topic: str, group: str, ids: Iterable[DeliveryRef]) -> None:
        self._handle.ack(topic, group, ids)

    def nack(self, topic: str, group: str, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None:
        self._handle.nack(topic, group, ids, requeue=requeue)

    def consumer(self, topic: str, group: str) -> RemoteConsumer:
        return self._handle.consumer(topic, group)


class GatewayPrism:
    """The harness's connection to the gateway, as a test sees it. A namespace
    the harness did not create is looked up on the gateway first (GetPlan),
    so an unknown one is refused with NamespaceNotFound at ``db.keyvalue()``,
    as embedded, rather than at its first call."""

    def __init__(self, remote: RemotePrism) -> None:
        self.remote = remote
        self._keyvalue: dict[str, GatewayKeyValue] = {}
        self._queue: dict[str, GatewayQueue] = {}

    def adopt_keyvalue(self, served: ServedNamespace) -> GatewayKeyValue:
        handle = self._keyvalue[served.name] = GatewayKeyValue(self.remote.keyvalue(served.name), served)
        return handle

    def adopt_queue(self, served: ServedNamespace) -> GatewayQueue:
        handle = self._queue[served.name] = GatewayQueue(self.remote.queue(served.name), served)
        return handle

    def timeseries(self, namespace: str) -> RemoteTimeSeries:
        """A TimeSeries namespace through the gateway (the remote client's
        handle has every method a suite uses)."""
        return self.remote.timeseries(namespace)

    def counter(self, namespace: str) -> RemoteCounter:
        """A Counter namespace through the gateway, as :meth:`timeseries`."""
        return self.remote.counter(namespace)

    def keyvalue(self, namespace: str) -> GatewayKeyValue:
        handle = self._keyvalue.get(namespace)
        return handle if handle is not None else self.adopt_keyvalue(self.remote.namespace(namespace))

    def queue(self, namespace: str) -> GatewayQueue:
        handle = self._queue.get(namespace)
        return handle if handle is not None else self.adopt_queue(self.remote.namespace(namespace))

    def close(self) -> None:
        self.remote.close()


#: Per (target, backend, abstraction): the first namespace the harness created
#: there, whose answer tells the plugin and its capabilities before a test runs.
_probes: dict[tuple[str, str, str], ServedNamespace] = {}


def probe(gateway: Gateway, abstraction: str) -> ServedNamespace:
    """What the gateway serves ``abstraction`` with on the backend under test,
    learnt once per process by declaring one fresh namespace there.

    :raises prism.PrismError: the gateway refused (policy, unknown backend, needs).
    """
    key = (gateway.target, gateway.backend, abstraction)
    served = _probes.get(key)
    if served is None:
        remote = gateway.connect()
        try:
            served = remote.create_namespace(unique_namespace_name(), abstraction, backend=gateway.backend)
        finally:
            remote.close()
        _probes[key] = served
    return served


class GatewayHarness:
    """Fresh namespaces through a gateway, one connection per test."""

    def __init__(self, gateway: Gateway, *, abstraction: str = "keyvalue") -> None:
        if not isinstance(gateway, Gateway):
            raise TypeError(
                "gateway must be a prism_conformance.Gateway(target='grpc://HOST:PORT', backend='NAME'), "
                f"got {gateway!r}"
            )
        self.gateway = gateway
        self.abstraction = abstraction
        self._db: GatewayPrism | None = None

    @property
    def backend(self) -> dict[str, Any]:
        return self.gateway.describe(probe(self.gateway, self.abstraction).plugin)

    @property
    def plugin_name(self) -> str:
        return probe(self.gateway, self.abstraction).plugin

    @property
    def declared_capabilities(self) -> frozenset[str]:
        """What the gateway says the backend declares."""
        return probe(self.gateway, self.abstraction).capabilities

    def _connection(self) -> GatewayPrism:
        if self._db is None:
            self._db = GatewayPrism(self.gateway.connect())
        return self._db

    def _create(
        self, abstraction: str, count: int, **settings: Mapping[str, Any] | None
    ) -> list[ServedNamespace]:
        db = self._connection()
        return [
            db.remote.create_namespace(
                unique_namespace_name(), abstraction, backend=self.gateway.backend, **settings
            )
            for _ in range(count)
        ]

    def open(
        self,
        count: int = 1,
        *,
        limits: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedNamespaces:
        """``count`` fresh KeyValue namespaces, declared on the gateway and pinned
        to the backend under test (so unmet needs raise ``PlanError``)."""
        db = self._connection()
        served = self._create("keyvalue", count, limits=limits, needs=needs)
        return OpenedNamespaces(db, tuple(db.adopt_keyvalue(s) for s in served))

    def open_queues(
        self,
        count: int = 1,
        *,
        queue: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedQueues:
        """``count`` fresh Queue namespaces, as :meth:`open`."""
        db = self._connection()
        served = self._create("queue", count, queue=queue, needs=needs)
        return OpenedQueues(db, tuple(db.adopt_queue(s) for s in served))

    def open_timeseries(
        self,
        count: int = 1,
        *,
        timeseries: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedTimeSeries:
        """``count`` fresh TimeSeries namespaces, as :meth:`open`."""
        db = self._connection()
        served = self._create("timeseries", count, timeseries=timeseries, needs=needs)
        return OpenedTimeSeries(db, tuple(db.timeseries(s.name) for s in served))

    def open_counters(
        self,
        count: int = 1,
        *,
        counter: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedCounters:
        """``count`` fresh Counter namespaces, as :meth:`open`: a mode the
        backend does not declare raises ``PlanError``."""
        db = self._connection()
        served = self._create("counter", count, counter=counter, needs=needs)
        return OpenedCounters(db, tuple(db.counter(s.name) for s in served))

    def run_with_async_counter(
        self,
        body: Callable[[AsyncCounterHandle], Awaitable[T]],
        *,
        counter: Mapping[str, Any] | None = None,
    ) -> T:
        """Run ``body`` on a fresh Counter namespace through an async
        connection of its own, on an event loop of its own, and close it."""
        (served,) = self._create("counter", 1, counter=counter)

        async def run() -> T:
            async with self.gateway.connect_async() as db:
                return await body(db.counter(served.name))

        return asyncio.run(run())

    def _served(self, kv: KeyValueHandle) -> ServedNamespace:
        if not isinstance(kv, GatewayKeyValue):
            raise ValueError(f"{kv!r} was not opened by this harness")
        return kv.served

    def backend_traits_of(self, kv: KeyValueHandle) -> KeyValueTraits:
        """The backend's traits, as the gateway reported them."""
        traits = self._served(kv).traits
        assert isinstance(traits, KeyValueTraits), f"the gateway reported no KeyValue traits for {kv!r}"
        return traits

    def max_value_bytes_of(self, kv: KeyValueHandle) -> int:
        """The effective value limit, as the gateway computed it."""
        limits = self._served(kv).limits
        assert limits is not None, f"the gateway reported no limits for {kv!r}"
        assert limits.max_value_bytes is not None, f"the gateway reported no max_value_bytes for {kv!r}"
        return int(limits.max_value_bytes)

    def close(self) -> None:
        """Close the connection. The namespaces stay declared on the gateway
        until it restarts (there is no DeleteNamespace); they are empty or
        small, and their names are never reused."""
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
