"""The baseline for the embedded dynamodb scenarios: boto3 itself, making the
DynamoDB calls the ``dynamodb`` plugin makes for each operation, and nothing else.

The client is configured as the plugin configures it (the same timeouts,
standard retries, connection pool) and, like the plugin and like any asyncio
program using boto3, every call runs on a pool of worker threads
(``max_connections``, 16). The plugin's table layout, chunk keys and batch
helpers (``_chunk_prefix``, ``_chunk_sk``, ``batch_get_with_retry``,
``batch_write_with_retry``) are imported, not copied. Per operation:

* get: one ``BatchGetItem`` (``ConsistentRead``) of the keys;
* range get: one ``Query`` on the sort key (``BETWEEN``, ``ConsistentRead``,
  ``Limit`` as the plugin computes it);
* put: ``UpdateItem`` of the record's index entry, one conditional ``PutItem``
  per row (last write wins, ``ReturnValues=ALL_OLD``) in parallel on the pool,
  ``UpdateItem`` of the index entry again, as the plugin does to keep
  ``scan_records`` right without transactions;
* 1 MiB put: one ``BatchWriteItem`` of the chunks, then the row as above, then
  the replaced chunk set found (keys-only ``Query``) and deleted (``BatchWriteItem``);
* 1 MiB get: ``BatchGetItem`` of the row, then a ``Query`` of its chunks (two
  pages: one answer stops at 1 MB).

What is *not* here is Prism's cost: validation, versions, TTL and tombstone
filtering, paging, the SPI's row objects, the core's checks around chunks.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3  # type: ignore[import-untyped]
import botocore.config  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]

from prism_dynamodb.keyvalue import _chunk_prefix, _chunk_sk, batch_get_with_retry, batch_write_with_retry

_T = TypeVar("_T")
_RECORDS_PK = "records"  # the plugin's records-index partition


class RawDynamo:
    """A boto3 client and thread pool on the plugin's tables for one namespace."""

    def __init__(
        self, endpoint_url: str, table_prefix: str, namespace: str, *, max_connections: int = 16
    ) -> None:
        config = botocore.config.Config(
            connect_timeout=5.0,
            read_timeout=10.0,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=max_connections,
        )
        session = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        )
        self.client: Any = session.client("dynamodb", endpoint_url=endpoint_url, config=config)
        base = f"{table_prefix}{namespace}"
        self.items, self.chunks, self.records = base, f"{base}__chunks", f"{base}__records"
        self._executor = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="raw-dynamodb")

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.client.close()

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # -- the operations the scenarios time ----------------------------------------------

    def _batch_get(self, record_id: str, keys: Sequence[bytes]) -> dict[bytes, dict[str, Any]]:
        wanted = [{"pk": {"S": record_id}, "sk": {"B": key}} for key in sorted(set(keys))]
        return {bytes(raw["sk"]["B"]): raw for raw in batch_get_with_retry(self.client, self.items, wanted)}

    async def get(self, record_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        rows = await self._run(self._batch_get, record_id, keys)
        return {key: bytes(raw["v"]["B"]) if "v" in raw else b"" for key, raw in rows.items()}

    def _query(self, record_id: str, start: bytes, end: bytes, limit: int) -> list[bytes]:
        response = self.client.query(
            TableName=self.items,
            KeyConditionExpression="#pk = :p AND #sk BETWEEN :lo AND :hi",
            ExpressionAttributeNames={"#pk": "pk", "#sk": "sk"},
            ExpressionAttributeValues={":p": {"S": record_id}, ":lo": {"B": start}, ":hi": {"B": end}},
            ConsistentRead=True,
            # The core asks for limit + 1 rows; the plugin asks DynamoDB for 2 more.
            Limit=limit + 3,
        )
        rows = [raw for raw in response.get("Items", []) if bytes(raw["sk"]["B"]) < end]
        return [bytes(raw["v"]["B"]) for raw in rows[: limit + 1]]

    async def get_range(self, record_id: str, start: bytes, end: bytes, limit: int) -> list[bytes]:
        return (await self._run(self._query, record_id, start, end, limit))[:limit]

    def _touch(self, record_id: str) -> None:
        self.client.update_item(
            TableName=self.records,
            Key={"pk": {"S": _RECORDS_PK}, "sk": {"B": record_id.encode("utf-8")}},
            UpdateExpression="SET #tok = :t",
            ExpressionAttributeNames={"#tok": "tok"},
            ExpressionAttributeValues={":t": {"S": uuid.uuid4().hex}},
        )

    def _put_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Conditional put: only a strictly newer version replaces the stored row."""
        try:
            response = self.client.put_item(
                TableName=self.items,
                Item=row,
                ConditionExpression="attribute_not_exists(#pk) OR #vu < :v OR "
                "(#vu = :v AND (attribute_not_exists(#vn) OR #vn < :n))",
                ExpressionAttributeNames={"#pk": "pk", "#vu": "vu", "#vn": "vn"},
                ExpressionAttributeValues={":v": row["vu"], ":n": row["vn"]},
                ReturnValues="ALL_OLD",
            )
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise
        old: dict[str, Any] | None = response.get("Attributes")
        return old

    async def _write_rows(self, record_id: str, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        await self._run(self._touch, record_id)
        try:
            olds = await asyncio.gather(*(self._run(self._put_row, row) for row in rows))
        finally:
            await self._run(self._touch, record_id)
        return [old for old in olds if old is not None]

    @staticmethod
    def _row(record_id: str, key: bytes, value: bytes, **chunked: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "pk": {"S": record_id},
            "sk": {"B": key},
            "vu": {"N": str(time.time_ns() // 1000)},
            "vn": {"S": "~raw-" + os.urandom(6).hex()},
            "tomb": {"BOOL": False},
            "cc": {"N": str(chunked.get("chunk_count", 0))},
            "vs": {"N": str(chunked.get("size", len(value)))},
        }
        if value:
            row["v"] = {"B": value}
        if chunked.get("chunk_set"):
            row["cs"] = {"S": chunked["chunk_set"]}
        return row

    async def put(self, record_id: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        await self._write_rows(record_id, [self._row(record_id, key, value) for key, value in items])

    def _write_chunks(self, record_id: str, key: bytes, chunk_set: str, chunks: Sequence[bytes]) -> None:
        prefix = _chunk_prefix(key, chunk_set)
        requests = [
            {
                "PutRequest": {
                    "Item": {"pk": {"S": record_id}, "sk": {"B": _chunk_sk(prefix, i)}, "d": {"B": chunk}}
                }
            }
            for i, chunk in enumerate(chunks)
        ]
        batch_write_with_retry(self.client, self.chunks, requests)

    def _chunk_query(self, record_id: str, low: bytes, high: bytes, keys_only: bool) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "TableName": self.chunks,
            "KeyConditionExpression": "#pk = :p AND #sk BETWEEN :lo AND :hi",
            "ExpressionAttributeNames": {"#pk": "pk", "#sk": "sk"},
            "ExpressionAttributeValues": {":p": {"S": record_id}, ":lo": {"B": low}, ":hi": {"B": high}},
            "ConsistentRead": True,
        }
        if keys_only:
            params["ProjectionExpression"] = "#pk, #sk"
        items: list[dict[str, Any]] = []
        while True:  # one Query answers at most 1 MB: 1 MiB of chunks takes two
            response = self.client.query(**params)
            items += response.get("Items", [])
            if not response.get("LastEvaluatedKey"):
                return items
            params["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _delete_chunks(self, record_id: str, key: bytes, chunk_set: str) -> None:
        prefix = _chunk_prefix(key, chunk_set)
        found = self._chunk_query(record_id, _chunk_sk(prefix, 0), _chunk_sk(prefix, 0xFFFFFFFF), True)
        requests = [{"DeleteRequest": {"Key": {"pk": raw["pk"], "sk": raw["sk"]}}} for raw in found]
        if requests:
            batch_write_with_retry(self.client, self.chunks, requests)

    async def put_chunked(self, record_id: str, key: bytes, value: bytes, chunk_bytes: int) -> None:
        chunk_set = os.urandom(12).hex()
        chunks = [value[i : i + chunk_bytes] for i in range(0, len(value), chunk_bytes)]
        await self._run(self._write_chunks, record_id, key, chunk_set, chunks)
        row = self._row(record_id, key, b"", chunk_count=len(chunks), chunk_set=chunk_set, size=len(value))
        for old in await self._write_rows(record_id, [row]):
            if int(old.get("cc", {}).get("N", "0")):
                await self._run(self._delete_chunks, record_id, key, old["cs"]["S"])

    def _load(self, record_id: str, key: bytes) -> bytes:
        raw = self._batch_get(record_id, [key])[key]
        count = int(raw["cc"]["N"])
        if not count:
            return bytes(raw["v"]["B"]) if "v" in raw else b""
        prefix = _chunk_prefix(key, raw["cs"]["S"])
        rows = self._chunk_query(record_id, _chunk_sk(prefix, 0), _chunk_sk(prefix, count - 1), False)
        return b"".join(bytes(r["d"]["B"]) for r in rows)

    async def get_chunked(self, record_id: str, key: bytes) -> bytes:
        return await self._run(self._load, record_id, key)
