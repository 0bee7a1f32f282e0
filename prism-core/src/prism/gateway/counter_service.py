"""prism.v1 CounterService: the servicer, and its messages to and from ``prism.models``.

The servicer is a thin adapter onto ``AsyncPrism.counter``, run through
:meth:`prism.gateway.services.Calls.run` exactly as the KeyValue servicer is.
The mode, the token window and the range checks stay in
:class:`prism.counter.namespace.AsyncCounter`: a request without a token in
an ``exact`` namespace gets one made by the core (so a retry of it is a new
operation), and a ``best_effort`` namespace ignores the token.

Like :mod:`prism.gateway.timeseries_service`, this module imports nothing of
the server at run time, so the remote client can share its conversions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prism.errors import InvalidArgument
from prism.gateway import convert
from prism.models import IdempotencyToken
from prism.v1 import common_pb2, counter_pb2, counter_pb2_grpc

if TYPE_CHECKING:
    import grpc

    from prism.client import AsyncPrism
    from prism.gateway.services import Calls

    Context = grpc.aio.ServicerContext[Any, Any]


def token_from_proto(request: counter_pb2.AddRequest | counter_pb2.ClearRequest) -> IdempotencyToken | None:
    """The request's token, or None when it sends none.

    :raises InvalidArgument: a token without its generation time.
    """
    if not request.HasField("token"):
        return None
    token = request.token
    if not token.HasField("generation_time"):
        raise InvalidArgument(
            "token.generation_time is required when a token is sent",
            namespace=request.namespace or None,
            field="token.generation_time",
        )
    return IdempotencyToken(convert.timestamp_to_micros(token.generation_time), token.nonce)


def token_to_proto(token: IdempotencyToken) -> common_pb2.IdempotencyToken:
    return common_pb2.IdempotencyToken(
        generation_time=convert.micros_to_timestamp(token.generation_time_us), nonce=token.nonce
    )


def add_request(namespace: str, counter: str, delta: int, token: IdempotencyToken) -> counter_pb2.AddRequest:
    """:raises ValueError: ``delta`` outside the signed 64-bit range (the caller checks first)."""
    return counter_pb2.AddRequest(
        namespace=namespace, counter=counter, delta=delta, token=token_to_proto(token)
    )


def value_from_response(response: counter_pb2.AddResponse) -> int | None:
    return response.value if response.HasField("value") else None


class CounterService(counter_pb2_grpc.CounterServiceServicer):
    def __init__(self, db: AsyncPrism, calls: Calls) -> None:
        self._db = db
        self._calls = calls

    async def Add(self, request: counter_pb2.AddRequest, context: Context) -> counter_pb2.AddResponse:
        async def operation() -> counter_pb2.AddResponse:
            counters = self._db.counter(request.namespace)
            # Unset means 1, as the embedded default does.
            delta = request.delta if request.HasField("delta") else 1
            value = await counters.add(request.counter, delta, token=token_from_proto(request))
            return counter_pb2.AddResponse() if value is None else counter_pb2.AddResponse(value=value)

        return await self._calls.run(context, "Add", request.namespace, operation)

    async def Get(self, request: counter_pb2.GetRequest, context: Context) -> counter_pb2.GetResponse:
        async def operation() -> counter_pb2.GetResponse:
            counters = self._db.counter(request.namespace)
            return counter_pb2.GetResponse(value=await counters.get(request.counter))

        return await self._calls.run(context, "Get", request.namespace, operation)

    async def Clear(self, request: counter_pb2.ClearRequest, context: Context) -> counter_pb2.ClearResponse:
        async def operation() -> counter_pb2.ClearResponse:
            counters = self._db.counter(request.namespace)
            await counters.clear(request.counter, token=token_from_proto(request))
            return counter_pb2.ClearResponse()

        return await self._calls.run(context, "Clear", request.namespace, operation)


__all__ = ["CounterService", "add_request", "token_from_proto", "token_to_proto", "value_from_response"]
