"""Prism's Redis backend: KeyValue on a Redis server.

Install the distribution and name ``plugin: redis`` under ``backends:`` in
``prism.yaml``; :mod:`prism_redis.plugin` registers it through the
``prism.backends`` entry point.
"""

from __future__ import annotations

from prism_redis.keyvalue import KEYVALUE, RedisKeyValue, RedisSettings

__all__ = ["KEYVALUE", "RedisKeyValue", "RedisSettings"]
