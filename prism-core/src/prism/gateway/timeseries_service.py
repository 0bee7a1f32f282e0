"""prism.v1 TimeSeriesService: the servicer, and its messages to and from ``prism.models``.

The servicer is a thin adapter onto ``AsyncPrism.timeseries``, run through
:meth:`prism.gateway.services.Calls.run` exactly as the KeyValue and Queue
servicers are (auth, breaker, concurrency limit, deadline, metrics, access
log, error mapping). Every rule (validation, limits, retention, future skew,
page tokens) stays in :class:`prism.timeseries.namespace.AsyncTimeSeries`.

The conversion functions are shared with the remote client, so this module
imports nothing of the server at run time (``Calls`` and ``AsyncPrism`` only
for type checking): the client loads without the server side. Conversions
from the wire raise :class:`prism.errors.InvalidArgument` naming the field,
never a bare ``ValueError``, so a malformed request is INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf import timestamp_pb2

from prism.errors import InvalidArgument
from prism.gateway import convert
from prism.models import Event, datetime_to_micros
from prism.timeseries.namespace import Order
from prism.v1 import timeseries_pb2, timeseries_pb2_grpc

if TYPE_CHECKING:
    import grpc

    from prism.client import AsyncPrism
    from prism.gateway.services import Calls

    Context = grpc.aio.ServicerContext[Any, Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: The wire's order to the API's; unspecified is ascending, as the proto documents.
_ORDERS: dict[timeseries_pb2.EventOrder.ValueType, Order] = {
    timeseries_pb2.EVENT_ORDER_UNSPECIFIED: "asc",
    timeseries_pb2.EVENT_ORDER_ASCENDING: "asc",
    timeseries_pb2.EVENT_ORDER_DESCENDING: "desc",
}
_ORDER_NUMBERS: dict[str, timeseries_pb2.EventOrder.ValueType] = {
    "asc": timeseries_pb2.EVENT_ORDER_ASCENDING,
    "desc": timeseries_pb2.EVENT_ORDER_DESCENDING,
}


# -- conversions ----------------------------------------------------------------------------


def time_from_proto(value: timestamp_pb2.Timestamp, namespace: str, field: str) -> datetime:
    """A wire timestamp as an aware datetime, to the microsecond (finer nanos
    are truncated).

    :raises InvalidArgument: outside what a datetime holds (years 1 to 9999).
    """
    try:
        # Exact integer arithmetic: no float on the way, whatever the year.
        return _EPOCH + timedelta(microseconds=convert.timestamp_to_micros(value))
    except OverflowError:
        raise InvalidArgument(
            f"{field} ({value.seconds}s since the epoch) is outside the years 1 to 9999",
            namespace=namespace or None,
            field=field,
        ) from None


def time_to_proto(value: datetime) -> timestamp_pb2.Timestamp:
    """:raises ValueError: ``value`` is naive."""
    return convert.micros_to_timestamp(datetime_to_micros(value))


def event_to_proto(event: Event) -> timeseries_pb2.Event:
    """:raises ValueError: the event time is naive. :raises TypeError: not a datetime."""
    return timeseries_pb2.Event(
        event_time=time_to_proto(event.event_time),
        event_id=event.event_id,
        payload=event.payload,
        tags=dict(event.tags),
    )


def event_from_proto(message: timeseries_pb2.Event, namespace: str, field: str) -> Event:
    """:raises InvalidArgument: no event time, or one out of range, naming ``field``."""
    if not message.HasField("event_time"):
        raise InvalidArgument(
            f"{field}.event_time is required: the time the event happened",
            namespace=namespace or None,
            field=f"{field}.event_time",
        )
    return Event(
        event_time=time_from_proto(message.event_time, namespace, f"{field}.event_time"),
        event_id=message.event_id,
        payload=message.payload,
        tags=dict(message.tags),
    )


def events_from_proto(request: timeseries_pb2.WriteEventsRequest) -> list[Event]:
    return [
        event_from_proto(event, request.namespace, f"events[{index}]")
        for index, event in enumerate(request.events)
    ]


def events_from_response(messages: Iterable[timeseries_pb2.Event], namespace: str) -> list[Event]:
    """A page's events (the client side)."""
    return [event_from_proto(message, namespace, f"events[{i}]") for i, message in enumerate(messages)]


def order_from_proto(request: timeseries_pb2.ReadEventsRequest) -> Order:
    order = _ORDERS.get(request.order)
    if order is None:
        raise InvalidArgument(
            f"order {request.order} is not an EventOrder; use EVENT_ORDER_ASCENDING or EVENT_ORDER_DESCENDING",
            namespace=request.namespace or None,
            field="order",
        )
    return order


def order_to_proto(order: str) -> timeseries_pb2.EventOrder.ValueType:
    """:raises KeyError: not "asc" or "desc" (the caller checks)."""
    return _ORDER_NUMBERS[order]


def _bound(request: timeseries_pb2.ReadEventsRequest, field: Literal["start", "end"]) -> datetime:
    if not request.HasField(field):
        raise InvalidArgument(
            f"{field} is required: events are read from start (inclusive) to end (exclusive)",
            namespace=request.namespace or None,
            field=field,
        )
    return time_from_proto(getattr(request, field), request.namespace, field)


# -- the servicer ----------------------------------------------------------------------------


class TimeSeriesService(timeseries_pb2_grpc.TimeSeriesServiceServicer):
    def __init__(self, db: AsyncPrism, calls: Calls) -> None:
        self._db = db
        self._calls = calls

    async def WriteEvents(
        self, request: timeseries_pb2.WriteEventsRequest, context: Context
    ) -> timeseries_pb2.WriteEventsResponse:
        async def operation() -> timeseries_pb2.WriteEventsResponse:
            ts = self._db.timeseries(request.namespace)
            events: Sequence[Event] = events_from_proto(request)
            await ts.write_events(request.series, events)
            return timeseries_pb2.WriteEventsResponse()

        return await self._calls.run(context, "WriteEvents", request.namespace, operation)

    async def ReadEvents(
        self, request: timeseries_pb2.ReadEventsRequest, context: Context
    ) -> timeseries_pb2.ReadEventsResponse:
        async def operation() -> timeseries_pb2.ReadEventsResponse:
            ts = self._db.timeseries(request.namespace)
            page = await ts.read_events(
                request.series,
                _bound(request, "start"),
                _bound(request, "end"),
                order=order_from_proto(request),
                # 0 means the namespace's limit, as the proto documents.
                limit=request.limit or None,
                page_token=request.page_token or None,
            )
            return timeseries_pb2.ReadEventsResponse(
                events=[event_to_proto(event) for event in page.events],
                next_page_token=page.next_page_token or "",
            )

        return await self._calls.run(context, "ReadEvents", request.namespace, operation)


__all__ = [
    "TimeSeriesService",
    "event_from_proto",
    "event_to_proto",
    "events_from_proto",
    "events_from_response",
    "order_from_proto",
    "order_to_proto",
    "time_from_proto",
    "time_to_proto",
]
