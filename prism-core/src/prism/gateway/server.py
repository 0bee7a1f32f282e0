"""The gateway server: prism.v1 services, health checking, reflection, drain.

:class:`Gateway` owns a ``grpc.aio`` server bound to one address and serves one
:class:`prism.AsyncPrism`. :func:`run_gateway` is what ``prism serve`` runs: it
opens Prism, serves until SIGTERM or SIGINT, drains, and closes Prism.

Drain, in order, so that no caller loses work:

1. health goes NOT_SERVING (overall and per service), so load balancers and
   ``grpc-health-probe`` stop sending new work here;
2. Subscribe streams end with UNAVAILABLE; each closes its consumer, so what it
   held comes back to its group at once instead of after the visibility timeout;
3. the server stops accepting calls and gives those in flight up to the grace
   period to finish (grpc then cancels the rest);
4. the runtime closes the backends.

Security comes from the config's ``gateway:`` section: ``auth`` turns on bearer
tokens (checked per call in :class:`prism.gateway.services.Calls`), ``tls``
serves TLS, or mutual TLS with a client CA. Health and reflection stay open to
every caller: load balancers and probes carry no tokens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
from collections.abc import Sequence

import grpc

# grpcio-health-checking ships no type stubs. _async holds its grpc.aio servicer.
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_health.v1._async import HealthServicer  # type: ignore[import-untyped]

from prism.client import AsyncPrism, ConfigSource
from prism.config import TlsConfig
from prism.gateway import DEFAULT_GRACE_S, DEFAULT_LISTEN
from prism.gateway.auth import Authenticator
from prism.gateway.counter_service import CounterService
from prism.gateway.metrics import GatewayMetrics, MetricsServer
from prism.gateway.services import AdminService, Calls, KeyValueService, QueueService
from prism.gateway.subscriptions import Subscriptions
from prism.gateway.timeseries_service import TimeSeriesService
from prism.gateway.tls import server_credentials
from prism.log import get_logger
from prism.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    counter_pb2,
    counter_pb2_grpc,
    keyvalue_pb2,
    keyvalue_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
    timeseries_pb2,
    timeseries_pb2_grpc,
)

log = get_logger(__name__)


#: The full names of the services the gateway implements, as health checking
#: and reflection name them.
SERVICE_NAMES: tuple[str, ...] = (
    keyvalue_pb2.DESCRIPTOR.services_by_name["KeyValueService"].full_name,
    queue_pb2.DESCRIPTOR.services_by_name["QueueService"].full_name,
    timeseries_pb2.DESCRIPTOR.services_by_name["TimeSeriesService"].full_name,
    counter_pb2.DESCRIPTOR.services_by_name["CounterService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    # grpcio-reflection ships no type stubs.
    from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]

    reflection.enable_server_reflection((*service_names, reflection.SERVICE_NAME), server)


class Gateway:
    """A prism.v1 gRPC server for one open Prism.

    ``start()`` binds and serves; ``port`` is the bound port (useful with
    ``listen="127.0.0.1:0"``); ``stop()`` drains as described in the module
    docstring. The Prism handle is the caller's to close. ``interceptors`` wrap
    every call. ``metrics`` holds the gateway's Prometheus series; with
    ``metrics_listen`` (else ``gateway.metrics.listen``) they are served at
    ``/metrics``. ``reuse_port`` shares the port with other processes.

    Auth is ``db.config.gateway.auth``; TLS is ``tls`` when given, else
    ``db.config.gateway.tls``.
    """

    def __init__(
        self,
        db: AsyncPrism,
        *,
        listen: str = DEFAULT_LISTEN,
        grace_s: float = DEFAULT_GRACE_S,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        tls: TlsConfig | None = None,
        metrics_listen: str | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.db = db
        self.listen = listen
        self.grace_s = grace_s
        self.tls = tls if tls is not None else db.config.gateway.tls
        self.auth = Authenticator(db.config.gateway.auth)
        self.port: int | None = None
        self.subscriptions = Subscriptions()
        self.health = HealthServicer()
        self.metrics = GatewayMetrics()
        if metrics_listen is None and db.config.gateway.metrics is not None:
            metrics_listen = db.config.gateway.metrics.listen
        self.metrics_server = MetricsServer(self.metrics, metrics_listen) if metrics_listen else None
        limits = db.config.gateway.limits
        options: list[tuple[str, int]] = [
            # SO_REUSEPORT only when asked (prism serve --workers): grpc enables
            # it by default on Linux, so a second gateway on a busy port would
            # start "fine" and share its traffic with a stale one. Refusing the
            # port is the clear error.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            # Refused by grpc with RESOURCE_EXHAUSTED before it is decoded.
            ("grpc.max_receive_message_length", int(limits.max_request_bytes)),
        ]
        self._server = grpc.aio.server(interceptors=list(interceptors), options=options)
        self.calls = calls = Calls(db, self.auth, metrics=self.metrics)
        keyvalue_pb2_grpc.add_KeyValueServiceServicer_to_server(KeyValueService(db, calls), self._server)
        queue_pb2_grpc.add_QueueServiceServicer_to_server(
            QueueService(db, calls, self.subscriptions), self._server
        )
        timeseries_pb2_grpc.add_TimeSeriesServiceServicer_to_server(
            TimeSeriesService(db, calls), self._server
        )
        counter_pb2_grpc.add_CounterServiceServicer_to_server(CounterService(db, calls), self._server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(db, calls), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        _enable_reflection((*SERVICE_NAMES, HEALTH_SERVICE_NAME), self._server)
        self._stopped = False

    @property
    def address(self) -> str:
        """``host:port`` as bound (the real port when 0 was asked for)."""
        host = self.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving.

        :raises OSError: the address cannot be bound (in use, or not local), or
            (:class:`prism.gateway.tls.TlsError`) a TLS file cannot be read.
        """
        try:
            if self.tls is not None:
                port = self._server.add_secure_port(self.listen, server_credentials(self.tls))
            else:
                port = self._server.add_insecure_port(self.listen)
        except RuntimeError as exc:
            # grpc says only "Failed to bind"; say what to do.
            tls_hint = (
                ", or the TLS certificate and key are not a valid pair; check gateway.tls (or --tls-cert "
                "and --tls-key)"
                if self.tls is not None
                else ""
            )
            raise OSError(
                f"cannot listen on {self.listen}: the address is in use or not valid here{tls_hint}; "
                "pick another with --listen HOST:PORT"
            ) from exc
        if port == 0:
            raise OSError(f"cannot listen on {self.listen}: pick another address with --listen HOST:PORT")
        self.port = port
        if self.metrics_server is not None:
            self.metrics_server.start()
        await self._server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: health NOT_SERVING, end streams, let calls in flight finish
        within the grace period, then stop."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.grace_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        self.subscriptions.stop_all()
        await self._server.stop(grace)
        # A stream's status can reach its client before the handler's cleanup
        # ran; the deliveries must be given back before the backends close.
        await self.subscriptions.close_all()
        if self.metrics_server is not None:
            # Last: a scrape during the drain still sees the calls finishing.
            self.metrics_server.stop()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


def is_loopback(listen: str) -> bool:
    """Whether ``HOST:PORT`` listens only on this machine."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def _warn_if_exposed(gateway: Gateway) -> None:
    """An open gateway on a reachable address is a misconfiguration more often
    than a choice; say so once at start-up."""
    if is_loopback(gateway.listen):
        return
    if not gateway.auth.enabled:
        log.warning(
            "prism gateway listens beyond this machine without auth: anyone who can reach "
            f"{gateway.address} can read and write every namespace; add gateway.auth to prism.yaml "
            "(see `prism token new`)"
            + ("" if gateway.tls is not None else ", and gateway.tls or --tls-cert/--tls-key"),
            address=gateway.address,
        )
    elif gateway.tls is None:
        log.warning(
            f"prism gateway listens beyond this machine without TLS: tokens sent to {gateway.address} "
            "travel in clear text; add gateway.tls to prism.yaml or pass --tls-cert/--tls-key",
            address=gateway.address,
        )


async def run_gateway(
    config: ConfigSource,
    *,
    listen: str = DEFAULT_LISTEN,
    grace_s: float = DEFAULT_GRACE_S,
    stop: asyncio.Event | None = None,
    db: AsyncPrism | None = None,
    tls: TlsConfig | None = None,
    metrics_listen: str | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve ``config`` until SIGTERM or SIGINT (or ``stop`` is set), then drain.

    ``db``, when given, is an already opened Prism (its config wins); it is
    closed on the way out all the same. ``tls`` overrides ``gateway.tls``,
    ``metrics_listen`` overrides ``gateway.metrics.listen``. ``reuse_port``
    shares the port with other processes (``prism serve --workers``).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    prism_db = db if db is not None else AsyncPrism(config)
    try:
        gateway = Gateway(
            prism_db,
            listen=listen,
            grace_s=grace_s,
            tls=tls,
            metrics_listen=metrics_listen,
            reuse_port=reuse_port,
        )
        await gateway.start()
        _warn_if_exposed(gateway)
        log.info(
            "prism gateway listening",
            address=gateway.address,
            tls="mutual" if gateway.tls and gateway.tls.client_ca else ("on" if gateway.tls else "off"),
            auth=f"{len(gateway.db.config.gateway.auth.tokens)} tokens"
            if gateway.db.config.gateway.auth
            else "off",
            config=prism_db.config.source or "<embedded default>",
            namespaces=sorted(prism_db.config.namespaces),
            auto_namespaces=prism_db.config.auto_namespaces,
        )
        await stop.wait()
        log.info("prism gateway draining", address=gateway.address, grace_s=grace_s)
        await gateway.stop()
        log.info("prism gateway stopped", address=gateway.address)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await prism_db.close()
