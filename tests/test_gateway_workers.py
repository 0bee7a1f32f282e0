"""``prism serve --workers N``: N processes on one port, each serving, each
with its own metrics port, all draining on one SIGTERM; and the
configurations N processes cannot serve correctly are refused up front."""

from __future__ import annotations

import json
import os
import queue as stdlib_queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
import yaml

from prism.v1 import keyvalue_pb2, keyvalue_pb2_grpc

DEADLINE_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Serve:
    """``prism serve`` with its JSON log lines read on a thread."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PRISM_CONFIG", "PRISM_LISTEN")}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prism", "serve", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
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
                record = {"event": line.rstrip(), "not_json": True}
            self.lines.put(record)

    def drain_lines(self) -> None:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except stdlib_queue.Empty:
                return

    def wait_for(self, match: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
        give_up = time.monotonic() + DEADLINE_S
        while not match(self.seen):
            remaining = give_up - time.monotonic()
            if remaining <= 0 or (self.process.poll() is not None and self.lines.empty()):
                pytest.fail(f"no {what} within {DEADLINE_S:g}s (exit {self.process.poll()}); saw {self.seen}")
            try:
                self.seen.append(self.lines.get(timeout=min(remaining, 1.0)))
            except stdlib_queue.Empty:
                continue

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=DEADLINE_S)
        # Let the reader thread hand over the last lines.
        self.drain_lines()
        return code


def write_config(tmp_path: Path, backend: dict[str, Any]) -> Path:
    path = tmp_path / "prism.yaml"
    path.write_text(
        yaml.safe_dump(
            {"backends": {"local": backend}, "namespaces": {"kv": {"abstraction": "keyvalue"}}},
        )
    )
    return path


def serve_two_workers(config: Path, address: str) -> subprocess.CompletedProcess[str]:
    """``prism serve --workers 2`` that is expected to refuse and exit."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "prism",
            "serve",
            "--config",
            str(config),
            "--listen",
            address,
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        cwd=config.parent,
    )


def test_two_workers_share_the_port_serve_calls_and_drain_together(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"plugin": "sqlite", "path": str(tmp_path / "prism.db")})
    port, metrics_port = free_port(), free_port()
    listen = f"127.0.0.1:{port}"
    serve = Serve(
        "--config",
        str(config),
        "--listen",
        listen,
        "--workers",
        "2",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
    )
    try:
        serve.wait_for(
            lambda seen: sum(r.get("event") == "prism gateway listening" for r in seen) == 2,
            "two workers listening",
        )
        # Connections, not calls, are spread by the kernel: open fresh channels
        # until both workers have answered (each has 1/2 odds per channel).
        put = keyvalue_pb2.PutItemsRequest(
            namespace="kv", id="r", items=[keyvalue_pb2.Item(key=b"k", value=b"v")]
        )
        served_by: set[int] = set()
        for attempt in range(64):
            with grpc.insecure_channel(listen) as channel:
                keyvalue_pb2_grpc.KeyValueServiceStub(channel).PutItems(put, timeout=10)

            def logged(seen: list[dict[str, Any]], calls: int = attempt + 1) -> bool:
                return sum(1 for r in seen if r.get("logger") == "prism.access") >= calls

            serve.wait_for(logged, "the access log line of the call")
            served_by = {r["worker"] for r in serve.seen if r.get("logger") == "prism.access"}
            if served_by == {0, 1}:
                break
        assert served_by == {0, 1}, "one worker served every connection"
        access = [r for r in serve.seen if r.get("logger") == "prism.access"]
        assert all(r["code"] == "OK" and r["request_id"] and r["method"] == "PutItems" for r in access)

        # Each worker has its own metrics endpoint: PORT + its index.
        total = 0.0
        for index in (0, 1):
            url = f"http://127.0.0.1:{metrics_port + index}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith("prism_requests_total{") and 'operation="PutItems"' in line:
                        total += float(line.rsplit(" ", 1)[1])
        assert total == len(access)
    finally:
        code = serve.stop()
    assert code == 0, serve.seen
    stopped = [r for r in serve.seen if r.get("event") == "prism gateway stopped"]
    assert sorted(r["worker"] for r in stopped) == [0, 1]
    assert not [r for r in serve.seen if r.get("not_json")], "log lines must be JSON when stderr is not a TTY"


@pytest.mark.parametrize(
    ("backend", "listen", "message"),
    [
        ({"plugin": "memory"}, None, "keep their data inside one process"),
        ({"plugin": "sqlite", "path": ":memory:"}, None, "keep their data inside one process"),
        ({"plugin": "sqlite", "path": "x.db"}, "127.0.0.1:0", "--workers needs a fixed port"),
    ],
)
def test_what_workers_cannot_serve_is_refused(
    tmp_path: Path, backend: dict[str, Any], listen: str | None, message: str
) -> None:
    config = write_config(tmp_path, backend)
    address = listen or f"127.0.0.1:{free_port()}"
    result = serve_two_workers(config, address)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_refused_not_shared(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"plugin": "sqlite", "path": str(tmp_path / "p.db")})
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        result = serve_two_workers(config, address)
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on {address}" in result.stderr


def test_run_time_namespaces_are_refused_with_workers(tmp_path: Path) -> None:
    config = tmp_path / "prism.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": {"local": {"plugin": "sqlite", "path": str(tmp_path / "p.db")}},
                "gateway": {"create_namespaces": {"allow": True}},
            }
        )
    )
    result = serve_two_workers(config, f"127.0.0.1:{free_port()}")
    assert result.returncode == 2, result.stderr
    assert "gateway.create_namespaces allows run-time namespaces" in result.stderr
