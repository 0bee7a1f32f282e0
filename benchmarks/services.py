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
    #: ``host:port`` of Cassandra's native transport.
    cassandra: str | None
    dynamodb_url: str | None
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


def _cassandra_ok(address: str) -> str | None:
    host, _, port = address.rpartition(":")
    if not _tcp_open(host or "127.0.0.1", int(port)):
        return f"nothing listens on {address}"
    from cassandra.cluster import Cluster

    cluster = Cluster(contact_points=[host or "127.0.0.1"], port=int(port), connect_timeout=5)
    try:
        cluster.connect().execute("SELECT release_version FROM system.local", timeout=5)
    except Exception as exc:
        return f"no answer to CQL at {address}: {exc}"
    finally:
        cluster.shutdown()
    return None


def _dynamodb_ok(url: str) -> str | None:
    parts = urlsplit(url)
    if not _tcp_open(parts.hostname or "127.0.0.1", parts.port or 80):
        return f"nothing listens at {url}"
    import boto3  # type: ignore[import-untyped]

    client = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    ).client("dynamodb", endpoint_url=url)
    try:
        client.list_tables(Limit=1)
    except Exception as exc:
        return f"no answer to ListTables at {url}: {exc}"
    finally:
        client.close()
    return None


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
    cassandra = declared.get("PRISM_TEST_CASSANDRA")
    if cassandra is None:
        missing["cassandra"] = "not running (start it: ./dev -s services -- up cassandra)"
    else:
        why = _cassandra_ok(cassandra)
        if why:
            missing["cassandra"], cassandra = why, None
    dynamodb_url = declared.get("PRISM_TEST_DYNAMODB_URL")
    if dynamodb_url is None:
        missing["dynamodb"] = "not running (start it: ./dev -s services -- up dynamodb)"
    else:
        why = _dynamodb_ok(dynamodb_url)
        if why:
            missing["dynamodb"], dynamodb_url = why, None
    return Services(
        redis_url=redis_url, kafka=kafka, cassandra=cassandra, dynamodb_url=dynamodb_url, missing=missing
    )
