"""The registry that plugins add their backend types to."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from prism import capabilities
from prism.spi import KeyValueBackendType


class RegistrationError(Exception):
    """A plugin registered something invalid."""


@attrs.define
class BackendRegistry:
    """Backend types by abstraction, then by plugin name."""

    keyvalue: dict[str, KeyValueBackendType] = attrs.Factory(dict)
    registered_by: dict[str, str] = attrs.Factory(dict)
    """Plugin name -> the name of the plugin module that registered it."""
    _current: str = ""

    def add_keyvalue(self, name: str, backend_type: KeyValueBackendType) -> None:
        """Register a KeyValue backend type under ``name`` (the ``plugin:`` value
        in ``prism.yaml``)."""
        if name in self.keyvalue:
            raise RegistrationError(f"KeyValue backend {name!r} is registered twice")
        unknown = backend_type.capabilities - capabilities.KEYVALUE
        if unknown:
            raise RegistrationError(
                f"KeyValue backend {name!r} declares unknown capabilities {sorted(unknown)}; "
                f"known: {sorted(capabilities.KEYVALUE)}"
            )
        if not attrs.has(backend_type.settings_type):
            raise RegistrationError(f"KeyValue backend {name!r}: settings_type must be an attrs class")
        self.keyvalue[name] = backend_type
        self.registered_by[name] = self._current

    def abstractions_of(self, name: str) -> list[str]:
        """The abstractions a plugin name provides."""
        return [abstraction for abstraction, types in self.by_abstraction().items() if name in types]

    def by_abstraction(self) -> Mapping[str, Mapping[str, KeyValueBackendType]]:
        return {"keyvalue": self.keyvalue}

    def names(self) -> list[str]:
        return sorted({name for types in self.by_abstraction().values() for name in types})
