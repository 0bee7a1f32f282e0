"""The gateway: Prism's runtime served over gRPC (``prism.v1``).

``prism serve`` runs :class:`prism.gateway.server.Gateway`, a ``grpc.aio`` server
for KeyValueService, QueueService, TimeSeriesService, CounterService and
AdminService, with gRPC health checking and
server reflection so that standard tools (grpcurl, grpc-health-probe) work.
:mod:`prism.remote` is the Python client; it has the same API as ``prism.open``.

The modules, one job each:

* :mod:`prism.gateway.convert`: prism.v1 messages to and from ``prism.models``,
  used by the server and the remote client alike, so both read the wire the
  same way.
* :mod:`prism.gateway.status`: which gRPC status each ``prism.errors`` class
  becomes, with its rich details, and back again on the client.
* :mod:`prism.gateway.services`: the servicers, thin adapters over
  ``AsyncPrism``; every semantic rule stays in the core.
* :mod:`prism.gateway.timeseries_service`, :mod:`prism.gateway.counter_service`:
  the TimeSeries and Counter servicers with their conversions (shared with
  the remote client).
* :mod:`prism.gateway.subscriptions`: Queue ``Subscribe`` streams and their
  flow control.
* :mod:`prism.gateway.auth`: bearer tokens, per-namespace roles, and the table
  of which role each method needs.
* :mod:`prism.gateway.tls`: PEM files to gRPC credentials, server and client.
* :mod:`prism.gateway.protection`: load shedding per namespace and a circuit
  breaker per backend.
* :mod:`prism.gateway.metrics`: the Prometheus series and their endpoint.
* :mod:`prism.gateway.server`: the server, health, reflection, graceful drain.
* :mod:`prism.gateway.command`: the ``prism serve`` command.
* :mod:`prism.gateway.workers`: ``prism serve --workers N``, N processes on one port.
* :mod:`prism.gateway.tokens`: the ``prism token new`` command.

This package deliberately imports nothing at import time, so the remote client
and the ``prism`` command can load without the server side.
"""

from __future__ import annotations

#: Where ``prism serve`` listens unless told otherwise.
DEFAULT_LISTEN = "127.0.0.1:50051"
#: How long calls in flight may run on after a drain starts, in seconds.
DEFAULT_GRACE_S = 10.0
