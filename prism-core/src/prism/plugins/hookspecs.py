"""Hook specifications for Prism backend plugins.

Hooks are grouped by lifecycle. Today there is one stage, *registration*: right
after the plugins are loaded, Prism calls every registration hook once with the
same registry. Registration hooks return nothing; they add backend types to the
registry they receive. Each abstraction has one registration hook.

Implement a hook by decorating a module-level function with :data:`hookimpl`.
An implementation may ask for fewer arguments than the spec lists, so new
arguments can be added to a spec without breaking existing plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from prism.plugins.registry import BackendRegistry

PROJECT_NAME = "prism"

_hookspec = pluggy.HookspecMarker(PROJECT_NAME)

#: Marks a function as an implementation of a Prism hook.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -------------------------------------------------------------------------
# Registration hooks
# -------------------------------------------------------------------------


@_hookspec
def prism_register_keyvalue(registry: BackendRegistry) -> None:
    """Register the plugin's KeyValue backend types.

    Called once, right after every plugin has been loaded and before any
    configuration is read. Call ``registry.add_keyvalue(name, backend_type)`` for
    each backend type the plugin provides; ``name`` is what ``plugin:`` refers to
    in ``prism.yaml``, and is usually the plugin's entry-point name.

    :param registry: The registry to add backend types to.
    :return: Nothing; the registry holds the result.
    """


@_hookspec
def prism_register_queue(registry: BackendRegistry) -> None:
    """Register the plugin's Queue backend types.

    Called once, right after every plugin has been loaded and after
    :func:`prism_register_keyvalue`, before any configuration is read. Call
    ``registry.add_queue(name, backend_type)`` for each Queue backend type the
    plugin provides. A plugin that also provides KeyValue under the same
    ``name`` must register the same ``settings_type`` for both.

    :param registry: The registry to add backend types to.
    :return: Nothing; the registry holds the result.
    """


@_hookspec
def prism_register_timeseries(registry: BackendRegistry) -> None:
    """Register the plugin's TimeSeries backend types.

    Called once at registration, after :func:`prism_register_queue`. Call
    ``registry.add_timeseries(name, backend_type)`` for each TimeSeries backend
    type the plugin provides, with the same ``settings_type`` as its other
    abstractions under that ``name``.

    :param registry: The registry to add backend types to.
    :return: Nothing; the registry holds the result.
    """


@_hookspec
def prism_register_counter(registry: BackendRegistry) -> None:
    """Register the plugin's Counter backend types.

    Called once at registration, after :func:`prism_register_timeseries`. Call
    ``registry.add_counter(name, backend_type)``; the backend type's
    capabilities say which ``counter.mode`` values it serves
    (``counter.best_effort``, ``counter.exact``).

    :param registry: The registry to add backend types to.
    :return: Nothing; the registry holds the result.
    """
