"""The prism.v1 servicers: thin adapters from gRPC onto an ``AsyncPrism``.

Every semantic rule (validation, limits, idempotency, paging, dead letters)
lives in the core, so a request behaves exactly as the same call made
embedded. What the gateway adds is only what a network call needs:

* each call runs under the client's deadline (``asyncio.timeout`` of
  ``context.time_remaining()``), so work for a caller who gave up stops;
* each exception becomes a deliberate status (see :mod:`prism.gateway.status`);
* each call gets a request id (the caller's ``x-request-id``, else a new one),
  written in its access log line and sent back in error details;
* each call is authenticated and authorized (:mod:`prism.gateway.auth`) in
  :meth:`Calls.run`, the one place that knows both the method and the
  request's namespace, before its operation touches any data;
* then it is admitted or shed by its namespace's concurrency limit, and passed
  or failed fast by its backend's circuit breaker
  (:mod:`prism.gateway.protection`);
* and it is counted in the Prometheus metrics (:mod:`prism.gateway.metrics`)
  and written to the ``prism.access`` log.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, NoReturn, TypeVar, cast

import attrs
import grpc
from google.protobuf import duration_pb2
from google.rpc import status_pb2  # type: ignore[import-untyped]

from prism.client import AsyncPrism
from prism.config import (
    Abstraction,
    BreakerConfig,
    CreateNamespacesConfig,
    GatewayLimits,
    NamespaceConfig,
)
from prism.errors import BreakerOpen, InvalidArgument, Overloaded, PlanError
from prism.gateway import convert
from prism.gateway.auth import REQUIRED_ROLE, Authenticator, Principal, Refusal, denial_message
from prism.gateway.metrics import UNKNOWN_NAMESPACE, GatewayMetrics
from prism.gateway.protection import Breakers, ConcurrencyLimiter, Outcome
from prism.gateway.status import (
    code_for,
    deadline_status,
    denied_status,
    plain_status,
    status_for,
    to_grpc_status,
)
from prism.gateway.subscriptions import DEFAULT_MAX_IN_FLIGHT, Stopped, Subscription, Subscriptions
from prism.log import Logger, get_logger
from prism.planner import (
    NamespacePlan,
    effective_max_message_bytes,
    effective_max_payload_bytes,
    effective_max_value_bytes,
    plan_namespace,
)
from prism.runtime import NamespaceConflict, differences, namespace_from_mapping
from prism.spi import CounterTraits, KeyValueTraits, QueueTraits, TimeSeriesTraits
from prism.v1 import admin_pb2, admin_pb2_grpc, keyvalue_pb2, keyvalue_pb2_grpc, queue_pb2, queue_pb2_grpc

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

log = get_logger(__name__)
#: One line per call, at info: method, namespace, backend, status code,
#: duration, token name, peer and request id. Its own logger, so an operator
#: can route or silence it apart from the gateway's other events.
access_log: Logger = get_logger("prism.access")

#: The namespace calls that concern the whole gateway (ListNamespaces) run under.
ADMIN_SCOPE = "*"

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: What ConsumeRequest.max_messages = 0 means, as the proto documents.
DEFAULT_MAX_MESSAGES = 10
#: How much of the caller's deadline a Consume leaves for the answer to travel
#: back: a long wait ends a little early with what it has instead of failing.
_CONSUME_MARGIN_S = 0.25


#: A cancel this close to the caller's deadline (or after it) is the deadline
#: expiring, not the caller leaving: grpc's timer and ours may differ slightly.
_DEADLINE_SLACK_S = 0.005


def request_id_of(context: Context) -> str:
    """The caller's ``x-request-id`` when it is a sane token, else a new id."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return os.urandom(8).hex()


class Calls:
    """Runs one call: request id, access check, load shedding, the backend's
    circuit breaker, deadline, metrics, the access log line, and the error
    mapping. ``authenticator`` None: auth is off."""

    def __init__(
        self,
        db: AsyncPrism,
        authenticator: Authenticator | None = None,
        *,
        limits: GatewayLimits | None = None,
        breaker: BreakerConfig | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._db = db
        self.authenticator = authenticator or Authenticator(None)
        self.limiter = ConcurrencyLimiter(limits or db.config.gateway.limits)
        self.metrics = metrics or GatewayMetrics()
        self.breakers = Breakers(breaker or db.config.gateway.breaker, on_change=self.metrics.breaker_changed)
        # namespace -> the backend it is planned onto. Plans never change while
        # a gateway runs; a namespace that does not plan is not remembered, so
        # one created later still resolves.
        self._backend_of: dict[str, str] = {}

    def backend_of(self, namespace: str) -> str | None:
        """The configured backend serving ``namespace``; None if it has no plan."""
        backend = self._backend_of.get(namespace)
        if backend is None:
            try:
                backend = self._backend_of[namespace] = self._db.plan(namespace).backend
            except Exception:
                return None  # the operation itself reports why
        return backend

    async def authenticate(self, context: Context, method: str, request_id: str) -> Principal:
        """The caller, or the call ends with UNAUTHENTICATED."""
        try:
            return self.authenticator.authenticate(context.invocation_metadata())
        except Refusal as exc:
            access_log.info(
                "rpc",
                method=method,
                code="UNAUTHENTICATED",
                reason=exc.reason,
                peer=context.peer(),
                request_id=request_id,
            )
            status = plain_status(grpc.StatusCode.UNAUTHENTICATED, str(exc), request_id)
            await context.abort_with_status(to_grpc_status(status))
            raise AssertionError("abort_with_status returned") from None  # pragma: no cover

    async def authorize(
        self, context: Context, principal: Principal, method: str, namespace: str, request_id: str
    ) -> None:
        """Return when ``principal`` may call ``method`` on ``namespace``; else the
        call ends with PERMISSION_DENIED naming the namespace and the role."""
        if principal.may(method, namespace):
            return
        role = REQUIRED_ROLE[method]
        access_log.info(
            "rpc",
            method=method,
            namespace=namespace,
            code="PERMISSION_DENIED",
            token=principal.name,
            role=role or "any",
            peer=context.peer(),
            request_id=request_id,
        )
        status = denied_status(denial_message(principal, method, namespace), request_id, namespace, role)
        await context.abort_with_status(to_grpc_status(status))
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    async def run(
        self,
        context: Context,
        method: str,
        namespace: str,
        operation: Callable[[], Awaitable[T]],
        *,
        request_id: str | None = None,
        principal: Principal | None = None,
    ) -> T:
        """Run ``operation`` for ``method`` on ``namespace``. ``principal``: the
        caller, when the servicer already authenticated it."""
        request_id = request_id or request_id_of(context)
        if principal is None:
            # Before anything else: a caller without a valid token learns
            # nothing, not even that its request was malformed.
            principal = await self.authenticate(context, method, request_id)
        if not namespace:
            status = plain_status(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method}: namespace is required; name the namespace to use",
                request_id,
                field="namespace",
            )
            await context.abort_with_status(to_grpc_status(status))
        if method in REQUIRED_ROLE:
            await self.authorize(context, principal, method, namespace, request_id)
        backend = self.backend_of(namespace) if namespace != ADMIN_SCOPE else None
        call = _Call(self, context, method, namespace, backend, request_id, principal.name)
        log.debug("rpc started", method=method, namespace=namespace, request_id=request_id)
        # The breaker first: while it is open a call fails fast and takes no slot.
        breaker = self.breakers(backend) if backend is not None else None
        probe = False
        if breaker is not None:
            try:
                probe = breaker.admit(namespace)
            except BreakerOpen as exc:
                self.metrics.breaker_rejected.labels(call.label, backend).inc()
                await call.finish(exc)
        try:
            self.limiter.acquire(namespace)
        except Overloaded as exc:
            if breaker is not None:
                breaker.record(Outcome.NEUTRAL, probe=probe)  # a shed probe tells nothing
            self.metrics.shed.labels(call.label, method).inc()
            await call.finish(exc)
        outcome = Outcome.SUCCESS
        cause = ""
        failure: BaseException | status_pb2.Status | None = None
        remaining = context.time_remaining()
        in_flight = self.metrics.series(call.label, method, call.backend_label).in_flight
        in_flight.inc()
        scope: asyncio.Timeout | None = None
        try:
            if remaining is None:
                # No deadline: no timeout scope to enter and leave on every call.
                result = await operation()
            else:
                async with asyncio.timeout(remaining) as scope:
                    result = await operation()
        except TimeoutError as exc:
            outcome, cause = Outcome.FAILURE, "a timeout"
            # The caller's deadline passing, or the driver's own timeout.
            expired = scope is not None and scope.expired()
            failure = deadline_status(method, namespace, remaining or 0.0, request_id) if expired else exc
        except asyncio.CancelledError:
            # grpc cancels the handler when the caller goes away, and also when
            # the caller's deadline passes, racing the timeout scope above. A
            # cancel at the deadline is the deadline expiring: log and count it
            # as one, whichever timer won.
            if remaining is not None and context.time_remaining() <= _DEADLINE_SLACK_S:
                outcome, cause = Outcome.FAILURE, "a timeout"
                call.record("DEADLINE_EXCEEDED")
            else:
                outcome = Outcome.NEUTRAL
                call.record("CANCELLED")  # the caller went away
            raise
        except Exception as exc:
            unavailable = code_for(exc) is grpc.StatusCode.UNAVAILABLE
            outcome, cause = (Outcome.FAILURE, type(exc).__name__) if unavailable else (Outcome.NEUTRAL, "")
            failure = exc
        finally:
            in_flight.dec()
            self.limiter.release(namespace)
            if breaker is not None:
                breaker.record(outcome, probe=probe, cause=cause)
        # Only now answer: the caller's next call sees the slot free and the
        # breaker (and metrics) up to date with this call.
        if failure is not None:
            await call.finish(failure)
        call.record("OK")
        return result

    async def fail(
        self, context: Context, method: str, namespace: str, request_id: str, exc: Exception
    ) -> NoReturn:
        """End the call with the status :func:`status_for` gives ``exc`` (for a
        failure after :meth:`run` returned, as in a Subscribe stream)."""
        call = _Call(self, context, method, namespace, self.backend_of(namespace), request_id, None)
        await call.finish(exc)


class _Call:
    """One call's labels and timing, and how it ends."""

    __slots__ = (
        "backend",
        "backend_label",
        "calls",
        "context",
        "label",
        "method",
        "namespace",
        "request_id",
        "started",
        "token",
    )

    def __init__(
        self,
        calls: Calls,
        context: Context,
        method: str,
        namespace: str,
        backend: str | None,
        request_id: str,
        token: str | None,
    ) -> None:
        self.calls = calls
        self.context = context
        self.method = method
        self.namespace = namespace
        self.backend = backend
        # Series are labelled by namespaces that exist only: a caller must not
        # grow the number of series by inventing names.
        self.label = namespace if backend is not None or namespace == ADMIN_SCOPE else UNKNOWN_NAMESPACE
        self.backend_label = backend or ""
        self.request_id = request_id
        self.token = token
        self.started = time.monotonic()

    def record(self, code: str) -> float:
        """Count the call and write its access log line; its duration in seconds."""
        elapsed = time.monotonic() - self.started
        self.calls.metrics.series(self.label, self.method, self.backend_label).finished(code, elapsed)
        if not access_log.enabled("info"):
            return elapsed  # skip building a line nobody will see
        access_log.info(
            "rpc",
            method=self.method,
            namespace=self.namespace,
            backend=self.backend,
            code=code,
            duration_ms=round(elapsed * 1000, 3),
            token=self.token,
            peer=self.context.peer(),
            request_id=self.request_id,
        )
        return elapsed

    async def finish(self, failure: BaseException | status_pb2.Status) -> NoReturn:
        """End the call with ``failure``: an exception (mapped by
        :func:`status_for`) or a status made for it."""
        if isinstance(failure, BaseException):
            code = code_for(failure)
            if code is grpc.StatusCode.INTERNAL:
                log.error(
                    "rpc failed unexpectedly",
                    method=self.method,
                    namespace=self.namespace,
                    request_id=self.request_id,
                    exc_info=failure,
                )
            status = status_for(failure, self.request_id)
        else:
            code = _CODES.get(failure.code, grpc.StatusCode.UNKNOWN)
            status = failure
        self.record(code.name)
        await self.context.abort_with_status(to_grpc_status(status))
        raise AssertionError("abort_with_status returned")  # pragma: no cover


#: Status numbers to codes, to name a status made by hand in metrics and logs.
_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def _positive_or_none(value: int) -> int | None:
    """proto3 cannot tell 0 from unset; 0 means "the namespace's default"."""
    return value or None


class KeyValueService(keyvalue_pb2_grpc.KeyValueServiceServicer):
    def __init__(self, db: AsyncPrism, calls: Calls) -> None:
        self._db = db
        self._calls = calls

    async def PutItems(
        self, request: keyvalue_pb2.PutItemsRequest, context: Context
    ) -> keyvalue_pb2.PutItemsResponse:
        async def operation() -> keyvalue_pb2.PutItemsResponse:
            kv = self._db.keyvalue(request.namespace)
            items = [convert.item_from_proto(item) for item in request.items]
            await kv.put_items(request.id, items, token=convert.token_from_proto(request))
            return keyvalue_pb2.PutItemsResponse()

        return await self._calls.run(context, "PutItems", request.namespace, operation)

    async def GetItems(
        self, request: keyvalue_pb2.GetItemsRequest, context: Context
    ) -> keyvalue_pb2.GetItemsResponse:
        async def operation() -> keyvalue_pb2.GetItemsResponse:
            kv = self._db.keyvalue(request.namespace)
            page = await kv.get_items(
                request.id,
                convert.predicate_from_proto(request),
                limit=_positive_or_none(request.limit),
                page_size_bytes=_positive_or_none(request.page_size_bytes),
                page_token=request.page_token or None,
            )
            return keyvalue_pb2.GetItemsResponse(
                items=[convert.item_to_proto(item) for item in page.items],
                next_page_token=page.next_page_token or "",
            )

        return await self._calls.run(context, "GetItems", request.namespace, operation)

    async def DeleteItems(
        self, request: keyvalue_pb2.DeleteItemsRequest, context: Context
    ) -> keyvalue_pb2.DeleteItemsResponse:
        async def operation() -> keyvalue_pb2.DeleteItemsResponse:
            kv = self._db.keyvalue(request.namespace)
            await kv.delete_items(
                request.id, convert.predicate_from_proto(request), token=convert.token_from_proto(request)
            )
            return keyvalue_pb2.DeleteItemsResponse()

        return await self._calls.run(context, "DeleteItems", request.namespace, operation)

    async def MutateItems(
        self, request: keyvalue_pb2.MutateItemsRequest, context: Context
    ) -> keyvalue_pb2.MutateItemsResponse:
        async def operation() -> keyvalue_pb2.MutateItemsResponse:
            kv = self._db.keyvalue(request.namespace)
            mutations = convert.mutations_from_proto(request)
            await kv.mutate_items(request.id, mutations, token=convert.token_from_proto(request))
            return keyvalue_pb2.MutateItemsResponse()

        return await self._calls.run(context, "MutateItems", request.namespace, operation)

    async def Scan(self, request: keyvalue_pb2.ScanRequest, context: Context) -> keyvalue_pb2.ScanResponse:
        async def operation() -> keyvalue_pb2.ScanResponse:
            kv = self._db.keyvalue(request.namespace)
            page = await kv.scan(
                limit=_positive_or_none(request.limit), page_token=request.page_token or None
            )
            return keyvalue_pb2.ScanResponse(
                record_ids=list(page.record_ids), next_page_token=page.next_page_token or ""
            )

        return await self._calls.run(context, "Scan", request.namespace, operation)


class QueueService(queue_pb2_grpc.QueueServiceServicer):
    def __init__(self, db: AsyncPrism, calls: Calls, subscriptions: Subscriptions) -> None:
        self._db = db
        self._calls = calls
        self._subscriptions = subscriptions

    async def Publish(self, request: queue_pb2.PublishRequest, context: Context) -> queue_pb2.PublishResponse:
        async def operation() -> queue_pb2.PublishResponse:
            queue = self._db.queue(request.namespace)
            ids = await queue.publish(request.topic, convert.messages_from_proto(request))
            return queue_pb2.PublishResponse(ids=ids)

        return await self._calls.run(context, "Publish", request.namespace, operation)

    async def Consume(self, request: queue_pb2.ConsumeRequest, context: Context) -> queue_pb2.ConsumeResponse:
        async def operation() -> queue_pb2.ConsumeResponse:
            queue = self._db.queue(request.namespace)
            wait = convert.duration_to_timedelta(request.wait) if request.HasField("wait") else timedelta(0)
            remaining = context.time_remaining()
            if remaining is not None and wait.total_seconds() > 0:
                # Answer (possibly empty) before the caller's deadline rather
                # than fail with DEADLINE_EXCEEDED and strand leases.
                cap = timedelta(seconds=max(0.0, remaining - _CONSUME_MARGIN_S))
                wait = min(wait, cap)
            deliveries = await queue.consume(
                request.topic, request.group, request.max_messages or DEFAULT_MAX_MESSAGES, wait
            )
            return queue_pb2.ConsumeResponse(deliveries=[convert.delivery_to_proto(d) for d in deliveries])

        return await self._calls.run(context, "Consume", request.namespace, operation)

    async def Subscribe(
        self, request: queue_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[queue_pb2.SubscribeResponse]:
        async def open_subscription() -> Subscription:
            queue = self._db.queue(request.namespace)
            if queue.limits.max_wait <= timedelta(0):
                # A stream waits for messages with the backend's blocking receive;
                # without any wait it could only spin.
                raise InvalidArgument(
                    "Subscribe needs a blocking wait, but queue.max_wait is 0 in this namespace; "
                    "raise queue.max_wait in prism.yaml, or use Consume",
                    namespace=request.namespace,
                    field="namespace",
                )
            consumer = queue.consumer(request.topic, request.group)
            return Subscription(
                request.namespace, queue, consumer, request.max_in_flight or DEFAULT_MAX_IN_FLIGHT
            )

        request_id = request_id_of(context)
        subscription = await self._calls.run(
            context, "Subscribe", request.namespace, open_subscription, request_id=request_id
        )
        self._subscriptions.add(subscription)
        log.debug(
            "subscription opened",
            request_id=request_id,
            namespace=request.namespace,
            topic=request.topic,
            group=request.group,
            subscription_id=subscription.id,
        )
        try:
            yield queue_pb2.SubscribeResponse(subscription_id=subscription.id)
            async for batch in self._subscriptions.deliveries(subscription):
                for delivery in batch:
                    yield queue_pb2.SubscribeResponse(delivery=convert.delivery_to_proto(delivery))
        except Stopped:
            # Give back first, so a client that sees the status can count on it.
            await self._give_back(subscription, request_id)
            status = plain_status(
                grpc.StatusCode.UNAVAILABLE,
                f"namespace {request.namespace!r}: the gateway is shutting down; the deliveries this stream "
                "held and did not ack are delivered again at once. Subscribe again",
                request_id,
            )
            await context.abort_with_status(to_grpc_status(status))
        except Exception as exc:
            await self._calls.fail(context, "Subscribe", request.namespace, request_id, exc)
        finally:
            # The stream usually ends by cancellation (the client went away), and
            # the leases must come back even so: the close is shielded.
            await self._give_back(subscription, request_id)
            log.debug("subscription closed", namespace=request.namespace, subscription_id=subscription.id)

    async def _give_back(self, subscription: Subscription, request_id: str) -> None:
        try:
            await self._subscriptions.close(subscription)
        except Exception as exc:
            # The stream's own status is already decided; what it held comes
            # back after the visibility timeout instead of at once.
            log.warning(
                "subscription could not give back its deliveries; they come back after the "
                "visibility timeout",
                request_id=request_id,
                namespace=subscription.namespace,
                subscription_id=subscription.id,
                error=f"{type(exc).__name__}: {exc}",
            )

    def _subscription_for(
        self, namespace: str, topic: str, group: str, subscription_id: str
    ) -> Subscription | None:
        """The open stream an Ack or Nack names, if it is still open. An id of a
        stream that ended is fine: the ack still counts for the group."""
        if not subscription_id:
            return None
        subscription = self._subscriptions.get(subscription_id)
        if subscription is not None and not subscription.matches(namespace, topic, group):
            raise InvalidArgument(
                f"subscription {subscription_id!r} reads topic {subscription.topic!r} for group "
                f"{subscription.group!r} in namespace {subscription.namespace!r}, not topic {topic!r} for "
                f"group {group!r}; ack with the topic and group of the stream",
                namespace=namespace,
                field="subscription_id",
            )
        return subscription

    async def Ack(self, request: queue_pb2.AckRequest, context: Context) -> queue_pb2.AckResponse:
        async def operation() -> queue_pb2.AckResponse:
            queue = self._db.queue(request.namespace)
            subscription = self._subscription_for(
                request.namespace, request.topic, request.group, request.subscription_id
            )
            ids = list(request.ids)
            await queue.ack(request.topic, request.group, ids)
            if subscription is not None:
                subscription.settle(ids)
            return queue_pb2.AckResponse()

        return await self._calls.run(context, "Ack", request.namespace, operation)

    async def Nack(self, request: queue_pb2.NackRequest, context: Context) -> queue_pb2.NackResponse:
        async def operation() -> queue_pb2.NackResponse:
            queue = self._db.queue(request.namespace)
            subscription = self._subscription_for(
                request.namespace, request.topic, request.group, request.subscription_id
            )
            ids = list(request.ids)
            await queue.nack(request.topic, request.group, ids, requeue=not request.dead_letter)
            if subscription is not None:
                subscription.settle(ids)
            return queue_pb2.NackResponse()

        return await self._calls.run(context, "Nack", request.namespace, operation)


_ABSTRACTIONS = {
    "keyvalue": admin_pb2.ABSTRACTION_KEYVALUE,
    "queue": admin_pb2.ABSTRACTION_QUEUE,
    "timeseries": admin_pb2.ABSTRACTION_TIMESERIES,
    "counter": admin_pb2.ABSTRACTION_COUNTER,
}
_COUNTER_MODES = {
    "best_effort": admin_pb2.COUNTER_MODE_BEST_EFFORT,
    "exact": admin_pb2.COUNTER_MODE_EXACT,
}
_COUNTER_MODE_NAMES = {number: name for name, number in _COUNTER_MODES.items()}
_ABSTRACTION_NAMES = {number: name for name, number in _ABSTRACTIONS.items()}
_DURABILITY = {"ephemeral": admin_pb2.DURABILITY_EPHEMERAL, "durable": admin_pb2.DURABILITY_DURABLE}
_CONSISTENCY = {
    "eventual": admin_pb2.CONSISTENCY_EVENTUAL,
    "read_your_writes": admin_pb2.CONSISTENCY_READ_YOUR_WRITES,
    "strong": admin_pb2.CONSISTENCY_STRONG,
}
_DURABILITY_NAMES = {number: name for name, number in _DURABILITY.items()}
_CONSISTENCY_NAMES = {number: name for name, number in _CONSISTENCY.items()}
#: The config key an operator sets to allow CreateNamespace.
POLICY_KEY = "gateway.create_namespaces"


def _settings_from_proto(
    message: admin_pb2.KeyValueLimits
    | admin_pb2.QueueSettings
    | admin_pb2.TimeSeriesSettings
    | admin_pb2.CounterSettings,
) -> dict[str, Any]:
    """The fields a client set, as a ``limits:`` or ``queue:`` block of
    prism.yaml: 0, "" and unset durations mean the default and are left out
    (``ListFields`` lists only those that are set)."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if isinstance(value, duration_pb2.Duration):
            out[field.name] = convert.duration_to_timedelta(value)
        else:
            out[field.name] = value
    return out


def declaration_from_proto(request: admin_pb2.CreateNamespaceRequest) -> dict[str, Any]:
    """The request as an entry under ``namespaces:`` in prism.yaml, so it is
    checked by the same code, with the same messages, as the file is."""
    abstraction = _ABSTRACTION_NAMES.get(request.abstraction)
    if abstraction is None:
        raise InvalidArgument(
            "abstraction is required: set ABSTRACTION_KEYVALUE, ABSTRACTION_QUEUE, ABSTRACTION_TIMESERIES "
            "or ABSTRACTION_COUNTER",
            namespace=request.name,
            field="abstraction",
        )
    body: dict[str, Any] = {"abstraction": abstraction}
    needs: dict[str, Any] = {}
    wire = request.needs
    if wire.durability:
        needs["durability"] = _DURABILITY_NAMES.get(wire.durability, str(wire.durability))
    if wire.consistency:
        needs["consistency"] = _CONSISTENCY_NAMES.get(wire.consistency, str(wire.consistency))
    if wire.HasField("ttl"):
        needs["ttl"] = convert.duration_to_timedelta(wire.ttl)
    for name in ("max_value_bytes", "read_rps", "write_rps"):
        if getattr(wire, name):
            needs[name] = getattr(wire, name)
    if wire.capabilities:
        needs["capabilities"] = list(wire.capabilities)
    if needs:
        body["needs"] = needs
    if request.backend:
        body["backend"] = request.backend
    if request.HasField("limits") and (limits := _settings_from_proto(request.limits)):
        body["limits"] = limits
    if request.HasField("queue") and (queue := _settings_from_proto(request.queue)):
        body["queue"] = queue
    if request.HasField("timeseries") and (timeseries := _settings_from_proto(request.timeseries)):
        body["timeseries"] = timeseries
    if request.HasField("counter") and (counter := _settings_from_proto(request.counter)):
        if "mode" in counter:
            mode = _COUNTER_MODE_NAMES.get(counter["mode"])
            if mode is None:
                raise InvalidArgument(
                    f"counter.mode {counter['mode']} is not a CounterMode; set COUNTER_MODE_BEST_EFFORT or "
                    "COUNTER_MODE_EXACT",
                    namespace=request.name,
                    field="counter.mode",
                )
            counter["mode"] = mode
        body["counter"] = counter
    return body


def _duration(value: timedelta) -> duration_pb2.Duration:
    return convert.timedelta_to_duration(value)


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    """Namespaces and their plans, and run-time namespaces where the operator's
    policy (``gateway.create_namespaces``) allows them."""

    def __init__(self, db: AsyncPrism, calls: Calls) -> None:
        self._db = db
        self._calls = calls

    def _declared(self, name: str) -> NamespaceConfig | None:
        return self._db.namespaces().get(name)

    def _needs(self, name: str) -> admin_pb2.Needs:
        declared = self._declared(name)
        if declared is None:
            return admin_pb2.Needs()
        needs = declared.needs
        out = admin_pb2.Needs(
            durability=_DURABILITY.get(needs.durability or "", admin_pb2.DURABILITY_UNSPECIFIED),
            consistency=_CONSISTENCY.get(needs.consistency or "", admin_pb2.CONSISTENCY_UNSPECIFIED),
            max_value_bytes=int(needs.max_value_bytes or 0),
            read_rps=needs.read_rps or 0,
            write_rps=needs.write_rps or 0,
            capabilities=list(needs.capabilities),
        )
        if needs.ttl is not None:
            out.ttl.CopyFrom(convert.timedelta_to_duration(needs.ttl))
        return out

    def _namespace(self, plan: NamespacePlan) -> admin_pb2.Namespace:
        """What a client needs to know about a namespace as it is served: the
        plan, the backend's capabilities and traits, and the limits in force
        (the effective ones, as the embedded handle computes them)."""
        backend_type = self._db.plugins.registry.by_abstraction().get(plan.abstraction, {}).get(plan.plugin)
        capabilities = sorted(backend_type.capabilities) if backend_type is not None else []
        declared = self._declared(plan.namespace)
        out = admin_pb2.Namespace(
            name=plan.namespace,
            abstraction=_ABSTRACTIONS.get(plan.abstraction, admin_pb2.ABSTRACTION_UNSPECIFIED),
            needs=self._needs(plan.namespace),
            backend=plan.backend,
            plugin=plan.plugin,
            reason=plan.reason,
            capabilities=capabilities,
            runtime=plan.namespace not in self._db.config.namespaces and declared is not None,
            pinned_backend=(declared.backend or "") if declared is not None else "",
        )
        if backend_type is None:
            return out
        # An undeclared namespace served by auto_namespaces has the defaults.
        ns = (
            declared
            if declared is not None
            else NamespaceConfig(abstraction=cast(Abstraction, plan.abstraction))
        )
        traits = backend_type.traits(self._db.config.backends[plan.backend].settings)
        durability = _DURABILITY.get(traits.durability, admin_pb2.DURABILITY_UNSPECIFIED)
        if isinstance(traits, KeyValueTraits):
            limits = ns.limits
            out.limits.CopyFrom(
                admin_pb2.KeyValueLimits(
                    max_key_bytes=min(limits.max_key_bytes, traits.max_key_bytes or limits.max_key_bytes),
                    max_value_bytes=effective_max_value_bytes(ns, traits),
                    max_items_per_call=limits.max_items_per_call,
                    page_size_bytes=limits.page_size_bytes,
                    max_page_size_bytes=limits.max_page_size_bytes,
                    max_page_items=limits.max_page_items,
                    tombstone_ttl=_duration(limits.tombstone_ttl),
                    max_token_skew=_duration(limits.max_token_skew),
                )
            )
            out.traits.CopyFrom(
                admin_pb2.BackendTraits(
                    durability=durability,
                    consistency=_CONSISTENCY.get(traits.consistency, admin_pb2.CONSISTENCY_UNSPECIFIED),
                    max_item_bytes=traits.max_item_bytes,
                    max_value_bytes=traits.max_value_bytes,
                    max_key_bytes=traits.max_key_bytes or 0,
                    durability_note=traits.durability_note,
                )
            )
            if traits.max_ttl is not None:
                out.traits.max_ttl.CopyFrom(_duration(traits.max_ttl))
        elif isinstance(traits, QueueTraits):
            queue = ns.queue
            out.queue.CopyFrom(
                admin_pb2.QueueSettings(
                    max_message_bytes=effective_max_message_bytes(ns, traits),
                    max_batch=queue.max_batch,
                    max_topic_name_bytes=queue.max_topic_name_bytes,
                    visibility_timeout=_duration(queue.visibility_timeout),
                    max_attempts=queue.max_attempts,
                    max_wait=_duration(queue.max_wait),
                    max_delay=_duration(queue.max_delay),
                    dead_letter_suffix=queue.dead_letter_suffix,
                )
            )
            out.traits.CopyFrom(
                admin_pb2.BackendTraits(
                    durability=durability,
                    max_message_bytes=traits.max_message_bytes,
                    durability_note=traits.durability_note,
                )
            )
        elif isinstance(traits, TimeSeriesTraits):
            series = ns.timeseries
            out.timeseries.CopyFrom(
                admin_pb2.TimeSeriesSettings(
                    retention=_duration(series.retention),
                    max_future_skew=_duration(series.max_future_skew),
                    bucket=_duration(series.bucket),
                    max_payload_bytes=effective_max_payload_bytes(ns, traits),
                    max_tags=series.max_tags,
                    max_tag_bytes=series.max_tag_bytes,
                    max_series_name_bytes=series.max_series_name_bytes,
                    max_event_id_bytes=series.max_event_id_bytes,
                    max_events_per_call=series.max_events_per_call,
                    max_page_events=series.max_page_events,
                    page_size_bytes=series.page_size_bytes,
                )
            )
            out.traits.CopyFrom(
                admin_pb2.BackendTraits(
                    durability=durability,
                    max_event_bytes=traits.max_event_bytes,
                    durability_note=traits.durability_note,
                )
            )
            if traits.max_retention is not None:
                out.traits.max_retention.CopyFrom(_duration(traits.max_retention))
        elif isinstance(traits, CounterTraits):
            counter = ns.counter
            out.counter.CopyFrom(
                admin_pb2.CounterSettings(
                    mode=_COUNTER_MODES.get(counter.mode, admin_pb2.COUNTER_MODE_UNSPECIFIED),
                    token_window=_duration(counter.token_window),
                    max_counter_name_bytes=counter.max_counter_name_bytes,
                )
            )
            out.traits.CopyFrom(
                admin_pb2.BackendTraits(durability=durability, durability_note=traits.durability_note)
            )
        return out

    async def ListNamespaces(
        self, request: admin_pb2.ListNamespacesRequest, context: Context
    ) -> admin_pb2.ListNamespacesResponse:
        request_id = request_id_of(context)
        principal = await self._calls.authenticate(context, "ListNamespaces", request_id)

        async def operation() -> admin_pb2.ListNamespacesResponse:
            out: list[admin_pb2.Namespace] = []
            for name, declared in self._db.namespaces().items():
                if not principal.roles_on(name):
                    continue  # a namespace the caller holds no role on is not its business
                try:
                    out.append(self._namespace(self._db.plan(name)))
                except PlanError as exc:
                    # Listed, not hidden: an operator needs to see the refusal.
                    out.append(
                        admin_pb2.Namespace(
                            name=name,
                            abstraction=_ABSTRACTIONS.get(
                                declared.abstraction, admin_pb2.ABSTRACTION_UNSPECIFIED
                            ),
                            needs=self._needs(name),
                            reason=f"REFUSED: {exc}",
                        )
                    )
            return admin_pb2.ListNamespacesResponse(namespaces=out)

        # Not a per-namespace call; "*" names the whole gateway in logs.
        return await self._calls.run(
            context, "ListNamespaces", ADMIN_SCOPE, operation, request_id=request_id, principal=principal
        )

    async def GetPlan(self, request: admin_pb2.GetPlanRequest, context: Context) -> admin_pb2.Namespace:
        async def operation() -> admin_pb2.Namespace:
            return self._namespace(self._db.plan(request.name))

        return await self._calls.run(context, "GetPlan", request.name, operation)

    def _within_policy(
        self, name: str, ns: NamespaceConfig, policy: CreateNamespacesConfig
    ) -> NamespaceConfig:
        """``ns`` as it will be served under the policy's backend allow-list.

        A pin outside the list is refused. An unpinned namespace, when the list
        does not hold every backend, is pinned to the first listed backend that
        meets its needs, so the planner can never put it elsewhere; the choice
        is deterministic, so declaring it again compares equal.

        :raises _Refused: a pin outside the allow-list.
        :raises PlanError: no allowed backend meets the needs.
        """
        allowed = policy.backends
        if allowed is None:
            return ns
        if ns.backend is not None:
            if ns.backend not in allowed:
                raise _Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"namespace {name!r}: run-time namespaces may not be placed on backend {ns.backend!r}; "
                    f"{POLICY_KEY}.backends allows {', '.join(allowed)}. Pin one of those, or ask the "
                    f"operator to add {ns.backend!r} to {POLICY_KEY}.backends",
                    field="backend",
                )
            return ns
        if set(self._db.config.backends) <= set(allowed):
            return ns
        reasons: dict[str, str] = {}
        for backend in allowed:
            pinned = attrs.evolve(ns, backend=backend)
            try:
                plan_namespace(name, pinned, self._db.config, self._db.plugins.registry)
            except PlanError as exc:
                reasons.update(exc.reasons)
                continue
            return pinned
        for backend in self._db.config.backends:
            reasons.setdefault(backend, f"not allowed for run-time namespaces ({POLICY_KEY}.backends)")
        raise PlanError(name, ns.abstraction, reasons)

    def _check_create(self, request: admin_pb2.CreateNamespaceRequest) -> tuple[NamespaceConfig, bool]:
        """Everything CreateNamespace decides before it touches a backend: the
        policy, the settings (checked as prism.yaml is), the allow-list, a
        clash with what is in place, and the count. Returns the namespace as it
        will be declared, and whether it is new.

        :raises _Refused: a refusal with its own status code.
        :raises InvalidArgument: settings prism.yaml would refuse.
        :raises PlanError: no allowed backend meets the needs.
        """
        name = request.name
        policy = self._db.config.gateway.create_namespaces
        if policy is None or not policy.allow:
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"namespace {name!r}: creating namespaces at run time is not enabled on this gateway; "
                f"the operator can allow it with `{POLICY_KEY}: {{allow: true}}` in the gateway's "
                "prism.yaml, or declare the namespace under `namespaces:` there",
            )
        requested = namespace_from_mapping(name, declaration_from_proto(request), self._db.config)
        in_file = self._db.config.namespaces.get(name)
        if in_file is not None:
            # prism.yaml is the operator's: the same declaration is a success
            # (nothing changes), another one cannot redefine it.
            if in_file != requested:
                conflict = NamespaceConflict(
                    name, "in the gateway's prism.yaml", differences(in_file, requested)
                )
                raise _Refused(grpc.StatusCode.ALREADY_EXISTS, str(conflict))
            return in_file, False
        ns = self._within_policy(name, requested, policy)
        in_place = self._declared(name)
        if in_place is not None and in_place != ns:
            conflict = NamespaceConflict(name, "at run time", differences(in_place, ns))
            raise _Refused(grpc.StatusCode.ALREADY_EXISTS, str(conflict))
        runtime_count = len(self._db.namespaces()) - len(self._db.config.namespaces)
        if in_place is None and runtime_count >= policy.max_namespaces:
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"namespace {name!r}: this gateway already holds {runtime_count} run-time namespaces, the "
                f"most {POLICY_KEY}.max_namespaces ({policy.max_namespaces}) allows; reuse an existing "
                "namespace, or ask the operator to raise the limit (run-time namespaces are forgotten when "
                "the gateway restarts)",
            )
        return ns, in_place is None

    async def CreateNamespace(
        self, request: admin_pb2.CreateNamespaceRequest, context: Context
    ) -> admin_pb2.Namespace:
        request_id = request_id_of(context)
        principal = await self._calls.authenticate(context, "CreateNamespace", request_id)
        if not request.name:
            status = plain_status(
                grpc.StatusCode.INVALID_ARGUMENT,
                "CreateNamespace: name is required; name the namespace to create",
                request_id,
                field="name",
            )
            await context.abort_with_status(to_grpc_status(status))
        await self._calls.authorize(context, principal, "CreateNamespace", request.name, request_id)
        refusal = _Call(
            self._calls, context, "CreateNamespace", request.name, None, request_id, principal.name
        )
        try:
            ns, new = self._check_create(request)
        except _Refused as refused:
            await refusal.finish(plain_status(refused.code, str(refused), request_id, field=refused.field))
        except (InvalidArgument, PlanError) as exc:
            await refusal.finish(exc)

        async def operation() -> admin_pb2.Namespace:
            # No await between _check_create and the registration inside
            # declare, so the clash and count checks cannot race another call.
            chosen = await self._db.declare(request.name, ns)
            if new:
                log.info(
                    "namespace created at run time",
                    namespace=request.name,
                    backend=chosen.backend,
                    token=principal.name,
                    request_id=request_id,
                )
            return self._namespace(chosen)

        return await self._calls.run(
            context, "CreateNamespace", request.name, operation, request_id=request_id, principal=principal
        )


class _Refused(Exception):
    """A CreateNamespace refusal with its own status code (policy, clash, count)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, field: str | None = None) -> None:
        self.code = code
        self.field = field
        super().__init__(message)
