"""The TimeSeries and Counter conformance suites against a real Cassandra
node, through the public API. Each class uses its own keyspace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from test_cassandra_conformance import _backend

from prism_conformance import CounterSuite, TimeSeriesSuite


class TestCassandraTimeSeries(TimeSeriesSuite):
    @pytest.fixture
    def prism_backend(self, cassandra_contact: str, class_keyspace: str) -> Mapping[str, Any]:
        return _backend(cassandra_contact, class_keyspace)


class TestCassandraCounter(CounterSuite):
    @pytest.fixture
    def prism_backend(self, cassandra_contact: str, class_keyspace: str) -> Mapping[str, Any]:
        return _backend(cassandra_contact, class_keyspace)
