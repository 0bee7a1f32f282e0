"""The KeyValue, Queue, TimeSeries and Counter conformance suites through a running gateway.

A real ``prism serve`` subprocess serves SQLite and Redis backends and lets
clients declare namespaces (``gateway.create_namespaces``); the suites then run
exactly as an operator runs them, as a ``prism conformance --target`` process
of their own. Every operation of every test crosses gRPC, so all of them
passing shows that the gateway is transparent: a backend behaves through it as
it does embedded.
"""

from __future__ import annotations

import json
import os
import queue as stdlib_queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from prism.gateway.testing import GatewayThread
from prism_conformance.pytest_plugin import suite_names

#: Generous: a suite takes about a minute locally; a slow CI machine may take several.
SUITE_TIMEOUT_S = 1200.0
START_TIMEOUT_S = 60.0


class Serve:
    """``prism serve`` in a subprocess; its log lines are drained on a thread
    (a full stderr pipe would stall the gateway) and searched with a deadline."""

    def __init__(self, config_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PRISM_CONFIG", "PRISM_LISTEN")}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prism",
                "--log-level",
                "info",
                "serve",
                "--config",
                str(config_path),
                "--listen",
                "127.0.0.1:0",
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: stdlib_queue.Queue[dict[str, Any]] = stdlib_queue.Queue()
        assert self.process.stderr is not None
        threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"event": line.rstrip()}
            self.lines.put(record)

    def address(self) -> str:
        """The address the gateway listens on, from its start-up log line."""
        give_up = time.monotonic() + START_TIMEOUT_S
        seen: list[dict[str, Any]] = []
        while (remaining := give_up - time.monotonic()) > 0:
            if self.process.poll() is not None and self.lines.empty():
                raise AssertionError(f"prism serve exited with {self.process.returncode}; it said {seen}")
            try:
                record = self.lines.get(timeout=min(remaining, 1.0))
            except stdlib_queue.Empty:
                continue
            seen.append(record)
            if record.get("event") == "prism gateway listening":
                return str(record["address"])
        raise AssertionError(f"prism serve did not listen within {START_TIMEOUT_S}s; it said {seen}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def _serve(tmp: Path, backends: dict[str, Any]) -> Iterator[str]:
    config = {"backends": backends, "gateway": {"create_namespaces": {"allow": True}}}
    path = tmp / "prism.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    server = Serve(path)
    try:
        yield f"grpc://{server.address()}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sqlite_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway-sqlite")
    yield from _serve(tmp, {"sqlite": {"plugin": "sqlite", "path": str(tmp / "prism.db")}})


@pytest.fixture(scope="module")
def redis_gateway(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway-redis")
    prefix = f"prism-gwconf-{secrets.token_hex(4)}"
    yield from _serve(tmp, {"redis": {"plugin": "redis", "url": redis_url, "key_prefix": prefix}})


@pytest.fixture(scope="module")
def memory_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(tmp_path_factory.mktemp("gateway-memory"), {"memory": {"plugin": "memory"}})


@pytest.fixture(scope="module")
def cassandra_gateway(tmp_path_factory: pytest.TempPathFactory, cassandra_contact: str) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway-cassandra")
    host, _, port = cassandra_contact.rpartition(":")
    keyspace = f"prism_gwconf_{secrets.token_hex(4)}"
    backend = {
        "plugin": "cassandra",
        "contact_points": [host],
        "port": int(port),
        "replication_factor": 1,
        "keyspace": keyspace,
    }
    yield from _serve(tmp, {"cassandra": backend})


@pytest.fixture(scope="module")
def dynamodb_gateway(tmp_path_factory: pytest.TempPathFactory, dynamodb_url: str) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway-dynamodb")
    backend = {
        "plugin": "dynamodb",
        "endpoint_url": dynamodb_url,
        "table_prefix": f"gw{secrets.token_hex(4)}_",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
    }
    yield from _serve(tmp, {"dynamodb": backend})


def run_conformance(
    target: str, abstraction: str, backend: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``prism conformance --target ...`` as its own process, from a folder
    with no prism.yaml: nothing local is needed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PRISM_CONFIG", "PRISM_TOKEN")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "prism",
            "conformance",
            "--target",
            target,
            "--abstraction",
            abstraction,
            backend,
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=SUITE_TIMEOUT_S,
        check=False,
    )


def assert_all_pass(
    result: subprocess.CompletedProcess[str], target: str, abstraction: str, plugin: str, cwd: Path
) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"prism conformance exited {result.returncode}:\n{output[-6000:]}"
    assert f"through the gateway at {target}" in result.stdout, result.stdout
    report = json.loads((cwd / "conformance-report" / "conformance.json").read_text(encoding="utf-8"))
    [suite] = report["suites"]
    assert suite["abstraction"] == abstraction
    assert suite["backend"] == {"plugin": plugin, "gateway": target, "backend": plugin}
    outcomes = {test["name"]: test["outcome"] for test in suite["tests"]}
    failed = {
        name: outcome for name, outcome in outcomes.items() if outcome not in ("pass", "not_applicable")
    }
    assert not failed, f"not passing through the gateway: {failed}"
    # Every test of the suite ran: none was left out to make the run pass.
    assert set(outcomes) == set(suite_names(abstraction)), set(suite_names(abstraction)) ^ set(outcomes)
    assert "pass" in outcomes.values()
    markdown = (cwd / "conformance-report" / "conformance.md").read_text(encoding="utf-8")
    assert f"ran through the Prism gateway at {target}" in markdown


@pytest.mark.parametrize("abstraction", ["keyvalue", "queue", "timeseries", "counter"])
def test_suite_passes_through_the_gateway_on_sqlite(
    sqlite_gateway: str, abstraction: str, tmp_path: Path
) -> None:
    result = run_conformance(sqlite_gateway, abstraction, "sqlite", tmp_path)
    assert_all_pass(result, sqlite_gateway, abstraction, "sqlite", tmp_path)


@pytest.mark.parametrize("abstraction", ["keyvalue", "queue", "timeseries", "counter"])
def test_suite_passes_through_the_gateway_on_redis(
    redis_gateway: str, abstraction: str, tmp_path: Path
) -> None:
    result = run_conformance(redis_gateway, abstraction, "redis", tmp_path)
    assert_all_pass(result, redis_gateway, abstraction, "redis", tmp_path)


@pytest.mark.parametrize("abstraction", ["timeseries", "counter"])
@pytest.mark.parametrize("backend", ["memory", "cassandra", "dynamodb"])
def test_timeseries_and_counter_pass_through_the_gateway_on_every_other_backend(
    request: pytest.FixtureRequest, backend: str, abstraction: str, tmp_path: Path
) -> None:
    """Issue 7 asks every TimeSeries and Counter backend to pass through the
    gateway too; sqlite and redis are above, with KeyValue and Queue."""
    target: str = request.getfixturevalue(f"{backend}_gateway")
    result = run_conformance(target, abstraction, backend, tmp_path)
    assert_all_pass(result, target, abstraction, backend, tmp_path)


def test_a_gateway_that_refuses_run_time_namespaces_stops_the_run_with_one_clear_message(
    tmp_path: Path,
) -> None:
    with GatewayThread({"backends": {"mem": {"plugin": "memory"}}}) as gateway:
        result = run_conformance(gateway.target, "keyvalue", "mem", tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "gateway.create_namespaces" in result.stdout, result.stdout
    assert not (tmp_path / "conformance-report").exists(), "no suite may run when the gateway refuses"


def test_an_unknown_backend_of_the_gateway_is_named_with_the_ones_it_has(tmp_path: Path) -> None:
    config = {"backends": {"mem": {"plugin": "memory"}}, "gateway": {"create_namespaces": {"allow": True}}}
    with GatewayThread(config) as gateway:
        result = run_conformance(gateway.target, "queue", "nope", tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no backend is named 'nope' (backends: mem)" in result.stdout, result.stdout
