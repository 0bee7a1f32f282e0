"""Fixtures of the redis plugin's tests.

Tests share one Redis server with other test runs, so nothing here flushes it:
each test writes under its own key prefix and deletes exactly that prefix's
keys afterwards (``SCAN MATCH`` is fine in a test; the backend itself never
lists keys).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix, whose keys are deleted after the test."""
    prefix = f"prism-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()
