"""The prism.v1 servicers: thin adapters from gRPC onto an ``AsyncPrism``.

Every semantic rule (validation, limits, idempotency, paging, dead letters)
lives in the core, so a request behaves exactly as the same call made
embedded. What the gateway adds is only what a network call needs:

* each call runs under the client's deadline (``asyncio.timeout`` of
  ``context.time_remaining()``), so work for a caller who gave up stops;
* each exception becomes a deliberate status (see :mod:`prism.gateway.status`);
* each call gets a request id (the caller's ``x-request-id``, else a new one),
  logged at debug level when it starts and ends and sent back in error details;
* each call is authenticated and authorized (:mod:`prism.gateway.auth`) in
  :meth:`Calls.run`, the one place that knows both the method and the
  request's namespace, before its operation touches any data.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import grpc

from prism.client import AsyncPrism
from prism.errors import InvalidArgument, PlanError
from prism.gateway import convert
from prism.gateway.auth import REQUIRED_ROLE, Authenticator, Principal, Refusal, denial_message
from prism.gateway.status import (
    code_for,
    deadline_status,
    denied_status,
    plain_status,
    status_for,
    to_grpc_status,
)
from prism.gateway.subscriptions import DEFAULT_MAX_IN_FLIGHT, Stopped, Subscription, Subscriptions
from prism.log import get_logger
from prism.planner import NamespacePlan
from prism.v1 import admin_pb2, admin_pb2_grpc, keyvalue_pb2, keyvalue_pb2_grpc, queue_pb2, queue_pb2_grpc

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

log = get_logger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: What ConsumeRequest.max_messages = 0 means, as the proto documents.
DEFAULT_MAX_MESSAGES = 10
#: How much of the caller's deadline a Consume leaves for the answer to travel
#: back: a long wait ends a little early with what it has instead of failing.
_CONSUME_MARGIN_S = 0.25


def request_id_of(context: Context) -> str:
    """The caller's ``x-request-id`` when it is a sane token, else a new id."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return os.urandom(8).hex()


class Calls:
    """Runs one call: request id, access check, deadline, logging, and the
    error mapping. ``authenticator`` None: auth is off."""

    def __init__(self, authenticator: Authenticator | None = None) -> None:
        self.authenticator = authenticator or Authenticator(None)

    async def authenticate(self, context: Context, method: str, request_id: str) -> Principal:
        """The caller, or the call ends with UNAUTHENTICATED."""
        try:
            return self.authenticator.authenticate(context.invocation_metadata())
        except Refusal as exc:
            log.info(
                "rpc unauthenticated",
                method=method,
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
        log.info(
            "rpc permission denied",
            token=principal.name,
            method=method,
            namespace=namespace,
            role=role or "any",
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
        remaining = context.time_remaining()
        started = time.monotonic()
        log.debug("rpc started", method=method, namespace=namespace, request_id=request_id)
        try:
            async with asyncio.timeout(remaining) as scope:
                result = await operation()
        except TimeoutError as exc:
            if not scope.expired():
                await self.fail(context, method, namespace, request_id, exc)
            log.info("rpc deadline exceeded", method=method, namespace=namespace, request_id=request_id)
            status = deadline_status(method, namespace, remaining or 0.0, request_id)
            await context.abort_with_status(to_grpc_status(status))
        except Exception as exc:
            await self.fail(context, method, namespace, request_id, exc)
        log.debug(
            "rpc finished",
            method=method,
            namespace=namespace,
            request_id=request_id,
            code="OK",
            duration_ms=round((time.monotonic() - started) * 1000, 3),
        )
        return result

    async def fail(
        self, context: Context, method: str, namespace: str, request_id: str, exc: Exception
    ) -> NoReturn:
        """End the call with the status :func:`status_for` gives ``exc``."""
        code = code_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.error(
                "rpc failed unexpectedly",
                method=method,
                namespace=namespace,
                request_id=request_id,
                exc_info=exc,
            )
        else:
            log.debug(
                "rpc refused", method=method, namespace=namespace, request_id=request_id, code=code.name
            )
        await context.abort_with_status(to_grpc_status(status_for(exc, request_id)))


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
            self._subscriptions.remove(subscription)
            # Shielded: the stream usually ends by cancellation (the client went
            # away), and the leases must come back even so.
            try:
                await asyncio.shield(subscription.consumer.close())
            except Exception as exc:
                # The stream's own status is already decided; what it held comes
                # back after the visibility timeout instead of at once.
                log.warning(
                    "subscription could not give back its deliveries; they come back after the "
                    "visibility timeout",
                    request_id=request_id,
                    namespace=request.namespace,
                    subscription_id=subscription.id,
                    error=f"{type(exc).__name__}: {exc}",
                )
            log.debug("subscription closed", namespace=request.namespace, subscription_id=subscription.id)

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
}
_DURABILITY = {"ephemeral": admin_pb2.DURABILITY_EPHEMERAL, "durable": admin_pb2.DURABILITY_DURABLE}
_CONSISTENCY = {
    "eventual": admin_pb2.CONSISTENCY_EVENTUAL,
    "read_your_writes": admin_pb2.CONSISTENCY_READ_YOUR_WRITES,
    "strong": admin_pb2.CONSISTENCY_STRONG,
}


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, db: AsyncPrism, calls: Calls) -> None:
        self._db = db
        self._calls = calls

    def _needs(self, name: str) -> admin_pb2.Needs:
        declared = self._db.config.namespaces.get(name)
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
        backend_type = self._db.plugins.registry.by_abstraction().get(plan.abstraction, {}).get(plan.plugin)
        capabilities = sorted(backend_type.capabilities) if backend_type is not None else []
        return admin_pb2.Namespace(
            name=plan.namespace,
            abstraction=_ABSTRACTIONS.get(plan.abstraction, admin_pb2.ABSTRACTION_UNSPECIFIED),
            needs=self._needs(plan.namespace),
            backend=plan.backend,
            plugin=plan.plugin,
            reason=plan.reason,
            capabilities=capabilities,
        )

    async def ListNamespaces(
        self, request: admin_pb2.ListNamespacesRequest, context: Context
    ) -> admin_pb2.ListNamespacesResponse:
        request_id = request_id_of(context)
        principal = await self._calls.authenticate(context, "ListNamespaces", request_id)

        async def operation() -> admin_pb2.ListNamespacesResponse:
            out: list[admin_pb2.Namespace] = []
            for name, declared in self._db.config.namespaces.items():
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
            context, "ListNamespaces", "*", operation, request_id=request_id, principal=principal
        )

    async def GetPlan(self, request: admin_pb2.GetPlanRequest, context: Context) -> admin_pb2.Namespace:
        async def operation() -> admin_pb2.Namespace:
            return self._namespace(self._db.plan(request.name))

        return await self._calls.run(context, "GetPlan", request.name, operation)

    async def CreateNamespace(
        self, request: admin_pb2.CreateNamespaceRequest, context: Context
    ) -> admin_pb2.Namespace:
        request_id = request_id_of(context)
        principal = await self._calls.authenticate(context, "CreateNamespace", request_id)
        await self._calls.authorize(context, principal, "CreateNamespace", request.name, request_id)
        status = plain_status(
            grpc.StatusCode.PERMISSION_DENIED,
            f"namespace {request.name!r}: creating namespaces at run time is not enabled on this gateway; "
            "declare the namespace under `namespaces:` in the gateway's prism.yaml and restart it",
            request_id,
        )
        await context.abort_with_status(to_grpc_status(status))
        raise AssertionError("abort_with_status returned")  # pragma: no cover
