"""A Go service uses the Prism gateway, with a client generated from the same
``prism.v1`` protos as Prism's own code (see ``README.md`` beside this file).

A real ``prism serve`` process on SQLite, with bearer-token auth, serves one
keyvalue and one queue namespace. Python writes first (an item, a message),
then the Go program (``go/main.go``) reads them, writes its own, publishes,
consumes through a Subscribe stream and Consume, acks, and checks every answer
itself. Python then reads back what Go wrote. So the round trip is proven
both ways, through nothing but gRPC and the protos.

The Go code is generated from ``prism-core/proto`` on every run, never
committed: a committed copy could drift from the protos without any check
noticing, while a fresh one always speaks the API under test. The generators
and the gRPC runtime are pinned in ``go/go.mod`` and ``go/go.sum``; Go's own
module and build caches make every run after the first cheap.

Without Go the tests skip (CI, where skips fail the run, has Go). Every
subprocess has a timeout and every wait a deadline; a failure shows the tail
of the stderr involved.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue as stdlib_queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
import grpc
import pytest
import yaml

# grpcio-health-checking ships no type stubs.
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

import prism
from prism.gateway.auth import hash_token

HERE = Path(__file__).resolve().parent
GO_MODULE = HERE / "go"
PROTO_ROOT = HERE.parents[1] / "prism-core" / "proto"
#: The generators, built from the versions go.mod pins (its ``tool`` lines).
GENERATORS = ("google.golang.org/protobuf/cmd/protoc-gen-go", "google.golang.org/grpc/cmd/protoc-gen-go-grpc")
#: The Go module path; protoc writes go_package prism.dev/gen/prism/v1 to ./gen/prism/v1 under it.
GO_MODULE_PATH = "prism.dev"

#: The first run downloads the modules and compiles gRPC: generous, for a slow 2-core machine.
BUILD_TIMEOUT_S = 900.0
RUN_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0

KV_NAMESPACE = "profiles"
QUEUE_NAMESPACE = "events"
#: Only the hash goes into the config; the secret reaches Go through PRISM_TOKEN.
TOKEN = "interop-" + uuid.uuid4().hex


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "<empty>"


def _run(
    what: str,
    command: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``command``; fail the test with its output tail if it fails or outlives ``timeout``."""
    try:
        done = subprocess.run(
            list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(
            f"{what}: still running after {timeout:.0f}s: {' '.join(command)}\nstderr:\n{_tail(stderr)}"
        )
    if done.returncode != 0:
        pytest.fail(
            f"{what}: exit {done.returncode}: {' '.join(command)}\n"
            f"stdout:\n{_tail(done.stdout)}\nstderr:\n{_tail(done.stderr)}"
        )
    return done


def find_go() -> str:
    """The ``go`` command: on PATH, else where the official tarball installs it."""
    found = shutil.which("go")
    if found is None and os.access("/usr/local/go/bin/go", os.X_OK):
        found = "/usr/local/go/bin/go"
    if found is None:
        pytest.skip(
            "Go is not installed (no `go` on PATH nor /usr/local/go/bin/go): install Go 1.26 or newer "
            "to run the Go interop test"
        )
    return found


def well_known_protos() -> Path:
    """The google/protobuf/*.proto files bundled with grpcio-tools' protoc."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        pytest.skip(
            "grpcio-tools is not installed: it provides the protoc that generates the Go client "
            "(pip install grpcio-tools, the version the noxfile's PROTO_TOOLS pins)"
        )
    return Path(spec.origin).parent / "_proto"


@attrs.frozen
class GoBuild:
    """The Go client as the fixture built it."""

    go: str
    module: Path
    """A copy of ``go/`` plus the generated ``gen/prism/v1``."""
    env: dict[str, str]
    """What every ``go`` command of the build ran with."""
    binary: Path


@pytest.fixture(scope="session")
def go_build(tmp_path_factory: pytest.TempPathFactory) -> GoBuild:
    """The Go program, built from a copy of ``go/`` with code freshly generated
    from ``prism-core/proto``: the generators first (pinned by go.sum), then
    protoc, then the program. A copy, so that the source folder stays clean and
    two runs never share a half-generated package."""
    go = find_go()
    includes = well_known_protos()
    build = tmp_path_factory.mktemp("go-interop")
    module = build / "module"
    module.mkdir()
    for name in ("go.mod", "go.sum", "main.go"):
        shutil.copy2(GO_MODULE / name, module / name)
    bin_dir = build / "bin"
    bin_dir.mkdir()
    # -mod=readonly: the committed go.sum is the whole truth; a missing or
    # changed checksum fails the build instead of being written quietly.
    # -buildvcs=false: the copy may sit inside a git checkout (a --basetemp
    # there), and the binary needs no VCS stamp.
    env = {**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false"}
    _run(
        "building protoc-gen-go and protoc-gen-go-grpc",
        [go, "build", "-o", f"{bin_dir}{os.sep}", *GENERATORS],
        cwd=module,
        env=env,
        timeout=BUILD_TIMEOUT_S,
    )
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    _run(
        "generating the Go client with protoc",
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={includes}",
            f"--plugin=protoc-gen-go={bin_dir / 'protoc-gen-go'}",
            f"--plugin=protoc-gen-go-grpc={bin_dir / 'protoc-gen-go-grpc'}",
            f"--go_out={module}",
            f"--go_opt=module={GO_MODULE_PATH}",
            f"--go-grpc_out={module}",
            f"--go-grpc_opt=module={GO_MODULE_PATH}",
            *protos,
        ],
        timeout=RUN_TIMEOUT_S,
    )
    generated = sorted(p.name for p in (module / "gen" / "prism" / "v1").glob("*.go"))
    assert "keyvalue_grpc.pb.go" in generated, generated
    assert "queue_grpc.pb.go" in generated, generated
    binary = bin_dir / "prism-interop"
    _run(
        "building the Go client",
        [go, "build", "-o", str(binary), "."],
        cwd=module,
        env=env,
        timeout=BUILD_TIMEOUT_S,
    )
    return GoBuild(go=go, module=module, env=env, binary=binary)


@pytest.fixture(scope="session")
def go_client(go_build: GoBuild) -> Path:
    return go_build.binary


class ServeProcess:
    """``prism serve`` as a subprocess, its JSON log lines read on a thread so
    that a wait for one has a deadline and a failure can show the log."""

    def __init__(self, config_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PRISM_CONFIG", "PRISM_LISTEN")}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prism", "serve", "--config", str(config_path), "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: stdlib_queue.Queue[str] = stdlib_queue.Queue()
        self.log: list[str] = []
        assert self.process.stderr is not None
        threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def log_tail(self) -> str:
        while True:
            try:
                self.log.append(self.lines.get_nowait())
            except stdlib_queue.Empty:
                return _tail("\n".join(self.log))

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        give_up = time.monotonic() + timeout
        while (remaining := give_up - time.monotonic()) > 0:
            if self.process.poll() is not None and self.lines.empty():
                break
            try:
                line = self.lines.get(timeout=min(remaining, 0.5))
            except stdlib_queue.Empty:
                continue
            self.log.append(line)
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and match(record):
                return record
        raise AssertionError(
            f"prism serve (exit {self.process.poll()}) did not log the awaited line within {timeout:.0f}s; "
            f"its log:\n{self.log_tail()}"
        )

    def stop(self) -> int:
        """SIGTERM (a graceful drain), then kill if the drain outlives its deadline."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired as exc:
            self.process.kill()
            self.process.wait(timeout=30)
            raise AssertionError(
                f"prism serve did not stop within 30s of SIGTERM; its log:\n{self.log_tail()}"
            ) from exc


def wait_until_serving(address: str, timeout: float) -> None:
    """Poll gRPC health checking until the gateway answers SERVING."""
    give_up = time.monotonic() + timeout
    last: object = None
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < give_up:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            except grpc.RpcError as exc:
                last = exc.code()
                # Not ready yet: block until the channel connects again, bounded by the deadline.
                with contextlib.suppress(grpc.FutureTimeoutError):
                    grpc.channel_ready_future(channel).result(
                        timeout=max(0.1, min(2.0, give_up - time.monotonic()))
                    )
                continue
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = answer.status
    raise AssertionError(
        f"the gateway at {address} was not SERVING within {timeout:.0f}s (last answer: {last})"
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``prism serve`` process on SQLite with token auth; yields its HOST:PORT."""
    data = tmp_path_factory.mktemp("gateway")
    grants = {KV_NAMESPACE: ["read", "write"], QUEUE_NAMESPACE: ["read", "write"]}
    config = {
        "backends": {"local": {"plugin": "sqlite", "path": str(data / "prism.db")}},
        "namespaces": {
            KV_NAMESPACE: {"abstraction": "keyvalue"},
            # A ten-minute visibility timeout: a delivery that comes back during
            # the test came back because its stream ended, not because time passed.
            QUEUE_NAMESPACE: {
                "abstraction": "queue",
                "queue": {"visibility_timeout": "10m", "max_wait": "30s"},
            },
        },
        "gateway": {
            "auth": {"tokens": [{"name": "go-service", "sha256": hash_token(TOKEN), "grants": grants}]}
        },
    }
    config_path = data / "prism.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    server = ServeProcess(config_path)
    try:
        listening = server.wait_for(lambda r: r.get("event") == "prism gateway listening", START_TIMEOUT_S)
        address = str(listening["address"])
        wait_until_serving(address, START_TIMEOUT_S)
        yield address
    finally:
        code = server.stop()
    assert code == 0, f"prism serve exited {code} after SIGTERM; its log:\n{server.log_tail()}"


def run_go(binary: Path, address: str, **flags: str) -> subprocess.CompletedProcess[str]:
    """The Go program against ``address``; the caller checks the exit code."""
    command = [str(binary), "-addr", address, "-timeout", f"{RUN_TIMEOUT_S - 10:.0f}s"]
    for name, value in flags.items():
        command += [f"-{name.replace('_', '-')}", value]
    try:
        return subprocess.run(
            command,
            env={**os.environ, "PRISM_TOKEN": TOKEN},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(
            f"the Go client was still running after {RUN_TIMEOUT_S:.0f}s; its output:\n{_tail(stdout)}"
        )


def test_a_go_service_puts_gets_publishes_and_consumes_through_the_gateway(
    go_client: Path, gateway: str
) -> None:
    run = uuid.uuid4().hex[:12]
    record, topic, group = f"user-{run}", f"signups-{run}", f"go-billing-{run}"
    python_value = f"written by Python {run}"
    python_payload = f"published by Python {run}"

    with prism.connect(f"grpc://{gateway}", token=TOKEN, timeout=30) as db:
        db.keyvalue(KV_NAMESPACE).put_items(record, {"from-python": python_value})
        (python_id,) = db.queue(QUEUE_NAMESPACE).publish(topic, prism.Message(b"", python_payload))

    done = run_go(
        go_client,
        gateway,
        kv_namespace=KV_NAMESPACE,
        record=record,
        python_value=python_value,
        queue_namespace=QUEUE_NAMESPACE,
        topic=topic,
        group=group,
        python_payload=python_payload,
        run_id=run,
    )
    assert done.returncode == 0, (
        f"the Go client failed:\nstdout:\n{_tail(done.stdout)}\nstderr:\n{_tail(done.stderr)}"
    )
    steps = [line.split(":", 1)[0] for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert steps == [
        "ok auth",
        "ok get python item",
        "ok put",
        "ok get",
        "ok publish",
        "ok subscribe",
        "ok ack",
        "ok end stream",
        "ok redelivery",
        "ok ack consumed",
        "ok nothing comes back",
    ], done.stdout
    result_lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result_lines) == 1, done.stdout
    result = json.loads(result_lines[0].removeprefix("RESULT "))
    assert result["item_key"] == "from-go"
    assert result["item_value"] == f"written by Go {run}"
    assert result["payload"] == f"published by Go {run}"
    assert result["python_message_id"] == python_id
    assert (result["control_attempt"], result["unauthenticated_checked"]) == (2, True)

    # Now the other way: Python reads what Go wrote, through the same gateway.
    with prism.connect(f"grpc://{gateway}", token=TOKEN, timeout=30) as db:
        assert db.keyvalue(KV_NAMESPACE).get_items(record).as_dict() == {
            b"from-go": result["item_value"].encode(),
            b"from-python": python_value.encode(),
        }
        events = db.queue(QUEUE_NAMESPACE)
        # A group that never read the topic sees all three messages (fan-out),
        # with the ids Go was given when it published.
        audit = f"python-audit-{run}"
        seen: dict[str, prism.Delivery] = {}
        give_up = time.monotonic() + 30
        while len(seen) < 3 and time.monotonic() < give_up:
            for delivery in events.consume(topic, audit, max_messages=10, wait=10):
                seen[delivery.id] = delivery
        assert {d.payload for d in seen.values()} == {
            python_payload.encode(),
            result["payload"].encode(),
            result["control_payload"].encode(),
        }
        assert set(seen) == {python_id, result["message_id"], result["control_id"]}
        assert dict(seen[result["message_id"]].headers) == {"lang": b"go"}
        assert all(d.attempt == 1 for d in seen.values())
        events.ack(topic, audit, list(seen.values()))
        # Go acked everything for its group: nothing is left there.
        assert events.consume(topic, group, max_messages=10) == []


def test_the_go_client_fails_loudly_on_a_mismatch(go_client: Path, gateway: str) -> None:
    """The Go checks can fail: a value that was never written is reported,
    with the step and what was found, and a non-zero exit."""
    run = uuid.uuid4().hex[:12]
    done = run_go(
        go_client,
        gateway,
        kv_namespace=KV_NAMESPACE,
        record=f"empty-{run}",
        python_value="never written",
        queue_namespace=QUEUE_NAMESPACE,
        topic=f"unused-{run}",
        group=f"unused-{run}",
        run_id=run,
    )
    assert done.returncode == 1, done
    assert done.stderr.strip() == 'FAIL get python item: want one item from-python="never written", got []'
    assert "RESULT" not in done.stdout


def test_the_go_client_names_a_missing_flag(go_client: Path) -> None:
    done = subprocess.run(
        [str(go_client), "-addr", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "prism-interop: -kv-namespace is required; see -help"


def test_the_go_client_is_gofmt_and_vet_clean(go_build: GoBuild) -> None:
    """The workspace's lint covers Python only; this keeps main.go to Go's own standard."""
    goroot = _run("go env", [go_build.go, "env", "GOROOT"], env=go_build.env, timeout=RUN_TIMEOUT_S)
    gofmt = Path(goroot.stdout.strip()) / "bin" / "gofmt"
    formatted = _run("gofmt", [str(gofmt), "-l", "main.go"], cwd=go_build.module, timeout=RUN_TIMEOUT_S)
    assert formatted.stdout.strip() == "", f"run `gofmt -w tests/interop/go/main.go`:\n{formatted.stdout}"
    _run("go vet", [go_build.go, "vet", "."], cwd=go_build.module, env=go_build.env, timeout=BUILD_TIMEOUT_S)
