"""Discovery through the entry point, settings through prism.yaml, and the
batch-retry paths that moto cannot exercise."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.stub import Stubber  # type: ignore[import-untyped]

import prism_dynamodb
from prism.config import parse_config
from prism.errors import BackendError
from prism.plugins import load_plugins
from prism_dynamodb import DynamoSettings
from prism_dynamodb.keyvalue import batch_get_with_retry, batch_write_with_retry


def test_load_plugins_finds_dynamodb_through_its_entry_point() -> None:
    plugins = load_plugins(disabled=())
    assert plugins.registry.keyvalue["dynamodb"] is prism_dynamodb.KEYVALUE
    [loaded] = [p for p in plugins.loaded if p.name == "dynamodb"]
    assert loaded.module == "prism_dynamodb.plugin"
    assert loaded.distribution == "prism-plugin-dynamodb"
    assert set(loaded.capabilities) == {"kv.scan", "counter.best_effort", "counter.exact"}
    assert not [b for b in plugins.broken if b.name == "dynamodb"]


def test_settings_are_read_from_prism_yaml(tmp_path: Path) -> None:
    registry = load_plugins(disabled=()).registry
    config = parse_config(
        {
            "backends": {
                "ddb": {
                    "plugin": "dynamodb",
                    "endpoint_url": "http://127.0.0.1:18000",
                    "region": "eu-west-1",
                    "table_prefix": "app_",
                    "connect_timeout": "2s",
                    "read_timeout": "3s",
                    "max_attempts": 5,
                    "max_item_bytes": "100KiB",
                }
            }
        },
        registry,
        base_dir=tmp_path,
    )
    assert config.backends["ddb"].settings == DynamoSettings(
        endpoint_url="http://127.0.0.1:18000",
        region="eu-west-1",
        table_prefix="app_",
        connect_timeout=timedelta(seconds=2),
        read_timeout=timedelta(seconds=3),
        max_attempts=5,
        max_item_bytes=100 * 1024,  # type: ignore[arg-type]
    )


def test_traits() -> None:
    traits = prism_dynamodb.KEYVALUE.traits(DynamoSettings())
    assert (traits.durability, traits.consistency) == ("durable", "strong")
    assert traits.max_item_bytes == 350 * 1024
    assert traits.max_value_bytes == 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_item_bytes": 400 * 1024}, "400 KiB"),
        ({"max_item_bytes": 2048, "max_value_bytes": 1024}, "at least max_item_bytes"),
        ({"table_prefix": "bad prefix"}, "table_prefix"),
        ({"aws_access_key_id": "only-one"}, "together"),
        ({"connect_timeout": timedelta(0)}, "positive"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamoSettings(**settings)


# moto never answers BatchWriteItem with UnprocessedItems, nor BatchGetItem with
# UnprocessedKeys, so these paths run against a real boto3 client whose
# responses are fed by botocore's Stubber. This is the one place tests do not
# talk to a real server; everything else runs against moto.


def _stubbed_client() -> Any:
    return boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    ).client("dynamodb", endpoint_url="http://127.0.0.1:9")


def _put(i: int) -> dict[str, Any]:
    return {"PutRequest": {"Item": {"pk": {"S": "r"}, "sk": {"B": bytes([i])}}}}


def test_batch_write_resends_unprocessed_items_with_backoff() -> None:
    client = _stubbed_client()
    requests = [_put(i) for i in range(30)]
    sleeps: list[float] = []
    with Stubber(client) as stub:
        # First 25: DynamoDB processes all but two; they are resent alone.
        stub.add_response(
            "batch_write_item",
            {"UnprocessedItems": {"t": [requests[3], requests[7]]}},
            {"RequestItems": {"t": requests[:25]}},
        )
        # No progress once: the backoff grows.
        stub.add_response(
            "batch_write_item",
            {"UnprocessedItems": {"t": [requests[3], requests[7]]}},
            {"RequestItems": {"t": [requests[3], requests[7]]}},
        )
        stub.add_response(
            "batch_write_item", {"UnprocessedItems": {}}, {"RequestItems": {"t": [requests[3], requests[7]]}}
        )
        stub.add_response("batch_write_item", {}, {"RequestItems": {"t": requests[25:]}})
        batch_write_with_retry(client, "t", requests, sleep=sleeps.append)
        stub.assert_no_pending_responses()
    assert sleeps == [0.05, 0.1]


def test_batch_write_gives_up_when_nothing_progresses() -> None:
    client = _stubbed_client()
    requests = [_put(1)]
    sleeps: list[float] = []
    with Stubber(client) as stub:
        for _ in range(3):
            stub.add_response(
                "batch_write_item", {"UnprocessedItems": {"t": requests}}, {"RequestItems": {"t": requests}}
            )
        with pytest.raises(BackendError, match="unprocessed after 3 attempts"):
            batch_write_with_retry(client, "t", requests, max_rounds=3, sleep=sleeps.append)
    assert sleeps == [0.05, 0.1]


def test_batch_get_resends_unprocessed_keys() -> None:
    client = _stubbed_client()
    keys = [{"pk": {"S": "r"}, "sk": {"B": bytes([i])}} for i in range(3)]
    sleeps: list[float] = []
    with Stubber(client) as stub:
        stub.add_response(
            "batch_get_item",
            {"Responses": {"t": [keys[0]]}, "UnprocessedKeys": {"t": {"Keys": keys[1:]}}},
            {"RequestItems": {"t": {"Keys": keys, "ConsistentRead": True}}},
        )
        stub.add_response(
            "batch_get_item",
            {"Responses": {"t": keys[1:]}},
            {"RequestItems": {"t": {"Keys": keys[1:], "ConsistentRead": True}}},
        )
        found = batch_get_with_retry(client, "t", keys, sleep=sleeps.append)
        stub.assert_no_pending_responses()
    assert found == keys
    assert sleeps == [0.05]
