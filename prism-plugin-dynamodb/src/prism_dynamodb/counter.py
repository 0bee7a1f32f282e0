"""The ``dynamodb`` Counter backend: one DynamoDB item per counter.

Data model: one table per namespace, ``<prefix><namespace>__counters``, with a
string partition key ``pk`` (the counter's name) and a string sort key ``sk``.
A counter's partition holds its value item (``sk`` = ``"v"``, the value in the
number attribute ``n``) and, in ``exact`` mode, one item per token applied to it
(``sk`` = ``"t|<generation time, 20 digits>|<nonce>"``).

* ``best_effort``: ``UpdateItem ADD n :d`` with ``ReturnValues=ALL_NEW``,
  one atomic request that returns the new value.
* ``exact``: ``TransactWriteItems`` of {``Put`` the token item if
  ``attribute_not_exists(pk)``, ``Update`` the value item}. DynamoDB applies
  both or neither, so a token is recorded exactly when its operation counted: a
  replay (also one racing the first call) fails the token's condition and
  changes nothing. Token items carry a TTL and are pruned by a ``Query`` on
  their time-ordered sort keys, so a counter's partition stays bounded.

The 64-bit range is enforced by DynamoDB in the same request: the add's
condition is ``n <= MAX - d`` (``n >= MIN - d`` for a negative delta), so a
value never leaves the range, also under concurrent adders.
"""

from __future__ import annotations

import random
import re
import time
from typing import TYPE_CHECKING, Any

import attrs
import botocore.exceptions  # type: ignore[import-untyped]

from prism import capabilities
from prism.errors import BackendError, InvalidArgument
from prism.log import get_logger
from prism.spi import (
    COUNTER_MAX,
    COUNTER_MIN,
    CounterBackendType,
    CounterOverflow,
    CounterToken,
    CounterTraits,
)
from prism_dynamodb.service import (
    MAX_PARTITION_KEY_BYTES,
    MAX_SORT_KEY_BYTES,
    DynamoService,
    DynamoSettings,
    _error_code,
)

if TYPE_CHECKING:
    from prism.config import NamespaceConfig

_VALUE_SK = "v"
_TOKEN_PREFIX = "t|"
#: How often (per exact operation, at random) a counter's old tokens are pruned.
_PRUNE_CHANCE = 1 / 32
#: Attempts of one transaction that DynamoDB cancels for a conflicting
#: concurrent transaction on the same counter, with jittered backoff between.
_CONFLICT_ATTEMPTS = 10
_REASONS_IN_MESSAGE = re.compile(r"\[([^\]]*)\]")

_log = get_logger(__name__)


@attrs.frozen
class _Namespace:
    table: str
    token_keep_us: int
    """How long token items are kept after their generation time: twice the
    namespace's ``counter.token_window``, so clocks of different processes
    may disagree by up to a window before a replay could count twice."""


def _token_sk(token: CounterToken) -> str:
    # Zero-padded so that string order is generation-time order: pruning is
    # one Query for the sort keys below a cut-off.
    return f"{_TOKEN_PREFIX}{token.generation_time_us:020d}|{token.nonce}"


def _overflow_condition(delta: int) -> tuple[str | None, dict[str, Any]]:
    """The condition under which ``n + delta`` stays in the 64-bit range."""
    if delta > 0:
        return "attribute_not_exists(n) OR n <= :lim", {":lim": {"N": str(COUNTER_MAX - delta)}}
    if delta < 0:
        return "attribute_not_exists(n) OR n >= :lim", {":lim": {"N": str(COUNTER_MIN - delta)}}
    return None, {}


def _cancellation_codes(exc: botocore.exceptions.ClientError) -> list[str]:
    """The per-item reasons of a ``TransactionCanceledException``, in request order
    ("None" for an item that was fine)."""
    reasons = exc.response.get("CancellationReasons")
    if reasons:
        return [str(reason.get("Code") or "None") for reason in reasons]
    # Older botocore models drop the structured reasons; DynamoDB lists them in
    # the message too: "... cancellation reasons for specific reasons [A, B]".
    found = _REASONS_IN_MESSAGE.search(str(exc.response.get("Error", {}).get("Message", "")))
    return [code.strip() for code in found.group(1).split(",")] if found else []


class DynamoCounter(DynamoService):
    """The Counter SPI on DynamoDB; see the module docstring."""

    def __init__(self, name: str, settings: DynamoSettings) -> None:
        super().__init__(name, settings)
        self._namespaces: dict[str, _Namespace] = {}

    def _ns(self, namespace: str) -> _Namespace:
        try:
            return self._namespaces[namespace]
        except KeyError:
            raise BackendError(
                f"dynamodb backend {self.name!r}: namespace {namespace!r} was not provisioned"
            ) from None

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        settings = config.counter
        if settings.max_counter_name_bytes > MAX_PARTITION_KEY_BYTES:
            raise InvalidArgument(
                f"namespace {namespace!r}: counter.max_counter_name_bytes is "
                f"{settings.max_counter_name_bytes}, but the dynamodb backend {self.name!r} keeps the "
                f"counter name in a partition key, which holds at most {MAX_PARTITION_KEY_BYTES} bytes; set "
                f"counter.max_counter_name_bytes to {MAX_PARTITION_KEY_BYTES} or less",
                namespace=namespace,
                field="counter.max_counter_name_bytes",
            )
        table = self._table(namespace, "__counters")
        keep_us = 2 * int(settings.token_window.total_seconds() * 1_000_000)
        if namespace not in self._namespaces:
            await self._run(
                f"provisioning namespace {namespace!r}", self._ensure_tables, [(table, "S")], [table]
            )
        self._namespaces[namespace] = _Namespace(table=table, token_keep_us=keep_us)

    # -- operations ----------------------------------------------------------------------

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        ns = self._ns(namespace)
        if not COUNTER_MIN <= delta <= COUNTER_MAX:
            raise CounterOverflow(f"counter {counter!r}: delta {delta} is outside the signed 64-bit range")
        if token is None:
            return await self._run("UpdateItem (ADD)", self._add, ns, counter, delta)
        self._check_token(namespace, counter, token)
        await self._run("TransactWriteItems (add)", self._exact, ns, counter, token, delta)
        return None

    def _add(self, ns: _Namespace, counter: str, delta: int) -> int:
        condition, values = _overflow_condition(delta)
        params: dict[str, Any] = {
            "TableName": ns.table,
            "Key": {"pk": {"S": counter}, "sk": {"S": _VALUE_SK}},
            "UpdateExpression": "ADD n :d",
            "ExpressionAttributeValues": {":d": {"N": str(delta)}, **values},
            "ReturnValues": "ALL_NEW",  # UPDATED_NEW omits an unchanged value (ADD 0)
        }
        if condition is not None:
            params["ConditionExpression"] = condition
        try:
            response = self._client.update_item(**params)
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise CounterOverflow(
                    f"counter {counter!r}: adding {delta} would leave the signed 64-bit range"
                ) from None
            raise
        return int(response["Attributes"]["n"]["N"])

    def _exact(self, ns: _Namespace, counter: str, token: CounterToken, delta: int | None) -> None:
        """Apply an add (``delta``) or a clear (``None``) with ``token``, once."""
        token_item = {
            "pk": {"S": counter},
            "sk": {"S": _token_sk(token)},
            "exp": {"N": str(-(-(token.generation_time_us + ns.token_keep_us) // 1_000_000))},
        }
        update: dict[str, Any] = {
            "TableName": ns.table,
            "Key": {"pk": {"S": counter}, "sk": {"S": _VALUE_SK}},
        }
        if delta is None:
            update["UpdateExpression"] = "SET n = :zero"
            update["ExpressionAttributeValues"] = {":zero": {"N": "0"}}
        else:
            condition, values = _overflow_condition(delta)
            update["UpdateExpression"] = "ADD n :d"
            update["ExpressionAttributeValues"] = {":d": {"N": str(delta)}, **values}
            if condition is not None:
                update["ConditionExpression"] = condition
        items = [
            {
                "Put": {
                    "TableName": ns.table,
                    "Item": token_item,
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {"Update": update},
        ]
        pause = 0.02
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            try:
                self._client.transact_write_items(TransactItems=items)
                break
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc) != "TransactionCanceledException":
                    raise
                codes = _cancellation_codes(exc)
                if codes[:1] == ["ConditionalCheckFailed"]:
                    return  # the token was applied already: a replay changes nothing
                if codes[1:2] == ["ConditionalCheckFailed"]:
                    raise CounterOverflow(
                        f"counter {counter!r}: adding {delta} would leave the signed 64-bit range"
                    ) from None
                if "TransactionConflict" not in codes or attempt == _CONFLICT_ATTEMPTS:
                    raise
                # A concurrent transaction on this counter: retry, it is
                # idempotent (the token item decides whether it counted).
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 1.0)
        if random.random() < _PRUNE_CHANCE:
            try:
                self._prune(ns, counter, time.time_ns() // 1000)
            except (BackendError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                # Housekeeping only: the operation itself is applied, and
                # reporting it as failed would only make the caller retry it.
                _log.warning(
                    "dynamodb_token_prune_failed", backend=self.name, counter=counter, error=str(exc)
                )

    def _prune(self, ns: _Namespace, counter: str, now_us: int) -> int:
        """Delete ``counter``'s token items generated more than ``token_keep_us``
        before ``now_us`` (DynamoDB's TTL would too, but only days late); return
        how many. Their tokens are refused by the core long before."""
        cutoff = max(0, now_us - ns.token_keep_us)
        return self._delete_queried(
            ns.table,
            "pk = :p AND sk BETWEEN :lo AND :hi",
            {
                ":p": {"S": counter},
                ":lo": {"S": _TOKEN_PREFIX},
                # "t|<cutoff>" sorts after every token generated before the
                # cut-off and before those at or after it.
                ":hi": {"S": f"{_TOKEN_PREFIX}{cutoff:020d}"},
            },
        )

    def _check_token(self, namespace: str, counter: str, token: CounterToken) -> None:
        size = len(_token_sk(token).encode("utf-8"))
        if size > MAX_SORT_KEY_BYTES:
            raise BackendError(
                f"dynamodb backend {self.name!r}: namespace {namespace!r}, counter {counter!r}: the token's "
                f"nonce is {size - 23} bytes; a DynamoDB sort key holds it only up to "
                f"{MAX_SORT_KEY_BYTES - 23} bytes"
            )

    async def get(self, namespace: str, counter: str) -> int:
        ns = self._ns(namespace)
        return await self._run("GetItem", self._get, ns, counter)

    def _get(self, ns: _Namespace, counter: str) -> int:
        item = self._client.get_item(
            TableName=ns.table,
            Key={"pk": {"S": counter}, "sk": {"S": _VALUE_SK}},
            ConsistentRead=True,
            ProjectionExpression="n",
        ).get("Item")
        return int(item["n"]["N"]) if item and "n" in item else 0

    async def clear(self, namespace: str, counter: str, token: CounterToken | None) -> None:
        ns = self._ns(namespace)
        if token is None:
            await self._run("UpdateItem (clear)", self._clear, ns, counter)
            return
        self._check_token(namespace, counter, token)
        await self._run("TransactWriteItems (clear)", self._exact, ns, counter, token, None)

    def _clear(self, ns: _Namespace, counter: str) -> None:
        # One write, so ordered against concurrent ADDs on the same item.
        self._client.update_item(
            TableName=ns.table,
            Key={"pk": {"S": counter}, "sk": {"S": _VALUE_SK}},
            UpdateExpression="SET n = :zero",
            ExpressionAttributeValues={":zero": {"N": "0"}},
        )


def _traits(settings: DynamoSettings) -> CounterTraits:
    return CounterTraits(durability="durable")


COUNTER = CounterBackendType(
    settings_type=DynamoSettings,
    create=DynamoCounter,
    capabilities=frozenset({capabilities.COUNTER_BEST_EFFORT, capabilities.COUNTER_EXACT}),
    traits=_traits,
    description="durable counters on Amazon DynamoDB (boto3): atomic ADD; exact mode by "
    "TransactWriteItems with a token item per operation",
)
