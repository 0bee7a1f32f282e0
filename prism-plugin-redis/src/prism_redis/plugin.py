"""The plugin module named by the ``prism.backends`` entry point ``redis``.

One name for both abstractions: a ``backends:`` entry with ``plugin: redis``
serves KeyValue and Queue namespaces with the same settings."""

from __future__ import annotations

from prism.plugins import hookimpl
from prism.plugins.registry import BackendRegistry
from prism_redis.keyvalue import KEYVALUE
from prism_redis.queue import QUEUE


@hookimpl
def prism_register_keyvalue(registry: BackendRegistry) -> None:
    registry.add_keyvalue("redis", KEYVALUE)


@hookimpl
def prism_register_queue(registry: BackendRegistry) -> None:
    registry.add_queue("redis", QUEUE)
