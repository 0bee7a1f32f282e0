"""Prism's Redis backend: KeyValue, Queue (on Redis Streams), TimeSeries (a
sorted set per series) and Counter (INCRBY, and an atomic script for exact
mode) on a Redis server.

Install the distribution and name ``plugin: redis`` under ``backends:`` in
``prism.yaml``; :mod:`prism_redis.plugin` registers it through the
``prism.backends`` entry point.
"""

from __future__ import annotations

from prism_redis.counter import COUNTER, RedisCounter
from prism_redis.keyvalue import KEYVALUE, RedisKeyValue, RedisSettings
from prism_redis.queue import QUEUE, RedisQueue
from prism_redis.timeseries import TIMESERIES, RedisTimeSeries

__all__ = [
    "COUNTER",
    "KEYVALUE",
    "QUEUE",
    "TIMESERIES",
    "RedisCounter",
    "RedisKeyValue",
    "RedisQueue",
    "RedisSettings",
    "RedisTimeSeries",
]
