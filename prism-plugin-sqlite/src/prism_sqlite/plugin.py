"""The plugin module named by the ``prism.backends`` entry point ``sqlite``.

KeyValue and Queue register under the same name with the same settings class,
so one ``backends:`` entry configures both, on one database file."""

from __future__ import annotations

from prism.plugins import hookimpl
from prism.plugins.registry import BackendRegistry
from prism_sqlite.keyvalue import KEYVALUE
from prism_sqlite.queue import QUEUE


@hookimpl
def prism_register_keyvalue(registry: BackendRegistry) -> None:
    registry.add_keyvalue("sqlite", KEYVALUE)


@hookimpl
def prism_register_queue(registry: BackendRegistry) -> None:
    registry.add_queue("sqlite", QUEUE)
