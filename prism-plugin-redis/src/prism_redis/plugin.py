"""The plugin module named by the ``prism.backends`` entry point ``redis``.

One name for every abstraction: a ``backends:`` entry with ``plugin: redis``
serves KeyValue, Queue, TimeSeries and Counter namespaces with the same settings."""

from __future__ import annotations

from prism.plugins import hookimpl
from prism.plugins.registry import BackendRegistry
from prism_redis.counter import COUNTER
from prism_redis.keyvalue import KEYVALUE
from prism_redis.queue import QUEUE
from prism_redis.timeseries import TIMESERIES


@hookimpl
def prism_register_keyvalue(registry: BackendRegistry) -> None:
    registry.add_keyvalue("redis", KEYVALUE)


@hookimpl
def prism_register_queue(registry: BackendRegistry) -> None:
    registry.add_queue("redis", QUEUE)


@hookimpl
def prism_register_timeseries(registry: BackendRegistry) -> None:
    registry.add_timeseries("redis", TIMESERIES)


@hookimpl
def prism_register_counter(registry: BackendRegistry) -> None:
    registry.add_counter("redis", COUNTER)
