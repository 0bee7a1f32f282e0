"""Which of the test services run now, and where.

The addresses come from the environment (``PRISM_TEST_*``) or from
``.services/env``, which ``nox -s services -- up`` writes; each is then probed
with its own protocol, so a stale file never turns into a failed benchmark."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
_EXPORT = re.compile(r"^export\s+(PRISM_TEST_[A-Z_]+)=(.*)$")


@dataclass(frozen=True)
class Services:
    redis_url: str | None
    kafka: str | None
    #: Why each missing service is missing.
    missing: dict[str, str]


def _declared() -> dict[str, str]:
    found: dict[str, str] = {}
    env_file = ROOT / ".services" / "env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            match = _EXPORT.match(line.strip())
            if match:
                found[match.group(1)] = match.group(2).strip().strip("'\"")
    found.update({k: v for k, v in os.environ.items() if k.startswith("PRISM_TEST_")})
    return found


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _redis_ok(url: str) -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"no answer to PING at {url}: {exc}"
    return None


def _kafka_ok(bootstrap: str) -> str | None:
    host, _, port = bootstrap.partition(",")[0].rpartition(":")
    if not _tcp_open(host or "127.0.0.1", int(port)):
        return f"nothing listens on {bootstrap}"
    from confluent_kafka.admin import AdminClient

    try:
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
    except Exception as exc:
        return f"no broker answered at {bootstrap}: {exc}"
    return None if metadata.brokers else f"the cluster at {bootstrap} lists no brokers"


def discover() -> Services:
    declared = _declared()
    missing: dict[str, str] = {}
    redis_url = declared.get("PRISM_TEST_REDIS_URL")
    if redis_url is None:
        missing["redis"] = "not running (start it: ./dev -s services -- up redis)"
    else:
        parts = urlsplit(redis_url)
        why = (
            _redis_ok(redis_url)
            if _tcp_open(parts.hostname or "127.0.0.1", parts.port or 6379)
            else f"nothing listens at {redis_url}"
        )
        if why:
            missing["redis"], redis_url = why, None
    kafka = declared.get("PRISM_TEST_KAFKA")
    if kafka is None:
        missing["kafka"] = "not running (start it: ./dev -s services -- up kafka)"
    else:
        why = _kafka_ok(kafka)
        if why:
            missing["kafka"], kafka = why, None
    for name, var in (("cassandra", "PRISM_TEST_CASSANDRA"), ("dynamodb", "PRISM_TEST_DYNAMODB_URL")):
        missing[name] = (
            "no scenario measures it yet (see benchmarks/README.md)"
            if var in declared
            else "not running, and no scenario measures it yet"
        )
    return Services(redis_url=redis_url, kafka=kafka, missing=missing)
