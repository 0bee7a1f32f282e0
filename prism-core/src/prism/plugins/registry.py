"""The registry that plugins add their backend types to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from prism import capabilities
from prism.spi import KeyValueBackendType, QueueBackendType

BackendType = KeyValueBackendType | QueueBackendType


class RegistrationError(Exception):
    """A plugin registered something invalid."""


@attrs.define
class BackendRegistry:
    """Backend types by abstraction, then by plugin name."""

    keyvalue: dict[str, KeyValueBackendType] = attrs.Factory(dict)
    queue: dict[str, QueueBackendType] = attrs.Factory(dict)
    registered_by: dict[str, str] = attrs.Factory(dict)
    """Plugin name -> the name of the plugin module that registered it."""
    _current: str = ""

    def add_keyvalue(self, name: str, backend_type: KeyValueBackendType) -> None:
        """Register a KeyValue backend type under ``name`` (the ``plugin:`` value
        in ``prism.yaml``)."""
        self._check("keyvalue", "KeyValue", name, backend_type)
        self.keyvalue[name] = backend_type
        self.registered_by[name] = self._current

    def add_queue(self, name: str, backend_type: QueueBackendType) -> None:
        """Register a Queue backend type under ``name``. A name that also has a
        KeyValue backend type must use the same ``settings_type``: one entry
        under ``backends:`` configures both."""
        self._check("queue", "Queue", name, backend_type)
        self.queue[name] = backend_type
        self.registered_by[name] = self._current

    def _check(self, abstraction: str, title: str, name: str, backend_type: BackendType) -> None:
        if name in self.by_abstraction()[abstraction]:
            raise RegistrationError(f"{title} backend {name!r} is registered twice")
        known = capabilities.BY_ABSTRACTION[abstraction]
        unknown = backend_type.capabilities - known
        if unknown:
            raise RegistrationError(
                f"{title} backend {name!r} declares unknown capabilities {sorted(unknown)}; "
                f"known: {sorted(known)}"
            )
        if not attrs.has(backend_type.settings_type):
            raise RegistrationError(f"{title} backend {name!r}: settings_type must be an attrs class")
        other = self.settings_type(name)
        if other is not None and other is not backend_type.settings_type:
            raise RegistrationError(
                f"{title} backend {name!r}: settings_type differs from the one its other abstractions "
                "registered; one backends: entry configures them all, so use one settings class"
            )

    def settings_type(self, name: str) -> type[Any] | None:
        """The settings class of plugin ``name``, whichever abstraction registered it."""
        for types in self.by_abstraction().values():
            backend_type = types.get(name)
            if backend_type is not None:
                return backend_type.settings_type
        return None

    def capabilities_of(self, name: str) -> frozenset[str]:
        """Every capability plugin ``name`` declares, over all its abstractions."""
        return frozenset(
            c for types in self.by_abstraction().values() if name in types for c in types[name].capabilities
        )

    def remove(self, name: str) -> None:
        """Forget every backend type registered under ``name`` (a failed registration)."""
        self.keyvalue.pop(name, None)
        self.queue.pop(name, None)
        self.registered_by.pop(name, None)

    def abstractions_of(self, name: str) -> list[str]:
        """The abstractions a plugin name provides."""
        return [abstraction for abstraction, types in self.by_abstraction().items() if name in types]

    def by_abstraction(self) -> Mapping[str, Mapping[str, BackendType]]:
        return {"keyvalue": self.keyvalue, "queue": self.queue}

    def names(self) -> list[str]:
        return sorted({name for types in self.by_abstraction().values() for name in types})
