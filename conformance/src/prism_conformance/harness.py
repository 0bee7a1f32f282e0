"""Fresh, empty namespaces for suite tests, opened through the public API.

Each call to :meth:`NamespaceHarness.open` (KeyValue) or
:meth:`NamespaceHarness.open_queues` (Queue) builds a configuration with the
backend under test (named ``under_test``) and one or more namespaces with new,
unique names, and opens it with :func:`prism.open`. Unique names are what make
a namespace empty on a backend that keeps data between runs (a database file,
a server), so no test needs a clean-up step to stay independent.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Mapping
from typing import Any

import attrs

import prism
from prism.planner import effective_max_value_bytes
from prism.plugins.manager import PluginSet, load_plugins
from prism.spi import KeyValueTraits

BACKEND_NAME = "under_test"

_namespace_numbers = itertools.count(1)
_default_plugins: PluginSet | None = None


def default_plugins() -> PluginSet:
    """The installed plugins, loaded once per process: loading entry points for
    every test would only repeat the same work."""
    global _default_plugins
    if _default_plugins is None:
        _default_plugins = load_plugins()
    return _default_plugins


def unique_namespace_name() -> str:
    """``t_<counter>_<random>``: unique within the process by the counter and
    across processes sharing a datastore by the random part. Well inside the
    48 characters a namespace name may have."""
    return f"t_{next(_namespace_numbers)}_{secrets.token_hex(5)}"


def backend_config(backend: Mapping[str, Any]) -> dict[str, Any]:
    """The backend's settings as ``prism.yaml`` would hold them. Path objects
    are turned into strings, since a ``tmp_path / "db"`` is the natural thing to
    write in a fixture and YAML never holds one."""
    return {
        key: os.fspath(value) if isinstance(value, os.PathLike) else value for key, value in backend.items()
    }


@attrs.frozen
class OpenedNamespaces:
    """One open Prism and the fresh KeyValue namespaces declared in it."""

    db: prism.Prism
    namespaces: tuple[prism.KeyValue, ...]


@attrs.frozen
class OpenedQueues:
    """One open Prism and the fresh Queue namespaces declared in it."""

    db: prism.Prism
    queues: tuple[prism.Queue, ...]


class NamespaceHarness:
    """Opens fresh namespaces on one backend and closes them after the test."""

    def __init__(
        self, backend: Mapping[str, Any], plugins: PluginSet, *, abstraction: str = "keyvalue"
    ) -> None:
        if not isinstance(backend, Mapping) or not isinstance(backend.get("plugin"), str):
            raise TypeError(
                "the backend under test must be a mapping like prism.yaml's backends entries, "
                f"with a plugin: key, e.g. {{'plugin': 'sqlite', 'path': ...}}; got {backend!r}"
            )
        self.backend = backend_config(backend)
        self.plugins = plugins
        self.abstraction = abstraction
        self.page_token_secret = secrets.token_hex(16)
        self._opened: list[OpenedNamespaces | OpenedQueues] = []

    @property
    def plugin_name(self) -> str:
        return str(self.backend["plugin"])

    @property
    def declared_capabilities(self) -> frozenset[str]:
        """What the backend's plugin declares for the harness's abstraction;
        empty if the plugin is not loaded or does not offer that abstraction."""
        types = self.plugins.registry.by_abstraction().get(self.abstraction, {})
        backend_type = types.get(self.plugin_name)
        return backend_type.capabilities if backend_type is not None else frozenset()

    def open(
        self,
        count: int = 1,
        *,
        limits: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedNamespaces:
        """Open ``count`` fresh namespaces in one Prism, so they share one backend
        instance (which is what isolation between namespaces has to hold against).

        Every namespace is pinned to the backend under test, so a namespace whose
        needs the backend cannot meet fails loudly with ``PlanError`` instead of
        landing elsewhere. All Prisms of one test share a page-token secret, so a
        token used in the wrong namespace is refused for its binding, not merely
        for a foreign signature.
        """
        names = [unique_namespace_name() for _ in range(count)]
        body: dict[str, Any] = {"abstraction": "keyvalue", "backend": BACKEND_NAME}
        if limits:
            body["limits"] = dict(limits)
        if needs:
            body["needs"] = dict(needs)
        db = self._open_prism(names, body)
        try:
            handles = tuple(db.keyvalue(name) for name in names)
        except BaseException:
            db.close()
            raise
        opened = OpenedNamespaces(db, handles)
        self._opened.append(opened)
        return opened

    def open_queues(
        self,
        count: int = 1,
        *,
        queue: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedQueues:
        """Open ``count`` fresh Queue namespaces in one Prism, with the
        ``queue:`` settings and ``needs`` given (as in ``prism.yaml``, e.g.
        ``queue={"visibility_timeout": "2s"}``). As for :meth:`open`, every
        namespace is pinned to the backend under test, so a need it cannot meet
        raises ``PlanError``."""
        names = [unique_namespace_name() for _ in range(count)]
        body: dict[str, Any] = {"abstraction": "queue", "backend": BACKEND_NAME}
        if queue:
            body["queue"] = dict(queue)
        if needs:
            body["needs"] = dict(needs)
        db = self._open_prism(names, body)
        try:
            handles = tuple(db.queue(name) for name in names)
        except BaseException:
            db.close()
            raise
        opened = OpenedQueues(db, handles)
        self._opened.append(opened)
        return opened

    def _open_prism(self, names: list[str], body: Mapping[str, Any]) -> prism.Prism:
        config = {
            "backends": {BACKEND_NAME: dict(self.backend)},
            "namespaces": {name: dict(body) for name in names},
            "page_token_secret": self.page_token_secret,
        }
        return prism.open(config, plugins=self.plugins)

    def owner_of(self, kv: prism.KeyValue) -> OpenedNamespaces:
        """The Prism a namespace handle of this harness belongs to."""
        for opened in self._opened:
            if isinstance(opened, OpenedNamespaces) and any(handle is kv for handle in opened.namespaces):
                return opened
        raise ValueError(f"{kv!r} was not opened by this harness")

    def traits(self, db: prism.Prism) -> KeyValueTraits:
        """What the backend under test offers with its settings, from public
        pieces: the plugin's registered type applied to the structured settings."""
        backend_type = db.plugins.registry.keyvalue[db.config.backends[BACKEND_NAME].plugin]
        return backend_type.traits(db.config.backends[BACKEND_NAME].settings)

    def max_value_bytes(self, db: prism.Prism, namespace: str) -> int:
        """The largest value ``namespace`` accepts: its limit or need, else 8 MiB,
        never more than the backend holds (the planner's own rule)."""
        return effective_max_value_bytes(db.config.namespaces[namespace], self.traits(db))

    def close(self) -> None:
        """Close every Prism this harness opened, the last one first. Every one
        is closed even if one fails; the first failure is raised afterwards."""
        failure: BaseException | None = None
        while self._opened:
            opened = self._opened.pop()
            try:
                opened.db.close()
            except BaseException as exc:  # keep closing the others
                failure = failure or exc
        if failure is not None:
            raise failure
