"""Writing a Prism backend plugin.

A plugin is a module that implements one or more hooks from
:mod:`prism.plugins.hookspecs`, marked with :data:`hookimpl`, and is named in the
``prism.backends`` entry-point group of its distribution::

    [project.entry-points."prism.backends"]
    mystore = "prism_mystore.plugin"

Each registration hook receives a :class:`~prism.plugins.registry.BackendRegistry`
and adds the plugin's backend types to it::

    from prism.plugins import hookimpl
    from prism.spi import KeyValueBackendType

    @hookimpl
    def prism_register_keyvalue(registry):
        registry.add_keyvalue("mystore", KeyValueBackendType(...))

The data path never goes through pluggy: the runtime calls the backend objects
directly through the typed SPI in :mod:`prism.spi`. Prove a plugin with the
conformance suite (``prism conformance mystore``); see ``docs/writing-a-plugin.md``.
"""

from __future__ import annotations

from prism.plugins.hookspecs import hookimpl
from prism.plugins.manager import BrokenPlugin, LoadedPlugin, PluginSet, load_plugins
from prism.plugins.registry import BackendRegistry

__all__ = ["BackendRegistry", "BrokenPlugin", "LoadedPlugin", "PluginSet", "hookimpl", "load_plugins"]
