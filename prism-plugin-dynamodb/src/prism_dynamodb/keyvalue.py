"""The ``dynamodb`` KeyValue backend: rows in Amazon DynamoDB, through boto3.

Data model (three tables per namespace, all with a string partition key ``pk``
and a binary sort key ``sk``):

* ``<prefix><namespace>``: one DynamoDB item per Prism row. ``pk`` is the record
  id and ``sk`` the item key, so a record is one partition and a range read is
  one ``Query`` on the sort key. DynamoDB compares binary sort keys as unsigned
  bytes, which is exactly the SPI's key order.
* ``<prefix><namespace>__chunks``: the chunks of values above ``max_item_bytes``.
  ``pk`` is the record id and ``sk`` is ``sha256(key) + chunk_set + 0x00 +
  index (4 bytes, big-endian)``. Chunks live in their own table so that range
  reads over items never see them, and the key is hashed so that a chunk's sort
  key stays under DynamoDB's 1024-byte limit whatever the item key's length.
* ``<prefix><namespace>__records``: the index behind ``scan_records``. One
  constant partition, ``sk`` = the record id's UTF-8 bytes, so listing records
  in UTF-8 order is a ``Query``. DynamoDB itself has no ordered list of
  partition keys. See :meth:`DynamoKeyValue.write` for how the index is kept
  correct without transactions.

Last-write-wins is decided by DynamoDB: every row is stored by a ``PutItem``
whose ``ConditionExpression`` only lets a strictly newer version through.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import botocore.exceptions  # type: ignore[import-untyped]

from prism import capabilities
from prism.errors import BackendError
from prism.spi import KeyValueBackendType, KeyValueTraits, ReadQuery, StoredItem, Version
from prism_dynamodb.service import (
    MAX_SORT_KEY_BYTES,
    DynamoService,
    _error_code,
    _ttl_seconds,
)
from prism_dynamodb.service import DynamoSettings as DynamoSettings
from prism_dynamodb.service import batch_write_with_retry as batch_write_with_retry

#: BatchGetItem takes at most 100 keys.
_BATCH_GET = 100

#: The records index keeps every record id under this one partition key.
_RECORDS_PK = "records"

#: Names used in every expression; "#v"-style placeholders keep clear of
#: DynamoDB's long list of reserved words.
_NAMES = {"#pk": "pk", "#sk": "sk", "#vu": "vu", "#vn": "vn"}


@attrs.frozen
class _Tables:
    items: str
    chunks: str
    records: str


def _row_to_ddb(record_id: str, item: StoredItem) -> dict[str, Any]:
    # Empty strings and binaries are left out rather than stored: older
    # DynamoDB-compatible servers refuse them, and absence reads back as empty.
    row: dict[str, Any] = {
        "pk": {"S": record_id},
        "sk": {"B": bytes(item.key)},
        "vu": {"N": str(item.version.micros)},
        "tomb": {"BOOL": item.tombstone},
        "cc": {"N": str(item.chunk_count)},
        "vs": {"N": str(item.value_size)},
    }
    if item.value:
        row["v"] = {"B": bytes(item.value)}
    if item.version.nonce:
        row["vn"] = {"S": item.version.nonce}
    if item.chunk_set:
        row["cs"] = {"S": item.chunk_set}
    if item.expires_at_us is not None:
        row["exu"] = {"N": str(item.expires_at_us)}
        row["exp"] = {"N": _ttl_seconds(item.expires_at_us)}
    return row


def _row_from_ddb(raw: dict[str, Any]) -> StoredItem:
    expires = raw.get("exu")
    return StoredItem(
        key=bytes(raw["sk"]["B"]),
        value=bytes(raw["v"]["B"]) if "v" in raw else b"",
        version=Version(int(raw["vu"]["N"]), raw["vn"]["S"] if "vn" in raw else ""),
        expires_at_us=int(expires["N"]) if expires is not None else None,
        tombstone=bool(raw.get("tomb", {}).get("BOOL", False)),
        chunk_count=int(raw["cc"]["N"]) if "cc" in raw else 0,
        chunk_set=raw["cs"]["S"] if "cs" in raw else "",
        value_size=int(raw["vs"]["N"]) if "vs" in raw else 0,
    )


def _lww_condition(version: Version) -> tuple[str, dict[str, Any]]:
    """The condition that lets a row with ``version`` replace the stored one:
    no stored row, or a strictly older ``(ver_us, ver_nonce)``. DynamoDB
    compares strings by their UTF-8 bytes, which orders like Python's ``str``."""
    values: dict[str, Any] = {":v": {"N": str(version.micros)}}
    condition = "attribute_not_exists(#pk) OR #vu < :v"
    if version.nonce:
        # A stored empty nonce is an absent attribute, smaller than any other.
        condition += " OR (#vu = :v AND (attribute_not_exists(#vn) OR #vn < :n))"
        values[":n"] = {"S": version.nonce}
    return condition, values


def _chunk_prefix(key: bytes, chunk_set: str) -> bytes:
    # 0x00 ends the chunk set id so that no set's keys are a prefix range of another's.
    return hashlib.sha256(key).digest() + chunk_set.encode("utf-8") + b"\x00"


def _chunk_sk(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


def batch_get_with_retry(
    client: Any,
    table: str,
    keys: Sequence[dict[str, Any]],
    *,
    max_rounds: int = 8,
    first_pause: float = 0.05,
    max_pause: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """BatchGetItem (strongly consistent) of ``keys``, 100 at a time, resending
    ``UnprocessedKeys`` with backoff (DynamoDB returns them past 16 MB of
    results or under throttling)."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(keys), _BATCH_GET):
        batch = list(keys[start : start + _BATCH_GET])
        pause = first_pause
        stalled = 0
        while batch:
            response = client.batch_get_item(RequestItems={table: {"Keys": batch, "ConsistentRead": True}})
            found = response.get("Responses", {}).get(table, [])
            out.extend(found)
            unprocessed = list(response.get("UnprocessedKeys", {}).get(table, {}).get("Keys", []))
            if not unprocessed:
                break
            if found:
                stalled, pause = 0, first_pause
            else:
                stalled += 1
                if stalled >= max_rounds:
                    raise BackendError(
                        f"DynamoDB left {len(unprocessed)} reads of {table!r} unprocessed after "
                        f"{max_rounds} attempts with backoff; the table is throttled, retry later"
                    )
            sleep(pause)
            pause = min(pause * 2, max_pause)
            batch = unprocessed
    return out


class DynamoKeyValue(DynamoService):
    """The KeyValue SPI on DynamoDB; see the module docstring for the tables,
    and :class:`~prism_dynamodb.service.DynamoService` for the threading."""

    def __init__(self, name: str, settings: DynamoSettings) -> None:
        super().__init__(name, settings)
        self._provisioned: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------

    def _tables(self, namespace: str) -> _Tables:
        # The shortest and the longest name are checked first, as the one in
        # between is valid when both are.
        items, records = self._table(namespace, ""), self._table(namespace, "__records")
        return _Tables(items=items, chunks=self._table(namespace, "__chunks"), records=records)

    def _check_key(self, key: bytes) -> None:
        if len(key) > MAX_SORT_KEY_BYTES:
            raise BackendError(
                f"dynamodb backend {self.name!r}: key {bytes(key[:32])!r}... is {len(key)} bytes; DynamoDB "
                f"sort keys stop at {MAX_SORT_KEY_BYTES} bytes. Set limits.max_key_bytes to "
                f"{MAX_SORT_KEY_BYTES} or less for namespaces on this backend"
            )

    def _check_record_id(self, record_id: str) -> None:
        size = len(record_id.encode("utf-8"))
        if size > MAX_SORT_KEY_BYTES:
            raise BackendError(
                f"dynamodb backend {self.name!r}: record id {record_id[:40]!r}... is {size} bytes; the "
                f"records index keeps ids as DynamoDB sort keys, which stop at {MAX_SORT_KEY_BYTES} bytes. "
                f"Set limits.max_key_bytes to {MAX_SORT_KEY_BYTES} or less for namespaces on this backend"
            )

    # -- provisioning --------------------------------------------------------------------

    async def provision(self, namespace: str) -> None:
        if namespace in self._provisioned:
            return
        tables = self._tables(namespace)
        await self._run(f"provisioning namespace {namespace!r}", self._provision, tables)
        self._provisioned.add(namespace)

    def _provision(self, tables: _Tables) -> None:
        # Expired rows are filtered by the core at once; DynamoDB's TTL only
        # deletes them eventually (hours to days late), which saves storage.
        self._ensure_tables(
            [(tables.items, "B"), (tables.chunks, "B"), (tables.records, "B")],
            [tables.items, tables.chunks],
        )

    # -- rows ------------------------------------------------------------------------------

    async def write(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        if atomic:
            # Not declared (see KEYVALUE below), so the core never asks; refuse
            # rather than quietly applying rows one by one.
            raise BackendError(f"dynamodb backend {self.name!r} does not support atomic writes")
        if not items:
            return []
        self._check_record_id(record_id)
        for item in items:
            self._check_key(item.key)
        tables = self._tables(namespace)
        # The records index is touched before the rows (so a crash after a row
        # write never leaves a row that scan cannot find) and again after them
        # with a fresh token. scan_records drops an entry only if its record is
        # empty *and* the token it read before checking is still there: a write
        # racing with that clean-up either lands before the emptiness check
        # (the record is not empty) or re-touches the entry after it (the token
        # changed, so the conditional delete fails, or the entry is recreated).
        await self._run("updating the records index", self._touch_record, tables.records, record_id)
        try:
            results = await asyncio.gather(
                *(self._run("PutItem", self._put_row, tables.items, record_id, item) for item in items)
            )
        finally:
            await self._run("updating the records index", self._touch_record, tables.records, record_id)
        return [old for old in results if old is not None and old.chunk_count > 0]

    def _touch_record(self, table: str, record_id: str) -> None:
        self._client.update_item(
            TableName=table,
            Key={"pk": {"S": _RECORDS_PK}, "sk": {"B": record_id.encode("utf-8")}},
            UpdateExpression="SET #tok = :t",
            ExpressionAttributeNames={"#tok": "tok"},
            ExpressionAttributeValues={":t": {"S": uuid.uuid4().hex}},
        )

    def _put_row(self, table: str, record_id: str, item: StoredItem) -> StoredItem | None:
        """Store ``item`` if it is newer; return the row it replaced, if any."""
        condition, values = _lww_condition(item.version)
        names = {k: v for k, v in _NAMES.items() if k in condition}
        try:
            response = self._client.put_item(
                TableName=table,
                Item=_row_to_ddb(record_id, item),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                # The replaced row comes back from the same atomic write, so
                # the chunk sets it pointed at are reported exactly.
                ReturnValues="ALL_OLD",
            )
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return None  # the stored row is as new or newer: last write wins
            raise
        old = response.get("Attributes")
        return _row_from_ddb(old) if old else None

    async def read(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        if query.limit <= 0:
            return []
        tables = self._tables(namespace)
        if query.keys is not None:
            return await self._run("BatchGetItem", self._read_keys, tables.items, record_id, query)
        return await self._run("Query", self._read_range, tables.items, record_id, query)

    def _read_keys(self, table: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        assert query.keys is not None
        # Keys longer than a sort key can hold were never stored.
        wanted = sorted(
            {bytes(k) for k in query.keys if query.matches(bytes(k)) and len(k) <= MAX_SORT_KEY_BYTES}
        )
        if not wanted:
            return []
        keys = [{"pk": {"S": record_id}, "sk": {"B": key}} for key in wanted]
        rows = [_row_from_ddb(raw) for raw in batch_get_with_retry(self._client, table, keys)]
        rows.sort(key=lambda row: row.key)
        return rows[: query.limit]

    def _read_range(self, table: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        lower, lower_exclusive = query.start, False
        if query.after is not None and (lower is None or query.after >= lower):
            lower, lower_exclusive = query.after, True
        upper = query.end
        # Item keys are never empty, and DynamoDB refuses an empty binary key
        # value, so an empty bound is dropped (lower) or selects nothing (upper).
        if lower == b"":
            lower = None
        if upper == b"":
            return []
        condition = "#pk = :p"
        values: dict[str, Any] = {":p": {"S": record_id}}
        if lower is not None and upper is not None:
            if lower >= upper:
                return []
            # One sort-key condition per Query: BETWEEN is inclusive at both
            # ends, and query.matches() drops the excluded end keys below.
            condition += " AND #sk BETWEEN :lo AND :hi"
            values[":lo"], values[":hi"] = {"B": bytes(lower)}, {"B": bytes(upper)}
        elif lower is not None:
            condition += " AND #sk > :lo" if lower_exclusive else " AND #sk >= :lo"
            values[":lo"] = {"B": bytes(lower)}
        elif upper is not None:
            condition += " AND #sk < :hi"
            values[":hi"] = {"B": bytes(upper)}
        out: list[StoredItem] = []
        start_key: dict[str, Any] | None = None
        while len(out) < query.limit:
            params: dict[str, Any] = {
                "TableName": table,
                "KeyConditionExpression": condition,
                "ExpressionAttributeNames": {"#pk": "pk", "#sk": "sk"}
                if "#sk" in condition
                else {"#pk": "pk"},
                "ExpressionAttributeValues": values,
                "ConsistentRead": True,
                # +2: the excluded ends of a BETWEEN may come back and be dropped.
                "Limit": min(query.limit - len(out) + 2, 1000),
            }
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            response = self._client.query(**params)
            for raw in response.get("Items", []):
                row = _row_from_ddb(raw)
                if query.matches(row.key):
                    out.append(row)
                    if len(out) >= query.limit:
                        break
            start_key = response.get("LastEvaluatedKey")
            if not start_key:
                break
        return out

    async def remove(self, namespace: str, record_id: str, rows: Sequence[tuple[bytes, Version]]) -> None:
        if not rows:
            return
        table = self._tables(namespace).items
        await asyncio.gather(
            *(
                self._run("DeleteItem", self._remove_row, table, record_id, bytes(key), version)
                for key, version in rows
                if len(key) <= MAX_SORT_KEY_BYTES
            )
        )

    def _remove_row(self, table: str, record_id: str, key: bytes, version: Version) -> None:
        # Only the exact version: a newer write that landed since the core
        # decided to purge must survive.
        values: dict[str, Any] = {":v": {"N": str(version.micros)}}
        if version.nonce:
            condition = "#vu = :v AND #vn = :n"
            values[":n"] = {"S": version.nonce}
        else:
            condition = "#vu = :v AND attribute_not_exists(#vn)"
        try:
            self._client.delete_item(
                TableName=table,
                Key={"pk": {"S": record_id}, "sk": {"B": key}},
                ConditionExpression=condition,
                ExpressionAttributeNames={"#vu": "vu", "#vn": "vn"},
                ExpressionAttributeValues=values,
            )
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":
                raise

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        if limit <= 0:
            return []
        tables = self._tables(namespace)
        return await self._run("Query (records index)", self._scan, tables, after, limit)

    def _scan(self, tables: _Tables, after: str | None, limit: int) -> list[str]:
        condition = "#pk = :p"
        values: dict[str, Any] = {":p": {"S": _RECORDS_PK}}
        names = {"#pk": "pk"}
        if after:
            condition += " AND #sk > :a"
            values[":a"] = {"B": after.encode("utf-8")}
            names["#sk"] = "sk"
        out: list[str] = []
        start_key: dict[str, Any] | None = None
        while len(out) < limit:
            params: dict[str, Any] = {
                "TableName": tables.records,
                "KeyConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
                "ConsistentRead": True,
                "Limit": min(limit - len(out), 1000),
            }
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            response = self._client.query(**params)
            for raw in response.get("Items", []):
                record_id = bytes(raw["sk"]["B"]).decode("utf-8")
                token = raw.get("tok", {}).get("S")
                # The token is read (above) strictly before the emptiness check;
                # see write() for why that makes the clean-up safe.
                if self._record_has_rows(tables.items, record_id):
                    out.append(record_id)
                    if len(out) >= limit:
                        break
                elif token is not None:
                    self._drop_index_entry(tables.records, record_id, token)
            start_key = response.get("LastEvaluatedKey")
            if not start_key:
                break
        return out

    def _record_has_rows(self, table: str, record_id: str) -> bool:
        response = self._client.query(
            TableName=table,
            KeyConditionExpression="#pk = :p",
            ExpressionAttributeNames={"#pk": "pk"},
            ExpressionAttributeValues={":p": {"S": record_id}},
            ConsistentRead=True,
            Limit=1,
            ProjectionExpression="#pk",
        )
        return bool(response.get("Items"))

    def _drop_index_entry(self, table: str, record_id: str, token: str) -> None:
        try:
            self._client.delete_item(
                TableName=table,
                Key={"pk": {"S": _RECORDS_PK}, "sk": {"B": record_id.encode("utf-8")}},
                ConditionExpression="#tok = :t",
                ExpressionAttributeNames={"#tok": "tok"},
                ExpressionAttributeValues={":t": {"S": token}},
            )
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":
                raise

    # -- chunks ------------------------------------------------------------------------------

    async def write_chunks(
        self,
        namespace: str,
        record_id: str,
        key: bytes,
        chunk_set: str,
        chunks: Sequence[bytes],
        expires_at_us: int | None,
    ) -> None:
        table = self._tables(namespace).chunks
        prefix = _chunk_prefix(bytes(key), chunk_set)
        requests: list[dict[str, Any]] = []
        for index, chunk in enumerate(chunks):
            row: dict[str, Any] = {"pk": {"S": record_id}, "sk": {"B": _chunk_sk(prefix, index)}}
            if chunk:
                row["d"] = {"B": bytes(chunk)}
            if expires_at_us is not None:
                # Chunks carry the row's TTL so DynamoDB eventually cleans up
                # sets whose row expired, even if the core never purges them.
                row["exp"] = {"N": _ttl_seconds(expires_at_us)}
            requests.append({"PutRequest": {"Item": row}})
        # Chunks need no condition: nothing reads a chunk set until the row
        # pointing at it wins, so plain batched puts are safe and cheapest.
        await self._run("BatchWriteItem (chunks)", batch_write_with_retry, self._client, table, requests)

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, chunk_set: str, count: int
    ) -> list[bytes]:
        if count <= 0:
            return []
        table = self._tables(namespace).chunks
        prefix = _chunk_prefix(bytes(key), chunk_set)
        return await self._run("Query (chunks)", self._read_chunks, table, record_id, prefix, count)

    def _read_chunks(self, table: str, record_id: str, prefix: bytes, count: int) -> list[bytes]:
        out: list[bytes] = []
        for index, raw in self._chunk_rows(
            table, record_id, _chunk_sk(prefix, 0), _chunk_sk(prefix, count - 1)
        ):
            # Only the unbroken run from chunk 0: a gap means the set is being
            # deleted, and the core must not stitch a value around it.
            if index != len(out):
                break
            out.append(bytes(raw["d"]["B"]) if "d" in raw else b"")
        return out

    def _chunk_rows(
        self, table: str, record_id: str, low: bytes, high: bytes, *, keys_only: bool = False
    ) -> Iterable[tuple[int, dict[str, Any]]]:
        start_key: dict[str, Any] | None = None
        while True:
            params: dict[str, Any] = {
                "TableName": table,
                "KeyConditionExpression": "#pk = :p AND #sk BETWEEN :lo AND :hi",
                "ExpressionAttributeNames": {"#pk": "pk", "#sk": "sk"},
                "ExpressionAttributeValues": {":p": {"S": record_id}, ":lo": {"B": low}, ":hi": {"B": high}},
                "ConsistentRead": True,
            }
            if keys_only:
                params["ProjectionExpression"] = "#pk, #sk"
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            response = self._client.query(**params)
            for raw in response.get("Items", []):
                yield int.from_bytes(bytes(raw["sk"]["B"])[-4:], "big"), raw
            start_key = response.get("LastEvaluatedKey")
            if not start_key:
                return

    async def delete_chunks(self, namespace: str, record_id: str, key: bytes, chunk_set: str) -> None:
        table = self._tables(namespace).chunks
        prefix = _chunk_prefix(bytes(key), chunk_set)
        await self._run("deleting chunks", self._delete_chunks, table, record_id, prefix)

    def _delete_chunks(self, table: str, record_id: str, prefix: bytes) -> None:
        low, high = _chunk_sk(prefix, 0), _chunk_sk(prefix, 0xFFFFFFFF)
        requests = [
            {"DeleteRequest": {"Key": {"pk": raw["pk"], "sk": raw["sk"]}}}
            for _, raw in self._chunk_rows(table, record_id, low, high, keys_only=True)
        ]
        if requests:
            batch_write_with_retry(self._client, table, requests)


def _traits(settings: DynamoSettings) -> KeyValueTraits:
    return KeyValueTraits(
        durability="durable",
        # Every read is ConsistentRead=True, and each row's write is one
        # conditional PutItem: a read after a write sees it.
        consistency="strong",
        max_item_bytes=settings.max_item_bytes,
        max_value_bytes=settings.max_value_bytes,
        # Item keys are sort keys here and record ids are sort keys of the
        # records index: the core refuses longer ones before they get here.
        max_key_bytes=MAX_SORT_KEY_BYTES,
    )


KEYVALUE = KeyValueBackendType(
    settings_type=DynamoSettings,
    create=DynamoKeyValue,
    # kv.scan: through the records index table.
    # No kv.atomic_mutate: TransactWriteItems could apply the rows together,
    # but DynamoDB's Query and BatchGetItem only give read-committed isolation
    # per item, so a range read can observe part of a transaction; readers
    # would not see "all or none". The core refuses mutate_items instead.
    # No kv.native_ttl: DynamoDB's TTL deletes hours to days late (moto never),
    # so the core filters expired rows and purges them with remove().
    capabilities=frozenset({capabilities.KV_SCAN}),
    traits=_traits,
    description="durable KeyValue on Amazon DynamoDB (boto3): conditional-write LWW, native pagination",
)
