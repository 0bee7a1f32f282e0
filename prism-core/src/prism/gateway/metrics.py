"""The gateway's Prometheus metrics, served on their own port.

Every series is labelled by ``namespace``, ``operation`` (the prism.v1 method)
and ``backend`` (the configured backend serving the namespace), so an operator
can tell which namespace is slow and which datastore it lands on:

=========================================  =========  ==============================================
metric                                     type       labels
=========================================  =========  ==============================================
``prism_requests_total``                   counter    namespace, operation, backend, code
``prism_request_errors_total``             counter    namespace, operation, backend, code (not OK)
``prism_request_duration_seconds``         histogram  namespace, operation, backend
``prism_requests_in_flight``               gauge      namespace, operation, backend
``prism_shed_requests_total``              counter    namespace, operation
``prism_breaker_state``                    enum       backend; state closed, half_open or open
``prism_breaker_rejected_requests_total``  counter    namespace, backend
=========================================  =========  ==============================================

A namespace that does not resolve (unknown, or refused by the planner) is
labelled ``_unknown``: the label comes from the request, and a caller must not
be able to grow the number of series without bound by inventing names.

The registry belongs to one :class:`GatewayMetrics`, not to the process-wide
default, so two gateways in one process (tests, a library user) never share
or clash over series.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prism.gateway.protection import BreakerState

#: The label of a namespace that does not resolve to a plan.
UNKNOWN_NAMESPACE: Final = "_unknown"

#: From half a millisecond (an embedded-speed call) to the longest Consume wait.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class GatewayMetrics:
    """The gateway's series in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("namespace", "operation", "backend")
        self.requests = Counter(
            "prism_requests",
            "Calls the gateway finished, by status code.",
            (*labels, "code"),
            registry=self.registry,
        )
        self.errors = Counter(
            "prism_request_errors",
            "Calls that ended with a status other than OK.",
            (*labels, "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "prism_request_duration_seconds",
            "Time from admission to the answer, per call.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "prism_requests_in_flight",
            "Calls admitted and not yet answered.",
            labels,
            registry=self.registry,
        )
        self.shed = Counter(
            "prism_shed_requests",
            "Calls refused with RESOURCE_EXHAUSTED because their namespace was at its concurrency limit.",
            ("namespace", "operation"),
            registry=self.registry,
        )
        self.breaker_state = Enum(
            "prism_breaker_state",
            "The circuit breaker of each backend.",
            ("backend",),
            states=["closed", "half_open", "open"],
            registry=self.registry,
        )
        self.breaker_rejected = Counter(
            "prism_breaker_rejected_requests",
            "Calls failed fast with UNAVAILABLE because their backend's breaker was open.",
            ("namespace", "backend"),
            registry=self.registry,
        )

        self._series: dict[tuple[str, str, str], CallSeries] = {}

    def series(self, namespace: str, operation: str, backend: str) -> CallSeries:
        """The labelled series of one (namespace, operation, backend), looked
        up once: ``labels()`` costs a lock and a dict walk per call otherwise."""
        key = (namespace, operation, backend)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = CallSeries(self, key)
        return found

    def breaker_changed(self, backend: str, state: BreakerState) -> None:
        self.breaker_state.labels(backend).state(state.value)


class CallSeries:
    """The series one kind of call updates: its latency, its in-flight gauge,
    and its request and error counters per status code."""

    def __init__(self, metrics: GatewayMetrics, labels: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        self.latency = metrics.latency.labels(*labels)
        self.in_flight = metrics.in_flight.labels(*labels)
        self._by_code: dict[str, tuple[Any, Any | None]] = {}

    def finished(self, code: str, elapsed_s: float) -> None:
        counters = self._by_code.get(code)
        if counters is None:
            requests = self._metrics.requests.labels(*self._labels, code)
            errors = self._metrics.errors.labels(*self._labels, code) if code != "OK" else None
            counters = self._by_code[code] = (requests, errors)
        counters[0].inc()
        if counters[1] is not None:
            counters[1].inc()
        self.latency.observe(elapsed_s)


class MetricsServer:
    """The ``/metrics`` HTTP endpoint of one registry, on its own thread."""

    def __init__(self, metrics: GatewayMetrics, listen: str) -> None:
        self.metrics = metrics
        self.listen = listen
        self.port: int | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve.

        :raises OSError: the address cannot be bound.
        """
        host, _, port = self.listen.rpartition(":")
        try:
            self._server, self._thread = start_http_server(
                int(port), addr=host.strip("[]"), registry=self.metrics.registry
            )
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {self.listen}: {exc.strerror or exc}; pick another address with "
                "--metrics-listen HOST:PORT or gateway.metrics.listen"
            ) from exc
        self.port = self._server.server_port

    @property
    def address(self) -> str:
        host = self.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
