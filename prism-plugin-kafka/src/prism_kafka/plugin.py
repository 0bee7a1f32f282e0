"""The plugin module named by the ``prism.backends`` entry point ``kafka``.
It registers a Queue backend only: Kafka is a log, not a KeyValue store."""

from __future__ import annotations

from prism.plugins import hookimpl
from prism.plugins.registry import BackendRegistry
from prism_kafka.queue import QUEUE


@hookimpl
def prism_register_queue(registry: BackendRegistry) -> None:
    registry.add_queue("kafka", QUEUE)
