"""The gateway protects the datastores behind it: load shedding per namespace,
a circuit breaker per backend (against a Redis that is really stopped and
restarted), the request size limit, and the metrics that show all of it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import duration_pb2

import prism
import prism.remote
from prism.gateway.status import error_from_status
from prism.gateway.testing import GatewayThread
from prism.v1 import keyvalue_pb2, keyvalue_pb2_grpc, queue_pb2, queue_pb2_grpc

DEADLINE_S = 30.0


def eventually(check: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll ``check`` until it holds, or fail after ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    while not check():
        if time.monotonic() > give_up:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def sample(gateway: GatewayThread, name: str, labels: dict[str, str]) -> float:
    assert gateway.gateway is not None
    value = gateway.gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def metadata(error: grpc.RpcError) -> list[tuple[str, str | bytes]]:
    """The trailing metadata of a failed call, typed as the status parser takes it."""
    trailing: Any = error.trailing_metadata() or ()  # grpc types it loosely
    return [(str(key), value) for key, value in trailing]


def error_of(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


# -- load shedding ----------------------------------------------------------------------------


def test_calls_beyond_the_namespace_limit_are_shed_at_once_and_admitted_ones_finish() -> None:
    config = {
        "backends": {"mem": {"plugin": "memory"}},
        "namespaces": {
            "jobs": {"abstraction": "queue"},
            "other": {"abstraction": "queue"},
        },
        "gateway": {"limits": {"max_concurrency": 10, "namespace_concurrency": {"jobs": 2}}},
    }
    with GatewayThread(config) as gateway, grpc.insecure_channel(gateway.address) as channel:
        stub = queue_pb2_grpc.QueueServiceStub(channel)
        waiting = duration_pb2.Duration(seconds=20)
        # Two long polls hold both of the namespace's slots.
        held = [
            stub.Consume.future(
                queue_pb2.ConsumeRequest(namespace="jobs", topic="t", group=f"g{i}", wait=waiting), timeout=60
            )
            for i in range(2)
        ]
        in_flight = {"namespace": "jobs", "operation": "Consume", "backend": "mem"}
        eventually(lambda: sample(gateway, "prism_requests_in_flight", in_flight) == 2, "two calls in flight")

        publish = queue_pb2.PublishRequest(
            namespace="jobs", topic="t", messages=[queue_pb2.Message(payload=b"job")]
        )
        shed = error_of(lambda: stub.Publish(publish, timeout=10))
        assert shed.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        error = error_from_status(shed.code(), shed.details() or "", metadata(shed))
        assert isinstance(error, prism.Overloaded)
        assert (error.namespace, error.limit) == ("jobs", 2)
        assert error.limit_name == "gateway.limits.namespace_concurrency.jobs"
        assert "retry after a backoff" in str(error)
        # Shed without waiting for a slot: both polls are still waiting.
        assert not any(future.done() for future in held)
        # Another namespace has its own limit.
        stub.Publish(
            queue_pb2.PublishRequest(
                namespace="other", topic="t", messages=[queue_pb2.Message(payload=b"x")]
            ),
            timeout=10,
        )
        # The shed call did nothing: nothing was published to jobs.
        assert (
            sample(gateway, "prism_shed_requests_total", {"namespace": "jobs", "operation": "Publish"}) == 1
        )

        # A slot frees when a call ends; the next call is admitted.
        held[0].cancel()
        eventually(lambda: sample(gateway, "prism_requests_in_flight", in_flight) == 1, "the slot to free")
        stub.Publish(publish, timeout=10)
        delivered = held[1].result(timeout=30)
        assert [d.payload for d in delivered.deliveries] == [b"job"]
        eventually(lambda: sample(gateway, "prism_requests_in_flight", in_flight) == 0, "no calls in flight")

        # The remote client raises the same error class.
        with prism.remote.connect(gateway.target, timeout=10) as db:
            q = db.queue("jobs")
            blockers = [
                stub.Consume.future(
                    queue_pb2.ConsumeRequest(namespace="jobs", topic="quiet", group=f"h{i}", wait=waiting),
                    timeout=60,
                )
                for i in range(2)
            ]
            eventually(lambda: sample(gateway, "prism_requests_in_flight", in_flight) == 2, "two polls")
            with pytest.raises(prism.Overloaded, match=r"namespace 'jobs'.*limit of 2 calls in flight"):
                q.publish("t", [prism.Message(b"", b"shed")])
            for future in blockers:
                future.cancel()


# -- the circuit breaker, against a Redis that stops and comes back --------------------------------


class PrivateRedis:
    """A redis-server of this test's own on a fixed port, so the test can stop
    and restart it without touching the shared one other tests use."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            pytest.skip("redis-server is not installed: `nox -s services -- up redis` installs it")
        self.binary = binary
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            eventually(answers, f"redis-server on port {self.port} to answer")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_an_open_breaker_fails_fast_while_redis_is_down_and_closes_when_it_returns(
    private_redis: PrivateRedis,
) -> None:
    config = {
        "backends": {"cache": {"plugin": "redis", "url": private_redis.url}},
        "namespaces": {"kv": {"abstraction": "keyvalue", "backend": "cache"}},
        "gateway": {"breaker": {"failures": 3, "open_for": "1s"}},
    }
    with GatewayThread(config) as gateway, grpc.insecure_channel(gateway.address) as channel:
        stub = keyvalue_pb2_grpc.KeyValueServiceStub(channel)
        get = keyvalue_pb2.GetItemsRequest(namespace="kv", id="r")
        stub.PutItems(
            keyvalue_pb2.PutItemsRequest(
                namespace="kv", id="r", items=[keyvalue_pb2.Item(key=b"k", value=b"v")]
            ),
            timeout=10,
        )
        assert [item.value for item in stub.GetItems(get, timeout=10).items] == [b"v"]
        state = {"backend": "cache"}
        assert sample(gateway, "prism_breaker_state", state | {"prism_breaker_state": "closed"}) == 1

        private_redis.stop()
        # Each call reaches the datastore and fails; the third opens the breaker.
        for _ in range(3):
            failed = error_of(lambda: stub.GetItems(get, timeout=10))
            assert failed.code() is grpc.StatusCode.UNAVAILABLE
            assert "BreakerOpen" not in repr(failed.trailing_metadata())
        assert sample(gateway, "prism_breaker_state", state | {"prism_breaker_state": "open"}) == 1

        # Now calls fail fast without touching Redis, with the breaker named.
        fast = error_of(lambda: stub.GetItems(get, timeout=10))
        assert fast.code() is grpc.StatusCode.UNAVAILABLE
        error = error_from_status(fast.code(), fast.details() or "", metadata(fast))
        assert isinstance(error, prism.BreakerOpen)
        assert isinstance(error, prism.BackendError)
        assert (error.backend, error.namespace, error.failures) == ("cache", "kv", 3)
        assert "backend 'cache' is failing" in str(error)
        rejected = {"namespace": "kv", "backend": "cache"}
        assert sample(gateway, "prism_breaker_rejected_requests_total", rejected) == 1
        errors = {"namespace": "kv", "operation": "GetItems", "backend": "cache", "code": "UNAVAILABLE"}
        assert sample(gateway, "prism_request_errors_total", errors) == 4

        # Redis comes back (empty: it kept nothing); traffic resumes by itself
        # once the breaker's probe succeeds.
        private_redis.start()

        refusals: list[grpc.StatusCode] = []

        def served() -> bool:
            try:
                stub.GetItems(get, timeout=10)
            except grpc.RpcError as exc:
                refusals.append(exc.code())
                return False
            return True

        eventually(served, "the gateway to serve again after Redis restarted")
        assert set(refusals) <= {grpc.StatusCode.UNAVAILABLE}
        assert sample(gateway, "prism_breaker_state", state | {"prism_breaker_state": "closed"}) == 1
        stub.PutItems(
            keyvalue_pb2.PutItemsRequest(
                namespace="kv", id="r", items=[keyvalue_pb2.Item(key=b"k", value=b"w")]
            ),
            timeout=10,
        )
        assert [item.value for item in stub.GetItems(get, timeout=10).items] == [b"w"]


# -- the request size limit ----------------------------------------------------------------------


def test_a_request_over_max_request_bytes_is_refused_and_stores_nothing() -> None:
    config = {
        "backends": {"mem": {"plugin": "memory"}},
        "namespaces": {"kv": {"abstraction": "keyvalue"}},
        "gateway": {"limits": {"max_request_bytes": "64KiB"}},
    }
    with GatewayThread(config) as gateway, prism.remote.connect(gateway.target, timeout=10) as db:
        kv = db.keyvalue("kv")
        kv.put_items("r", {b"small": b"x" * 1000})
        with pytest.raises(prism.LimitExceeded) as caught:
            kv.put_items("r", {b"big": b"x" * (100 * 1024)})
        error = caught.value
        assert error.limit_name == "gateway.limits.max_request_bytes"
        assert error.limit == 64 * 1024
        assert error.actual > 100 * 1024
        assert "send fewer or smaller items per call" in str(error)
        assert [item.key for item in kv.get_items("r").items] == [b"small"]


# -- metrics on their own port -----------------------------------------------------------------


def test_metrics_are_served_by_namespace_operation_and_backend() -> None:
    config = {
        "backends": {"mem": {"plugin": "memory"}},
        "namespaces": {"kv": {"abstraction": "keyvalue"}},
        "gateway": {"metrics": {"listen": "127.0.0.1:0"}},
    }
    with GatewayThread(config) as gateway, prism.remote.connect(gateway.target, timeout=10) as db:
        kv = db.keyvalue("kv")
        kv.put_items("r", {b"k": b"v"})
        kv.get_items("r")
        kv.get_items("r")
        with pytest.raises(prism.NamespaceNotFound):
            db.keyvalue("nope").get_items("r")
        with pytest.raises(prism.NamespaceNotFound):
            db.keyvalue("made_up_name").get_items("r")
        assert gateway.gateway is not None
        assert gateway.gateway.metrics_server is not None
        port = gateway.gateway.metrics_server.port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    lines = set(text.splitlines())
    labels = 'backend="mem",code="OK",namespace="kv"'
    assert f'prism_requests_total{{{labels},operation="PutItems"}} 1.0' in lines
    assert f'prism_requests_total{{{labels},operation="GetItems"}} 2.0' in lines
    assert (
        'prism_request_duration_seconds_count{backend="mem",namespace="kv",operation="GetItems"} 2.0' in lines
    )
    assert 'prism_requests_in_flight{backend="mem",namespace="kv",operation="GetItems"} 0.0' in lines
    # Names a caller made up share one label, so they cannot grow the series.
    unknown = (
        'prism_request_errors_total{backend="",code="NOT_FOUND",namespace="_unknown",operation="GetItems"}'
    )
    assert f"{unknown} 2.0" in lines
    assert "nope" not in text
    assert "made_up_name" not in text


def test_protection_settings_are_checked_with_every_problem_named() -> None:
    from prism.config import parse_config
    from prism.plugins.manager import load_plugins

    with pytest.raises(prism.ConfigError) as caught:
        parse_config(
            {
                "backends": {"mem": {"plugin": "memory"}},
                "gateway": {
                    "limits": {"max_concurrency": 0, "namespace_concurrency": {"orders": 0}, "burst": 3},
                    "breaker": {"failures": 0, "open_for": "soon"},
                    "metrics": {"listen": "9464"},
                },
            },
            load_plugins().registry,
        )
    problems = caught.value.problems
    assert any(p.startswith("gateway.limits: unknown key 'burst'") for p in problems)
    assert "gateway.breaker.open_for: expected a duration like 30d, 12h or 500ms, got 'soon'" in problems
    assert "gateway.metrics.listen: expected HOST:PORT such as 127.0.0.1:9464, got '9464'" in problems
    with pytest.raises(prism.ConfigError) as caught:
        parse_config(
            {
                "backends": {"mem": {"plugin": "memory"}},
                "gateway": {
                    "limits": {"max_concurrency": 0, "namespace_concurrency": {"orders": 0}},
                    "breaker": {"failures": 0},
                },
            },
            load_plugins().registry,
        )
    assert caught.value.problems == [
        "gateway.limits.max_concurrency: must be at least 1, got 0",
        "gateway.limits.namespace_concurrency.orders: must be at least 1, got 0",
        "gateway.breaker.failures: must be at least 1, got 0",
    ]
