"""The remote client: Prism through a gateway (``prism serve``), same API as embedded.

::

    import prism.remote

    with prism.remote.connect("grpc://127.0.0.1:50051") as db:   # instead of prism.open(...)
        users = db.keyvalue("users")
        users.put_items("user:1", {b"name": b"Ada"})
        print(users.get_items("user:1").as_dict())

    async with prism.remote.connect_async("grpc://127.0.0.1:50051") as db:
        orders = db.queue("orders")
        await orders.publish("created", [prism.Message(b"user:1", b"order 7")])

A gateway with auth wants ``token=``; one serving TLS wants ``grpcs://`` and,
unless its certificate chains to the system's roots, ``ca=`` (plus ``cert=``
and ``key=`` when it requires client certificates)::

    prism.remote.connect("grpcs://gw:50051", token=token, ca="ca.pem", cert="me.pem", key="me-key.pem")

``db.keyvalue(ns)``, ``db.queue(ns)``, ``db.timeseries(ns)`` and ``db.counter(ns)``
take and return the same model types (:class:`prism.Item`, :class:`prism.Keys`,
:class:`prism.ItemsPage`, :class:`prism.Message`, :class:`prism.Delivery`,
:class:`prism.Event`, :class:`prism.EventsPage`...) and raise the same
``prism.errors`` classes, with the same messages, as ``prism.open``. Failures
only a network call has are :class:`RemoteError` subclasses; an unreachable
gateway is :class:`Unavailable`, a :class:`prism.BackendError` as embedded.

Retries (only what is safe):

* KeyValue writes always carry an idempotency token: the caller's, or one the
  client makes per call. A retry sends the same token, so it cannot apply twice
  or overwrite a newer write. Writes and reads (``get_items``, ``scan``) and
  ``ack`` (acking twice is harmless) are retried on UNAVAILABLE with bounded
  exponential back-off, within the call's deadline.
* ``publish``, ``consume`` and ``nack`` are never retried: the first try may
  have reached the gateway, and a retry could publish the messages twice, or
  lease messages twice, or take back a delivery someone else now holds. They
  raise, and the caller decides.
* TimeSeries ``write_events`` is retried like a KeyValue write: an event is
  identified by its series, time and id, so writing it again changes nothing.
  ``read_events`` is retried like a read.
* Counter ``add`` and ``clear`` always carry a token (the caller's, or one made
  per call and sent again on each retry). They are retried on UNAVAILABLE only
  when a retry cannot count twice: when the namespace is in ``exact`` mode
  (the gateway then applies a token once), or when the gateway said it refused
  the call before running it (its backend's circuit breaker was open). The
  mode is asked of the gateway (GetPlan) the first time a retry is in
  question, and remembered by the handle. In ``best_effort`` mode any other
  UNAVAILABLE raises: the add may or may not have counted, and the caller
  decides. ``get`` is retried like a read.

Differences from embedded, by necessity: a handle is lazy, so an unknown
namespace is reported by its first call rather than by ``db.keyvalue()``;
``db.plan()`` is a call to the gateway; a consumer hands back what it holds when
it closes, but if the process dies, what it held comes back after the
visibility timeout (use :meth:`AsyncRemoteQueue.subscribe` for a stream whose
deliveries come back as soon as the connection drops).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import attrs
import grpc
from google.protobuf import duration_pb2

# googleapis-common-protos ships .pyi files but no py.typed marker.
from google.rpc import error_details_pb2  # type: ignore[import-untyped]

from prism.client import Consumer, KeyValueCalls, _LoopThread
from prism.config import CounterMode, CounterSettings, Limits, QueueLimits, TimeSeriesSettings
from prism.errors import InvalidArgument, InvalidPageToken, LimitExceeded, PrismError
from prism.gateway import convert
from prism.gateway.counter_service import add_request, token_to_proto, value_from_response
from prism.gateway.status import (
    DOMAIN,
    DeadlineExceeded,
    InternalError,
    PermissionDenied,
    RemoteError,
    Unauthenticated,
    Unavailable,
    error_from_status,
    rich_status,
)
from prism.gateway.timeseries_service import event_to_proto, events_from_response, order_to_proto
from prism.gateway.tls import PemSource, TlsError, channel_credentials
from prism.log import get_logger
from prism.models import (
    AllItems,
    Delete,
    Delivery,
    Event,
    EventsPage,
    IdempotencyToken,
    Item,
    ItemsInput,
    ItemsPage,
    KeyRange,
    Keys,
    Message,
    Mutation,
    Predicate,
    Put,
    RecordsPage,
)
from prism.planner import NamespacePlan
from prism.spi import (
    COUNTER_MAX,
    COUNTER_MIN,
    Consistency,
    CounterTraits,
    Durability,
    KeyValueTraits,
    QueueTraits,
    TimeSeriesTraits,
)
from prism.timeseries.namespace import Order
from prism.units import ByteSize, parse_duration, parse_size
from prism.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    counter_pb2,
    counter_pb2_grpc,
    keyvalue_pb2,
    keyvalue_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
    timeseries_pb2,
    timeseries_pb2_grpc,
)

__all__ = [
    "AsyncRemoteConsumer",
    "AsyncRemoteCounter",
    "AsyncRemoteKeyValue",
    "AsyncRemotePrism",
    "AsyncRemoteQueue",
    "AsyncRemoteSubscription",
    "AsyncRemoteTimeSeries",
    "DeadlineExceeded",
    "InternalError",
    "PermissionDenied",
    "RemoteConsumer",
    "RemoteCounter",
    "RemoteError",
    "RemoteKeyValue",
    "RemotePrism",
    "RemoteQueue",
    "RemoteSubscription",
    "RemoteTimeSeries",
    "RetryPolicy",
    "ServedNamespace",
    "TlsError",
    "Unauthenticated",
    "Unavailable",
    "connect",
    "connect_async",
]

Resp = TypeVar("Resp")
DeliveryRef = str | Delivery

log = get_logger(__name__)

DEFAULT_PORT = 50051
#: Seconds a call may take, on top of a consume's own ``wait``.
DEFAULT_TIMEOUT_S = 30.0
#: Ids per Nack when a consumer hands back what it holds.
_RELEASE_BATCH = 100


@attrs.frozen
class RetryPolicy:
    """How calls that are safe to retry are retried on UNAVAILABLE: at most
    ``attempts`` tries, sleeping ``initial_backoff_s`` then multiplying by
    ``multiplier`` up to ``max_backoff_s`` (with full jitter), and never past
    the call's deadline."""

    attempts: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    initial_backoff_s: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))
    max_backoff_s: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))

    def backoff(self, retry: int) -> float:
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry)
        return random.uniform(0, ceiling)


def split_target(target: str) -> tuple[str, bool]:
    """``grpc://host:port`` or ``grpcs://host:port`` (or ``host:port``) as the
    ``host:port`` gRPC dials, and whether it is TLS (``grpcs``).

    :raises ValueError: another scheme, or no host.
    """
    scheme, sep, rest = target.partition("://")
    if not sep:
        scheme, rest = "grpc", target
    usage = (
        f"{target!r}: expected grpc://HOST:PORT or grpcs://HOST:PORT (TLS), "
        f"for example grpc://127.0.0.1:{DEFAULT_PORT}"
    )
    if scheme not in ("grpc", "grpcs"):
        raise ValueError(usage)
    tls = scheme == "grpcs"
    rest = rest.rstrip("/")
    host, colon, port = rest.rpartition(":")
    if colon and host and port.isdigit():
        return rest, tls
    if rest and (":" not in rest or (rest.startswith("[") and rest.endswith("]"))):
        return f"{rest}:{DEFAULT_PORT}", tls  # no port: the gateway's default
    raise ValueError(usage)


def parse_target(target: str) -> str:
    """``grpc://host:port`` (or ``grpcs://``, or ``host:port``) as the
    ``host:port`` gRPC dials.

    :raises ValueError: another scheme, or no host.
    """
    return split_target(target)[0]


def _bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    """The ``authorization`` metadata for ``token``. Surrounding whitespace is
    dropped: a token read from a file usually ends with a newline, which gRPC
    metadata cannot carry."""
    if token is None:
        return ()
    clean = token.strip()
    if not clean or any(ch.isspace() or not ch.isprintable() for ch in clean):
        raise ValueError(
            "token must be the token string `prism token new` printed: non-empty, with no spaces or "
            "control characters inside"
        )
    return (("authorization", f"Bearer {clean}"),)


# -- argument checks the embedded core makes too -------------------------------------------
#
# Values a prism.v1 message cannot carry (a non-string id, a non-Item entry) are
# refused here with the embedded core's own message, so a caller sees the same
# InvalidArgument either way instead of a protobuf TypeError.


def _check_record_id(namespace: str, record_id: object) -> str:
    if not isinstance(record_id, str):
        raise InvalidArgument(
            f"record id must be a string, got {type(record_id).__name__}", namespace=namespace, field="id"
        )
    return record_id


def _check_token(namespace: str, token: object) -> IdempotencyToken:
    if token is None:
        return IdempotencyToken.new()
    if not isinstance(token, IdempotencyToken):
        raise InvalidArgument(
            f"token must be a prism.IdempotencyToken, got {type(token).__name__}",
            namespace=namespace,
            field="token",
        )
    return token


def _check_predicate(namespace: str, predicate: object) -> Predicate | None:
    if predicate is None or isinstance(predicate, AllItems | Keys | KeyRange):
        return predicate
    raise InvalidArgument(
        f"predicate must be prism.AllItems(), prism.Keys([...]) or prism.KeyRange(start, end), got {predicate!r}",
        namespace=namespace,
        field="predicate",
    )


def _check_positive(namespace: str, value: object, field: str) -> int:
    """0 on the wire means "the default", so None becomes 0 and 0 is refused here."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgument(
            f"{field} must be a positive integer, got {value!r}", namespace=namespace, field=field
        )
    return value


def _check_page_token(namespace: str, page_token: str | None) -> str:
    """The page token for the wire, where "" means "no token": an empty token
    given on purpose is refused here, as the embedded core refuses it, instead
    of silently starting the listing again (found by the remote conformance run)."""
    if page_token is None:
        return ""
    if not isinstance(page_token, str) or not page_token:
        raise InvalidPageToken("it is not a Prism page token", namespace=namespace)
    return page_token


def _items(namespace: str, record_id: str, items: ItemsInput) -> list[keyvalue_pb2.Item]:
    if isinstance(items, Mapping):
        return [convert.item_to_proto(Item(key, value)) for key, value in items.items()]
    out: list[keyvalue_pb2.Item] = []
    for entry in items:
        if not isinstance(entry, Item | Put):
            raise InvalidArgument(
                f"record {record_id!r}: expected prism.Item values, got {type(entry).__name__}",
                namespace=namespace,
                field="items",
            )
        out.append(convert.item_to_proto(entry))
    return out


def _mutations(namespace: str, record_id: str, mutations: Sequence[Mutation]) -> list[keyvalue_pb2.Mutation]:
    out: list[keyvalue_pb2.Mutation] = []
    for mutation in mutations:
        if not isinstance(mutation, Put | Delete):
            raise InvalidArgument(
                f"record {record_id!r}: mutations are prism.Put or prism.Delete, got {type(mutation).__name__}",
                namespace=namespace,
                field="mutations",
            )
        out.append(convert.mutation_to_proto(mutation))
    return out


def _messages(namespace: str, topic: str, messages: Sequence[Message] | Message) -> list[queue_pb2.Message]:
    batch = [messages] if isinstance(messages, Message) else list(messages)
    out: list[queue_pb2.Message] = []
    for index, message in enumerate(batch):
        if not isinstance(message, Message):
            raise InvalidArgument(
                f"topic {topic!r}: message {index} must be a prism.Message, got {type(message).__name__}",
                namespace=namespace,
                field="messages",
            )
        if message.deliver_after is not None and not isinstance(message.deliver_after, timedelta | datetime):
            raise InvalidArgument(
                f"topic {topic!r}: message {index}: deliver_after must be a timedelta or datetime, "
                f"got {type(message.deliver_after).__name__}",
                namespace=namespace,
                field="deliver_after",
            )
        try:
            out.append(convert.message_to_proto(message))
        except ValueError as exc:
            raise InvalidArgument(
                f"topic {topic!r}: message {index}: {exc}", namespace=namespace, field="deliver_after"
            ) from None
    return out


def _ids(namespace: str, topic: str, group: str, refs: Iterable[DeliveryRef]) -> list[str]:
    if isinstance(refs, str | bytes | Delivery):
        raise InvalidArgument(
            f"topic {topic!r}, group {group!r}: pass a list of ids, not a single one",
            namespace=namespace,
            field="ids",
        )
    ids: list[str] = []
    for ref in refs:
        value = ref.id if isinstance(ref, Delivery) else ref
        if not isinstance(value, str):
            raise InvalidArgument(
                f"topic {topic!r}, group {group!r}: ids must be non-empty strings from consume, got {value!r}",
                namespace=namespace,
                field="ids",
            )
        ids.append(value)
    return ids


def _wait_seconds(namespace: str, wait: timedelta | float) -> float:
    seconds = wait.total_seconds() if isinstance(wait, timedelta) else wait
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise InvalidArgument(
            f"wait must be a non-negative number of seconds or a timedelta, got {wait!r}",
            namespace=namespace,
            field="wait",
        )
    return float(seconds)


def _max_messages(namespace: str, max_messages: object) -> int:
    if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
        raise InvalidArgument(
            f"max_messages must be a positive integer, got {max_messages!r}",
            namespace=namespace,
            field="max_messages",
        )
    return max_messages


# -- the connection ------------------------------------------------------------------------


#: grpc caps received messages at 4 MiB by default, below one 8 MiB value or a
#: 16 MiB page. What the gateway sends is bounded by the namespace's own limits
#: (max_value_bytes, max_page_size_bytes), so the client takes any size.
_CHANNEL_OPTIONS = (("grpc.max_receive_message_length", -1),)

#: grpc's own words when a message is over the receiver's limit.
_TOO_LARGE = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")


class _Connection:
    """One channel to a gateway, the credentials, and the call policy."""

    def __init__(
        self,
        target: str,
        token: str | None,
        timeout_s: float,
        retry: RetryPolicy,
        *,
        ca: PemSource | None = None,
        cert: PemSource | None = None,
        key: PemSource | None = None,
    ) -> None:
        self.target = target
        self.address, tls = split_target(target)
        self.timeout_s = timeout_s
        self.retry = retry
        self._metadata = _bearer(token)
        self._credentials: grpc.ChannelCredentials | None = None
        if tls:
            # Read now, so a wrong path fails at connect(), not at the first call.
            self._credentials = channel_credentials(ca, cert, key)
        elif (ca, cert, key) != (None, None, None):
            raise ValueError(
                f"{target!r}: ca=, cert= and key= are TLS settings; connect to grpcs://{self.address} to use them"
            )
        self._channel: grpc.aio.Channel | None = None
        self._stubs: tuple[Any, Any, Any, Any, Any] | None = None

    def _open(self) -> tuple[Any, Any, Any, Any, Any]:
        # The channel binds to the running loop, so it is made on first use.
        if self._stubs is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(
                    self.address, self._credentials, options=_CHANNEL_OPTIONS
                )
            else:
                self._channel = grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
            self._stubs = (
                keyvalue_pb2_grpc.KeyValueServiceStub(self._channel),
                queue_pb2_grpc.QueueServiceStub(self._channel),
                admin_pb2_grpc.AdminServiceStub(self._channel),
                timeseries_pb2_grpc.TimeSeriesServiceStub(self._channel),
                counter_pb2_grpc.CounterServiceStub(self._channel),
            )
        return self._stubs

    @property
    def keyvalue(self) -> keyvalue_pb2_grpc.KeyValueServiceAsyncStub:
        stub: keyvalue_pb2_grpc.KeyValueServiceAsyncStub = self._open()[0]
        return stub

    @property
    def queue(self) -> queue_pb2_grpc.QueueServiceAsyncStub:
        stub: queue_pb2_grpc.QueueServiceAsyncStub = self._open()[1]
        return stub

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceAsyncStub:
        stub: admin_pb2_grpc.AdminServiceAsyncStub = self._open()[2]
        return stub

    @property
    def timeseries(self) -> timeseries_pb2_grpc.TimeSeriesServiceAsyncStub:
        stub: timeseries_pb2_grpc.TimeSeriesServiceAsyncStub = self._open()[3]
        return stub

    @property
    def counter(self) -> counter_pb2_grpc.CounterServiceAsyncStub:
        stub: counter_pb2_grpc.CounterServiceAsyncStub = self._open()[4]
        return stub

    def metadata(self) -> tuple[tuple[str, str], ...]:
        # One request id per logical call, the same on each retry, so the
        # gateway's log lines of all its tries can be found together.
        return (*self._metadata, ("x-request-id", os.urandom(8).hex()))

    def error(self, exc: grpc.aio.AioRpcError, method: str, namespace: str, timeout_s: float) -> PrismError:
        code = exc.code()
        details = exc.details() or ""
        metadata = exc.trailing_metadata()
        if rich_status(metadata) is None:
            # Not the gateway's own refusal: grpc's, on this side of the wire.
            if code is grpc.StatusCode.UNAVAILABLE:
                details = (
                    f"the Prism gateway at {self.target} is unavailable ({details}); check that "
                    "`prism serve` runs there and retry"
                )
            elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
                details = (
                    f"namespace {namespace!r}: {method} got no answer from {self.target} within "
                    f"{timeout_s:g}s; retry, or connect with a longer timeout"
                )
            elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and (match := _TOO_LARGE.search(details)):
                # The gateway's grpc refused the request before Prism saw it.
                actual, limit = int(match[1]), int(match[2])
                return LimitExceeded(
                    f"{method} sent a request of {actual} bytes, over the gateway's limit of {limit} bytes "
                    "(gateway.limits.max_request_bytes); send fewer or smaller items per call",
                    namespace=namespace,
                    limit_name="gateway.limits.max_request_bytes",
                    limit=limit,
                    actual=actual,
                    field="request",
                )
        return error_from_status(code, details, metadata)

    async def call(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: Any,
        *,
        name: str,
        namespace: str,
        retry: bool | Callable[[grpc.aio.AioRpcError], Awaitable[bool]],
        extra_s: float = 0.0,
    ) -> Resp:
        """One unary call with the deadline, and retries on UNAVAILABLE when
        ``retry`` (only for calls that are safe to repeat). A function as
        ``retry`` decides for each UNAVAILABLE whether repeating is safe."""
        timeout_s = self.timeout_s + extra_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        metadata = self.metadata()
        tries = self.retry.attempts if retry else 1
        for attempt in range(tries):
            remaining = deadline - loop.time()
            try:
                return await method(request, timeout=max(remaining, 0.001), metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                pause = self.retry.backoff(attempt)
                last = attempt == tries - 1 or exc.code() is not grpc.StatusCode.UNAVAILABLE
                if not last and callable(retry) and not await retry(exc):
                    last = True
                if last or loop.time() + pause >= deadline:
                    raise self.error(exc, name, namespace, timeout_s) from None
                log.debug("retrying", method=name, namespace=namespace, attempt=attempt + 1, pause_s=pause)
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stubs = None


# -- async handles ----------------------------------------------------------------------------


class AsyncRemoteKeyValue:
    """One KeyValue namespace through the gateway; same methods as :class:`prism.AsyncKeyValue`."""

    def __init__(self, name: str, connection: _Connection) -> None:
        self.name = name
        self._conn = connection

    def __repr__(self) -> str:
        return f"<AsyncRemoteKeyValue {self.name!r} via {self._conn.target}>"

    async def put_items(
        self, record_id: str, items: ItemsInput, *, token: IdempotencyToken | None = None
    ) -> None:
        record_id = _check_record_id(self.name, record_id)
        request = keyvalue_pb2.PutItemsRequest(
            namespace=self.name,
            id=record_id,
            items=_items(self.name, record_id, items),
            token=convert.token_to_proto(_check_token(self.name, token)),
        )
        kv = self._conn.keyvalue
        await self._conn.call(kv.PutItems, request, name="PutItems", namespace=self.name, retry=True)

    async def get_items(
        self,
        record_id: str,
        predicate: Predicate | None = None,
        *,
        limit: int | None = None,
        page_size_bytes: int | None = None,
        page_token: str | None = None,
    ) -> ItemsPage:
        request = keyvalue_pb2.GetItemsRequest(
            namespace=self.name,
            id=_check_record_id(self.name, record_id),
            predicate=convert.predicate_to_proto(_check_predicate(self.name, predicate)),
            limit=_check_positive(self.name, limit, "limit"),
            page_size_bytes=_check_positive(self.name, page_size_bytes, "page_size_bytes"),
            page_token=_check_page_token(self.name, page_token),
        )
        kv = self._conn.keyvalue
        response = await self._conn.call(
            kv.GetItems, request, name="GetItems", namespace=self.name, retry=True
        )
        return ItemsPage(
            [convert.item_from_proto(item) for item in response.items], response.next_page_token or None
        )

    async def delete_items(
        self, record_id: str, predicate: Predicate | None = None, *, token: IdempotencyToken | None = None
    ) -> None:
        request = keyvalue_pb2.DeleteItemsRequest(
            namespace=self.name,
            id=_check_record_id(self.name, record_id),
            predicate=convert.predicate_to_proto(_check_predicate(self.name, predicate)),
            token=convert.token_to_proto(_check_token(self.name, token)),
        )
        kv = self._conn.keyvalue
        await self._conn.call(kv.DeleteItems, request, name="DeleteItems", namespace=self.name, retry=True)

    async def mutate_items(
        self, record_id: str, mutations: Sequence[Mutation], *, token: IdempotencyToken | None = None
    ) -> None:
        record_id = _check_record_id(self.name, record_id)
        request = keyvalue_pb2.MutateItemsRequest(
            namespace=self.name,
            id=record_id,
            mutations=_mutations(self.name, record_id, mutations),
            token=convert.token_to_proto(_check_token(self.name, token)),
        )
        kv = self._conn.keyvalue
        await self._conn.call(kv.MutateItems, request, name="MutateItems", namespace=self.name, retry=True)

    async def scan(self, *, limit: int | None = None, page_token: str | None = None) -> RecordsPage:
        request = keyvalue_pb2.ScanRequest(
            namespace=self.name,
            limit=_check_positive(self.name, limit, "limit"),
            page_token=_check_page_token(self.name, page_token),
        )
        kv = self._conn.keyvalue
        response = await self._conn.call(kv.Scan, request, name="Scan", namespace=self.name, retry=True)
        return RecordsPage(list(response.record_ids), response.next_page_token or None)


class AsyncRemoteQueue:
    """One Queue namespace through the gateway; same methods as :class:`prism.AsyncQueue`,
    plus :meth:`subscribe`."""

    def __init__(self, name: str, connection: _Connection) -> None:
        self.name = name
        self._conn = connection

    def __repr__(self) -> str:
        return f"<AsyncRemoteQueue {self.name!r} via {self._conn.target}>"

    async def publish(self, topic: str, messages: Sequence[Message] | Message) -> list[str]:
        """Not retried: a retry after a lost answer would publish the messages twice."""
        request = queue_pb2.PublishRequest(
            namespace=self.name, topic=topic, messages=_messages(self.name, topic, messages)
        )
        q = self._conn.queue
        response = await self._conn.call(q.Publish, request, name="Publish", namespace=self.name, retry=False)
        return list(response.ids)

    async def consume(
        self, topic: str, group: str, max_messages: int = 10, wait: timedelta | float = 0
    ) -> list[Delivery]:
        wait_s = _wait_seconds(self.name, wait)
        request = queue_pb2.ConsumeRequest(
            namespace=self.name,
            topic=topic,
            group=group,
            max_messages=_max_messages(self.name, max_messages),
            wait=convert.seconds_to_duration(wait_s),
        )
        q = self._conn.queue
        response = await self._conn.call(
            q.Consume, request, name="Consume", namespace=self.name, retry=False, extra_s=wait_s
        )
        return convert.deliveries_from_proto(response.deliveries)

    async def ack(
        self, topic: str, group: str, ids: Iterable[DeliveryRef], *, subscription_id: str = ""
    ) -> None:
        """Retried on UNAVAILABLE: acknowledging twice is harmless."""
        request = queue_pb2.AckRequest(
            namespace=self.name,
            topic=topic,
            group=group,
            ids=_ids(self.name, topic, group, ids),
            subscription_id=subscription_id,
        )
        q = self._conn.queue
        await self._conn.call(q.Ack, request, name="Ack", namespace=self.name, retry=True)

    async def nack(
        self,
        topic: str,
        group: str,
        ids: Iterable[DeliveryRef],
        *,
        requeue: bool = True,
        subscription_id: str = "",
    ) -> None:
        """Not retried: a late retry could take back a delivery another consumer now holds."""
        request = queue_pb2.NackRequest(
            namespace=self.name,
            topic=topic,
            group=group,
            ids=_ids(self.name, topic, group, ids),
            dead_letter=not requeue,
            subscription_id=subscription_id,
        )
        q = self._conn.queue
        await self._conn.call(q.Nack, request, name="Nack", namespace=self.name, retry=False)

    def consumer(self, topic: str, group: str) -> AsyncRemoteConsumer:
        """A consumer of ``group`` on ``topic``; close it (``async with``) so what
        it received and did not ack is delivered again at once."""
        return AsyncRemoteConsumer(self, topic, group)

    def subscribe(self, topic: str, group: str, *, max_in_flight: int = 10) -> AsyncRemoteSubscription:
        """A Subscribe stream: deliveries pushed as they arrive, at most
        ``max_in_flight`` unacked at once. Use it with ``async with``; when it
        closes, or the connection drops, what it held is delivered again at once."""
        return AsyncRemoteSubscription(
            self, topic, group, _check_positive(self.name, max_in_flight, "max_in_flight")
        )


class AsyncRemoteConsumer:
    """One consumer of a group through the gateway; same methods as :class:`prism.AsyncConsumer`.

    It is built on Consume, so it leases exactly what ``consume`` asks for, no
    more (a stream would prefetch, starving the group's other consumers). It
    remembers what it received and has not acked or nacked, and on close gives
    it back with Nack, so it is delivered again at once.
    """

    def __init__(self, queue: AsyncRemoteQueue, topic: str, group: str) -> None:
        self.queue = queue
        self.topic = topic
        self.group = group
        self.id = "consumer-" + os.urandom(8).hex()
        self.closed = False
        self._held: dict[str, None] = {}

    def __repr__(self) -> str:
        return f"<AsyncRemoteConsumer {self.id} of {self.group!r} on {self.queue.name}/{self.topic}>"

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidArgument(
                f"topic {self.topic!r}, group {self.group!r}: this consumer is closed; open a new one",
                namespace=self.queue.name,
            )

    async def consume(self, max_messages: int = 10, wait: timedelta | float = 0) -> list[Delivery]:
        self._check_open()
        deliveries = await self.queue.consume(self.topic, self.group, max_messages, wait)
        self._held.update(dict.fromkeys(d.id for d in deliveries))
        return deliveries

    async def ack(self, ids: Iterable[DeliveryRef]) -> None:
        wanted = _ids(self.queue.name, self.topic, self.group, ids)
        await self.queue.ack(self.topic, self.group, wanted)
        for delivery_id in wanted:
            self._held.pop(delivery_id, None)

    async def nack(self, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None:
        wanted = _ids(self.queue.name, self.topic, self.group, ids)
        await self.queue.nack(self.topic, self.group, wanted, requeue=requeue)
        for delivery_id in wanted:
            self._held.pop(delivery_id, None)

    async def close(self) -> None:
        """Give back every delivery this consumer holds and has not acked. If the
        gateway cannot be reached, they come back after the visibility timeout
        anyway, so that is logged, not raised."""
        if self.closed:
            return
        self.closed = True
        held = list(self._held)
        self._held.clear()
        for start in range(0, len(held), _RELEASE_BATCH):
            try:
                await self.queue.nack(self.topic, self.group, held[start : start + _RELEASE_BATCH])
            except PrismError as exc:
                log.warning(
                    "consumer could not give back its deliveries; they come back after the visibility timeout",
                    namespace=self.queue.name,
                    topic=self.topic,
                    group=self.group,
                    error=str(exc),
                )
                return

    async def __aenter__(self) -> AsyncRemoteConsumer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AsyncRemoteSubscription:
    """A Subscribe stream: ``async for delivery in subscription``, then ``ack``
    or ``nack`` (which free room on the stream). Remote only."""

    def __init__(self, queue: AsyncRemoteQueue, topic: str, group: str, max_in_flight: int) -> None:
        self.queue = queue
        self.topic = topic
        self.group = group
        self.max_in_flight = max_in_flight
        self.id = ""
        self._call: (
            grpc.aio.UnaryStreamCall[queue_pb2.SubscribeRequest, queue_pb2.SubscribeResponse] | None
        ) = None

    async def open(self) -> None:
        """Start the stream and wait for its subscription id."""
        conn = self.queue._conn
        request = queue_pb2.SubscribeRequest(
            namespace=self.queue.name, topic=self.topic, group=self.group, max_in_flight=self.max_in_flight
        )
        self._call = conn.queue.Subscribe(request, metadata=conn.metadata())
        first = await self._read()
        if first is None or first.WhichOneof("event") != "subscription_id":
            raise InternalError(
                f"namespace {self.queue.name!r}: the gateway at {conn.target} did not start the subscription "
                "with its id",
                code=grpc.StatusCode.INTERNAL,
            )
        self.id = first.subscription_id

    async def _read(self) -> queue_pb2.SubscribeResponse | None:
        if self._call is None:
            raise InvalidArgument(
                f"topic {self.topic!r}, group {self.group!r}: open the subscription first (async with)",
                namespace=self.queue.name,
            )
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise self.queue._conn.error(exc, "Subscribe", self.queue.name, 0.0) from None
        if message is grpc.aio.EOF:
            return None
        assert isinstance(message, queue_pb2.SubscribeResponse)
        return message

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        message = await self._read()
        if message is None:
            raise StopAsyncIteration
        return convert.delivery_from_proto(message.delivery)

    async def ack(self, ids: Iterable[DeliveryRef]) -> None:
        await self.queue.ack(self.topic, self.group, ids, subscription_id=self.id)

    async def nack(self, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None:
        await self.queue.nack(self.topic, self.group, ids, requeue=requeue, subscription_id=self.id)

    async def close(self) -> None:
        """End the stream; the gateway gives back what it held at once."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def __aenter__(self) -> AsyncRemoteSubscription:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


# -- TimeSeries and Counter ------------------------------------------------------------------------
#
# What a prism.v1 message cannot carry is refused here with the embedded core's
# own message and field, as for KeyValue above; everything else (limits,
# retention, skew, page tokens, token windows) is the gateway's to check.

#: The largest ``limit`` the wire carries (uint32).
_MAX_WIRE_LIMIT = 2**32 - 1


def _check_series(namespace: str, series: object) -> str:
    if not isinstance(series, str):
        raise InvalidArgument(
            f"series must be a non-empty str, got {series!r}", namespace=namespace, field="series"
        )
    return series


def _check_time(namespace: str, value: object, field: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidArgument(
            f"{field} must be a timezone-aware datetime, got {type(value).__name__}",
            namespace=namespace,
            field=field,
        )
    if value.tzinfo is None:
        raise InvalidArgument(
            f"{field} {value.isoformat()} has no timezone; use an aware datetime (datetime.now(UTC))",
            namespace=namespace,
            field=field,
        )
    return value


def _events(namespace: str, events: object) -> list[timeseries_pb2.Event]:
    if isinstance(events, Event) or not isinstance(events, Sequence):
        raise InvalidArgument(
            f"events must be a list of prism.Event, got {type(events).__name__}",
            namespace=namespace,
            field="events",
        )
    out: list[timeseries_pb2.Event] = []
    for index, event in enumerate(events):
        field = f"events[{index}]"
        if not isinstance(event, Event):
            raise InvalidArgument(
                f"{field} must be a prism.Event, got {type(event).__name__}", namespace=namespace, field=field
            )
        _check_time(namespace, event.event_time, f"{field}.event_time")
        if not isinstance(event.event_id, str):
            raise InvalidArgument(
                f"{field}.event_id must be a non-empty str (the event's id within its time, which makes a "
                f"retried write idempotent), got {event.event_id!r}",
                namespace=namespace,
                field=f"{field}.event_id",
            )
        out.append(event_to_proto(event))
    return out


def _check_counter(namespace: str, counter: object) -> str:
    if not isinstance(counter, str):
        raise InvalidArgument(
            f"counter must be a non-empty str, got {counter!r}", namespace=namespace, field="counter"
        )
    return counter


def _check_delta(namespace: str, delta: object) -> int:
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise InvalidArgument(
            f"delta must be an int, got {type(delta).__name__}", namespace=namespace, field="delta"
        )
    if not COUNTER_MIN <= delta <= COUNTER_MAX:
        raise LimitExceeded(
            f"delta {delta} is outside the signed 64-bit range counters hold",
            namespace=namespace,
            limit_name="counter value range",
            limit=COUNTER_MAX,
            actual=delta,
            field="delta",
        )
    return delta


def _refused_before_running(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the gateway says it refused the call before its operation ran
    (the backend's circuit breaker was open): then nothing happened, and
    repeating it cannot apply it twice."""
    status = rich_status(exc.trailing_metadata())
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return bool(info.domain == DOMAIN and info.reason == "BreakerOpen")
    return False


class AsyncRemoteTimeSeries:
    """One TimeSeries namespace through the gateway; same methods as :class:`prism.AsyncTimeSeries`."""

    def __init__(self, name: str, connection: _Connection) -> None:
        self.name = name
        self._conn = connection

    def __repr__(self) -> str:
        return f"<AsyncRemoteTimeSeries {self.name!r} via {self._conn.target}>"

    async def write_events(self, series: str, events: Sequence[Event]) -> None:
        """Retried on UNAVAILABLE: an event is identified by its series, time
        and id, so writing it again changes nothing."""
        request = timeseries_pb2.WriteEventsRequest(
            namespace=self.name, series=_check_series(self.name, series), events=_events(self.name, events)
        )
        ts = self._conn.timeseries
        await self._conn.call(ts.WriteEvents, request, name="WriteEvents", namespace=self.name, retry=True)

    async def read_events(
        self,
        series: str,
        start: datetime,
        end: datetime,
        *,
        order: Order = "asc",
        limit: int | None = None,
        page_token: str | None = None,
    ) -> EventsPage:
        series = _check_series(self.name, series)
        start = _check_time(self.name, start, "start")
        end = _check_time(self.name, end, "end")
        if order not in ("asc", "desc"):
            raise InvalidArgument(
                f"order must be 'asc' or 'desc', got {order!r}", namespace=self.name, field="order"
            )
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InvalidArgument(
                f"limit must be a positive int, got {limit!r}", namespace=self.name, field="limit"
            )
        request = timeseries_pb2.ReadEventsRequest(
            namespace=self.name,
            series=series,
            start=convert.datetime_to_timestamp(start),
            end=convert.datetime_to_timestamp(end),
            order=order_to_proto(order),
            # Past what the wire carries: the gateway names the namespace's limit.
            limit=0 if limit is None else min(limit, _MAX_WIRE_LIMIT),
            page_token=_check_page_token(self.name, page_token),
        )
        ts = self._conn.timeseries
        response = await self._conn.call(
            ts.ReadEvents, request, name="ReadEvents", namespace=self.name, retry=True
        )
        return EventsPage(events_from_response(response.events, self.name), response.next_page_token or None)


class AsyncRemoteCounter:
    """One Counter namespace through the gateway; same methods as :class:`prism.AsyncCounter`.

    ``add`` and ``clear`` always send a token (see the module docstring for
    when they are retried)."""

    def __init__(self, name: str, connection: _Connection) -> None:
        self.name = name
        self._conn = connection
        self._mode: CounterMode | None = None

    def __repr__(self) -> str:
        return f"<AsyncRemoteCounter {self.name!r} via {self._conn.target}>"

    async def _served_mode(self) -> CounterMode | None:
        """The namespace's ``counter.mode`` as the gateway serves it (asked
        once, then remembered); None when the gateway cannot say now."""
        if self._mode is None:
            try:
                served = await self._conn.admin.GetPlan(
                    admin_pb2.GetPlanRequest(name=self.name),
                    timeout=self._conn.timeout_s,
                    metadata=self._conn.metadata(),
                )
            except grpc.aio.AioRpcError:
                return None
            if served.HasField("counter"):
                self._mode = _COUNTER_MODE_NAMES.get(served.counter.mode)
        return self._mode

    async def _may_retry(self, exc: grpc.aio.AioRpcError) -> bool:
        """Whether repeating a failed add or clear (with its token) is safe."""
        return _refused_before_running(exc) or await self._served_mode() == "exact"

    async def add(self, counter: str, delta: int = 1, *, token: IdempotencyToken | None = None) -> int | None:
        request = add_request(
            self.name,
            _check_counter(self.name, counter),
            _check_delta(self.name, delta),
            _check_token(self.name, token),
        )
        c = self._conn.counter
        response = await self._conn.call(
            c.Add, request, name="Add", namespace=self.name, retry=self._may_retry
        )
        return value_from_response(response)

    async def get(self, counter: str) -> int:
        request = counter_pb2.GetRequest(namespace=self.name, counter=_check_counter(self.name, counter))
        c = self._conn.counter
        response = await self._conn.call(c.Get, request, name="Get", namespace=self.name, retry=True)
        return response.value

    async def clear(self, counter: str, *, token: IdempotencyToken | None = None) -> None:
        request = counter_pb2.ClearRequest(
            namespace=self.name,
            counter=_check_counter(self.name, counter),
            token=token_to_proto(_check_token(self.name, token)),
        )
        c = self._conn.counter
        await self._conn.call(c.Clear, request, name="Clear", namespace=self.name, retry=self._may_retry)


# -- run-time namespaces (AdminService.CreateNamespace) -------------------------------------

_ABSTRACTION_NUMBERS = {
    "keyvalue": admin_pb2.ABSTRACTION_KEYVALUE,
    "queue": admin_pb2.ABSTRACTION_QUEUE,
    "timeseries": admin_pb2.ABSTRACTION_TIMESERIES,
    "counter": admin_pb2.ABSTRACTION_COUNTER,
}
_COUNTER_MODE_NUMBERS: dict[CounterMode, admin_pb2.CounterMode.ValueType] = {
    "best_effort": admin_pb2.COUNTER_MODE_BEST_EFFORT,
    "exact": admin_pb2.COUNTER_MODE_EXACT,
}
_COUNTER_MODE_NAMES: dict[admin_pb2.CounterMode.ValueType, CounterMode] = {
    number: name for name, number in _COUNTER_MODE_NUMBERS.items()
}
_DURABILITY_NUMBERS = {"ephemeral": admin_pb2.DURABILITY_EPHEMERAL, "durable": admin_pb2.DURABILITY_DURABLE}
_CONSISTENCY_NUMBERS = {
    "eventual": admin_pb2.CONSISTENCY_EVENTUAL,
    "read_your_writes": admin_pb2.CONSISTENCY_READ_YOUR_WRITES,
    "strong": admin_pb2.CONSISTENCY_STRONG,
}
_NEEDS_KEYS = ("durability", "consistency", "ttl", "max_value_bytes", "read_rps", "write_rps", "capabilities")


@attrs.frozen
class ServedNamespace:
    """A namespace as the gateway serves it (AdminService's ``Namespace``): its
    plan, the backend's capabilities and traits, and the limits in force.
    ``limits`` is set for KeyValue namespaces, ``queue`` for Queue ones,
    ``timeseries`` and ``counter`` for those; their ``max_value_bytes``,
    ``max_message_bytes`` and ``max_payload_bytes`` are the effective limits."""

    name: str
    abstraction: str
    backend: str
    plugin: str
    reason: str
    capabilities: frozenset[str]
    traits: KeyValueTraits | QueueTraits | TimeSeriesTraits | CounterTraits | None
    limits: Limits | None = None
    queue: QueueLimits | None = None
    runtime: bool = False
    """Declared at run time (CreateNamespace), not in the gateway's prism.yaml."""
    timeseries: TimeSeriesSettings | None = None
    counter: CounterSettings | None = None

    @property
    def plan(self) -> NamespacePlan:
        return NamespacePlan(self.name, self.abstraction, self.backend, self.plugin, self.reason)


def _bad_declaration(name: str, field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", namespace=name, field=field)


def _to_duration(name: str, field: str, value: object) -> duration_pb2.Duration:
    try:
        return convert.timedelta_to_duration(parse_duration(value))
    except ValueError as exc:
        raise _bad_declaration(name, field, str(exc)) from None


def _wire_settings(
    name: str,
    block: str,
    values: Mapping[str, Any] | None,
    message: admin_pb2.KeyValueLimits
    | admin_pb2.QueueSettings
    | admin_pb2.TimeSeriesSettings
    | admin_pb2.CounterSettings,
) -> None:
    """Copy a ``limits:``, ``queue:``, ``timeseries:`` or ``counter:`` block, as
    prism.yaml spells it (``"8MiB"``, ``"30s"``), into its typed message. What is
    left out stays the default."""
    if not values:
        return
    known = [field.name for field in message.DESCRIPTOR.fields]
    for key, value in values.items():
        field = f"{block}.{key}"
        if key not in known:
            raise _bad_declaration(name, field, f"unknown key {key!r}; expected one of: {', '.join(known)}")
        current = getattr(message, key)
        if isinstance(current, duration_pb2.Duration):
            current.CopyFrom(_to_duration(name, field, value))
        elif isinstance(current, str):
            if not isinstance(value, str):
                raise _bad_declaration(name, field, f"expected a string, got {value!r}")
            setattr(message, key, value)
        else:
            try:
                number = parse_size(value) if key.endswith("_bytes") else value
                setattr(message, key, number)
            except (TypeError, ValueError) as exc:
                why = str(exc) if key.endswith("_bytes") else f"expected a positive integer, got {value!r}"
                raise _bad_declaration(name, field, why) from None


def declaration_request(
    name: str,
    abstraction: str,
    *,
    needs: Mapping[str, Any] | None = None,
    backend: str | None = None,
    limits: Mapping[str, Any] | None = None,
    queue: Mapping[str, Any] | None = None,
    timeseries: Mapping[str, Any] | None = None,
    counter: Mapping[str, Any] | None = None,
) -> admin_pb2.CreateNamespaceRequest:
    """A CreateNamespaceRequest from a namespace entry as prism.yaml spells it.
    Only what the wire cannot carry is checked here; the gateway checks the rest
    exactly as it checks prism.yaml.

    :raises InvalidArgument: naming the field.
    """
    if abstraction not in _ABSTRACTION_NUMBERS:
        raise _bad_declaration(
            name,
            "abstraction",
            f"expected 'keyvalue', 'queue', 'timeseries' or 'counter', got {abstraction!r}",
        )
    request = admin_pb2.CreateNamespaceRequest(
        name=name, abstraction=_ABSTRACTION_NUMBERS[abstraction], backend=backend or ""
    )
    for key, value in (needs or {}).items():
        field = f"needs.{key}"
        wire = request.needs
        if key not in _NEEDS_KEYS:
            raise _bad_declaration(
                name, field, f"unknown key {key!r}; expected one of: {', '.join(_NEEDS_KEYS)}"
            )
        if key in ("durability", "consistency"):
            numbers = _DURABILITY_NUMBERS if key == "durability" else _CONSISTENCY_NUMBERS
            if value not in numbers:
                raise _bad_declaration(
                    name, field, f"expected one of {', '.join(map(repr, numbers))}, got {value!r}"
                )
            setattr(wire, key, numbers[value])
        elif key == "ttl":
            wire.ttl.CopyFrom(_to_duration(name, field, value))
        elif key == "capabilities":
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise _bad_declaration(name, field, f"expected a list of capability names, got {value!r}")
            wire.capabilities.extend(str(c) for c in value)
        else:
            try:
                setattr(wire, key, parse_size(value) if key == "max_value_bytes" else value)
            except (TypeError, ValueError) as exc:
                why = str(exc) if key == "max_value_bytes" else f"expected a positive integer, got {value!r}"
                raise _bad_declaration(name, field, why) from None
    if limits:
        _wire_settings(name, "limits", limits, request.limits)
    if queue:
        _wire_settings(name, "queue", queue, request.queue)
    if timeseries:
        _wire_settings(name, "timeseries", timeseries, request.timeseries)
    if counter:
        rest = dict(counter)
        if "mode" in rest:
            mode = rest.pop("mode")
            if mode not in _COUNTER_MODE_NUMBERS:
                raise _bad_declaration(
                    name, "counter.mode", f"expected 'best_effort' or 'exact', got {mode!r}"
                )
            request.counter.mode = _COUNTER_MODE_NUMBERS[mode]
        _wire_settings(name, "counter", rest, request.counter)
        request.counter.SetInParent()  # sent even when it sets only the defaults
    return request


def _timedelta(value: duration_pb2.Duration) -> timedelta:
    return convert.duration_to_timedelta(value)


def served_namespace(message: admin_pb2.Namespace) -> ServedNamespace:
    """The gateway's ``Namespace`` answer as a :class:`ServedNamespace`."""
    abstraction = {number: name for name, number in _ABSTRACTION_NUMBERS.items()}.get(
        message.abstraction, "unspecified"
    )
    durabilities: dict[int, Durability] = {_DURABILITY_NUMBERS[d]: d for d in ("ephemeral", "durable")}
    consistencies: dict[int, Consistency] = {
        _CONSISTENCY_NUMBERS[c]: c for c in ("eventual", "read_your_writes", "strong")
    }
    # Unspecified (an older gateway): the weakest, so nothing is promised that was not said.
    durability = durabilities.get(message.traits.durability, "ephemeral")
    consistency = consistencies.get(message.traits.consistency, "eventual")
    traits: KeyValueTraits | QueueTraits | TimeSeriesTraits | CounterTraits | None = None
    limits: Limits | None = None
    queue: QueueLimits | None = None
    timeseries: TimeSeriesSettings | None = None
    counter: CounterSettings | None = None
    wire = message.traits
    if message.HasField("limits"):
        traits = KeyValueTraits(
            durability=durability,
            consistency=consistency,
            max_item_bytes=wire.max_item_bytes,
            max_value_bytes=wire.max_value_bytes,
            max_ttl=_timedelta(wire.max_ttl) if wire.HasField("max_ttl") else None,
            max_key_bytes=wire.max_key_bytes or None,
            durability_note=wire.durability_note,
        )
        got = message.limits
        limits = Limits(
            max_key_bytes=ByteSize(got.max_key_bytes),
            max_value_bytes=ByteSize(got.max_value_bytes),
            max_items_per_call=got.max_items_per_call,
            page_size_bytes=ByteSize(got.page_size_bytes),
            max_page_size_bytes=ByteSize(got.max_page_size_bytes),
            max_page_items=got.max_page_items,
            tombstone_ttl=_timedelta(got.tombstone_ttl),
            max_token_skew=_timedelta(got.max_token_skew),
        )
    elif message.HasField("queue"):
        traits = QueueTraits(
            durability=durability,
            max_message_bytes=wire.max_message_bytes,
            durability_note=wire.durability_note,
        )
        settings = message.queue
        queue = QueueLimits(
            max_message_bytes=ByteSize(settings.max_message_bytes),
            max_batch=settings.max_batch,
            max_topic_name_bytes=settings.max_topic_name_bytes,
            visibility_timeout=_timedelta(settings.visibility_timeout),
            max_attempts=settings.max_attempts,
            max_wait=_timedelta(settings.max_wait),
            max_delay=_timedelta(settings.max_delay),
            dead_letter_suffix=settings.dead_letter_suffix,
        )
    elif message.HasField("timeseries"):
        traits = TimeSeriesTraits(
            durability=durability,
            max_event_bytes=wire.max_event_bytes,
            max_retention=_timedelta(wire.max_retention) if wire.HasField("max_retention") else None,
            durability_note=wire.durability_note,
        )
        series = message.timeseries
        timeseries = TimeSeriesSettings(
            retention=_timedelta(series.retention),
            max_future_skew=_timedelta(series.max_future_skew),
            bucket=_timedelta(series.bucket),
            max_payload_bytes=ByteSize(series.max_payload_bytes),
            max_tags=series.max_tags,
            max_tag_bytes=series.max_tag_bytes,
            max_series_name_bytes=series.max_series_name_bytes,
            max_event_id_bytes=series.max_event_id_bytes,
            max_events_per_call=series.max_events_per_call,
            max_page_events=series.max_page_events,
            page_size_bytes=ByteSize(series.page_size_bytes),
        )
    elif message.HasField("counter"):
        traits = CounterTraits(durability=durability, durability_note=wire.durability_note)
        counter = CounterSettings(
            mode=_COUNTER_MODE_NAMES.get(message.counter.mode, "best_effort"),
            token_window=_timedelta(message.counter.token_window),
            max_counter_name_bytes=message.counter.max_counter_name_bytes,
        )
    return ServedNamespace(
        name=message.name,
        abstraction=abstraction,
        backend=message.backend,
        plugin=message.plugin,
        reason=message.reason,
        capabilities=frozenset(message.capabilities),
        traits=traits,
        limits=limits,
        queue=queue,
        runtime=message.runtime,
        timeseries=timeseries,
        counter=counter,
    )


class AsyncRemotePrism:
    """Prism through a gateway, for async code; same shape as :class:`prism.AsyncPrism`."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        ca: PemSource | None = None,
        cert: PemSource | None = None,
        key: PemSource | None = None,
    ) -> None:
        self._conn = _Connection(target, token, timeout, retry or RetryPolicy(), ca=ca, cert=cert, key=key)
        self.target = target
        self._keyvalue: dict[str, AsyncRemoteKeyValue] = {}
        self._queue: dict[str, AsyncRemoteQueue] = {}
        self._timeseries: dict[str, AsyncRemoteTimeSeries] = {}
        self._counter: dict[str, AsyncRemoteCounter] = {}

    def __repr__(self) -> str:
        return f"<AsyncRemotePrism {self.target}>"

    def keyvalue(self, namespace: str) -> AsyncRemoteKeyValue:
        """The KeyValue namespace ``namespace``; errors come with its first call."""
        handle = self._keyvalue.get(namespace)
        if handle is None:
            handle = self._keyvalue[namespace] = AsyncRemoteKeyValue(namespace, self._conn)
        return handle

    def queue(self, namespace: str) -> AsyncRemoteQueue:
        """The Queue namespace ``namespace``; errors come with its first call."""
        handle = self._queue.get(namespace)
        if handle is None:
            handle = self._queue[namespace] = AsyncRemoteQueue(namespace, self._conn)
        return handle

    def timeseries(self, namespace: str) -> AsyncRemoteTimeSeries:
        """The TimeSeries namespace ``namespace``; errors come with its first call."""
        handle = self._timeseries.get(namespace)
        if handle is None:
            handle = self._timeseries[namespace] = AsyncRemoteTimeSeries(namespace, self._conn)
        return handle

    def counter(self, namespace: str) -> AsyncRemoteCounter:
        """The Counter namespace ``namespace``; errors come with its first call."""
        handle = self._counter.get(namespace)
        if handle is None:
            handle = self._counter[namespace] = AsyncRemoteCounter(namespace, self._conn)
        return handle

    async def plan(self, namespace: str) -> NamespacePlan:
        """Which backend serves ``namespace``, and why (AdminService.GetPlan)."""
        admin = self._conn.admin
        response = await self._conn.call(
            admin.GetPlan,
            admin_pb2.GetPlanRequest(name=namespace),
            name="GetPlan",
            namespace=namespace,
            retry=True,
        )
        abstraction = {number: name for name, number in _ABSTRACTION_NUMBERS.items()}.get(
            response.abstraction, "unspecified"
        )
        return NamespacePlan(response.name, abstraction, response.backend, response.plugin, response.reason)

    async def create_namespace(
        self,
        name: str,
        abstraction: str = "keyvalue",
        *,
        needs: Mapping[str, Any] | None = None,
        backend: str | None = None,
        limits: Mapping[str, Any] | None = None,
        queue: Mapping[str, Any] | None = None,
        timeseries: Mapping[str, Any] | None = None,
        counter: Mapping[str, Any] | None = None,
    ) -> ServedNamespace:
        """Declare ``name`` on the gateway (AdminService.CreateNamespace), as an
        entry under ``namespaces:`` in its prism.yaml would, e.g.
        ``create_namespace("carts", needs={"ttl": "1d"}, limits={"max_key_bytes": 64})`` or
        ``create_namespace("views", "counter", counter={"mode": "exact"})``.

        Declaring the same settings again succeeds, so call it at every start-up.
        The namespace lasts until the gateway restarts; its data stays on the
        backend, and declaring it again reattaches it. Retried on UNAVAILABLE:
        it is idempotent.

        :raises prism.InvalidArgument: settings prism.yaml would refuse, naming the field.
        :raises prism.PlanError: no (allowed) backend meets the needs.
        :raises PermissionDenied: the policy (gateway.create_namespaces) does not
            allow it, or the token lacks the admin grant on ``name``.
        :raises RemoteError: ``code`` ALREADY_EXISTS (declared with other
            settings) or RESOURCE_EXHAUSTED (the policy's max_namespaces).
        """
        request = declaration_request(
            name,
            abstraction,
            needs=needs,
            backend=backend,
            limits=limits,
            queue=queue,
            timeseries=timeseries,
            counter=counter,
        )
        admin = self._conn.admin
        response = await self._conn.call(
            admin.CreateNamespace, request, name="CreateNamespace", namespace=name, retry=True
        )
        return served_namespace(response)

    async def namespace(self, name: str) -> ServedNamespace:
        """How ``name`` is served (AdminService.GetPlan), with its limits and traits."""
        admin = self._conn.admin
        response = await self._conn.call(
            admin.GetPlan, admin_pb2.GetPlanRequest(name=name), name="GetPlan", namespace=name, retry=True
        )
        return served_namespace(response)

    async def close(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> AsyncRemotePrism:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def connect_async(
    target: str,
    *,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retry: RetryPolicy | None = None,
    ca: PemSource | None = None,
    cert: PemSource | None = None,
    key: PemSource | None = None,
) -> AsyncRemotePrism:
    """Connect to a gateway for async code.

    :param target: ``grpc://HOST:PORT`` of a ``prism serve``, or ``grpcs://HOST:PORT``
        for one serving TLS.
    :param token: sent as ``authorization: Bearer TOKEN`` on every call
        (surrounding whitespace, such as a file's trailing newline, is dropped).
    :param timeout: seconds each call may take (a consume gets its ``wait`` on top).
    :param retry: how safe calls are retried on UNAVAILABLE (see the module docstring).
    :param ca: ``grpcs`` only: the CA bundle (PEM path or bytes) that signed the
        gateway's certificate; default: the system's trusted roots.
    :param cert: ``grpcs`` only: a client certificate (PEM path or bytes), for a
        gateway that requires one (mutual TLS); needs ``key``.
    :param key: the client certificate's private key (PEM path or bytes).
    :raises ValueError: ``target`` is not a ``grpc://`` or ``grpcs://`` address,
        TLS settings with ``grpc://``, ``cert`` without ``key``, or a malformed token.
    :raises TlsError: a PEM file cannot be read.
    """
    return AsyncRemotePrism(target, token=token, timeout=timeout, retry=retry, ca=ca, cert=cert, key=key)


# -- sync handles ---------------------------------------------------------------------------------


class RemoteKeyValue(KeyValueCalls[AsyncRemoteKeyValue]):
    """One KeyValue namespace through the gateway, synchronous; same methods as :class:`prism.KeyValue`."""

    def __init__(self, inner: AsyncRemoteKeyValue, portal: _LoopThread) -> None:
        self._inner = inner
        self._portal = portal

    @property
    def name(self) -> str:
        return self._inner.name

    def __repr__(self) -> str:
        return f"<RemoteKeyValue {self.name!r} via {self._inner._conn.target}>"


class RemoteConsumer(Consumer[AsyncRemoteConsumer]):
    """A consumer through the gateway, synchronous; see :class:`AsyncRemoteConsumer`."""


class RemoteSubscription:
    """A Subscribe stream, synchronous: ``for delivery in subscription``; see
    :class:`AsyncRemoteSubscription`."""

    def __init__(self, inner: AsyncRemoteSubscription, portal: _LoopThread) -> None:
        self._inner = inner
        self._portal = portal

    @property
    def id(self) -> str:
        return self._inner.id

    def __iter__(self) -> Iterator[Delivery]:
        return self

    def __next__(self) -> Delivery:
        try:
            return self._portal.run(self._inner.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def ack(self, ids: Iterable[DeliveryRef]) -> None:
        return self._portal.run(self._inner.ack(ids))

    def nack(self, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None:
        return self._portal.run(self._inner.nack(ids, requeue=requeue))

    def close(self) -> None:
        return self._portal.run(self._inner.close())

    def __enter__(self) -> RemoteSubscription:
        self._portal.run(self._inner.open())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RemoteQueue:
    """One Queue namespace through the gateway, synchronous; same methods as :class:`prism.Queue`."""

    def __init__(self, inner: AsyncRemoteQueue, portal: _LoopThread) -> None:
        self._inner = inner
        self._portal = portal

    @property
    def name(self) -> str:
        return self._inner.name

    def __repr__(self) -> str:
        return f"<RemoteQueue {self.name!r} via {self._inner._conn.target}>"

    def publish(self, topic: str, messages: Sequence[Message] | Message) -> list[str]:
        return self._portal.run(self._inner.publish(topic, messages))

    def consume(
        self, topic: str, group: str, max_messages: int = 10, wait: timedelta | float = 0
    ) -> list[Delivery]:
        return self._portal.run(self._inner.consume(topic, group, max_messages, wait))

    def ack(self, topic: str, group: str, ids: Iterable[DeliveryRef]) -> None:
        return self._portal.run(self._inner.ack(topic, group, ids))

    def nack(self, topic: str, group: str, ids: Iterable[DeliveryRef], *, requeue: bool = True) -> None:
        return self._portal.run(self._inner.nack(topic, group, ids, requeue=requeue))

    def consumer(self, topic: str, group: str) -> RemoteConsumer:
        return RemoteConsumer(self._inner.consumer(topic, group), self._portal)

    def subscribe(self, topic: str, group: str, *, max_in_flight: int = 10) -> RemoteSubscription:
        return RemoteSubscription(
            self._inner.subscribe(topic, group, max_in_flight=max_in_flight), self._portal
        )


class RemoteTimeSeries:
    """One TimeSeries namespace through the gateway, synchronous; same methods as :class:`prism.TimeSeries`."""

    def __init__(self, inner: AsyncRemoteTimeSeries, portal: _LoopThread) -> None:
        self._inner = inner
        self._portal = portal

    @property
    def name(self) -> str:
        return self._inner.name

    def __repr__(self) -> str:
        return f"<RemoteTimeSeries {self.name!r} via {self._inner._conn.target}>"

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


class RemoteCounter:
    """One Counter namespace through the gateway, synchronous; same methods as :class:`prism.Counter`."""

    def __init__(self, inner: AsyncRemoteCounter, portal: _LoopThread) -> None:
        self._inner = inner
        self._portal = portal

    @property
    def name(self) -> str:
        return self._inner.name

    def __repr__(self) -> str:
        return f"<RemoteCounter {self.name!r} via {self._inner._conn.target}>"

    def add(self, counter: str, delta: int = 1, *, token: IdempotencyToken | None = None) -> int | None:
        return self._portal.run(self._inner.add(counter, delta, token=token))

    def get(self, counter: str) -> int:
        return self._portal.run(self._inner.get(counter))

    def clear(self, counter: str, *, token: IdempotencyToken | None = None) -> None:
        return self._portal.run(self._inner.clear(counter, token=token))


class RemotePrism:
    """Prism through a gateway, synchronous; same shape as :class:`prism.Prism`.
    Close it (or use ``with``) when done."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        ca: PemSource | None = None,
        cert: PemSource | None = None,
        key: PemSource | None = None,
    ) -> None:
        self._async = AsyncRemotePrism(
            target, token=token, timeout=timeout, retry=retry, ca=ca, cert=cert, key=key
        )
        self._portal = _LoopThread()
        self._keyvalue: dict[str, RemoteKeyValue] = {}
        self._queue: dict[str, RemoteQueue] = {}
        self._timeseries: dict[str, RemoteTimeSeries] = {}
        self._counter: dict[str, RemoteCounter] = {}
        self._closed = False

    @property
    def target(self) -> str:
        return self._async.target

    def __repr__(self) -> str:
        return f"<RemotePrism {self.target}>"

    def keyvalue(self, namespace: str) -> RemoteKeyValue:
        handle = self._keyvalue.get(namespace)
        if handle is None:
            handle = self._keyvalue[namespace] = RemoteKeyValue(self._async.keyvalue(namespace), self._portal)
        return handle

    def queue(self, namespace: str) -> RemoteQueue:
        handle = self._queue.get(namespace)
        if handle is None:
            handle = self._queue[namespace] = RemoteQueue(self._async.queue(namespace), self._portal)
        return handle

    def timeseries(self, namespace: str) -> RemoteTimeSeries:
        handle = self._timeseries.get(namespace)
        if handle is None:
            handle = RemoteTimeSeries(self._async.timeseries(namespace), self._portal)
            self._timeseries[namespace] = handle
        return handle

    def counter(self, namespace: str) -> RemoteCounter:
        handle = self._counter.get(namespace)
        if handle is None:
            handle = self._counter[namespace] = RemoteCounter(self._async.counter(namespace), self._portal)
        return handle

    def plan(self, namespace: str) -> NamespacePlan:
        return self._portal.run(self._async.plan(namespace))

    def create_namespace(
        self,
        name: str,
        abstraction: str = "keyvalue",
        *,
        needs: Mapping[str, Any] | None = None,
        backend: str | None = None,
        limits: Mapping[str, Any] | None = None,
        queue: Mapping[str, Any] | None = None,
        timeseries: Mapping[str, Any] | None = None,
        counter: Mapping[str, Any] | None = None,
    ) -> ServedNamespace:
        """Declare a namespace on the gateway; see :meth:`AsyncRemotePrism.create_namespace`."""
        return self._portal.run(
            self._async.create_namespace(
                name,
                abstraction,
                needs=needs,
                backend=backend,
                limits=limits,
                queue=queue,
                timeseries=timeseries,
                counter=counter,
            )
        )

    def namespace(self, name: str) -> ServedNamespace:
        """How ``name`` is served; see :meth:`AsyncRemotePrism.namespace`."""
        return self._portal.run(self._async.namespace(name))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.run(self._async.close())
        finally:
            self._portal.stop()

    def __enter__(self) -> RemotePrism:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def connect(
    target: str,
    *,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retry: RetryPolicy | None = None,
    ca: PemSource | None = None,
    cert: PemSource | None = None,
    key: PemSource | None = None,
) -> RemotePrism:
    """Connect to a gateway for synchronous code; see :func:`connect_async`."""
    return RemotePrism(target, token=token, timeout=timeout, retry=retry, ca=ca, cert=cert, key=key)
