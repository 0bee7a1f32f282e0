"""The gateway as a server: gRPC health checking and reflection through grpc's
own clients, AdminService, and graceful drain, in process and as the ``serve``
command in a subprocess receiving SIGTERM.

Every wait has a deadline; ordering is proven from the gateway's own log
stream, never from wall-clock timings."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue as stdlib_queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pool

# grpcio-health-checking and grpcio-reflection ship no type stubs.
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # type: ignore[import-untyped]
    ProtoReflectionDescriptorDatabase,
)

import prism
import prism.remote
from prism.gateway.command import add_serve_parser, cmd_serve
from prism.gateway.server import SERVICE_NAMES, Gateway
from prism.gateway.testing import GatewayThread
from prism.v1 import admin_pb2, admin_pb2_grpc, keyvalue_pb2, keyvalue_pb2_grpc, queue_pb2, queue_pb2_grpc

CONFIG: dict[str, Any] = {
    "backends": {"mem": {"plugin": "memory"}},
    "namespaces": {
        "users": {"abstraction": "keyvalue", "needs": {"ttl": "30d", "capabilities": ["kv.scan"]}},
        "orders": {"abstraction": "queue", "queue": {"visibility_timeout": "10m", "max_wait": "30s"}},
        "impossible": {"abstraction": "keyvalue", "needs": {"durability": "durable"}},
    },
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread(CONFIG) as running:
        yield running


@pytest.fixture
def channel(gateway: GatewayThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address) as chan:
        yield chan


def test_health_is_serving_overall_and_per_service(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", *SERVICE_NAMES):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    assert set(SERVICE_NAMES) == {
        "prism.v1.KeyValueService",
        "prism.v1.QueueService",
        "prism.v1.TimeSeriesService",
        "prism.v1.CounterService",
        "prism.v1.AdminService",
    }
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    listed = {service.name for response in responses for service in response.list_services_response.service}
    assert listed >= {*SERVICE_NAMES, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}

    # What grpcurl does: fetch the descriptors over reflection and build them.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    queue_service = pool.FindServiceByName("prism.v1.QueueService")
    assert [m.name for m in queue_service.methods] == ["Publish", "Consume", "Subscribe", "Ack", "Nack"]
    publish = pool.FindMessageTypeByName("prism.v1.PublishRequest")
    assert [f.name for f in publish.fields] == ["namespace", "topic", "messages"]
    timeseries_service = pool.FindServiceByName("prism.v1.TimeSeriesService")
    assert [m.name for m in timeseries_service.methods] == ["WriteEvents", "ReadEvents"]
    counter_service = pool.FindServiceByName("prism.v1.CounterService")
    assert [m.name for m in counter_service.methods] == ["Add", "Get", "Clear"]
    add = pool.FindMessageTypeByName("prism.v1.AddRequest")
    assert [f.name for f in add.fields] == ["namespace", "counter", "delta", "token"]


def test_admin_lists_namespaces_and_plans(channel: grpc.Channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    listed = {
        ns.name: ns for ns in admin.ListNamespaces(admin_pb2.ListNamespacesRequest(), timeout=10).namespaces
    }
    assert set(listed) == {"users", "orders", "impossible"}
    users = listed["users"]
    assert (users.abstraction, users.backend, users.plugin) == (
        admin_pb2.ABSTRACTION_KEYVALUE,
        "mem",
        "memory",
    )
    assert users.needs.ttl.ToSeconds() == 30 * 86400
    assert list(users.needs.capabilities) == ["kv.scan"]
    assert "kv.scan" in users.capabilities
    assert listed["orders"].abstraction == admin_pb2.ABSTRACTION_QUEUE
    # A namespace no backend can serve is listed with the refusal, not hidden.
    assert listed["impossible"].backend == ""
    assert listed["impossible"].reason.startswith("REFUSED: namespace 'impossible'")
    plan = admin.GetPlan(admin_pb2.GetPlanRequest(name="orders"), timeout=10)
    assert (plan.backend, plan.plugin) == ("mem", "memory")
    assert plan.reason.startswith("first configured backend that meets")


def test_the_token_is_sent_as_bearer_metadata(gateway: GatewayThread) -> None:
    seen: list[tuple[str, str | bytes]] = []

    class Recorder(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
            seen.extend(handler_call_details.invocation_metadata)
            return await continuation(handler_call_details)

    async def serve_and_call() -> None:
        server = grpc.aio.server(interceptors=[Recorder()])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with prism.remote.connect_async(f"grpc://127.0.0.1:{port}", token="s3cret") as db:
                # Nothing is served there: the call fails, but its metadata arrived.
                with pytest.raises(prism.remote.RemoteError):
                    await db.keyvalue("users").get_items("r")
        finally:
            await server.stop(None)

    asyncio.run(serve_and_call())
    assert ("authorization", "Bearer s3cret") in seen


def test_stop_drains_health_first_and_ends_streams_giving_deliveries_back(tmp_path: Path) -> None:
    config = {
        "backends": {"local": {"plugin": "sqlite", "path": str(tmp_path / "prism.db")}},
        "namespaces": {"orders": {"abstraction": "queue", "queue": {"visibility_timeout": "10m"}}},
    }
    running = GatewayThread(config).start()
    try:

        async def body() -> list[Any]:
            events: list[Any] = []
            async with grpc.aio.insecure_channel(running.address) as channel:
                publish = queue_pb2_grpc.QueueServiceStub(channel).Publish
                await publish(
                    queue_pb2.PublishRequest(
                        namespace="orders", topic="t", messages=[queue_pb2.Message(payload=b"m1")]
                    )
                )
                watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
                stream = queue_pb2_grpc.QueueServiceStub(channel).Subscribe(
                    queue_pb2.SubscribeRequest(namespace="orders", topic="t", group="g")
                )
                async with asyncio.timeout(10):
                    events.append((await watch.read()).status)
                    await stream.read()  # the subscription id
                    pushed = await stream.read()
                    assert isinstance(pushed, queue_pb2.SubscribeResponse)
                    events.append(pushed.delivery.payload)
                    stopping = asyncio.get_running_loop().run_in_executor(None, running.stop)
                    events.append((await watch.read()).status)
                    watch.cancel()  # a Watch would hold the drain for the whole grace period
                    try:
                        await stream.read()
                    except grpc.aio.AioRpcError as exc:
                        events.append((exc.code(), exc.details()))
                    await stopping
            return events

        events = asyncio.run(body())
    finally:
        running.stop()
    serving, payload, not_serving, ended = events
    assert (serving, payload, not_serving) == (
        health_pb2.HealthCheckResponse.SERVING,
        b"m1",
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert ended[0] is grpc.StatusCode.UNAVAILABLE
    assert "the gateway is shutting down" in ended[1]
    # The stream's consumer closed: m1 is deliverable again right away, although
    # its visibility timeout is ten minutes.
    with prism.open(config) as db:
        again = db.queue("orders").consume("t", "g", wait=10)
    assert [(d.payload, d.attempt) for d in again] == [(b"m1", 2)]


# -- the serve command, as a process ------------------------------------------------------------------


class ServeProcess:
    """``python -m prism.gateway.command serve`` with its JSON log lines read
    on a thread, so a test can wait for a line with a deadline."""

    def __init__(self, config_path: Path | None, *extra: str, cwd: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PRISM_CONFIG", "PRISM_LISTEN")}
        env["PYTHONUNBUFFERED"] = "1"
        config = ["--config", str(config_path)] if config_path is not None else []
        command = [sys.executable, "-m", "prism.gateway.command", "--log-level", "debug", "serve"]
        self.process = subprocess.Popen(
            [*command, *config, "--listen", "127.0.0.1:0", *extra],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.lines: stdlib_queue.Queue[dict[str, Any]] = stdlib_queue.Queue()
        self.seen: list[dict[str, Any]] = []
        assert self.process.stderr is not None
        threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"event": line.rstrip()}
            self.lines.put(record)

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        give_up = time.monotonic() + timeout
        while True:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching log line within {timeout}s; saw {self.seen}")
            try:
                record = self.lines.get(timeout=remaining)
            except stdlib_queue.Empty:
                continue
            self.seen.append(record)
            if match(record):
                return record

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def test_sigterm_lets_the_call_in_flight_finish_refuses_new_ones_and_exits_0(tmp_path: Path) -> None:
    config_path = tmp_path / "prism.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    server = ServeProcess(config_path, "--grace", "30")
    try:
        listening = server.wait_for(lambda r: r.get("event") == "prism gateway listening")
        address = listening["address"]
        assert listening["namespaces"] == ["impossible", "orders", "users"]

        outcome: dict[str, Any] = {}

        def slow_call() -> None:
            # Waits for messages that never come: in flight for its whole wait.
            with prism.remote.connect(f"grpc://{address}") as db:
                outcome["deliveries"] = db.queue("orders").consume("t", "g", max_messages=1, wait=5)

        caller = threading.Thread(target=slow_call)
        caller.start()
        server.wait_for(lambda r: r.get("event") == "rpc started" and r.get("method") == "Consume")
        server.process.send_signal(signal.SIGTERM)
        server.wait_for(lambda r: r.get("event") == "prism gateway draining")

        # New calls are refused from now on (poll: the listener closes just after the log line).
        refused: grpc.StatusCode | None = None
        give_up = time.monotonic() + 20
        while refused is None and time.monotonic() < give_up:
            with grpc.insecure_channel(address) as channel:
                try:
                    keyvalue_pb2_grpc.KeyValueServiceStub(channel).GetItems(
                        keyvalue_pb2.GetItemsRequest(namespace="users", id="r"), timeout=5
                    )
                except grpc.RpcError as exc:
                    refused = exc.code()
        assert refused is grpc.StatusCode.UNAVAILABLE

        # The call in flight finished normally, after the drain began.
        caller.join(timeout=30)
        assert not caller.is_alive()
        assert outcome["deliveries"] == []
        server.wait_for(
            lambda r: r.get("event") == "rpc" and r.get("method") == "Consume" and r.get("code") == "OK"
        )
        server.wait_for(lambda r: r.get("event") == "prism gateway stopped")
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()


def test_serve_without_a_config_serves_the_embedded_sqlite_default_and_stops_on_sigint(
    tmp_path: Path,
) -> None:
    server = ServeProcess(None, cwd=tmp_path)
    try:
        listening = server.wait_for(lambda r: r.get("event") == "prism gateway listening")
        assert (listening["config"], listening["auto_namespaces"]) == ("<embedded default>", True)
        with prism.remote.connect(f"grpc://{listening['address']}") as db:
            db.keyvalue("notes").put_items("n1", {"title": "kept"})
            assert db.plan("notes").plugin == "sqlite"
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    # The data is where `prism.open()` would have put it: ./prism-data of the server's folder.
    default = {
        "backends": {"local": {"plugin": "sqlite", "path": str(tmp_path / "prism-data" / "prism.db")}},
        "auto_namespaces": True,
    }
    with prism.open(default) as db:
        assert db.keyvalue("notes").get_items("n1").as_dict() == {b"title": b"kept"}


def test_serve_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    config_path = tmp_path / "prism.yaml"
    config_path.write_text("backends: {mem: {plugin: memory, colour: blue}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "prism.gateway.command", "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "prism: error: invalid Prism configuration" in result.stderr
    assert "colour" in result.stderr


def test_a_busy_port_is_refused_with_what_to_do(gateway: GatewayThread) -> None:
    async def second_gateway() -> None:
        async with prism.open_async(CONFIG) as db:
            await Gateway(db, listen=gateway.address).start()

    with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:\d+: .* pick another with --listen"):
        asyncio.run(second_gateway())


def test_the_serve_parser_plugs_into_a_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="prism")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve"])
    assert (args.config, args.listen, args.grace, args.func) == (None, None, 10.0, cmd_serve)
    args = parser.parse_args(["serve", "--config", "p.yaml", "--listen", "0.0.0.0:7000", "--grace", "2.5"])
    assert (args.config, args.listen, args.grace) == ("p.yaml", "0.0.0.0:7000", 2.5)
    for bad in (["--listen", "7000"], ["--listen", "host:99999"], ["--grace", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", *bad])
    assert "is not HOST:PORT" in capsys.readouterr().err
