"""The KeyValue conformance suite against the dynamodb backend on a real
DynamoDB-compatible server (moto's server in CI), through the public API."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from prism_conformance import KeyValueSuite


def dynamo_backend(url: str, **extra: Any) -> dict[str, Any]:
    # A fresh table prefix per test: tables from earlier runs or other tests
    # on the same server can never leak in.
    return {
        "plugin": "dynamodb",
        "endpoint_url": url,
        "table_prefix": f"pt{uuid.uuid4().hex[:10]}_",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        **extra,
    }


class TestDynamo(KeyValueSuite):
    @pytest.fixture
    def prism_backend(self, dynamodb_url: str) -> Mapping[str, Any]:
        return dynamo_backend(dynamodb_url)


class TestDynamoSmallChunks(KeyValueSuite):
    """Values above 16 KiB are chunked, so chunking on DynamoDB (many chunks
    per value, several BatchWriteItem calls and Query pages) is exercised often."""

    @pytest.fixture
    def prism_backend(self, dynamodb_url: str) -> Mapping[str, Any]:
        return dynamo_backend(dynamodb_url, max_item_bytes="16KiB")
