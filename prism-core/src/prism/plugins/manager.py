"""Loading plugins: entry points, the built-ins, the block list and registration.

Start-up order (as tox does it): add the hookspecs, read the block list from
``PRISM_DISABLE_PLUGINS``, load the ``prism.backends`` entry points, register the
built-ins that no entry point provided, check the hook implementations, then run
the registration hooks plugin by plugin. A plugin that fails anywhere on this way
is reported in :attr:`PluginSet.broken` and skipped; it never stops the process.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
from collections.abc import Iterable
from types import ModuleType

import attrs
import pluggy

from prism.log import get_logger
from prism.plugins import hookspecs
from prism.plugins.registry import BackendRegistry

ENTRY_POINT_GROUP = "prism.backends"
DISABLE_ENV = "PRISM_DISABLE_PLUGINS"

#: Backends shipped inside prism-core. They register through the same hooks as
#: any plugin, and are normally found through prism-core's own entry points.
BUILTINS: dict[str, str] = {"memory": "prism.backends.memory"}

#: One registration hook per abstraction, called in this order for each plugin.
_REGISTRATION_HOOKS = (
    "prism_register_keyvalue",
    "prism_register_queue",
    "prism_register_timeseries",
    "prism_register_counter",
)

_log = get_logger(__name__)


@attrs.frozen
class LoadedPlugin:
    name: str
    module: str
    distribution: str
    version: str
    abstractions: tuple[str, ...]
    capabilities: tuple[str, ...]


@attrs.frozen
class BrokenPlugin:
    name: str
    distribution: str
    version: str
    error: str
    """One line: the exception type and message."""
    detail: str = ""
    """The traceback, for ``prism plugins --verbose`` and logs."""


@attrs.frozen
class PluginSet:
    """The outcome of loading plugins: the registry plus a report of every plugin."""

    registry: BackendRegistry
    loaded: tuple[LoadedPlugin, ...]
    broken: tuple[BrokenPlugin, ...]
    disabled: tuple[str, ...]


def disabled_plugins(environ: dict[str, str] | None = None) -> frozenset[str]:
    raw = (os.environ if environ is None else environ).get(DISABLE_ENV, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def load_plugins(
    *,
    disabled: Iterable[str] | None = None,
    extra: dict[str, ModuleType] | None = None,
) -> PluginSet:
    """Discover, load and register every plugin.

    :param disabled: plugin names to block; defaults to ``PRISM_DISABLE_PLUGINS``.
    :param extra: more plugin modules by name, registered as if found through an
        entry point (used by tests and by the conformance suite for plugins that
        are not installed).
    """
    blocked = frozenset(disabled) if disabled is not None else disabled_plugins()
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)

    broken: list[BrokenPlugin] = []
    origin: dict[str, tuple[str, str, str]] = {}  # name -> (module, distribution, version)
    skipped: set[str] = set()

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist_name = ep.dist.name if ep.dist is not None else "?"
        dist_version = ep.dist.version if ep.dist is not None else "?"
        if ep.name in blocked:
            skipped.add(ep.name)
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must never take the process down
            level = _log.warning if isinstance(exc, ImportError) else _log.error
            level("plugin_load_failed", plugin=ep.name, distribution=dist_name, error=_describe(exc))
            broken.append(
                BrokenPlugin(ep.name, dist_name, dist_version, _describe(exc), traceback.format_exc())
            )
            continue
        origin[ep.name] = (ep.value, dist_name, dist_version)

    candidates: dict[str, ModuleType | str] = dict(BUILTINS)
    candidates.update(extra or {})
    for name, target in candidates.items():
        if name in blocked:
            skipped.add(name)
            continue
        if pm.has_plugin(name) or any(b.name == name for b in broken):
            continue
        try:
            module = importlib.import_module(target) if isinstance(target, str) else target
            pm.register(module, name=name)
        except Exception as exc:
            broken.append(
                BrokenPlugin(name, "prism-core", _core_version(), _describe(exc), traceback.format_exc())
            )
            continue
        is_builtin = isinstance(target, str)
        origin[name] = (
            module.__name__,
            "prism-core" if is_builtin else "-",
            _core_version() if is_builtin else "-",
        )

    pm.check_pending()

    registry = BackendRegistry()
    loaded: list[LoadedPlugin] = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        others = [p for p in pm.get_plugins() if p is not plugin]
        registry._current = name
        before = set(registry.names())
        try:
            for hook in _REGISTRATION_HOOKS:
                pm.subset_hook_caller(hook, remove_plugins=others)(registry=registry)
        except Exception as exc:
            module_name, dist_name, dist_version = origin[name]
            _log.error("plugin_register_failed", plugin=name, error=_describe(exc))
            broken.append(BrokenPlugin(name, dist_name, dist_version, _describe(exc), traceback.format_exc()))
            # Drop what the plugin registered before failing, in every abstraction.
            for partial in set(registry.names()) - before:
                registry.remove(partial)
            continue
        module_name, dist_name, dist_version = origin[name]
        names = sorted(set(registry.names()) - before) or [name]
        abstractions = sorted({a for n in names for a in registry.abstractions_of(n)})
        caps = sorted({c for n in names for c in registry.capabilities_of(n)})
        loaded.append(
            LoadedPlugin(name, module_name, dist_name, dist_version, tuple(abstractions), tuple(caps))
        )
    registry._current = ""

    return PluginSet(
        registry=registry,
        loaded=tuple(sorted(loaded, key=lambda p: p.name)),
        broken=tuple(sorted(broken, key=lambda p: p.name)),
        disabled=tuple(sorted(skipped)),
    )


def _core_version() -> str:
    try:
        return importlib.metadata.version("prism-core")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
