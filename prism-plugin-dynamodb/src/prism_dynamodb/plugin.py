"""The plugin module named by the ``prism.backends`` entry point ``dynamodb``."""

from __future__ import annotations

from prism.plugins import hookimpl
from prism.plugins.registry import BackendRegistry
from prism_dynamodb.counter import COUNTER
from prism_dynamodb.keyvalue import KEYVALUE
from prism_dynamodb.timeseries import TIMESERIES


@hookimpl
def prism_register_keyvalue(registry: BackendRegistry) -> None:
    registry.add_keyvalue("dynamodb", KEYVALUE)


@hookimpl
def prism_register_timeseries(registry: BackendRegistry) -> None:
    registry.add_timeseries("dynamodb", TIMESERIES)


@hookimpl
def prism_register_counter(registry: BackendRegistry) -> None:
    registry.add_counter("dynamodb", COUNTER)
