"""What every service shares: folders, detached processes, pid files, probes with deadlines."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = ROOT / ".services"
CACHE_DIR = SERVICES_DIR / "cache"
HOST = "127.0.0.1"
LOG_TAIL_LINES = 40


class ServiceError(RuntimeError):
    """A service could not be obtained, started or stopped; the message says why."""


def log(message: str) -> None:
    print(f"services: {message}", flush=True)


def shown(path: Path) -> str:
    """``path`` relative to the workspace when it is inside it: shorter in messages."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.is_file():
        return f"(no log file at {path})"
    with path.open("rb") as handle:
        # Logs of a failed JVM can be large; reading the end only keeps this cheap.
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 256 * 1024))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0) although it is gone for every purpose that matters here.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB, from /proc (None when unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def port_in_use(port: int) -> bool:
    """Whether anything accepts TCP connections on HOST:port (whatever protocol it speaks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


def ensure_debian_package(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` first when it is missing and we are root."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(
            f"`{binary}` is not installed; install it with `apt-get install -y {package}` "
            "(the runner installs it itself only when it runs as root on Debian/Ubuntu)"
        )
    log(f"`{binary}` is missing: installing Debian package {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", package]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise ServiceError(f"`{' '.join(command)}` failed ({result.returncode}):\n{output}")
    found = shutil.which(binary)
    if not found:
        raise ServiceError(f"installed {package} but `{binary}` is still not on PATH")
    return found


@dataclass(frozen=True)
class State:
    name: str
    pid: int | None
    port: int
    ready: bool
    detail: str = ""


class Service(ABC):
    """One server the runner owns: how to prepare, start and probe it.

    Subclasses describe the server; this class owns the process life cycle so
    every service starts detached, is tracked by a pid file and stops the same way.
    """

    name: str
    port: int
    #: A fragment of the server's command line, so a recycled pid is never mistaken for ours.
    marker: str
    start_deadline: float = 60.0
    stop_deadline: float = 30.0
    #: Whether a Prism plugin named after the service exists; prism.yaml only names existing ones.
    has_plugin: bool = True

    @property
    def dir(self) -> Path:
        return SERVICES_DIR / self.name

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    # --- what each service describes -------------------------------------------------------

    @abstractmethod
    def prepare(self) -> None:
        """Obtain the server and write its configuration (idempotent, may be slow the first time)."""

    @abstractmethod
    def command(self) -> Sequence[str]:
        """The server's command line; it must stay in the foreground."""

    @abstractmethod
    def probe(self, timeout: float) -> None:
        """A real request to the server; raises when it is not ready."""

    @abstractmethod
    def env(self) -> Mapping[str, str]:
        """The PRISM_TEST_* variables the tests read."""

    @abstractmethod
    def backend(self) -> Mapping[str, Any]:
        """This service's backend entry in the generated prism.yaml."""

    def process_env(self) -> Mapping[str, str] | None:
        return None

    # --- life cycle ---------------------------------------------------------------------------

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and self.marker in cmdline(pid):
            return pid
        return None

    def is_ready(self, timeout: float = 5.0) -> bool:
        try:
            self.probe(timeout)
        except Exception:
            return False
        return True

    def state(self) -> State:
        pid = self.running_pid()
        if pid is None:
            # Tell "stopped" from "our port is taken": `up` refuses to start over a stranger.
            detail = "port taken by a process the runner did not start" if port_in_use(self.port) else ""
            return State(self.name, None, self.port, False, detail)
        rss = rss_mib(pid)
        detail = f"rss={rss:.0f}MiB" if rss is not None else ""
        try:
            self.probe(timeout=5.0)
        except ImportError as error:
            # Say so rather than report a running server as not ready.
            return State(self.name, pid, self.port, False, f"{detail} cannot probe here: {error}".strip())
        except Exception:
            return State(self.name, pid, self.port, False, detail)
        return State(self.name, pid, self.port, True, detail)

    def up(self) -> None:
        """Start the server unless ours is already running, then wait until the probe answers."""
        pid = self.running_pid()
        if pid is not None and self.is_ready():
            log(f"{self.name}: already running (pid {pid}) and ready on {HOST}:{self.port}")
            return
        if pid is None:
            if port_in_use(self.port):
                # Someone else's server on our port would make tests talk to a stranger.
                raise ServiceError(
                    f"{self.name}: {HOST}:{self.port} is already taken by a process this runner did not "
                    f"start (no live pid file in {shown(self.pid_file)}); stop that process first"
                )
            self.dir.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            self.prepare()
            log(f"{self.name}: prepared in {time.monotonic() - started:.1f}s")
            pid = self._spawn()
        else:
            log(f"{self.name}: pid {pid} is running but not ready yet; waiting")
        self._wait_ready(pid)

    def _spawn(self) -> int:
        command = list(self.command())
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log_handle:
            log_handle.write(f"\n=== services runner: starting {' '.join(command)}\n".encode())
            log_handle.flush()
            # A new session detaches the server from the runner (and nox): `up` returns while
            # it keeps running, and `down` can signal its whole process group.
            process = subprocess.Popen(
                command,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=dict(self.process_env() or os.environ),
            )
        self.pid_file.write_text(f"{process.pid}\n")
        log(f"{self.name}: started pid {process.pid}, log {shown(self.log_file)}")
        return process.pid

    def _wait_ready(self, pid: int) -> None:
        started = time.monotonic()
        deadline = started + self.start_deadline
        last_error = "no probe yet"
        while True:
            if not pid_alive(pid):
                raise ServiceError(
                    f"{self.name}: the server (pid {pid}) exited before it was ready; "
                    f"last {LOG_TAIL_LINES} lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            try:
                self.probe(timeout=5.0)
            except Exception as error:
                last_error = f"{type(error).__name__}: {error}"
            else:
                log(f"{self.name}: ready on {HOST}:{self.port} after {time.monotonic() - started:.1f}s")
                return
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"{self.name}: not ready after {self.start_deadline:.0f}s (last probe: {last_error}); "
                    f"last {LOG_TAIL_LINES} lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            time.sleep(0.5)

    def down(self) -> None:
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            log(f"{self.name}: not running")
            return
        stop_process_group(pid, self.stop_deadline, self.name)
        self.pid_file.unlink(missing_ok=True)


def stop_process_group(pid: int, deadline_s: float, name: str) -> None:
    """SIGTERM the server's process group, wait up to ``deadline_s``, then SIGKILL it."""

    def signal_group(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    started = time.monotonic()
    signal_group(signal.SIGTERM)
    while pid_alive(pid) and time.monotonic() - started < deadline_s:
        time.sleep(0.2)
    if pid_alive(pid):
        log(f"{name}: still running {deadline_s:.0f}s after SIGTERM; sending SIGKILL")
        signal_group(signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10.0)
        if pid_alive(pid):
            raise ServiceError(f"{name}: pid {pid} survived SIGKILL")
    log(f"{name}: stopped pid {pid} in {time.monotonic() - started:.1f}s")


def wait_until(condition: Callable[[], bool], deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def python_bin(name: str) -> str:
    """A console script of the interpreter running the runner (the nox session's venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"`{name}` is not installed next to {sys.executable} nor on PATH")
    return found
