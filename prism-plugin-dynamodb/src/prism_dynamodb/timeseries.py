"""The ``dynamodb`` TimeSeries backend: events in DynamoDB, partitioned by time bucket.

Data model (two tables per namespace):

* ``<prefix><namespace>__events``: one item per event. The partition key ``pk``
  (S) is ``"<bucket>|<series>"`` where ``bucket = floor(time_us / bucket_us)``,
  so one partition holds one series' events of one bucket. The sort key ``sk``
  (B) is ``time_us + 2**63`` as 8 big-endian bytes followed by the event id's
  UTF-8 bytes: DynamoDB compares binary sort keys as unsigned bytes, which is
  exactly the order of ``(time_us, event_id)`` (UTF-8 byte order is code point
  order, and a shorter id that is a prefix of a longer one sorts first).
* ``<prefix><namespace>__buckets``: the bucket index. One item per non-empty
  ``(series, bucket)`` (``pk`` = ``"s|<series>"``, ``sk`` (N) = the bucket), so a
  read over a long, sparse range only visits buckets that hold events; plus one
  metadata item (``pk`` = ``"meta"``) that pins the namespace's bucket length.

Writes put the index items before the events (a crash in between leaves an
index item for an empty bucket, which costs a read one empty ``Query``; never an
event that reads cannot find). Retention is the core's: events carry DynamoDB's
TTL attribute ``exp`` so storage is eventually reclaimed, but DynamoDB deletes
days late (moto never), so ``timeseries.native_retention`` is not declared and
the core filters and purges.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import botocore.exceptions  # type: ignore[import-untyped]

from prism.errors import BackendError, InvalidArgument
from prism.spi import EventQuery, StoredEvent, TimeSeriesBackendType, TimeSeriesTraits
from prism_dynamodb.service import (
    DYNAMODB_ITEM_LIMIT,
    MAX_PARTITION_KEY_BYTES,
    MAX_SORT_KEY_BYTES,
    DynamoService,
    DynamoSettings,
    KiB,
    _error_code,
    _ttl_seconds,
    batch_write_with_retry,
)

if TYPE_CHECKING:
    from prism.config import NamespaceConfig

#: The time prefix of an event's sort key.
_TIME_BYTES = 8
_TIME_OFFSET = 2**63
#: The most event id bytes that fit a sort key after the time prefix.
MAX_EVENT_ID_BYTES = MAX_SORT_KEY_BYTES - _TIME_BYTES
#: Room for a bucket number (``-`` and 19 digits) and the ``|`` in a partition key.
_BUCKET_PK_OVERHEAD = 21
#: Room kept in an event item for the keys, the attribute names, the numbers
#: and the tags' length prefixes; the rest is the event's payload, tags and id.
_EVENT_OVERHEAD = 12 * KiB
MAX_EVENT_BYTES = DYNAMODB_ITEM_LIMIT - _EVENT_OVERHEAD

_META_PK = "meta"
_SERIES_PREFIX = "s|"


def _time_key(time_us: int) -> bytes:
    return (time_us + _TIME_OFFSET).to_bytes(_TIME_BYTES, "big")


def _position_key(time_us: int, event_id: str) -> bytes:
    return _time_key(time_us) + event_id.encode("utf-8")


def _position_of(sk: bytes) -> tuple[int, str]:
    return int.from_bytes(sk[:_TIME_BYTES], "big") - _TIME_OFFSET, sk[_TIME_BYTES:].decode("utf-8")


def _event_pk(series: str, bucket: int) -> str:
    # The bucket comes first and holds no '|', so the first '|' ends it: no two
    # (bucket, series) pairs share a partition key.
    return f"{bucket}|{series}"


def _index_pk(series: str) -> str:
    return _SERIES_PREFIX + series


def _encode_tags(tags: Sequence[tuple[str, str]]) -> bytes:
    """Tags as length-prefixed UTF-8 (4-byte big-endian lengths): exact, compact
    and free of any escaping, whatever characters the tags hold."""
    out = bytearray()
    for name, value in tags:
        for text in (name, value):
            raw = text.encode("utf-8")
            out += struct.pack(">I", len(raw))
            out += raw
    return bytes(out)


def _decode_tags(raw: bytes) -> tuple[tuple[str, str], ...]:
    texts: list[str] = []
    offset = 0
    while offset < len(raw):
        (size,) = struct.unpack_from(">I", raw, offset)
        offset += 4
        texts.append(raw[offset : offset + size].decode("utf-8"))
        offset += size
    return tuple(zip(texts[0::2], texts[1::2], strict=True))


def _event_to_ddb(series: str, bucket: int, event: StoredEvent, write_us: int) -> dict[str, Any]:
    # Empty payloads and tag lists are left out, and read back as empty.
    item: dict[str, Any] = {
        "pk": {"S": _event_pk(series, bucket)},
        "sk": {"B": _position_key(event.time_us, event.event_id)},
        "x": {"N": str(event.expires_at_us)},
        "exp": {"N": _ttl_seconds(event.expires_at_us)},
        "wu": {"N": str(write_us)},
    }
    if event.payload:
        item["p"] = {"B": bytes(event.payload)}
    if event.tags:
        item["tg"] = {"B": _encode_tags(event.tags)}
    return item


def _event_from_ddb(raw: dict[str, Any]) -> StoredEvent:
    time_us, event_id = _position_of(bytes(raw["sk"]["B"]))
    return StoredEvent(
        time_us=time_us,
        event_id=event_id,
        payload=bytes(raw["p"]["B"]) if "p" in raw else b"",
        tags=_decode_tags(bytes(raw["tg"]["B"])) if "tg" in raw else (),
        expires_at_us=int(raw["x"]["N"]),
    )


class DynamoTimeSeries(DynamoService):
    """The TimeSeries SPI on DynamoDB; see the module docstring for the tables."""

    def __init__(self, name: str, settings: DynamoSettings) -> None:
        super().__init__(name, settings)
        #: namespace -> bucket length in µs, pinned at provision.
        self._bucket_us: dict[str, int] = {}

    def _events_table(self, namespace: str) -> str:
        return self._table(namespace, "__events")

    def _index_table(self, namespace: str) -> str:
        return self._table(namespace, "__buckets")

    def _bucket_of(self, namespace: str) -> int:
        try:
            return self._bucket_us[namespace]
        except KeyError:
            raise BackendError(
                f"dynamodb backend {self.name!r}: namespace {namespace!r} was not provisioned"
            ) from None

    # -- provisioning --------------------------------------------------------------------

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        ts = config.timeseries
        bucket_us = int(ts.bucket.total_seconds()) * 1_000_000
        if self._bucket_us.get(namespace) == bucket_us:
            return
        if ts.max_event_id_bytes > MAX_EVENT_ID_BYTES:
            raise InvalidArgument(
                f"namespace {namespace!r}: timeseries.max_event_id_bytes is {ts.max_event_id_bytes}, but "
                f"the dynamodb backend {self.name!r} keeps the event id in a sort key, which holds at most "
                f"{MAX_EVENT_ID_BYTES} id bytes; set timeseries.max_event_id_bytes to {MAX_EVENT_ID_BYTES} "
                f"or less",
                namespace=namespace,
                field="timeseries.max_event_id_bytes",
            )
        if ts.max_series_name_bytes > MAX_PARTITION_KEY_BYTES - _BUCKET_PK_OVERHEAD:
            limit = MAX_PARTITION_KEY_BYTES - _BUCKET_PK_OVERHEAD
            raise InvalidArgument(
                f"namespace {namespace!r}: timeseries.max_series_name_bytes is {ts.max_series_name_bytes}, "
                f"but the dynamodb backend {self.name!r} keeps the series name in a partition key, which "
                f"holds at most {limit} name bytes; set timeseries.max_series_name_bytes to {limit} or less",
                namespace=namespace,
                field="timeseries.max_series_name_bytes",
            )
        events, index = self._events_table(namespace), self._index_table(namespace)
        await self._run(
            f"provisioning namespace {namespace!r}",
            self._ensure_tables,
            [(events, "B"), (index, "N")],
            [events, index],
        )
        await self._run(
            f"checking timeseries.bucket of namespace {namespace!r}",
            self._pin_bucket,
            namespace,
            index,
            bucket_us,
        )
        self._bucket_us[namespace] = bucket_us

    def _pin_bucket(self, namespace: str, index: str, bucket_us: int) -> None:
        """Store the bucket length in the namespace's metadata item, or check it
        against the stored one: events already written are only found under the
        bucket length they were written with."""
        key = {"pk": {"S": _META_PK}, "sk": {"N": "0"}}
        try:
            self._client.put_item(
                TableName=index,
                Item={**key, "bucket_us": {"N": str(bucket_us)}},
                ConditionExpression="attribute_not_exists(pk)",
            )
            return
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":
                raise
        stored = self._client.get_item(TableName=index, Key=key, ConsistentRead=True).get("Item")
        stored_us = int(stored["bucket_us"]["N"]) if stored else bucket_us
        if stored_us == bucket_us:
            return
        if not self._has_events(index):
            # Nothing written yet under the old length: the new one may take over.
            self._client.put_item(
                TableName=index,
                Item={**key, "bucket_us": {"N": str(bucket_us)}},
                ConditionExpression="bucket_us = :old",
                ExpressionAttributeValues={":old": {"N": str(stored_us)}},
            )
            return
        raise InvalidArgument(
            f"namespace {namespace!r}: timeseries.bucket is {bucket_us // 1_000_000}s, but its events in "
            f"dynamodb backend {self.name!r} were written with a bucket of {stored_us // 1_000_000}s and "
            f"can only be found under that one; set timeseries.bucket back to {stored_us // 1_000_000}s "
            f"(or move the data to a new namespace)",
            namespace=namespace,
            field="timeseries.bucket",
        )

    def _has_events(self, index: str) -> bool:
        """Whether the bucket index holds anything besides the metadata item."""
        start_key: dict[str, Any] | None = None
        while True:
            params: dict[str, Any] = {
                "TableName": index,
                "ConsistentRead": True,
                "Limit": 10,
                "ProjectionExpression": "pk",
            }
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            response = self._client.scan(**params)
            if any(raw["pk"]["S"] != _META_PK for raw in response.get("Items", [])):
                return True
            start_key = response.get("LastEvaluatedKey")
            if not start_key:
                return False

    # -- writes --------------------------------------------------------------------------

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        if not events:
            return
        bucket_us = self._bucket_of(namespace)
        self._check_series(namespace, series)
        for event in events:
            size = len(event.event_id.encode("utf-8"))
            if size > MAX_EVENT_ID_BYTES:
                raise BackendError(
                    f"dynamodb backend {self.name!r}: namespace {namespace!r}, series {series!r}: event id "
                    f"{event.event_id[:40]!r}... is {size} bytes; a DynamoDB sort key holds at most "
                    f"{MAX_EVENT_ID_BYTES}. Set timeseries.max_event_id_bytes to {MAX_EVENT_ID_BYTES} or less"
                )
        # One index item per bucket touched, put before the events (see the
        # module docstring). It expires when the last event its bucket can hold does.
        index_items: dict[int, dict[str, Any]] = {}
        event_puts: list[dict[str, Any]] = []
        for event in events:
            bucket = event.time_us // bucket_us
            if bucket not in index_items:
                retention_us = event.expires_at_us - event.time_us
                index_items[bucket] = {
                    "pk": {"S": _index_pk(series)},
                    "sk": {"N": str(bucket)},
                    "exp": {"N": _ttl_seconds((bucket + 1) * bucket_us + retention_us)},
                }
            event_puts.append({"PutRequest": {"Item": _event_to_ddb(series, bucket, event, write_us)}})
        index_puts = [{"PutRequest": {"Item": item}} for item in index_items.values()]
        await self._run(
            "BatchWriteItem (bucket index)",
            batch_write_with_retry,
            self._client,
            self._index_table(namespace),
            index_puts,
        )
        # Plain puts: a stored event at the same position is replaced, so the
        # later write wins. (BatchWriteItem carries no conditions; calls that
        # overlap in time have no order to keep, and each call has returned
        # before the next one of its caller starts.)
        await self._run(
            "BatchWriteItem (events)",
            batch_write_with_retry,
            self._client,
            self._events_table(namespace),
            event_puts,
        )

    def _check_series(self, namespace: str, series: str) -> None:
        size = len(series.encode("utf-8"))
        if size > MAX_PARTITION_KEY_BYTES - _BUCKET_PK_OVERHEAD:
            raise BackendError(
                f"dynamodb backend {self.name!r}: namespace {namespace!r}: series {series[:40]!r}... is "
                f"{size} bytes; DynamoDB partition keys hold at most "
                f"{MAX_PARTITION_KEY_BYTES - _BUCKET_PK_OVERHEAD} series name bytes here"
            )

    # -- reads ---------------------------------------------------------------------------

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        if query.limit <= 0 or query.start_us >= query.end_us:
            return []
        bucket_us = self._bucket_of(namespace)
        return await self._run(
            "Query",
            self._read,
            self._events_table(namespace),
            self._index_table(namespace),
            series,
            bucket_us,
            query,
        )

    def _read(
        self, events: str, index: str, series: str, bucket_us: int, query: EventQuery
    ) -> list[StoredEvent]:
        # Sort-key bounds, both inclusive (one key condition per Query allows
        # only one BETWEEN); the excluded ends are dropped by query.matches().
        low = _time_key(query.start_us)
        high = _time_key(query.end_us)
        first_us, last_us = query.start_us, query.end_us - 1
        if query.after is not None:
            after_key = _position_key(*query.after)
            if query.descending:
                high = min(high, after_key)
                last_us = min(last_us, query.after[0])
            else:
                # The smallest key strictly after after_key.
                low = max(low, after_key + b"\x00")
                first_us = max(first_us, query.after[0])
        if low > high or first_us > last_us:
            return []
        out: list[StoredEvent] = []
        for bucket in self._buckets(
            index, series, first_us // bucket_us, last_us // bucket_us, query.descending
        ):
            out.extend(self._read_bucket(events, series, bucket, low, high, query, query.limit - len(out)))
            if len(out) >= query.limit:
                break
        return out

    def _buckets(self, index: str, series: str, first: int, last: int, descending: bool) -> Iterator[int]:
        """The non-empty buckets of ``series`` in ``[first, last]``, in the read's order,
        one index page at a time (a read that fills its limit early stops early)."""
        start_key: dict[str, Any] | None = None
        while True:
            params: dict[str, Any] = {
                "TableName": index,
                "KeyConditionExpression": "pk = :p AND sk BETWEEN :lo AND :hi",
                "ExpressionAttributeValues": {
                    ":p": {"S": _index_pk(series)},
                    ":lo": {"N": str(first)},
                    ":hi": {"N": str(last)},
                },
                "ScanIndexForward": not descending,
                "ConsistentRead": True,
                "Limit": 100,
            }
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            response = self._client.query(**params)
            for raw in response.get("Items", []):
                yield int(raw["sk"]["N"])
            start_key = response.get("LastEvaluatedKey")
            if not start_key:
                return

    def _read_bucket(
        self,
        events: str,
        series: str,
        bucket: int,
        low: bytes,
        high: bytes,
        query: EventQuery,
        wanted: int,
    ) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        start_key: dict[str, Any] | None = None
        while len(out) < wanted:
            params: dict[str, Any] = {
                "TableName": events,
                "KeyConditionExpression": "pk = :p AND sk BETWEEN :lo AND :hi",
                "ExpressionAttributeValues": {
                    ":p": {"S": _event_pk(series, bucket)},
                    ":lo": {"B": low},
                    ":hi": {"B": high},
                },
                "ScanIndexForward": not query.descending,
                "ConsistentRead": True,
                # +2: the excluded ends of the BETWEEN may come back and be dropped.
                "Limit": min(wanted - len(out) + 2, 1000),
            }
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            response = self._client.query(**params)
            for raw in response.get("Items", []):
                event = _event_from_ddb(raw)
                if query.matches(event.position):
                    out.append(event)
                    if len(out) >= wanted:
                        break
            start_key = response.get("LastEvaluatedKey")
            if not start_key:
                break
        return out

    # -- purge ---------------------------------------------------------------------------

    async def purge(self, namespace: str, before_us: int, series: str | None = None) -> None:
        bucket_us = self._bucket_of(namespace)
        await self._run(
            f"purging namespace {namespace!r}",
            self._purge,
            self._events_table(namespace),
            self._index_table(namespace),
            bucket_us,
            before_us,
            series,
        )

    def _purge(self, events: str, index: str, bucket_us: int, before_us: int, series: str | None) -> None:
        # The last bucket that may hold an event before before_us.
        last = (before_us - 1) // bucket_us
        for name, bucket in self._old_buckets(index, series, last):
            whole = (bucket + 1) * bucket_us <= before_us
            high = None if whole else _time_key(before_us)
            self._delete_events(events, _event_pk(name, bucket), high)
            if whole:
                # After the events: a crash in between leaves an index item that
                # the next purge finds again, never orphaned events. A write
                # racing with this can only be of events older than before_us,
                # which the core refuses (past retention) or filters anyway.
                self._client.delete_item(
                    TableName=index, Key={"pk": {"S": _index_pk(name)}, "sk": {"N": str(bucket)}}
                )

    def _old_buckets(self, index: str, series: str | None, last: int) -> Iterator[tuple[str, int]]:
        """``(series, bucket)`` of the index items with ``bucket <= last``: a Query
        for one series, a Scan of the index for the whole namespace."""
        start_key: dict[str, Any] | None = None
        while True:
            params: dict[str, Any] = {"TableName": index, "ConsistentRead": True}
            if series is not None:
                params["KeyConditionExpression"] = "pk = :p AND sk <= :last"
                params["ExpressionAttributeValues"] = {
                    ":p": {"S": _index_pk(series)},
                    ":last": {"N": str(last)},
                }
            else:
                params["FilterExpression"] = "begins_with(pk, :s) AND sk <= :last"
                params["ExpressionAttributeValues"] = {
                    ":s": {"S": _SERIES_PREFIX},
                    ":last": {"N": str(last)},
                }
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            response = self._client.query(**params) if series is not None else self._client.scan(**params)
            # Materialised per page: the caller deletes what it yields, and a
            # Query page is read before any of its items are deleted.
            page = [
                (raw["pk"]["S"][len(_SERIES_PREFIX) :], int(raw["sk"]["N"]))
                for raw in response.get("Items", [])
            ]
            yield from page
            start_key = response.get("LastEvaluatedKey")
            if not start_key:
                return

    def _delete_events(self, events: str, pk: str, high: bytes | None) -> None:
        """Delete the events of one partition, those with ``sk < high`` if given."""
        condition = "pk = :p"
        values: dict[str, Any] = {":p": {"S": pk}}
        if high is not None:
            condition += " AND sk < :hi"
            values[":hi"] = {"B": high}
        self._delete_queried(events, condition, values)


def _traits(settings: DynamoSettings) -> TimeSeriesTraits:
    return TimeSeriesTraits(
        durability="durable",
        # An event is one item: payload, tags and id must fit DynamoDB's 400 KB
        # item limit with room for the keys and attribute names.
        max_event_bytes=MAX_EVENT_BYTES,
    )


TIMESERIES = TimeSeriesBackendType(
    settings_type=DynamoSettings,
    create=DynamoTimeSeries,
    # No timeseries.native_retention: events carry a TTL attribute, but DynamoDB
    # deletes expired items up to days late (moto never), so the core filters
    # old events out of reads and purges them.
    capabilities=frozenset(),
    traits=_traits,
    description="durable TimeSeries on Amazon DynamoDB (boto3): a partition per series and time bucket, "
    "a bucket index for sparse series",
)
