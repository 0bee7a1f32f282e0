"""The registry that plugins add their backend types to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from prism import capabilities
from prism.spi import CounterBackendType, KeyValueBackendType, QueueBackendType, TimeSeriesBackendType

BackendType = KeyValueBackendType | QueueBackendType | TimeSeriesBackendType | CounterBackendType


class RegistrationError(Exception):
    """A plugin registered something invalid."""


@attrs.define
class BackendRegistry:
    """Backend types by abstraction, then by plugin name."""

    keyvalue: dict[str, KeyValueBackendType] = attrs.Factory(dict)
    queue: dict[str, QueueBackendType] = attrs.Factory(dict)
    timeseries: dict[str, TimeSeriesBackendType] = attrs.Factory(dict)
    counter: dict[str, CounterBackendType] = attrs.Factory(dict)
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

    def add_timeseries(self, name: str, backend_type: TimeSeriesBackendType) -> None:
        """Register a TimeSeries backend type under ``name``, with the same
        ``settings_type`` as the plugin's other abstractions."""
        self._check("timeseries", "TimeSeries", name, backend_type)
        self.timeseries[name] = backend_type
        self.registered_by[name] = self._current

    def add_counter(self, name: str, backend_type: CounterBackendType) -> None:
        """Register a Counter backend type under ``name``. It must declare at
        least one mode (``counter.best_effort``, ``counter.exact``)."""
        self._check("counter", "Counter", name, backend_type)
        if not backend_type.capabilities & capabilities.COUNTER:
            raise RegistrationError(
                f"Counter backend {name!r} declares no mode; declare counter.best_effort, counter.exact "
                "or both"
            )
        self.counter[name] = backend_type
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
        self.timeseries.pop(name, None)
        self.counter.pop(name, None)
        self.registered_by.pop(name, None)

    def abstractions_of(self, name: str) -> list[str]:
        """The abstractions a plugin name provides."""
        return [abstraction for abstraction, types in self.by_abstraction().items() if name in types]

    def by_abstraction(self) -> Mapping[str, Mapping[str, BackendType]]:
        return {
            "keyvalue": self.keyvalue,
            "queue": self.queue,
            "timeseries": self.timeseries,
            "counter": self.counter,
        }

    def names(self) -> list[str]:
        return sorted({name for types in self.by_abstraction().values() for name in types})
