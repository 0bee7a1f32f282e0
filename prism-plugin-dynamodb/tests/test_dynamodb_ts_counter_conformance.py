"""The TimeSeries and Counter conformance suites against the dynamodb backend
on a real DynamoDB-compatible server (moto's server, one request at a time,
in CI), through the public API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from test_dynamodb_conformance import dynamo_backend

from prism_conformance import CounterSuite, TimeSeriesSuite


class TestDynamoTimeSeries(TimeSeriesSuite):
    @pytest.fixture
    def prism_backend(self, dynamodb_url: str) -> Mapping[str, Any]:
        return dynamo_backend(dynamodb_url)


class TestDynamoCounter(CounterSuite):
    @pytest.fixture
    def prism_backend(self, dynamodb_url: str) -> Mapping[str, Any]:
        return dynamo_backend(dynamodb_url)
