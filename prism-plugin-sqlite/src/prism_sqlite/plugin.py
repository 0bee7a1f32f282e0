"""The plugin module named by the ``prism.backends`` entry point ``sqlite``.

KeyValue, Queue, TimeSeries and Counter register under the same name with the
same settings class, so one ``backends:`` entry configures all four, on one
database file."""

from __future__ import annotations

from prism.plugins import hookimpl
from prism.plugins.registry import BackendRegistry
from prism_sqlite.counter import COUNTER
from prism_sqlite.keyvalue import KEYVALUE
from prism_sqlite.queue import QUEUE
from prism_sqlite.timeseries import TIMESERIES


@hookimpl
def prism_register_keyvalue(registry: BackendRegistry) -> None:
    registry.add_keyvalue("sqlite", KEYVALUE)


@hookimpl
def prism_register_queue(registry: BackendRegistry) -> None:
    registry.add_queue("sqlite", QUEUE)


@hookimpl
def prism_register_timeseries(registry: BackendRegistry) -> None:
    registry.add_timeseries("sqlite", TIMESERIES)


@hookimpl
def prism_register_counter(registry: BackendRegistry) -> None:
    registry.add_counter("sqlite", COUNTER)
