"""The runtime: routes each namespace to a started, provisioned backend.

One runtime belongs to one event loop. Backends are created when a namespace
planned onto them is first opened, started and provisioned before its first
operation, and closed with the runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs

from prism.config import NAMESPACE_NAME, Config, NamespaceConfig
from prism.errors import InvalidArgument, NamespaceNotFound, WrongAbstraction
from prism.keyvalue.namespace import AsyncKeyValue
from prism.pagetokens import PageTokenSigner
from prism.planner import (
    NamespacePlan,
    effective_max_message_bytes,
    effective_max_value_bytes,
    plan_namespace,
)
from prism.plugins.manager import PluginSet
from prism.queue.namespace import AsyncQueue
from prism.spi import KeyValueBackend, QueueBackend

#: What the runtime starts, provisions and closes; the SPIs share these methods.
AnyBackend = KeyValueBackend | QueueBackend
B = TypeVar("B", KeyValueBackend, QueueBackend)


def resolve_settings_paths(settings: Any, base_dir: Path) -> Any:
    """Resolve every relative ``pathlib.Path`` field of a settings object against
    the configuration file's folder, so a config means the same from any cwd."""
    if not attrs.has(type(settings)):
        return settings
    changes: dict[str, Path] = {}
    for field in attrs.fields(type(settings)):
        value = getattr(settings, field.name)
        if isinstance(value, Path) and not value.is_absolute() and str(value) != ":memory:":
            changes[field.name] = base_dir / value
    return attrs.evolve(settings, **changes) if changes else settings


class Runtime:
    def __init__(self, config: Config, plugins: PluginSet) -> None:
        self.config = config
        self.plugins = plugins
        self.signer = PageTokenSigner(config.page_token_secret)
        self._backends: dict[str, KeyValueBackend] = {}
        self._queue_backends: dict[str, QueueBackend] = {}
        # Keyed by (abstraction, backend name): a plugin's KeyValue and Queue
        # objects for one configured backend are separate and started separately.
        self._started: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._provisioned: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._keyvalue: dict[str, AsyncKeyValue] = {}
        self._queue: dict[str, AsyncQueue] = {}
        self._closed = False

    def namespace_config(self, name: str, abstraction: str) -> NamespaceConfig:
        ns = self.config.namespaces.get(name)
        if ns is None:
            if not self.config.auto_namespaces:
                raise NamespaceNotFound(name, list(self.config.namespaces))
            if not isinstance(name, str) or not NAMESPACE_NAME.fullmatch(name):
                raise InvalidArgument(
                    f"namespace name {name!r} is invalid: use 1-48 lowercase letters, digits and '_', "
                    "starting with a letter",
                    field="namespace",
                )
            return NamespaceConfig(abstraction="queue" if abstraction == "queue" else "keyvalue")
        if ns.abstraction != abstraction:
            raise WrongAbstraction(name, ns.abstraction, abstraction)
        return ns

    def plan(self, name: str, abstraction: str | None = None) -> NamespacePlan:
        """How a namespace is served. Raises if it is unknown or cannot be planned.

        ``abstraction`` defaults to the declared one (KeyValue for an undeclared
        namespace)."""
        if abstraction is None:
            declared = self.config.namespaces.get(name)
            abstraction = declared.abstraction if declared is not None else "keyvalue"
        return plan_namespace(
            name, self.namespace_config(name, abstraction), self.config, self.plugins.registry
        )

    def _route(self, name: str, abstraction: str) -> tuple[NamespaceConfig, NamespacePlan, Any]:
        """The namespace's config, its plan and its backend's settings."""
        if self._closed:
            raise RuntimeError("this Prism handle is closed")
        ns = self.namespace_config(name, abstraction)
        chosen = plan_namespace(name, ns, self.config, self.plugins.registry)
        return ns, chosen, self.config.backends[chosen.backend].settings

    def _instance(self, cache: dict[str, B], chosen: NamespacePlan, create: Callable[[str, Any], B]) -> B:
        """One backend object per configured backend and abstraction, shared by
        every namespace planned onto it."""
        backend = cache.get(chosen.backend)
        if backend is None:
            resolved = resolve_settings_paths(
                self.config.backends[chosen.backend].settings, self.config.base_dir
            )
            backend = cache[chosen.backend] = create(chosen.backend, resolved)
        return backend

    def keyvalue(self, name: str) -> AsyncKeyValue:
        """The KeyValue namespace ``name``.

        :raises NamespaceNotFound: it is not configured (and auto_namespaces is off).
        :raises PlanError: no configured backend meets its needs.
        """
        cached = self._keyvalue.get(name)
        if cached is not None and not self._closed:
            return cached
        ns, chosen, settings = self._route(name, "keyvalue")
        backend_type = self.plugins.registry.keyvalue[chosen.plugin]
        traits = backend_type.traits(settings)
        backend = self._instance(self._backends, chosen, backend_type.create)

        async def ensure_ready() -> None:
            await self._ensure_ready(
                "keyvalue", chosen.backend, backend, name, lambda: backend.provision(name)
            )

        handle = self._keyvalue[name] = AsyncKeyValue(
            name,
            ns,
            backend_name=chosen.backend,
            backend=backend,
            capabilities=backend_type.capabilities,
            traits=traits,
            signer=self.signer,
            max_value_bytes=effective_max_value_bytes(ns, traits),
            ensure_ready=ensure_ready,
        )
        return handle

    def queue(self, name: str) -> AsyncQueue:
        """The Queue namespace ``name``.

        :raises NamespaceNotFound: it is not configured (and auto_namespaces is off).
        :raises PlanError: no configured backend meets its needs.
        """
        cached = self._queue.get(name)
        if cached is not None and not self._closed:
            return cached
        ns, chosen, settings = self._route(name, "queue")
        backend_type = self.plugins.registry.queue[chosen.plugin]
        traits = backend_type.traits(settings)
        backend = self._instance(self._queue_backends, chosen, backend_type.create)

        async def ensure_ready() -> None:
            await self._ensure_ready(
                "queue", chosen.backend, backend, name, lambda: backend.provision(name, ns)
            )

        handle = self._queue[name] = AsyncQueue(
            name,
            ns,
            backend_name=chosen.backend,
            backend=backend,
            capabilities=backend_type.capabilities,
            traits=traits,
            max_message_bytes=effective_max_message_bytes(ns, traits),
            ensure_ready=ensure_ready,
        )
        return handle

    async def _ensure_ready(
        self,
        abstraction: str,
        backend_name: str,
        backend: AnyBackend,
        namespace: str,
        provision: Callable[[], Awaitable[None]],
    ) -> None:
        # Tasks, not flags: concurrent first calls wait for the same start, and a
        # failed start is retried by the next call instead of being cached.
        key = (abstraction, backend_name)
        started = self._started.get(key)
        if started is None or (started.done() and started.exception() is not None):
            started = asyncio.ensure_future(backend.start())
            self._started[key] = started
        await asyncio.shield(started)
        pkey = (abstraction, backend_name, namespace)
        provisioned = self._provisioned.get(pkey)
        if provisioned is None or (provisioned.done() and provisioned.exception() is not None):
            provisioned = asyncio.ensure_future(provision())
            self._provisioned[pkey] = provisioned
        await asyncio.shield(provisioned)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        backends: list[tuple[str, str, AnyBackend]] = [("keyvalue", n, b) for n, b in self._backends.items()]
        backends += [("queue", n, b) for n, b in self._queue_backends.items()]
        for abstraction, name, backend in backends:
            started = self._started.get((abstraction, name))
            if started is None:
                continue
            try:
                await started
            except Exception:
                continue
            await backend.close()
        self._backends.clear()
        self._queue_backends.clear()
