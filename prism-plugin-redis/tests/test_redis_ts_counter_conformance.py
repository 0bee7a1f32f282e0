"""The TimeSeries and Counter conformance suites against the redis backend,
through the public API.

Needs a Redis server: ``PRISM_TEST_REDIS_URL`` or ``nox -s services -- up``.
Every test writes under its own key prefix (the ``redis_prefix`` fixture).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from prism_conformance import CounterSuite, TimeSeriesSuite


class TestRedisTimeSeries(TimeSeriesSuite):
    @pytest.fixture
    def prism_backend(self, redis_url: str, redis_prefix: str) -> Mapping[str, Any]:
        return {"plugin": "redis", "url": redis_url, "key_prefix": redis_prefix}


class TestRedisCounter(CounterSuite):
    @pytest.fixture
    def prism_backend(self, redis_url: str, redis_prefix: str) -> Mapping[str, Any]:
        return {"plugin": "redis", "url": redis_url, "key_prefix": redis_prefix}
