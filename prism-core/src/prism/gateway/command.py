"""``prism serve``: run the gateway.

``prism.cli`` wires it in with ``add_serve_parser(sub)``; the command function
is :func:`cmd_serve`. Errors it cannot serve through (a bad config, an address
in use) end the command with the CLI's usual one-line message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from prism.config import TlsConfig
from prism.errors import PrismError
from prism.gateway import DEFAULT_GRACE_S, DEFAULT_LISTEN
from prism.logging_setup import configure_logging

CONFIG_ENV = "PRISM_CONFIG"
LISTEN_ENV = "PRISM_LISTEN"


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not HOST:PORT (for example 127.0.0.1:50051, or 0.0.0.0:50051 for every interface)"
        )
    return value


def _grace(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds >= 0")
    return seconds


def _workers(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 256:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of processes from 1 to 256")
    return int(value)


def add_serve_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``prism`` command's subparsers."""
    p = subparsers.add_parser(
        "serve",
        help="run the gRPC gateway (prism.v1) for a prism.yaml",
        description=(
            "Serve KeyValueService, QueueService and AdminService over gRPC, with health checking and "
            "reflection. SIGTERM or Ctrl-C drains: health goes NOT_SERVING, calls in flight get the "
            "grace period to finish, then the backends close."
        ),
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"prism.yaml to serve (default: ${CONFIG_ENV}, else ./prism.yaml, else SQLite in ./prism-data/)",
    )
    p.add_argument(
        "--listen",
        type=_listen,
        default=None,
        metavar="HOST:PORT",
        help=f"address to listen on (default: ${LISTEN_ENV}, else {DEFAULT_LISTEN}); port 0 picks a free one",
    )
    tls = p.add_argument_group(
        "TLS", "override gateway.tls in prism.yaml; relative paths are relative to the current folder"
    )
    tls.add_argument("--tls-cert", metavar="PEM", help="the server's certificate chain (PEM)")
    tls.add_argument("--tls-key", metavar="PEM", help="the server certificate's private key (PEM)")
    tls.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS); needs --tls-cert and --tls-key",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help=(
            "serve from N processes sharing the port (SO_REUSEPORT), to use N cores (default 1); "
            "needs a fixed port and backends that processes can share"
        ),
    )
    p.add_argument(
        "--metrics-listen",
        type=_listen,
        default=None,
        metavar="HOST:PORT",
        help=(
            "serve Prometheus metrics at http://HOST:PORT/metrics (default: gateway.metrics.listen, "
            "else off); with --workers N, worker k uses PORT+k"
        ),
    )
    # Set by the --workers supervisor for the processes it starts.
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--grace",
        type=_grace,
        default=DEFAULT_GRACE_S,
        metavar="SECONDS",
        help=f"how long calls in flight may finish after SIGTERM (default {DEFAULT_GRACE_S:g})",
    )
    p.set_defaults(func=cmd_serve)
    return p


def _tls_override(args: argparse.Namespace) -> TlsConfig | None:
    """The TLS the flags ask for (None: use gateway.tls from the config)."""
    cert, key, client_ca = (getattr(args, name, None) for name in ("tls_cert", "tls_key", "tls_client_ca"))
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together: give the certificate and its key")
    return TlsConfig(
        cert=Path(cert).absolute(),
        key=Path(key).absolute(),
        client_ca=Path(client_ca).absolute() if client_ca is not None else None,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    # The CLI's default level (warning) suits one-shot commands; an operator of
    # a server expects its start and drain lines, so serve shows info unless a
    # level other than the default was asked for (--log-level error silences it).
    level = getattr(args, "log_level", "warning")
    configure_logging("info" if level == "warning" else level)
    config = args.config or os.environ.get(CONFIG_ENV) or None
    listen = args.listen or os.environ.get(LISTEN_ENV) or DEFAULT_LISTEN
    try:
        _listen(listen)
    except argparse.ArgumentTypeError as exc:
        print(f"prism: error: ${LISTEN_ENV}: {exc}", file=sys.stderr)
        return 2
    try:
        tls = _tls_override(args)
    except ValueError as exc:
        print(f"prism: error: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1 and args.worker_index is None:
        from prism.gateway.workers import supervise

        return supervise(args, config, listen)
    metrics_listen = args.metrics_listen
    if args.worker_index is not None:
        structlog.contextvars.bind_contextvars(worker=args.worker_index)
    # Imported here: the server side (grpc health, reflection) loads only for
    # `prism serve`, not for every `prism` command.
    from prism.gateway.server import run_gateway

    try:
        asyncio.run(
            run_gateway(
                config,
                listen=listen,
                grace_s=args.grace,
                tls=tls,
                metrics_listen=metrics_listen,
                reuse_port=args.worker_index is not None,
            )
        )
    except OSError as exc:
        print(f"prism: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m prism.gateway.command serve ...``: the command without the
    rest of the CLI (what a container entry point or a test can run)."""
    parser = argparse.ArgumentParser(prog="prism")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    add_serve_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except PrismError as exc:  # a bad prism.yaml, as `prism` reports it
        print(f"prism: error: {exc}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    raise SystemExit(main())
