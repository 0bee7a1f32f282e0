"""Every developer task of the Prism workspace, as a nox session.

./dev                 lint, protos-check, types and tests (what CI runs)
./dev -s demo         start the gateway on the embedded SQLite default and use it over gRPC
./dev -s demo-embedded  the same calls in process, with the prism CLI and from Python
./dev -s protos       regenerate the prism.v1 gRPC code after editing prism-core/proto
./dev -s tests -- -k sqlite   pass arguments through to pytest
./dev -s services -- up       real Redis, Cassandra, Kafka and DynamoDB (moto) on loopback
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).parent
#: Every distribution of the workspace: the core, each backend plugin, the suite.
MEMBERS = [
    "prism-core",
    *sorted(p.name for p in ROOT.glob("prism-plugin-*") if (p / "pyproject.toml").is_file()),
    "conformance",
]
SRC_TREES = [f"{member}/src" for member in MEMBERS] + ["tools"]
#: cryptography makes throwaway CAs and certificates for the gateway's TLS tests.
TEST_DEPS = ["pytest>=8", "hypothesis>=6", "cryptography>=43"]
TOOLS = {"ruff": "ruff==0.17.6", "mypy": "mypy==2.4.1"}
#: The prism.v1 code generators. grpcio-tools pins the protobuf gencode version, so
#: prism-core's protobuf floor follows it; mypy-protobuf writes the .pyi stubs.
PROTO_TOOLS = ["grpcio-tools==1.85.1", "mypy-protobuf==5.1.0"]
PROTO_SRC = ROOT / "prism-core" / "proto"
PROTO_OUT = ROOT / "prism-core" / "src" / "prism" / "v1"
TYPE_STUBS = ["types-PyYAML", "types-protobuf", "types-grpcio"]
# The runner's readiness probes speak each server's real protocol; moto[server] is also the
# DynamoDB server itself, run from this session's venv.
SERVICES_DEPS = [
    "redis==8.1.0",
    "cassandra-driver==3.30.1",
    "confluent-kafka==2.16.1",
    "boto3==1.44.8",
    "moto[server]==5.2.5",
]

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "protos-check", "types", "tests"]
nox.options.error_on_missing_interpreters = True


def _install_members(session: nox.Session, *, editable: bool = True) -> None:
    args: list[str] = []
    for member in MEMBERS:
        args += ["-e", member] if editable else [member]
    session.install(*args)


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Start the real services, then run every test of every member and the
    cross-package tests. PRISM_SERVICES=none skips starting them (tests that
    need them then skip, which CI=true turns into failures)."""
    _install_members(session)
    # grpcio-tools: tests/interop generates its Go client with the same pinned protoc.
    session.install(*TEST_DEPS, *SERVICES_DEPS, *PROTO_TOOLS)
    if os.environ.get("PRISM_SERVICES", "").lower() != "none":
        session.run("python", "-m", "tools.services", "up", env={"PYTHONPATH": str(ROOT)})
    session.run("pytest", *session.posargs, env={"PYTHONDONTWRITEBYTECODE": "1"})


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install(TOOLS["ruff"])
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def types(session: nox.Session) -> None:
    """mypy --strict over every src tree."""
    _install_members(session)
    session.install(TOOLS["mypy"], *TYPE_STUBS, *TEST_DEPS, *SERVICES_DEPS)
    session.run("mypy", "--strict", *SRC_TREES)


def _generate_protos(session: nox.Session, out: Path) -> list[Path]:
    """Run protoc over every .proto into ``out``; returns the generated files."""
    session.install(*PROTO_TOOLS)
    protos = sorted(str(p.relative_to(PROTO_SRC)) for p in PROTO_SRC.rglob("*.proto"))
    bindir = Path(session.bin)  # protoc finds protoc-gen-mypy on PATH
    session.run(
        "python",
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_SRC}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
        env={"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"},
        silent=True,
    )
    return sorted((out / "prism" / "v1").glob("*_pb2*"))


def _generated_in_tree() -> list[Path]:
    return sorted(PROTO_OUT.glob("*_pb2*"))


@nox.session(python="3.11")
def protos(session: nox.Session) -> None:
    """Regenerate the prism.v1 code in prism-core/src/prism/v1 from prism-core/proto."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _generate_protos(session, Path(tmp))
        for stale in _generated_in_tree():
            stale.unlink()
        for path in fresh:
            shutil.copy2(path, PROTO_OUT / path.name)
    session.log(f"wrote {len(fresh)} files to {PROTO_OUT.relative_to(ROOT)}")


@nox.session(python="3.11", name="protos-check")
def protos_check(session: nox.Session) -> None:
    """Fail if the committed prism.v1 code is not what the .proto files generate."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in _generate_protos(session, Path(tmp))}
    committed = {p.name: p.read_bytes() for p in _generated_in_tree()}
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    if stale:
        session.error(
            f"generated prism.v1 code is out of date ({', '.join(stale)}): run `./dev -s protos` and commit"
        )
    session.log(f"{len(committed)} generated files are current")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """Start the gateway (prism serve) on the embedded SQLite default and use it over gRPC.

    The gateway keeps serving at 127.0.0.1:50051 until Ctrl-C; `-- --once`
    stops it after the demo, `-- --listen HOST:PORT` moves it. Data in ./prism-data/.
    """
    _install_members(session)
    session.run("python", str(ROOT / "examples" / "gateway.py"), *session.posargs)


@nox.session(name="demo-embedded", python="3.11")
def demo_embedded(session: nox.Session) -> None:
    """Put, get, scan, publish and consume in process, with the `prism` CLI and from Python."""
    _install_members(session)
    prism = ["prism", "--log-level", "warning"]
    session.log("Plugins installed:")
    session.run(*prism, "plugins")
    session.log("Writing two users into namespace 'demo' (embedded SQLite in ./prism-data/):")
    session.run(*prism, "kv", "put", "demo", "user:1", "name", "Ada Lovelace", "lang", "en")
    session.run(*prism, "kv", "put", "demo", "user:2", "name", "Grace Hopper", "lang", "en", "--ttl", "1h")
    session.log("Reading user:1:")
    session.run(*prism, "kv", "get", "demo", "user:1")
    session.log("Reading key 'name' of user:2:")
    session.run(*prism, "kv", "get", "demo", "user:2", "name")
    session.log("Scanning the namespace:")
    session.run(*prism, "kv", "scan", "demo")
    session.log("Publishing two messages to topic 'signups' of queue namespace 'events':")
    session.run(*prism, "queue", "publish", "events", "signups", "ada", "grace", "--header", "source=demo")
    session.log("Consuming them as group 'welcome-mails', acknowledging what was printed:")
    session.run(*prism, "queue", "consume", "events", "signups", "welcome-mails", "--ack", "--wait", "1s")
    session.log("The same from Python:")
    session.run("python", str(ROOT / "examples" / "embedded.py"))


@nox.session(python="3.11")
def services(session: nox.Session) -> None:
    """Real test servers: `up [redis cassandra kafka dynamodb]`, `down [names]`, `status`."""
    session.install(*SERVICES_DEPS)
    session.run(
        "python", "-m", "tools.services", *(session.posargs or ["status"]), env={"PYTHONPATH": str(ROOT)}
    )


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks: Prism against the raw drivers and a bare gRPC server (benchmarks/README.md).

    `-- --quick` runs in under 5 minutes, `-- --only gateway` picks groups, `-- --profile`
    records py-spy profiles. Scenarios whose service is not up are skipped and listed.
    Writes benchmarks/results/latest.{json,md,png}; never fails on speed.
    """
    _install_members(session)
    session.install("matplotlib==3.11.2", "py-spy==0.4.3", "pyinstrument==5.1.3")
    session.run("python", "-m", "benchmarks", *session.posargs, env={"PYTHONPATH": str(ROOT)})
