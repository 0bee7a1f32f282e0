"""A gateway in the same process, for tests: yours and Prism's own.

::

    from prism.gateway.testing import GatewayThread

    with GatewayThread({"backends": {"mem": {"plugin": "memory"}}, "auto_namespaces": True}) as gateway:
        with prism.remote.connect(gateway.target) as db:
            ...

The gateway runs on its own event loop thread and a free loopback port, so a
test's synchronous code (or its own event loop) talks to it over real gRPC.
Auth comes from the config's ``gateway.auth``; ``tls=`` (or ``gateway.tls``)
serves TLS, and then :attr:`GatewayThread.target` is a ``grpcs://`` address.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from prism.client import AsyncPrism, ConfigSource, _LoopThread
from prism.config import TlsConfig
from prism.gateway.server import Gateway
from prism.plugins.manager import PluginSet

T = TypeVar("T")


class GatewayThread:
    """A :class:`Gateway` over ``config`` on ``127.0.0.1`` and a free port."""

    def __init__(
        self,
        config: ConfigSource,
        *,
        plugins: PluginSet | None = None,
        grace_s: float = 5.0,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        tls: TlsConfig | None = None,
    ) -> None:
        self._config = config
        self._tls = tls
        self._interceptors = interceptors
        self._plugins = plugins
        self._grace_s = grace_s
        self._portal: _LoopThread | None = None
        self._db: AsyncPrism | None = None
        self.gateway: Gateway | None = None

    @property
    def target(self) -> str:
        """``grpc://127.0.0.1:PORT`` (``grpcs://`` with TLS), what
        :func:`prism.remote.connect` takes."""
        if self.gateway is None:
            raise RuntimeError("the gateway is not started; use `with GatewayThread(...)` or start()")
        scheme = "grpcs" if self.gateway.tls is not None else "grpc"
        return f"{scheme}://{self.gateway.address}"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, what a grpc channel dials."""
        if self.gateway is None:
            raise RuntimeError("the gateway is not started; use `with GatewayThread(...)` or start()")
        return self.gateway.address

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the gateway's event loop (to look inside it)."""
        if self._portal is None:
            raise RuntimeError("the gateway is not started")
        return self._portal.run(coro)

    def start(self) -> GatewayThread:
        self._portal = _LoopThread()

        async def start() -> None:
            self._db = AsyncPrism(self._config, plugins=self._plugins)
            self.gateway = Gateway(
                self._db,
                listen="127.0.0.1:0",
                grace_s=self._grace_s,
                interceptors=self._interceptors,
                tls=self._tls,
            )
            await self.gateway.start()

        try:
            self._portal.run(start())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Drain the gateway and close its Prism."""
        portal, self._portal = self._portal, None
        if portal is None:
            return

        async def stop() -> None:
            try:
                if self.gateway is not None:
                    await self.gateway.stop()
            finally:
                if self._db is not None:
                    await self._db.close()

        try:
            portal.run(stop())
        finally:
            portal.stop()

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
