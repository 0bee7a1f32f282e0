"""``up``, ``down`` and ``status`` over the four services, and the files ``up`` writes."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tools.services.cassandra_node import CassandraService
from tools.services.common import SERVICES_DIR, Service, ServiceError, State, log, shown
from tools.services.kafka_broker import KafkaService
from tools.services.moto_dynamodb import DynamoDBService
from tools.services.redis_server import RedisService

ENV_FILE = SERVICES_DIR / "env"
CONFIG_FILE = SERVICES_DIR / "prism.yaml"

USAGE = """\
usage: nox -s services -- up [NAME...]     start (all when no NAME) and wait until ready
       nox -s services -- down [NAME...]   stop (all when no NAME)
       nox -s services -- status           pid, port and readiness of each service
names: redis cassandra kafka dynamodb"""


def all_services() -> dict[str, Service]:
    services: list[Service] = [RedisService(), CassandraService(), KafkaService(), DynamoDBService()]
    return {service.name: service for service in services}


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0 if argv else 2
    action, names = argv[0], list(argv[1:])
    services = all_services()
    unknown = [name for name in names if name not in services]
    if unknown or action not in {"up", "down", "status"}:
        print(f"services: unknown {'service' if unknown else 'action'}: {' '.join(unknown) or action}")
        print(USAGE)
        return 2
    chosen = [services[name] for name in (names or services)]
    try:
        if action == "up":
            return up(chosen, services)
        if action == "down":
            return down(chosen, services)
        return status(list(services.values()))
    except KeyboardInterrupt:
        return 130


def up(chosen: Sequence[Service], services: Mapping[str, Service]) -> int:
    failed: list[str] = []
    # One at a time: the two JVMs starting together would fight over two cores and each take longer.
    # Cheap services first, so they are usable while Cassandra still starts.
    for service in sorted(chosen, key=lambda s: s.start_deadline):
        started = time.monotonic()
        try:
            service.up()
        except ServiceError as error:
            print(f"services: ERROR {error}", file=sys.stderr, flush=True)
            failed.append(service.name)
        else:
            log(f"{service.name}: up in {time.monotonic() - started:.1f}s")
    write_files([service for service in services.values() if service.name not in failed])
    if failed:
        print(f"services: FAILED to start: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def down(chosen: Sequence[Service], services: Mapping[str, Service]) -> int:
    failed = False
    for service in chosen:
        try:
            service.down()
        except ServiceError as error:
            print(f"services: ERROR {error}", file=sys.stderr)
            failed = True
    write_files(list(services.values()))
    return 1 if failed else 0


def status(services: Sequence[Service]) -> int:
    states = [service.state() for service in services]
    print(format_status(states))
    return 0


def format_status(states: Sequence[State]) -> str:
    lines = [f"{'service':<10} {'pid':>8} {'port':>6}  {'ready':<5}  detail"]
    for state in states:
        pid = str(state.pid) if state.pid is not None else "-"
        ready = "yes" if state.ready else "no"
        lines.append(f"{state.name:<10} {pid:>8} {state.port:>6}  {ready:<5}  {state.detail}".rstrip())
    return "\n".join(lines)


def write_files(candidates: Sequence[Service]) -> None:
    """Rewrite ``.services/env`` and ``.services/prism.yaml`` for the services running and ready now."""
    running = [service for service in candidates if service.running_pid() is not None and service.is_ready()]
    SERVICES_DIR.mkdir(parents=True, exist_ok=True)
    env_lines = [
        "# Written by `nox -s services -- up`: the services running now. Source it or let conftest read it."
    ]
    for service in running:
        env_lines += [f"export {name}={shlex.quote(value)}" for name, value in service.env().items()]
    _write_atomically(ENV_FILE, "\n".join(env_lines) + "\n")
    backends = {service.name: dict(service.backend()) for service in running if service.has_plugin}
    pending = {service.name: dict(service.backend()) for service in running if not service.has_plugin}
    text = (
        "# Written by `nox -s services -- up`: one backend per running service, named after its plugin.\n"
        + to_yaml({"backends": backends})
    )
    if pending:
        # Kept visible but commented: Prism rejects a file that names a plugin which is not installed.
        text += (
            f"# Running, but no Prism plugin exists yet for: {', '.join(pending)}. Uncomment once one does:\n"
        )
        text += "".join(f"# {line}\n" for line in to_yaml(pending, indent=1).splitlines())
    _write_atomically(CONFIG_FILE, text + to_yaml({"namespaces": {}}))
    names = " ".join(service.name for service in running) or "none"
    log(f"wrote {shown(ENV_FILE)} and {shown(CONFIG_FILE)} (running: {names})")


def _write_atomically(path: Path, text: str) -> None:
    # Tests may read these files while `up` runs; a rename never shows them half written.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars (stdlib only: the runner needs no PyYAML).

    Strings are emitted as JSON strings, which YAML reads as double-quoted scalars.
    """
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}\n"
        out = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                out.append(f"{pad}{key}:\n{to_yaml(item, indent + 1)}")
            else:
                out.append(f"{pad}{key}: {to_yaml(item, indent + 1)}")
        return "".join(out)
    if isinstance(value, list):
        if not value:
            return "[]\n"
        return "".join(f"{pad}- {to_yaml(item, indent + 1).lstrip()}" for item in value)
    return _scalar(value) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(str(value))
