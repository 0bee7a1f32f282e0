"""The dynamodb Counter backend through its SPI, against a real
DynamoDB-compatible server (moto's server): best-effort adds, exact-mode replay
of adds and clears, concurrent adders, the 64-bit range and token pruning."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
import pytest
from botocore.stub import Stubber  # type: ignore[import-untyped]

from prism.config import CounterSettings, NamespaceConfig
from prism.errors import InvalidArgument
from prism.spi import COUNTER_MAX, COUNTER_MIN, CounterBackend, CounterOverflow, CounterToken
from prism_dynamodb import counter as counter_module
from prism_dynamodb.counter import COUNTER, DynamoCounter, _cancellation_codes
from prism_dynamodb.keyvalue import DynamoSettings

_T = TypeVar("_T")

NS = "cnt"
WINDOW = timedelta(minutes=10)


def _settings(url: str) -> DynamoSettings:
    return DynamoSettings(
        endpoint_url=url,
        table_prefix=f"pc{uuid.uuid4().hex[:10]}_",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def _config(mode: str = "exact") -> NamespaceConfig:
    return NamespaceConfig(
        abstraction="counter",
        counter=CounterSettings(mode=mode, token_window=WINDOW),  # type: ignore[arg-type]
    )


def _run(url: str, body: Callable[[DynamoCounter], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        backend = DynamoCounter("ddb", _settings(url))
        await backend.start()
        try:
            await backend.provision(NS, _config())
            return await body(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def _token(nonce: str | None = None, age: timedelta = timedelta(0)) -> CounterToken:
    now_us = time.time_ns() // 1000
    return CounterToken(now_us - int(age.total_seconds() * 1_000_000), nonce or uuid.uuid4().hex)


def _token_items(counter: DynamoCounter, name: str) -> int:
    table = counter._ns(NS).table
    response = counter._client.query(
        TableName=table,
        KeyConditionExpression="pk = :p AND begins_with(sk, :t)",
        ExpressionAttributeValues={":p": {"S": name}, ":t": {"S": "t|"}},
        ConsistentRead=True,
    )
    return len(response["Items"])


def test_the_backend_type_serves_both_modes() -> None:
    assert COUNTER.capabilities == {"counter.best_effort", "counter.exact"}
    assert COUNTER.traits(DynamoSettings()).durability == "durable"
    assert isinstance(DynamoCounter("x", DynamoSettings()), CounterBackend)


def test_best_effort_adds_return_the_new_value(dynamodb_url: str) -> None:
    async def body(c: DynamoCounter) -> None:
        assert await c.get(NS, "hits") == 0
        assert await c.add(NS, "hits", 5, None) == 5
        assert await c.add(NS, "hits", -7, None) == -2
        assert await c.add(NS, "hits", 0, None) == -2
        assert await c.get(NS, "hits") == -2
        assert await c.get(NS, "other") == 0
        await c.clear(NS, "hits", None)
        assert await c.get(NS, "hits") == 0
        assert await c.add(NS, "hits", 1, None) == 1
        # Without a token nothing is remembered: the same add counts twice.
        assert _token_items(c, "hits") == 0

    _run(dynamodb_url, body)


def test_exact_adds_count_once_however_often_they_are_replayed(dynamodb_url: str) -> None:
    async def body(c: DynamoCounter) -> None:
        first = _token()
        await c.add(NS, "n", 10, first)
        await c.add(NS, "n", 10, first)  # a retry
        assert await c.get(NS, "n") == 10
        second = _token()
        await c.add(NS, "n", 3, second)
        await c.add(NS, "n", 3, first)  # an old replay still changes nothing
        assert await c.get(NS, "n") == 13
        # The same token on another counter is another operation.
        await c.add(NS, "m", 1, first)
        assert await c.get(NS, "m") == 1
        assert await c.get(NS, "n") == 13

    _run(dynamodb_url, body)


def test_exact_clear_is_replayed_without_erasing_later_adds(dynamodb_url: str) -> None:
    async def body(c: DynamoCounter) -> None:
        await c.add(NS, "n", 7, _token())
        clear = _token()
        await c.clear(NS, "n", clear)
        assert await c.get(NS, "n") == 0
        await c.add(NS, "n", 4, _token())
        await c.clear(NS, "n", clear)  # a replay of the clear: the add since is kept
        assert await c.get(NS, "n") == 4
        # A clear's token and an add's are one token space per counter.
        await c.add(NS, "n", 100, clear)
        assert await c.get(NS, "n") == 4

    _run(dynamodb_url, body)


def test_concurrent_best_effort_adds_all_count(dynamodb_url: str) -> None:
    async def body(c: DynamoCounter) -> None:
        results = await asyncio.gather(*(c.add(NS, "hot", 1, None) for _ in range(40)))
        # Each add saw a distinct new value: 40 atomic increments.
        assert sorted(r for r in results if r is not None) == list(range(1, 41))
        assert await c.get(NS, "hot") == 40

    _run(dynamodb_url, body)


def test_concurrent_exact_adds_and_replays_count_each_token_once(dynamodb_url: str) -> None:
    async def body(c: DynamoCounter) -> None:
        tokens = [_token() for _ in range(15)]
        # Each token sent three times at once: the replays race the first call.
        await asyncio.gather(*(c.add(NS, "hot", 2, token) for token in tokens for _ in range(3)))
        assert await c.get(NS, "hot") == 30
        assert _token_items(c, "hot") == 15

    _run(dynamodb_url, body)


def test_adds_never_leave_the_64_bit_range(dynamodb_url: str) -> None:
    async def body(c: DynamoCounter) -> None:
        assert await c.add(NS, "big", COUNTER_MAX - 1, None) == COUNTER_MAX - 1
        assert await c.add(NS, "big", 1, None) == COUNTER_MAX
        with pytest.raises(CounterOverflow):
            await c.add(NS, "big", 1, None)
        token = _token()
        with pytest.raises(CounterOverflow):
            await c.add(NS, "big", 1, token)
        assert await c.get(NS, "big") == COUNTER_MAX
        # The refused exact add recorded nothing: its token still works once
        # the value has room.
        await c.add(NS, "big", -10, _token())
        await c.add(NS, "big", 1, token)
        assert await c.get(NS, "big") == COUNTER_MAX - 9
        # The bottom of the range, from a counter that was never written.
        assert await c.add(NS, "low", COUNTER_MIN, None) == COUNTER_MIN
        with pytest.raises(CounterOverflow):
            await c.add(NS, "low", -1, None)
        with pytest.raises(CounterOverflow):
            await c.add(NS, "low", -1, _token())
        assert await c.get(NS, "low") == COUNTER_MIN
        with pytest.raises(CounterOverflow):
            await c.add(NS, "other", COUNTER_MAX + 1, None)

    _run(dynamodb_url, body)


def test_old_tokens_are_pruned_and_recent_ones_kept(
    dynamodb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No pruning by chance while the old tokens are being written.
    monkeypatch.setattr(counter_module, "_PRUNE_CHANCE", 0.0)

    async def body(c: DynamoCounter) -> None:
        old = [_token(age=3 * WINDOW) for _ in range(3)]  # past twice the window
        recent = [_token(age=WINDOW), _token()]
        for token in old + recent:
            await c.add(NS, "n", 1, token)
        assert _token_items(c, "n") == 5
        pruned = await c._run("prune", c._prune, c._ns(NS), "n", time.time_ns() // 1000)
        assert pruned == 3
        assert _token_items(c, "n") == 2
        assert await c.get(NS, "n") == 5
        # The recent tokens are still recognised.
        for token in recent:
            await c.add(NS, "n", 1, token)
        assert await c.get(NS, "n") == 5

    _run(dynamodb_url, body)


def test_token_items_carry_a_ttl(dynamodb_url: str) -> None:
    async def body(c: DynamoCounter) -> None:
        token = _token()
        await c.add(NS, "n", 1, token)
        table = c._ns(NS).table
        [item] = c._client.query(
            TableName=table,
            KeyConditionExpression="pk = :p AND begins_with(sk, :t)",
            ExpressionAttributeValues={":p": {"S": "n"}, ":t": {"S": "t|"}},
        )["Items"]
        expected = (token.generation_time_us + 2 * int(WINDOW.total_seconds() * 1e6)) / 1e6
        assert abs(int(item["exp"]["N"]) - expected) <= 1
        ttl = c._client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl["TimeToLiveStatus"] == "ENABLED"
        assert ttl["AttributeName"] == "exp"

    _run(dynamodb_url, body)


def test_counter_names_that_do_not_fit_a_partition_key_are_refused(dynamodb_url: str) -> None:
    async def body(c: DynamoCounter) -> None:
        config = NamespaceConfig(abstraction="counter", counter=CounterSettings(max_counter_name_bytes=5000))
        with pytest.raises(InvalidArgument, match=r"counter\.max_counter_name_bytes"):
            await c.provision("other", config)

    _run(dynamodb_url, body)


def test_cancellation_reasons_are_read_from_the_message_when_not_structured() -> None:
    message = "Transaction cancelled, please refer cancellation reasons for specific reasons [None, ConditionalCheckFailed]"
    exc = botocore.exceptions.ClientError(
        {"Error": {"Code": "TransactionCanceledException", "Message": message}}, "TransactWriteItems"
    )
    assert _cancellation_codes(exc) == ["None", "ConditionalCheckFailed"]
    structured = botocore.exceptions.ClientError(
        {
            "Error": {"Code": "TransactionCanceledException", "Message": "x"},
            "CancellationReasons": [{"Code": "TransactionConflict"}, {"Code": "None"}],
        },
        "TransactWriteItems",
    )
    assert _cancellation_codes(structured) == ["TransactionConflict", "None"]


@pytest.mark.parametrize("mode", ["best_effort", "exact"])
def test_end_to_end_through_prism_open(dynamodb_url: str, mode: str) -> None:
    import prism

    config = {
        "backends": {
            "ddb": {
                "plugin": "dynamodb",
                "endpoint_url": dynamodb_url,
                "table_prefix": f"pce{uuid.uuid4().hex[:10]}_",
                "aws_access_key_id": "test",
                "aws_secret_access_key": "test",
            }
        },
        "namespaces": {"likes": {"abstraction": "counter", "backend": "ddb", "counter": {"mode": mode}}},
    }
    with prism.open(config) as db:
        c = db.counter("likes")
        assert c.get("post-1") == 0
        token = prism.IdempotencyToken.new()
        first = c.add("post-1", 5, token=token)
        assert first in (5, None)
        c.add("post-1", 5, token=token)  # a retry with the same token
        assert c.get("post-1") == (5 if mode == "exact" else 10)
        c.add("post-1", -2)
        c.clear("post-2")
        assert c.get("post-1") == (3 if mode == "exact" else 8)
        c.clear("post-1", token=prism.IdempotencyToken.new())
        assert c.get("post-1") == 0


def test_each_exact_operation_may_prune_its_counter(
    dynamodb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(counter_module, "_PRUNE_CHANCE", 1.0)

    async def body(c: DynamoCounter) -> None:
        # A token three windows old (past the two kept) is pruned by the very
        # operation it belongs to, right after it counted.
        await c.add(NS, "n", 1, _token(age=3 * WINDOW))
        assert _token_items(c, "n") == 0
        assert await c.get(NS, "n") == 1
        # Recent tokens stay.
        await c.add(NS, "n", 1, _token(age=WINDOW))
        await c.clear(NS, "n", _token())
        assert _token_items(c, "n") == 2
        assert await c.get(NS, "n") == 0

    _run(dynamodb_url, body)


# moto never cancels a transaction for a conflicting one, so the retry on
# TransactionConflict runs against a real boto3 client fed by botocore's
# Stubber; the only test here that does not talk to a server.


def test_a_transaction_conflict_is_retried_and_a_replay_is_recognised() -> None:
    c = DynamoCounter("ddb", DynamoSettings())
    c._client = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    ).client("dynamodb", endpoint_url="http://127.0.0.1:9")
    ns = counter_module._Namespace(table="t__counters", token_keep_us=1)
    with Stubber(c._client) as stub:
        for reasons in (["TransactionConflict", "None"], ["None", "TransactionConflict"]):
            stub.add_client_error(
                "transact_write_items",
                service_error_code="TransactionCanceledException",
                modeled_fields={"CancellationReasons": [{"Code": code} for code in reasons]},
            )
        stub.add_response("transact_write_items", {})
        c._exact(ns, "n", CounterToken(1, "a"), 1)
        stub.assert_no_pending_responses()
        # A replay: the token's Put failed its condition; nothing is raised.
        stub.add_client_error(
            "transact_write_items",
            service_error_code="TransactionCanceledException",
            modeled_fields={"CancellationReasons": [{"Code": "ConditionalCheckFailed"}, {"Code": "None"}]},
        )
        c._exact(ns, "n", CounterToken(1, "a"), 1)
        # Any other cancellation is an error, not a silent success.
        stub.add_client_error(
            "transact_write_items",
            service_error_code="TransactionCanceledException",
            modeled_fields={"CancellationReasons": [{"Code": "ValidationError"}, {"Code": "None"}]},
        )
        with pytest.raises(botocore.exceptions.ClientError):
            c._exact(ns, "n", CounterToken(1, "a"), 1)
