"""The runtime: routes each namespace to a started, provisioned backend.

One runtime belongs to one event loop. Backends are created when a namespace
planned onto them is first opened, started and provisioned before its first
operation, and closed with the runtime.

Namespaces come from ``prism.yaml`` and, at run time, from :meth:`Runtime.declare`
(the gateway's AdminService.CreateNamespace). ``Config`` is frozen and shared, so
run-time declarations live in the runtime beside it and last as long as the
runtime does; their data stays on the backend, so declaring the same namespace
again in a new process reattaches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, cast

import attrs

from prism.config import (
    ABSTRACTIONS,
    NAMESPACE_NAME,
    Abstraction,
    Config,
    NamespaceConfig,
    _abstraction_problems,
    flatten_errors,
    structure,
)
from prism.counter.namespace import AsyncCounter
from prism.errors import InvalidArgument, NamespaceNotFound, PrismError, WrongAbstraction
from prism.keyvalue.namespace import AsyncKeyValue
from prism.pagetokens import PageTokenSigner
from prism.planner import (
    NamespacePlan,
    effective_max_message_bytes,
    effective_max_payload_bytes,
    effective_max_value_bytes,
    plan_namespace,
)
from prism.plugins.manager import PluginSet
from prism.queue.namespace import AsyncQueue
from prism.spi import CounterBackend, KeyValueBackend, QueueBackend, TimeSeriesBackend
from prism.timeseries.namespace import AsyncTimeSeries
from prism.units import format_duration

#: What the runtime starts, provisions and closes; the SPIs share these methods.
AnyBackend = KeyValueBackend | QueueBackend | TimeSeriesBackend | CounterBackend
B = TypeVar("B", KeyValueBackend, QueueBackend, TimeSeriesBackend, CounterBackend)


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


class NamespaceConflict(PrismError):
    """A run-time declaration names a namespace that is already in place with
    other settings (declared earlier, or in ``prism.yaml``). ``differences``
    lists each setting that differs, as ``path: in place X, declared Y``."""

    def __init__(self, namespace: str, where: str, differences: list[str]) -> None:
        self.namespace = namespace
        self.differences = list(differences)
        detail = "; ".join(differences)
        super().__init__(
            f"namespace {namespace!r} is already declared {where} with other settings ({detail}); "
            "declare it with the same settings, or pick another name"
        )


def _shown(value: object) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return "unset" if value is None else str(value)


def differences(in_place: object, declared: object, path: str = "") -> list[str]:
    """Each setting where two namespace configurations differ, by its
    ``prism.yaml`` path (``limits.max_key_bytes``)."""
    cls: Any = type(in_place)
    if attrs.has(cls) and cls is type(declared):
        out: list[str] = []
        for field in attrs.fields(cls):
            step = f"{path}.{field.name}" if path else field.name
            out += differences(getattr(in_place, field.name), getattr(declared, field.name), step)
        return out
    if in_place == declared:
        return []
    return [f"{path}: in place {_shown(in_place)}, declared {_shown(declared)}"]


def _declaration_problems(name: str, ns: NamespaceConfig, config: Config) -> list[str]:
    """What ``parse_config`` would say about this entry under ``namespaces:``."""
    path = f"namespaces.{name}"
    problems: list[str] = []
    if not isinstance(name, str) or not NAMESPACE_NAME.fullmatch(name):
        problems.append(
            f"{path}: namespace names are 1-48 lowercase letters, digits and '_', starting with a letter"
        )
    if ns.backend is not None and ns.backend not in config.backends:
        known = ", ".join(config.backends) or "none configured"
        problems.append(f"{path}.backend: no backend is named {ns.backend!r} (backends: {known})")
    return problems + _abstraction_problems(path, ns)


def _invalid(name: str, problems: list[str]) -> InvalidArgument:
    """One InvalidArgument for every problem, its ``field`` the first one's path
    inside the namespace entry (``limits.max_key_bytes``; ``name`` for the name)."""
    prefix = f"namespaces.{name}"
    first = problems[0].split(":", 1)[0]
    field = first.removeprefix(prefix).lstrip(".") or "name"
    noun = "problem" if len(problems) == 1 else "problems"
    return InvalidArgument(
        f"invalid namespace declaration ({len(problems)} {noun}): " + "; ".join(problems),
        namespace=name if NAMESPACE_NAME.fullmatch(name) else None,
        field=field,
    )


def namespace_from_mapping(name: str, body: Mapping[str, Any], config: Config) -> NamespaceConfig:
    """A namespace entry as ``prism.yaml`` holds it (``{"abstraction": "queue",
    "queue": {"visibility_timeout": "2s"}}``), checked exactly as
    :func:`prism.config.parse_config` checks it, with the same messages.

    :raises InvalidArgument: listing every problem; ``field`` names the first.
    """
    try:
        ns: NamespaceConfig = structure(body, NamespaceConfig)
    except Exception as exc:
        raise _invalid(name, flatten_errors(exc, f"namespaces.{name}")) from None
    problems = _declaration_problems(name, ns, config)
    if problems:
        raise _invalid(name, problems)
    return ns


class Runtime:
    def __init__(self, config: Config, plugins: PluginSet) -> None:
        self.config = config
        self.plugins = plugins
        self.signer = PageTokenSigner(config.page_token_secret)
        self._backends: dict[str, KeyValueBackend] = {}
        self._queue_backends: dict[str, QueueBackend] = {}
        self._timeseries_backends: dict[str, TimeSeriesBackend] = {}
        self._counter_backends: dict[str, CounterBackend] = {}
        # Keyed by (abstraction, backend name): a plugin's KeyValue and Queue
        # objects for one configured backend are separate and started separately.
        self._started: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._provisioned: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._keyvalue: dict[str, AsyncKeyValue] = {}
        self._queue: dict[str, AsyncQueue] = {}
        self._timeseries: dict[str, AsyncTimeSeries] = {}
        self._counter: dict[str, AsyncCounter] = {}
        #: Namespaces declared at run time (:meth:`declare`), beside config.namespaces.
        self._declared: dict[str, NamespaceConfig] = {}
        #: Per (abstraction, namespace): what makes its backend started and provisioned.
        self._readiness: dict[tuple[str, str], Callable[[], Awaitable[None]]] = {}
        self._closed = False

    def _lookup(self, name: str) -> NamespaceConfig | None:
        ns = self.config.namespaces.get(name)
        return ns if ns is not None else self._declared.get(name)

    @property
    def declared(self) -> Mapping[str, NamespaceConfig]:
        """The namespaces declared at run time, read-only."""
        return MappingProxyType(self._declared)

    def namespaces(self) -> dict[str, NamespaceConfig]:
        """Every declared namespace: ``prism.yaml``'s, then the run-time ones."""
        return {**self.config.namespaces, **self._declared}

    async def declare(self, name: str, ns: NamespaceConfig) -> tuple[NamespacePlan, bool]:
        """Declare ``name`` at run time, plan it and provision it; returns its
        plan and whether it is new.

        The same settings again are a success (a client declares its namespaces
        at every start-up). The declaration lasts as long as this runtime; the
        data stays on the backend, so declaring it again later reattaches it.

        :raises InvalidArgument: settings ``prism.yaml`` would refuse.
        :raises NamespaceConflict: ``name`` is in place with other settings.
        :raises PlanError: no configured backend meets the needs.
        """
        problems = _declaration_problems(name, ns, self.config)
        if problems:
            raise _invalid(name, problems)
        in_file = self.config.namespaces.get(name)
        in_place = in_file if in_file is not None else self._declared.get(name)
        if in_place is not None and in_place != ns:
            where = "in prism.yaml" if in_file is not None else "at run time"
            raise NamespaceConflict(name, where, differences(in_place, ns))
        chosen = plan_namespace(name, ns, self.config, self.plugins.registry)
        new = in_place is None
        if new:
            # Registered before the first await, so a concurrent declaration of
            # the same name sees it; a handle planned earlier (auto_namespaces)
            # is dropped, so the next one uses the declared settings.
            self._declared[name] = ns
            self._keyvalue.pop(name, None)
            self._queue.pop(name, None)
            self._timeseries.pop(name, None)
            self._counter.pop(name, None)
        await self.ready(name, ns.abstraction)
        return chosen, new

    async def ready(self, name: str, abstraction: str) -> None:
        """Start the backend serving ``name`` and provision the namespace, as
        its first operation would."""
        opener = {
            "queue": self.queue,
            "timeseries": self.timeseries,
            "counter": self.counter,
        }.get(abstraction, self.keyvalue)
        opener(name)
        await self._readiness[(abstraction, name)]()

    def namespace_config(self, name: str, abstraction: str) -> NamespaceConfig:
        ns = self._lookup(name)
        if ns is None:
            if not self.config.auto_namespaces:
                raise NamespaceNotFound(name, list(self.config.namespaces))
            if not isinstance(name, str) or not NAMESPACE_NAME.fullmatch(name):
                raise InvalidArgument(
                    f"namespace name {name!r} is invalid: use 1-48 lowercase letters, digits and '_', "
                    "starting with a letter",
                    field="namespace",
                )
            kind = cast(Abstraction, abstraction) if abstraction in ABSTRACTIONS else "keyvalue"
            return NamespaceConfig(abstraction=kind)
        if ns.abstraction != abstraction:
            raise WrongAbstraction(name, ns.abstraction, abstraction)
        return ns

    def plan(self, name: str, abstraction: str | None = None) -> NamespacePlan:
        """How a namespace is served. Raises if it is unknown or cannot be planned.

        ``abstraction`` defaults to the declared one (KeyValue for an undeclared
        namespace)."""
        if abstraction is None:
            declared = self._lookup(name)
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

    def _open(
        self,
        name: str,
        abstraction: str,
        backends: dict[str, B],
        types: Mapping[str, Any],
        provision: Callable[[B, NamespaceConfig], Awaitable[None]],
    ) -> tuple[NamespaceConfig, NamespacePlan, Any, Any, B, Callable[[], Awaitable[None]]]:
        """Plan ``name``, find or create its backend object, and make the
        ``ensure_ready`` its handle awaits before each operation: it starts the
        backend and provisions the namespace once (with ``provision``), then
        is a flag check.

        Returns the namespace's config, its plan, the backend type, its
        traits, the backend and ``ensure_ready``.
        """
        ns, chosen, settings = self._route(name, abstraction)
        backend_type = types[chosen.plugin]
        traits = backend_type.traits(settings)
        backend = self._instance(backends, chosen, backend_type.create)
        ready = False

        async def ensure_ready() -> None:
            # Once started and provisioned, every later call is a flag check.
            nonlocal ready
            if ready:
                return
            await self._ensure_ready(
                abstraction, chosen.backend, backend, name, partial(provision, backend, ns)
            )
            ready = True

        self._readiness[(abstraction, name)] = ensure_ready
        return ns, chosen, backend_type, traits, backend, ensure_ready

    def keyvalue(self, name: str) -> AsyncKeyValue:
        """The KeyValue namespace ``name``.

        :raises NamespaceNotFound: it is not configured (and auto_namespaces is off).
        :raises PlanError: no configured backend meets its needs.
        """
        cached = self._keyvalue.get(name)
        if cached is not None and not self._closed:
            return cached
        types = self.plugins.registry.keyvalue
        ns, chosen, backend_type, traits, backend, ensure_ready = self._open(
            name, "keyvalue", self._backends, types, lambda backend, _: backend.provision(name)
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
        types = self.plugins.registry.queue
        ns, chosen, backend_type, traits, backend, ensure_ready = self._open(
            name, "queue", self._queue_backends, types, lambda backend, ns: backend.provision(name, ns)
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

    def timeseries(self, name: str) -> AsyncTimeSeries:
        """The TimeSeries namespace ``name``.

        :raises NamespaceNotFound: it is not configured (and auto_namespaces is off).
        :raises PlanError: no configured backend meets its needs.
        """
        cached = self._timeseries.get(name)
        if cached is not None and not self._closed:
            return cached
        types = self.plugins.registry.timeseries
        ns, chosen, backend_type, traits, backend, ensure_ready = self._open(
            name,
            "timeseries",
            self._timeseries_backends,
            types,
            lambda backend, ns: backend.provision(name, ns),
        )
        handle = self._timeseries[name] = AsyncTimeSeries(
            name,
            ns,
            backend_name=chosen.backend,
            backend=backend,
            capabilities=backend_type.capabilities,
            traits=traits,
            signer=self.signer,
            max_payload_bytes=effective_max_payload_bytes(ns, traits),
            ensure_ready=ensure_ready,
        )
        return handle

    def counter(self, name: str) -> AsyncCounter:
        """The Counter namespace ``name``.

        :raises NamespaceNotFound: it is not configured (and auto_namespaces is off).
        :raises PlanError: no configured backend serves its ``counter.mode``.
        """
        cached = self._counter.get(name)
        if cached is not None and not self._closed:
            return cached
        types = self.plugins.registry.counter
        ns, chosen, backend_type, traits, backend, ensure_ready = self._open(
            name, "counter", self._counter_backends, types, lambda backend, ns: backend.provision(name, ns)
        )
        handle = self._counter[name] = AsyncCounter(
            name,
            ns,
            backend_name=chosen.backend,
            backend=backend,
            capabilities=backend_type.capabilities,
            traits=traits,
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
        backends += [("timeseries", n, b) for n, b in self._timeseries_backends.items()]
        backends += [("counter", n, b) for n, b in self._counter_backends.items()]
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
        self._timeseries_backends.clear()
        self._counter_backends.clear()
