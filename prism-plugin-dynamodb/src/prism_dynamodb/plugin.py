"""The plugin module named by the ``prism.backends`` entry point ``dynamodb``."""

from __future__ import annotations

from prism.plugins import hookimpl
from prism.plugins.registry import BackendRegistry
from prism_dynamodb.keyvalue import KEYVALUE


@hookimpl
def prism_register_keyvalue(registry: BackendRegistry) -> None:
    registry.add_keyvalue("dynamodb", KEYVALUE)
