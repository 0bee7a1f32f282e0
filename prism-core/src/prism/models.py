"""Public value types of the KeyValue, Queue and TimeSeries abstractions.

Everything here is an immutable attrs class. Keys and values are bytes; the API
accepts ``str`` too and encodes it as UTF-8.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import attrs


def _to_bytes(value: bytes | bytearray | memoryview | str) -> bytes:
    if type(value) is bytes:
        return value  # the common case; bytes(value) would return this same object
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"expected bytes or str, got {type(value).__name__}")


def _optional_bytes(value: bytes | str | None) -> bytes | None:
    return None if value is None else _to_bytes(value)


def _sorted_keys(keys: Iterable[bytes | str]) -> tuple[bytes, ...]:
    return tuple(sorted({_to_bytes(k) for k in keys}))


def now_micros() -> int:
    """The current time in microseconds since the epoch."""
    return time.time_ns() // 1000


def micros_to_datetime(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


def datetime_to_micros(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware (use datetime.now(UTC))")
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@attrs.frozen(order=True)
class IdempotencyToken:
    """Identifies one logical write, as in Netflix KV: a generation time and a
    random nonce.

    Writes are last-write-wins per item, ordered by ``(generation_time, nonce)``:
    a write carrying an older token never overwrites a newer one, and replaying
    a write with the same token changes nothing. Create one token per logical
    write and reuse it on every retry or hedge of that write.
    """

    generation_time_us: int
    nonce: str

    @classmethod
    def new(cls) -> IdempotencyToken:
        """A token for a new write, stamped with the current time."""
        return cls(now_micros(), os.urandom(8).hex())

    @classmethod
    def at(cls, when: datetime, nonce: str | None = None) -> IdempotencyToken:
        """A token generated at ``when`` (timezone-aware)."""
        return cls(datetime_to_micros(when), nonce if nonce is not None else os.urandom(8).hex())

    @property
    def generation_time(self) -> datetime:
        return micros_to_datetime(self.generation_time_us)


@attrs.frozen
class Item:
    """One item of a record: a key, a value, and optionally a TTL.

    When written, ``ttl`` overrides the namespace's default TTL. When read,
    ``expires_at`` tells when the item expires (None: never).
    """

    key: bytes = attrs.field(converter=_to_bytes)
    value: bytes = attrs.field(converter=_to_bytes, repr=lambda v: f"<{len(v)} bytes>")
    ttl: timedelta | None = None
    expires_at: datetime | None = None


def _item_maker() -> Callable[[bytes, bytes, timedelta | None, datetime | None], Item]:
    # Item is slotted (attrs.frozen): setting its slots directly skips the
    # converters. Checked here, so a field added to Item falls back to __init__
    # instead of leaving a slot unset.
    if tuple(a.name for a in attrs.fields(Item)) != ("key", "value", "ttl", "expires_at"):
        return lambda key, value, ttl, expires_at: Item(key, value, ttl=ttl, expires_at=expires_at)
    new = object.__new__
    set_key, set_value, set_ttl, set_expires = (
        Item.__dict__[name].__set__ for name in ("key", "value", "ttl", "expires_at")
    )

    def make(key: bytes, value: bytes, ttl: timedelta | None, expires_at: datetime | None) -> Item:
        item: Item = new(Item)
        set_key(item, key)
        set_value(item, value)
        set_ttl(item, ttl)
        set_expires(item, expires_at)
        return item

    return make


#: ``Item(key, value, ttl=ttl, expires_at=expires_at)`` for a key and value that
#: are ``bytes`` already (a backend's rows, protobuf fields): without the
#: converters' checks. Internal to Prism; callers must pass exactly ``bytes``.
trusted_item = _item_maker()


# -- predicates ------------------------------------------------------------------


@attrs.frozen
class AllItems:
    """Every item of the record, in key order."""


@attrs.frozen
class Keys:
    """The items with these keys, in key order. Missing keys are absent from the result."""

    keys: tuple[bytes, ...] = attrs.field(converter=_sorted_keys)


@attrs.frozen
class KeyRange:
    """The items whose keys fall in ``[start, end)``, in key order.

    ``start=None`` means from the first key; ``end=None`` means to the last key.
    """

    start: bytes | None = attrs.field(default=None, converter=_optional_bytes)
    end: bytes | None = attrs.field(default=None, converter=_optional_bytes)


Predicate = AllItems | Keys | KeyRange

#: What ``put_items`` accepts: items (each with an optional TTL), or a mapping
#: of key to value with bytes or str on either side.
ItemsInput = (
    Iterable[Item] | Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes, str] | Mapping[str, bytes]
)


# -- mutations ------------------------------------------------------------------


@attrs.frozen
class Put:
    """Write one item inside :meth:`KeyValue.mutate_items`."""

    key: bytes = attrs.field(converter=_to_bytes)
    value: bytes = attrs.field(converter=_to_bytes, repr=lambda v: f"<{len(v)} bytes>")
    ttl: timedelta | None = None


@attrs.frozen
class Delete:
    """Delete one item inside :meth:`KeyValue.mutate_items`."""

    key: bytes = attrs.field(converter=_to_bytes)


Mutation = Put | Delete


# -- results --------------------------------------------------------------------


@attrs.frozen
class ItemsPage:
    """One page of :meth:`KeyValue.get_items`. ``next_page_token`` is None on the last page."""

    items: Sequence[Item]
    next_page_token: str | None = None

    def as_dict(self) -> dict[bytes, bytes]:
        return {item.key: item.value for item in self.items}


@attrs.frozen
class RecordsPage:
    """One page of :meth:`KeyValue.scan`: record ids in order."""

    record_ids: Sequence[str]
    next_page_token: str | None = None


# -- Queue ------------------------------------------------------------------------


def _headers(value: Mapping[str, bytes | str] | None) -> dict[str, bytes]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"headers must be a mapping of str to bytes, got {type(value).__name__}")
    out: dict[str, bytes] = {}
    for name, item in value.items():
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, got {type(name).__name__}")
        out[name] = _to_bytes(item)
    return out


@attrs.frozen
class Message:
    """A message to publish.

    ``key`` orders messages: with ``queue.ordered_by_key``, messages with the same
    non-empty key reach each group in publish order, one at a time. An empty key
    means no ordering. ``deliver_after`` (a delay, or a timezone-aware time) holds
    the message back until then; it needs ``queue.delay``.
    """

    key: bytes = attrs.field(converter=_to_bytes)
    payload: bytes = attrs.field(converter=_to_bytes, repr=lambda v: f"<{len(v)} bytes>")
    headers: Mapping[str, bytes] = attrs.field(factory=dict, converter=_headers, hash=False)
    deliver_after: timedelta | datetime | None = None


@attrs.frozen
class Delivery:
    """One delivery of a message to a consumer group.

    Acknowledge it with its ``id`` (the message id, the same on every redelivery).
    ``attempt`` is 1 on the first delivery to the group and counts up on each
    redelivery.
    """

    id: str
    topic: str
    group: str
    key: bytes
    payload: bytes = attrs.field(repr=lambda v: f"<{len(v)} bytes>")
    headers: Mapping[str, bytes] = attrs.field(hash=False)
    attempt: int
    published_at: datetime


# -- TimeSeries ---------------------------------------------------------------------


def _tags(value: Mapping[str, str] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"tags must be a mapping of str to str, got {type(value).__name__}")
    for name, item in value.items():
        if not isinstance(name, str) or not isinstance(item, str):
            raise TypeError(f"tags must map str to str, got {name!r}: {item!r}")
    return dict(value)


@attrs.frozen
class Event:
    """One event of a time series.

    Writing is idempotent on ``(series, event_time, event_id)``: writing an event
    whose time and id are already stored replaces it, so a retried write changes
    nothing and a corrected one wins (the later write wins). ``event_time`` is
    timezone-aware and kept to the microsecond. ``tags`` is a small map of
    strings, stored with the event and returned with it.
    """

    event_time: datetime
    event_id: str
    payload: bytes = attrs.field(default=b"", converter=_to_bytes, repr=lambda v: f"<{len(v)} bytes>")
    tags: Mapping[str, str] = attrs.field(factory=dict, converter=_tags, hash=False)


@attrs.frozen
class EventsPage:
    """One page of :meth:`TimeSeries.read_events`, in the order asked for.
    ``next_page_token`` is None on the last page."""

    events: Sequence[Event]
    next_page_token: str | None = None
