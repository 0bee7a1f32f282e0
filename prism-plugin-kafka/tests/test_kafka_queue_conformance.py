"""The Queue conformance suite against the kafka backend, through the public API.

Needs a Kafka broker: ``PRISM_TEST_KAFKA`` or ``nox -s services -- up``. Every
test runs under its own ``topic_prefix`` (the ``kafka_prefix`` fixture), so runs
never see each other's topics or groups, and the prefix's topics and groups are
deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from prism_conformance import QueueSuite


class TestKafkaQueue(QueueSuite):
    @pytest.fixture
    def prism_backend(self, kafka_bootstrap: str, kafka_prefix: str) -> Mapping[str, Any]:
        return {"plugin": "kafka", "bootstrap_servers": kafka_bootstrap, "topic_prefix": kafka_prefix}
