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
import functools
import hashlib
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Literal, TypeVar

import attrs
import boto3  # type: ignore[import-untyped]
import botocore.config  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]

from prism import capabilities
from prism.errors import BackendError
from prism.log import get_logger
from prism.spi import KeyValueBackendType, KeyValueTraits, ReadQuery, StoredItem, Version
from prism.units import ByteSize

_T = TypeVar("_T")

KiB = 1024
MiB = 1024 * KiB

#: DynamoDB's hard limit for one item, attribute names and values included.
DYNAMODB_ITEM_LIMIT = 400 * KiB
#: Room kept for everything in an item besides the value: the record id (up to
#: 2048 bytes), the key (up to 1024), the attribute names and the numbers.
_ITEM_OVERHEAD = 8 * KiB
#: DynamoDB's limit on a binary sort key.
MAX_SORT_KEY_BYTES = 1024

#: BatchGetItem takes at most 100 keys, BatchWriteItem at most 25 requests.
_BATCH_GET = 100
_BATCH_WRITE = 25

#: The records index keeps every record id under this one partition key.
_RECORDS_PK = "records"

#: Table names allow only these characters; namespaces are validated by the
#: core already, the prefix is checked here.
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")

#: Names used in every expression; "#v"-style placeholders keep clear of
#: DynamoDB's long list of reserved words.
_NAMES = {"#pk": "pk", "#sk": "sk", "#vu": "vu", "#vn": "vn"}

#: TTL statuses that need no UpdateTimeToLive.
_TTL_ON = frozenset({"ENABLED", "ENABLING"})

_log = get_logger(__name__)


def _positive(_: Any, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name}: expected a positive duration, got {value}")


def _table_prefix(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]*", value):
        raise ValueError(
            f"{attribute.name}: only letters, digits, '_', '.' and '-' are allowed, got {value!r}"
        )


@attrs.frozen
class DynamoSettings:
    """The ``dynamodb`` backend's keys in ``prism.yaml``."""

    endpoint_url: str | None = None
    """None talks to AWS itself; a URL (``http://127.0.0.1:8000``) talks to a
    local server such as moto."""
    region: str = "us-east-1"
    table_prefix: str = attrs.field(default="prism_", validator=_table_prefix)
    """Each namespace's tables are named ``<table_prefix><namespace>[__chunks|__records]``."""
    connect_timeout: timedelta = attrs.field(default=timedelta(seconds=5), validator=_positive)
    read_timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive)
    max_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    """Attempts per call, first included, with botocore's standard retry mode
    (throttling and connection errors are retried with backoff)."""
    billing_mode: Literal["PAY_PER_REQUEST", "PROVISIONED"] = "PAY_PER_REQUEST"
    read_capacity: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    """Read capacity units of each new table, with ``billing_mode: PROVISIONED`` only."""
    write_capacity: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    """Write capacity units of each new table, with ``billing_mode: PROVISIONED`` only."""
    provision_timeout: timedelta = attrs.field(default=timedelta(minutes=5), validator=_positive)
    """How long ``provision`` waits for a new table to become ACTIVE."""
    max_connections: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    """Worker threads and pooled HTTP connections; boto3 blocks, so this bounds
    how many DynamoDB calls one backend has in flight."""
    max_item_bytes: ByteSize = attrs.field(
        default=ByteSize(350 * KiB), validator=attrs.validators.gt(ByteSize(0))
    )
    """Values above this are chunked by the core; at most 400 KiB minus room
    for the keys and attribute names, so every stored item fits DynamoDB's limit."""
    max_value_bytes: ByteSize = attrs.field(
        default=ByteSize(64 * MiB), validator=attrs.validators.gt(ByteSize(0))
    )
    aws_access_key_id: str | None = None
    """For local endpoints; otherwise leave unset and let boto3's normal
    credential chain (env, profile, instance role) find credentials."""
    aws_secret_access_key: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.max_item_bytes > DYNAMODB_ITEM_LIMIT - _ITEM_OVERHEAD:
            raise ValueError(
                f"max_item_bytes ({self.max_item_bytes}) must be at most "
                f"{DYNAMODB_ITEM_LIMIT - _ITEM_OVERHEAD} bytes: DynamoDB items stop at 400 KiB, "
                f"keys and attribute names included"
            )
        if self.max_value_bytes < self.max_item_bytes:
            raise ValueError(
                f"max_value_bytes ({self.max_value_bytes}) must be at least max_item_bytes "
                f"({self.max_item_bytes})"
            )
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("aws_access_key_id and aws_secret_access_key must be given together")


@attrs.frozen
class _Tables:
    items: str
    chunks: str
    records: str


def _ttl_seconds(expires_at_us: int) -> str:
    # Rounded up: DynamoDB may delete at or after this second, never before
    # the exact expiry the core enforces.
    return str(-(-expires_at_us // 1_000_000))


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


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def batch_write_with_retry(
    client: Any,
    table: str,
    requests: Sequence[dict[str, Any]],
    *,
    max_rounds: int = 8,
    first_pause: float = 0.05,
    max_pause: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Send ``requests`` (``{"PutRequest": ...}`` / ``{"DeleteRequest": ...}``)
    with BatchWriteItem, 25 at a time, resending what DynamoDB returns as
    ``UnprocessedItems`` (it does under throttling or partition pressure) with
    exponential backoff, as AWS advises. A round that makes progress resets the
    backoff; ``max_rounds`` rounds in a row without progress fail with
    ``BackendError``."""
    pending = list(requests)
    while pending:
        batch, pending = pending[:_BATCH_WRITE], pending[_BATCH_WRITE:]
        pause = first_pause
        stalled = 0
        while batch:
            response = client.batch_write_item(RequestItems={table: batch})
            unprocessed = list(response.get("UnprocessedItems", {}).get(table, []))
            if not unprocessed:
                break
            if len(unprocessed) < len(batch):
                stalled, pause = 0, first_pause
            else:
                stalled += 1
                if stalled >= max_rounds:
                    raise BackendError(
                        f"DynamoDB left {len(unprocessed)} writes to {table!r} unprocessed after "
                        f"{max_rounds} attempts with backoff; the table is throttled, retry later"
                    )
            sleep(pause)
            pause = min(pause * 2, max_pause)
            batch = unprocessed


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


class DynamoKeyValue:
    """The KeyValue SPI on DynamoDB.

    Threading: boto3 blocks, and its clients are thread-safe, so each backend
    owns one client and a pool of ``max_connections`` worker threads; every
    SPI call runs its DynamoDB requests there and the event loop never blocks.
    """

    def __init__(self, name: str, settings: DynamoSettings) -> None:
        self.name = name
        self.settings = settings
        self.endpoint = settings.endpoint_url or f"AWS DynamoDB in {settings.region}"
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._provisioned: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------

    def _tables(self, namespace: str) -> _Tables:
        base = f"{self.settings.table_prefix}{namespace}"
        tables = _Tables(items=base, chunks=f"{base}__chunks", records=f"{base}__records")
        for table in (tables.items, tables.records):  # the shortest and the longest name
            if not _TABLE_NAME.fullmatch(table):
                raise BackendError(
                    f"dynamodb backend {self.name!r}: table name {table!r} is not valid "
                    f"(3-255 characters of letters, digits, '_', '.', '-'); change table_prefix"
                )
        return tables

    def _error(self, what: str, exc: BaseException) -> BackendError:
        return BackendError(f"dynamodb backend {self.name!r} at {self.endpoint}: {what} failed: {exc}")

    def _guarded(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return fn(*args)
        except BackendError:
            raise
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(what, exc) from exc

    async def _run(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        executor = self._executor
        if executor is None or self._client is None:
            raise BackendError(f"dynamodb backend {self.name!r} is not started, or already closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(self._guarded, what, fn, *args))

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

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(
            max_workers=self.settings.max_connections, thread_name_prefix=f"prism-dynamodb-{self.name}"
        )
        try:
            loop = asyncio.get_running_loop()
            self._client = await loop.run_in_executor(
                self._executor, functools.partial(self._guarded, "creating the client", self._make_client)
            )
            await self._run("connecting (ListTables)", self._probe)
        except BaseException:
            client, self._client = self._client, None
            if client is not None:
                client.close()
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _make_client(self) -> Any:
        s = self.settings
        config = botocore.config.Config(
            connect_timeout=s.connect_timeout.total_seconds(),
            read_timeout=s.read_timeout.total_seconds(),
            # "standard" retries throttling and connection errors with jittered
            # backoff; max_attempts bounds how long an unreachable endpoint takes.
            retries={"max_attempts": s.max_attempts, "mode": "standard"},
            max_pool_connections=s.max_connections,
        )
        session = boto3.session.Session(
            aws_access_key_id=s.aws_access_key_id,
            aws_secret_access_key=s.aws_secret_access_key,
            region_name=s.region,
        )
        try:
            return session.client("dynamodb", endpoint_url=s.endpoint_url, config=config)
        except ValueError as exc:  # botocore's word for a malformed endpoint_url
            raise self._error("creating the client", exc) from exc

    def _probe(self) -> None:
        try:
            self._client.list_tables(Limit=1)
        except botocore.exceptions.ClientError as exc:
            # Reachable, but this identity may not list tables; that is fine:
            # the tables it needs are checked by provision().
            if _error_code(exc) not in {"AccessDeniedException", "UnauthorizedOperation"}:
                raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # Joining the workers lets calls still in flight finish with the client
        # (bounded by the timeouts); off the event loop, so it never blocks
        # other tasks. Only then is the client dropped.
        await asyncio.to_thread(executor.shutdown, wait=True)
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- provisioning --------------------------------------------------------------------

    async def provision(self, namespace: str) -> None:
        if namespace in self._provisioned:
            return
        tables = self._tables(namespace)
        await self._run(f"provisioning namespace {namespace!r}", self._provision, tables)
        self._provisioned.add(namespace)

    def _provision(self, tables: _Tables) -> None:
        names = (tables.items, tables.chunks, tables.records)
        for table in names:
            self._create_table(table)
        deadline = time.monotonic() + self.settings.provision_timeout.total_seconds()
        for table in names:
            left = max(1, int(deadline - time.monotonic()))
            try:
                self._client.get_waiter("table_exists").wait(
                    TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": left}
                )
            except botocore.exceptions.WaiterError as exc:
                raise BackendError(
                    f"dynamodb backend {self.name!r} at {self.endpoint}: table {table!r} did not become "
                    f"ACTIVE within provision_timeout ({self.settings.provision_timeout}): {exc}"
                ) from exc
        # Expired rows are filtered by the core at once; DynamoDB's TTL only
        # deletes them eventually (hours to days late), which saves storage.
        for table in (tables.items, tables.chunks):
            self._enable_ttl(table)

    def _create_table(self, table: str) -> None:
        params: dict[str, Any] = {
            "TableName": table,
            "AttributeDefinitions": [
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "B"},
            ],
            "KeySchema": [
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            "BillingMode": self.settings.billing_mode,
        }
        if self.settings.billing_mode == "PROVISIONED":
            params["ProvisionedThroughput"] = {
                "ReadCapacityUnits": self.settings.read_capacity,
                "WriteCapacityUnits": self.settings.write_capacity,
            }
        try:
            self._client.create_table(**params)
            _log.info("dynamodb_table_created", backend=self.name, table=table)
        except botocore.exceptions.ClientError as exc:
            # Another process (or an earlier run) created it: provisioning is idempotent.
            if _error_code(exc) != "ResourceInUseException":
                raise

    def _ttl_status(self, table: str) -> str:
        described = self._client.describe_time_to_live(TableName=table)
        return str(described.get("TimeToLiveDescription", {}).get("TimeToLiveStatus", "DISABLED"))

    def _enable_ttl(self, table: str) -> None:
        if self._ttl_status(table) in _TTL_ON:
            return
        try:
            self._client.update_time_to_live(
                TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"}
            )
        except botocore.exceptions.ClientError as exc:
            # Another process provisioning the same namespace enabled it first
            # (DynamoDB then refuses a second change for a while): fine if it is on.
            if _error_code(exc) != "ValidationException" or self._ttl_status(table) not in _TTL_ON:
                raise

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
