"""prism.v1 messages to and from ``prism.models``, in both directions.

The server and the remote client share these functions, so a value means the
same on both ends of the wire. Times travel as microseconds (the core's unit):
a ``Timestamp`` or ``Duration`` with finer nanoseconds is truncated to the
microsecond, never rounded up past a deadline.

Conversions from the wire raise :class:`prism.errors.InvalidArgument` naming the
field, because a malformed request is the caller's mistake and must come back
as INVALID_ARGUMENT, not as an internal error.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from prism.errors import InvalidArgument
from prism.models import (
    AllItems,
    Delete,
    Delivery,
    IdempotencyToken,
    Item,
    KeyRange,
    Keys,
    Message,
    Mutation,
    Predicate,
    Put,
    datetime_to_micros,
    micros_to_datetime,
    trusted_item,
)
from prism.v1 import common_pb2, keyvalue_pb2, queue_pb2

_MICROS = timedelta(microseconds=1)

# -- times --------------------------------------------------------------------------


def micros_to_timestamp(micros: int) -> timestamp_pb2.Timestamp:
    seconds, rest = divmod(micros, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)


def timestamp_to_micros(value: timestamp_pb2.Timestamp) -> int:
    return value.seconds * 1_000_000 + value.nanos // 1000


def datetime_to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """:raises ValueError: ``value`` is naive (no time zone)."""
    return micros_to_timestamp(datetime_to_micros(value))


def timestamp_to_datetime(value: timestamp_pb2.Timestamp) -> datetime:
    return micros_to_datetime(timestamp_to_micros(value))


def timedelta_to_duration(value: timedelta) -> duration_pb2.Duration:
    micros = value // _MICROS
    # Duration keeps seconds and nanos with the same sign.
    sign = -1 if micros < 0 else 1
    seconds, rest = divmod(abs(micros), 1_000_000)
    return duration_pb2.Duration(seconds=sign * seconds, nanos=sign * rest * 1000)


def duration_to_timedelta(value: duration_pb2.Duration) -> timedelta:
    return timedelta(seconds=value.seconds, microseconds=int(value.nanos / 1000))


def seconds_to_duration(seconds: float) -> duration_pb2.Duration:
    return timedelta_to_duration(timedelta(seconds=seconds))


# -- idempotency tokens ---------------------------------------------------------------


def token_to_proto(token: IdempotencyToken | None) -> common_pb2.IdempotencyToken | None:
    if token is None:
        return None
    return common_pb2.IdempotencyToken(
        generation_time=micros_to_timestamp(token.generation_time_us), nonce=token.nonce
    )


def token_from_proto(
    message: keyvalue_pb2.PutItemsRequest | keyvalue_pb2.DeleteItemsRequest | keyvalue_pb2.MutateItemsRequest,
) -> IdempotencyToken | None:
    """The request's token, or None when it carries none (the server then stamps
    the write with its own time, as embedded Prism does)."""
    if not message.HasField("token"):
        return None
    token = message.token
    if not token.HasField("generation_time"):
        raise InvalidArgument(
            "token.generation_time is required when a token is sent",
            namespace=message.namespace or None,
            field="token.generation_time",
        )
    return IdempotencyToken(timestamp_to_micros(token.generation_time), token.nonce)


# -- KeyValue -----------------------------------------------------------------------------


def item_to_proto(item: Item | Put) -> keyvalue_pb2.Item:
    message = keyvalue_pb2.Item(key=item.key, value=item.value)
    if item.ttl is not None:
        message.ttl.CopyFrom(timedelta_to_duration(item.ttl))
    if isinstance(item, Item) and item.expires_at is not None:
        message.expires_at.CopyFrom(datetime_to_timestamp(item.expires_at))
    return message


def item_from_proto(message: keyvalue_pb2.Item) -> Item:
    ttl = duration_to_timedelta(message.ttl) if message.HasField("ttl") else None
    expires = timestamp_to_datetime(message.expires_at) if message.HasField("expires_at") else None
    # protobuf's bytes fields are bytes: no converter to run.
    return trusted_item(message.key, message.value, ttl, expires)


def predicate_to_proto(predicate: Predicate | None) -> keyvalue_pb2.Predicate | None:
    """None for None (every item); the caller has checked the type."""
    if predicate is None:
        return None
    if isinstance(predicate, AllItems):
        return keyvalue_pb2.Predicate(all=keyvalue_pb2.AllItems())
    if isinstance(predicate, Keys):
        return keyvalue_pb2.Predicate(keys=keyvalue_pb2.Keys(keys=predicate.keys))
    return keyvalue_pb2.Predicate(range=keyvalue_pb2.KeyRange(start=predicate.start, end=predicate.end))


def predicate_from_proto(
    request: keyvalue_pb2.GetItemsRequest | keyvalue_pb2.DeleteItemsRequest,
) -> Predicate | None:
    if not request.HasField("predicate"):
        return None
    which = request.predicate.WhichOneof("match")
    if which is None or which == "all":
        return AllItems()
    if which == "keys":
        return Keys(request.predicate.keys.keys)
    bounds = request.predicate.range
    return KeyRange(
        bounds.start if bounds.HasField("start") else None,
        bounds.end if bounds.HasField("end") else None,
    )


def mutation_to_proto(mutation: Mutation) -> keyvalue_pb2.Mutation:
    if isinstance(mutation, Put):
        return keyvalue_pb2.Mutation(put=item_to_proto(mutation))
    return keyvalue_pb2.Mutation(delete=mutation.key)


def mutations_from_proto(request: keyvalue_pb2.MutateItemsRequest) -> list[Mutation]:
    out: list[Mutation] = []
    for index, mutation in enumerate(request.mutations):
        which = mutation.WhichOneof("op")
        if which == "put":
            item = item_from_proto(mutation.put)
            out.append(Put(item.key, item.value, ttl=item.ttl))
        elif which == "delete":
            out.append(Delete(mutation.delete))
        else:
            raise InvalidArgument(
                f"record {request.id!r}: mutation {index} sets neither put nor delete",
                namespace=request.namespace or None,
                field=f"mutations[{index}]",
            )
    return out


# -- Queue ---------------------------------------------------------------------------------


def message_to_proto(message: Message) -> queue_pb2.Message:
    """:raises ValueError: ``deliver_after`` is a naive datetime."""
    out = queue_pb2.Message(key=message.key, payload=message.payload, headers=dict(message.headers))
    if isinstance(message.deliver_after, timedelta):
        out.deliver_after.CopyFrom(timedelta_to_duration(message.deliver_after))
    elif isinstance(message.deliver_after, datetime):
        out.deliver_at.CopyFrom(datetime_to_timestamp(message.deliver_after))
    return out


def messages_from_proto(request: queue_pb2.PublishRequest) -> list[Message]:
    out: list[Message] = []
    for index, message in enumerate(request.messages):
        delay: timedelta | datetime | None = None
        has_after = message.HasField("deliver_after")
        has_at = message.HasField("deliver_at")
        if has_after and has_at:
            raise InvalidArgument(
                f"topic {request.topic!r}: message {index} sets both deliver_after and deliver_at; "
                "set at most one",
                namespace=request.namespace or None,
                field=f"messages[{index}].deliver_at",
            )
        if has_after:
            delay = duration_to_timedelta(message.deliver_after)
        elif has_at:
            delay = timestamp_to_datetime(message.deliver_at)
        out.append(Message(message.key, message.payload, dict(message.headers), deliver_after=delay))
    return out


def delivery_to_proto(delivery: Delivery) -> queue_pb2.Delivery:
    return queue_pb2.Delivery(
        id=delivery.id,
        topic=delivery.topic,
        group=delivery.group,
        key=delivery.key,
        payload=delivery.payload,
        headers=dict(delivery.headers),
        attempt=delivery.attempt,
        published_at=datetime_to_timestamp(delivery.published_at),
    )


def delivery_from_proto(message: queue_pb2.Delivery) -> Delivery:
    return Delivery(
        id=message.id,
        topic=message.topic,
        group=message.group,
        key=message.key,
        payload=message.payload,
        headers=dict(message.headers),
        attempt=message.attempt,
        published_at=timestamp_to_datetime(message.published_at),
    )


def deliveries_from_proto(messages: Iterable[queue_pb2.Delivery]) -> list[Delivery]:
    return [delivery_from_proto(m) for m in messages]
