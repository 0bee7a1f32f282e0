"""The services runner's output, checked against the servers it started.

These tests only read: they never start or stop a server, so they are safe to run
while other tests use the services. Each service's tests skip (fail under CI) when
``nox -s services -- up`` has not started it.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

import prism

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".services" / "prism.yaml"

# fixture -> (backend name in prism.yaml, the driver `status` probes it with)
SERVICES = {
    "redis_url": ("redis", "redis"),
    "cassandra_contact": ("cassandra", "cassandra"),
    "kafka_bootstrap": ("kafka", "confluent_kafka"),
    "dynamodb_url": ("dynamodb", "boto3"),
}


def _address(value: str) -> tuple[str, int]:
    parts = urlsplit(value if "://" in value else f"tcp://{value}")
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


@pytest.fixture(params=sorted(SERVICES))
def service(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(backend name, its address setting, probe driver) of each running service."""
    address = request.getfixturevalue(request.param)
    name, driver = SERVICES[request.param]
    return name, address, driver


def test_address_is_loopback_and_answers(service: tuple[str, str, str]) -> None:
    _, address, _ = service
    host, port = _address(address)
    assert host == "127.0.0.1"
    with socket.create_connection((host, port), timeout=5):
        pass


def test_prism_yaml_has_a_backend_for_the_service(service: tuple[str, str, str]) -> None:
    name, address, _ = service
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert config["namespaces"] == {}
    backend = config["backends"][name]
    assert backend["plugin"] == name
    host, port = _address(address)
    expected = {
        "redis": {"url": address},
        "cassandra": {"contact_points": [host], "port": port},
        "kafka": {"bootstrap_servers": address},
        "dynamodb": {"endpoint_url": address, "region": "us-east-1"},
    }[name]
    assert {key: backend[key] for key in expected} == expected


def test_status_reports_the_service_running(service: tuple[str, str, str]) -> None:
    name, address, driver = service
    result = subprocess.run(
        [sys.executable, "-m", "tools.services", "status"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    _, pid, port, ready, *_ = rows[name]
    assert pid.isdigit(), result.stdout
    assert int(port) == _address(address)[1]
    if importlib.util.find_spec(driver) is not None:
        # Without the driver `status` cannot probe, and says so instead of answering "yes".
        assert ready == "yes", result.stdout


def test_prism_yaml_is_written_by_the_runner_and_parses() -> None:
    from tools.services.cli import to_yaml

    data = {
        "backends": {"a": {"plugin": "x", "list": ["127.0.0.1"], "n": 1, "s": "a: b # c"}},
        "namespaces": {},
    }
    assert yaml.safe_load(to_yaml(data)) == data


@pytest.mark.parametrize("fixture", ["redis_url", "cassandra_contact", "dynamodb_url"])
def test_prism_yaml_backends_work_through_prism(fixture: str, request: pytest.FixtureRequest) -> None:
    """`.services/prism.yaml` is ready to use as it is: each KeyValue backend in
    it serves a put and a get through the public API."""
    request.getfixturevalue(fixture)  # skips (fails under CI) when the service is down
    name = SERVICES[fixture][0]
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    namespace = f"svc_{uuid.uuid4().hex[:12]}"
    config["namespaces"] = {namespace: {"abstraction": "keyvalue", "backend": name}}
    with prism.open(config) as db:
        kv = db.keyvalue(namespace)
        kv.put_items("r", {b"k": b"v"})
        assert kv.get_items("r").as_dict() == {b"k": b"v"}
        kv.delete_items("r")


@pytest.mark.parametrize("fixture", ["redis_url", "kafka_bootstrap"])
def test_prism_yaml_queue_backends_work_through_prism(fixture: str, request: pytest.FixtureRequest) -> None:
    """Each Queue backend in `.services/prism.yaml` publishes and delivers
    through the public API, as the file stands."""
    request.getfixturevalue(fixture)  # skips (fails under CI) when the service is down
    name = SERVICES[fixture][0]
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    namespace = f"svc_{uuid.uuid4().hex[:12]}"
    config["namespaces"] = {namespace: {"abstraction": "queue", "backend": name}}
    with prism.open(config) as db:
        q = db.queue(namespace)
        [message_id] = q.publish("t", [prism.Message(b"k", b"v")])
        [delivery] = q.consume("t", "g", wait=20)
        assert (delivery.id, delivery.payload, delivery.attempt) == (message_id, b"v", 1)
        q.ack("t", "g", [delivery])
