"""``prism serve --workers N``: N gateway processes on one port.

One Python process runs one event loop on one core. To use every core, the
supervisor here starts N ``prism serve`` processes that each bind the same
address with SO_REUSEPORT; the kernel spreads new connections across them.
The supervisor serves nothing itself: it checks what would make N processes
wrong, starts them, forwards SIGTERM and SIGINT so each drains as one gateway
would, and exits when they have. If a worker dies on its own, the others are
drained too and the command fails: a gateway quietly serving on fewer cores
than asked is worse than one that stops and says why.

What N processes cannot do, and so is refused up front:

* port 0: each worker would pick a different free port;
* a backend whose data lives inside one process (the ``memory`` plugin, SQLite
  at ``:memory:``): each worker would have its own copy of the data;
* run-time namespaces (``gateway.create_namespaces``): each worker would know
  only the namespaces created through it.

Each worker's Prometheus endpoint is the base metrics port plus its index
(worker 0 on PORT, worker 1 on PORT+1, ...); scrape each, as for any
multi-process server. Access log lines carry ``worker``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Mapping
from typing import Any

from prism.client import ConfigSource
from prism.config import Config, resolve_config
from prism.log import get_logger
from prism.plugins.manager import load_plugins

log = get_logger(__name__)

#: Extra time after the grace period before a worker that has not exited is killed.
KILL_MARGIN_S = 10.0


class WorkersError(Exception):
    """``--workers`` cannot work with this configuration or address."""


def _process_local_backends(config: Config) -> list[str]:
    """Backends whose data would be private to each worker."""
    found: list[str] = []
    for name, backend in config.backends.items():
        path = getattr(backend.settings, "path", None)
        if backend.plugin == "memory" or str(path) == ":memory:":
            found.append(name)
    return found


def check(config: Config, listen: str) -> None:
    """Refuse what N processes on one port cannot serve correctly.

    :raises WorkersError: with what to change.
    """
    host, _, port = listen.rpartition(":")
    if int(port) == 0:
        raise WorkersError(
            "--workers needs a fixed port: with port 0 each worker would listen on a different one; "
            "pass --listen HOST:PORT"
        )
    local = _process_local_backends(config)
    if local:
        raise WorkersError(
            f"--workers: backend{'s' if len(local) > 1 else ''} {', '.join(map(repr, local))} keep their "
            "data inside one process (memory, or SQLite at :memory:), so each worker would serve its own "
            "copy; use a shared datastore (a SQLite file, Redis, ...) or run one worker"
        )
    policy = config.gateway.create_namespaces
    if policy is not None and policy.allow:
        raise WorkersError(
            "--workers: gateway.create_namespaces allows run-time namespaces, and each worker would know "
            "only those created through it; declare the namespaces in prism.yaml, or run one worker"
        )
    # Bound without SO_REUSEPORT, so a port held by anything (a stale gateway
    # too) is refused here instead of silently shared with it.
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            raise WorkersError(
                f"cannot listen on {listen}: {exc.strerror or exc}; pick another address with --listen HOST:PORT"
            ) from exc


def _metrics_address(base: str | None, index: int) -> str | None:
    if base is None:
        return None
    host, _, port = base.rpartition(":")
    return f"{host}:{int(port) + index}"


def worker_command(args: argparse.Namespace, config: str | None, listen: str, index: int) -> list[str]:
    """The command line of worker ``index``: this ``prism serve`` as one process."""
    command = [
        sys.executable,
        "-m",
        "prism.gateway.command",
        "--log-level",
        getattr(args, "log_level", "warning"),
        "serve",
        "--listen",
        listen,
        "--grace",
        repr(args.grace),
        "--worker-index",
        str(index),
    ]
    if config is not None:
        command += ["--config", os.fspath(config)]
    for flag in ("tls_cert", "tls_key", "tls_client_ca"):
        value = getattr(args, flag, None)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", os.path.abspath(value)]
    return command


def supervise(args: argparse.Namespace, config: ConfigSource, listen: str) -> int:
    """Run ``args.workers`` gateway processes until SIGTERM or SIGINT; the exit
    status is 0 when every worker drained cleanly."""
    config_path = os.fspath(config) if isinstance(config, str | os.PathLike) else None
    resolved = resolve_config(config, load_plugins().registry)
    try:
        check(resolved, listen)
    except WorkersError as exc:
        print(f"prism: error: {exc}", file=sys.stderr)
        return 2
    metrics_base = args.metrics_listen or (
        resolved.gateway.metrics.listen if resolved.gateway.metrics else None
    )
    workers: dict[int, subprocess.Popen[bytes]] = {}
    stopping = threading.Event()

    def stop_all(reason: str) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("prism gateway workers draining", reason=reason, grace_s=args.grace)
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        killer = threading.Timer(args.grace + KILL_MARGIN_S, kill_all)
        killer.daemon = True
        killer.start()

    def kill_all() -> None:
        for index, proc in workers.items():
            if proc.poll() is None:
                log.warning(
                    "prism gateway worker did not drain in time; killing it", worker=index, pid=proc.pid
                )
                proc.kill()

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop_all(signal.Signals(signum).name)

    previous: Mapping[int, Any] = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    status = 0
    try:
        for index in range(args.workers):
            command = worker_command(args, config_path, listen, index)
            metrics = _metrics_address(metrics_base, index)
            if metrics is not None:
                command += ["--metrics-listen", metrics]
            workers[index] = subprocess.Popen(command)
        log.info(
            "prism gateway workers started",
            address=listen,
            workers=args.workers,
            pids=[proc.pid for proc in workers.values()],
        )
        remaining = dict(workers)
        while remaining:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            exited = next((i for i, proc in remaining.items() if proc.pid == pid), None)
            if exited is None:
                continue
            index = exited
            exit_code = os.waitstatus_to_exitcode(wait_status)
            # Reaped here, so tell Popen: its own wait() would find no child.
            remaining.pop(index).returncode = exit_code
            if exit_code != 0:
                status = 1
            if not stopping.is_set():
                log.error(
                    "prism gateway worker exited on its own; stopping the others",
                    worker=index,
                    pid=pid,
                    exit_code=exit_code,
                )
                status = 1
                stop_all(f"worker {index} exited")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if any(proc.poll() is None for proc in workers.values()):
            stop_all("supervisor exiting")  # a failure above, e.g. a worker that could not start
        for proc in workers.values():
            if proc.poll() is None:
                proc.wait()
    log.info("prism gateway workers stopped", address=listen, exit_status=status)
    return status
