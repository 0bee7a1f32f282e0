"""What the ``dynamodb`` backends share: their settings, the DynamoDB limits,
batched writes with retries, and :class:`DynamoService`, the boto3 client and
worker threads that every backend runs its DynamoDB requests on, with table
creation and TTL.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Literal, TypeVar

import attrs
import boto3  # type: ignore[import-untyped]
import botocore.config  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]

from prism.errors import BackendError, InvalidArgument
from prism.log import get_logger
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
#: DynamoDB's limit on a partition key.
MAX_PARTITION_KEY_BYTES = 2048

#: BatchWriteItem takes at most 25 requests.
_BATCH_WRITE = 25

#: Table names allow only these characters; namespaces are validated by the
#: core already, the prefix is checked here.
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")

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


def _ttl_seconds(expires_at_us: int) -> str:
    # Rounded up: DynamoDB may delete at or after this second, never before
    # the exact expiry the core enforces.
    return str(-(-expires_at_us // 1_000_000))


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


class DynamoService:
    """What every ``dynamodb`` backend is built on: one boto3 client, a pool of
    worker threads that every blocking call runs on, table creation and TTL.

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

    # -- plumbing ---------------------------------------------------------------------

    def _table(self, namespace: str, suffix: str) -> str:
        table = f"{self.settings.table_prefix}{namespace}{suffix}"
        if not _TABLE_NAME.fullmatch(table):
            raise BackendError(
                f"dynamodb backend {self.name!r}: table name {table!r} is not valid "
                f"(3-255 characters of letters, digits, '_', '.', '-'); change table_prefix"
            )
        return table

    def _error(self, what: str, exc: BaseException) -> BackendError:
        return BackendError(f"dynamodb backend {self.name!r} at {self.endpoint}: {what} failed: {exc}")

    def _guarded(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return fn(*args)
        except (BackendError, InvalidArgument):
            raise
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(what, exc) from exc

    async def _run(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        executor = self._executor
        if executor is None or self._client is None:
            raise BackendError(f"dynamodb backend {self.name!r} is not started, or already closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(self._guarded, what, fn, *args))

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

    # -- tables --------------------------------------------------------------------------

    def _ensure_tables(self, tables: Sequence[tuple[str, str | None]], ttl: Sequence[str]) -> None:
        """Create each ``(table, sort key type or None)`` unless it exists, wait
        until all are ACTIVE, and enable TTL on ``exp`` for the ``ttl`` tables."""
        for table, sort_type in tables:
            self._create_table(table, sort_type)
        deadline = time.monotonic() + self.settings.provision_timeout.total_seconds()
        for table, _ in tables:
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
        for table in ttl:
            self._enable_ttl(table)

    def _create_table(self, table: str, sort_type: str | None) -> None:
        """Create ``table`` with the string partition key ``pk`` and, unless
        ``sort_type`` is None, the sort key ``sk`` of that type."""
        definitions = [{"AttributeName": "pk", "AttributeType": "S"}]
        schema = [{"AttributeName": "pk", "KeyType": "HASH"}]
        if sort_type is not None:
            definitions.append({"AttributeName": "sk", "AttributeType": sort_type})
            schema.append({"AttributeName": "sk", "KeyType": "RANGE"})
        params: dict[str, Any] = {
            "TableName": table,
            "AttributeDefinitions": definitions,
            "KeySchema": schema,
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

    # -- shared requests -----------------------------------------------------------------

    def _delete_queried(self, table: str, condition: str, values: dict[str, Any]) -> int:
        """Delete every item of ``table`` that a Query with the key condition
        ``condition`` (and ``values``) finds, all pages of it; return how many."""
        keys: list[dict[str, Any]] = []
        start_key: dict[str, Any] | None = None
        while True:
            params: dict[str, Any] = {
                "TableName": table,
                "KeyConditionExpression": condition,
                "ExpressionAttributeValues": values,
                "ProjectionExpression": "pk, sk",
                "ConsistentRead": True,
            }
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            response = self._client.query(**params)
            keys.extend({"pk": raw["pk"], "sk": raw["sk"]} for raw in response.get("Items", []))
            start_key = response.get("LastEvaluatedKey")
            if not start_key:
                break
        if keys:
            batch_write_with_retry(self._client, table, [{"DeleteRequest": {"Key": key}} for key in keys])
        return len(keys)
