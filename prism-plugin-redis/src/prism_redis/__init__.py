"""Prism's Redis backend: KeyValue and Queue (on Redis Streams) on a Redis server.

Install the distribution and name ``plugin: redis`` under ``backends:`` in
``prism.yaml``; :mod:`prism_redis.plugin` registers it through the
``prism.backends`` entry point.
"""

from __future__ import annotations

from prism_redis.keyvalue import KEYVALUE, RedisKeyValue, RedisSettings
from prism_redis.queue import QUEUE, RedisQueue

__all__ = ["KEYVALUE", "QUEUE", "RedisKeyValue", "RedisQueue", "RedisSettings"]
