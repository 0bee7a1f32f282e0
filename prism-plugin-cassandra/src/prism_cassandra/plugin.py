"""The plugin module named by the ``prism.backends`` entry point ``cassandra``."""

from __future__ import annotations

from prism.plugins import hookimpl
from prism.plugins.registry import BackendRegistry
from prism_cassandra.counter import COUNTER
from prism_cassandra.keyvalue import KEYVALUE
from prism_cassandra.timeseries import TIMESERIES


@hookimpl
def prism_register_keyvalue(registry: BackendRegistry) -> None:
    registry.add_keyvalue("cassandra", KEYVALUE)


@hookimpl
def prism_register_timeseries(registry: BackendRegistry) -> None:
    registry.add_timeseries("cassandra", TIMESERIES)


@hookimpl
def prism_register_counter(registry: BackendRegistry) -> None:
    registry.add_counter("cassandra", COUNTER)
