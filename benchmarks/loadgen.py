"""The load generators: ``ghz`` for saturation, and an open-loop asyncio
client for latency at a fixed rate.

Why ``ghz`` for saturation: the machine has two cores and the gateway is one
Python process, so a Python load generator would take most of the other core
and need several processes to keep up; ghz, in Go, drives tens of thousands of
calls a second from a fraction of a core. Each run records the CPU ghz used
(``loadgen_cpu_cores``) next to the server's (``server_cpu_cores``), so a
reader can check it was not the bottleneck: the server near one full core and
ghz well below it means the server was saturated.

Why Python for the fixed rate: the baseline there is the raw Redis driver,
called from the same client machine, so both sides must be the same client
program; at 1,000 calls a second an asyncio loop keeps up easily.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.stats import Sample, summarize

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROTO_DIR = ROOT / "prism-core" / "proto"
GHZ_VERSION = "v0.121.0"
GHZ_BIN = HERE / ".cache" / "bin" / "ghz"
_TICKS = os.sysconf("SC_CLK_TCK")
_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+:\d+")


class LoadgenUnavailable(RuntimeError):
    """ghz is not built and cannot be (no Go toolchain)."""


def ghz_path() -> Path:
    """ghz, built from the Go module proxy into ``benchmarks/.cache/bin`` on first use."""
    if GHZ_BIN.is_file():
        return GHZ_BIN
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if go is None:
        raise LoadgenUnavailable(
            f"ghz is not in {GHZ_BIN} and there is no Go toolchain to build it; install Go, or run "
            f"`GOBIN={GHZ_BIN.parent} go install github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}`"
        )
    GHZ_BIN.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [go, "install", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
        check=True,
        env={**os.environ, "GOBIN": str(GHZ_BIN.parent)},
        cwd=GHZ_BIN.parent,
    )
    return GHZ_BIN


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the fields after it are fixed.
        fields = raw[raw.rindex(")") + 2 :].split()
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry.name))
        stats[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, 0.0)
        todo += children.get(current, [])
    return total


@dataclass(frozen=True)
class GhzRun:
    sample: Sample
    calls: int
    #: Non-OK answers by error message, and their counts.
    errors: dict[str, int]
    loadgen_cpu_cores: float
    server_cpu_cores: float


def run_ghz(
    address: str,
    method: str,
    request: bytes,
    *,
    duration_s: float,
    concurrency: int,
    connections: int,
    server_pid: int,
    work_dir: Path,
) -> GhzRun:
    """Saturate ``address`` with ``method`` (``prism.v1.KeyValueService.GetItems``)
    carrying the serialized ``request``, for ``duration_s``."""
    data = work_dir / f"ghz-{method.rsplit('.', 1)[-1]}.bin"
    data.write_bytes(request)
    command = [
        str(ghz_path()),
        "--insecure",
        f"--proto={PROTO_DIR / 'prism' / 'v1' / 'keyvalue.proto'}",
        f"--import-paths={PROTO_DIR}",
        f"--call={method}",
        f"--binary-file={data}",
        f"--concurrency={concurrency}",
        f"--connections={connections}",
        f"--duration={duration_s}s",
        "--format=json",
        address,
    ]
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = process_tree_cpu_s(server_pid)
    started = time.monotonic()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.monotonic() - started
    server_cpu = process_tree_cpu_s(server_pid) - server_before
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    loadgen_cpu = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime
    )
    report = json.loads(done.stdout)
    codes: dict[str, int] = report.get("statusCodeDistribution") or {}
    ok = int(codes.get("OK", 0))
    messages: dict[str, int] = report.get("errorDistribution") or {}
    errors: dict[str, int] = {}
    for message, n in messages.items():
        # One entry per kind of error, not per connection's address.
        kind = _ADDRESS.sub("ADDR", message)[:160]
        errors[kind] = errors.get(kind, 0) + int(n)
    if ok == 0:
        raise RuntimeError(f"ghz got no OK answers from {address}: {codes} {report.get('errorDistribution')}")
    percentiles = {int(p["percentage"]): float(p["latency"]) / 1e6 for p in report["latencyDistribution"]}
    sample = Sample(
        ops_per_s=ok / (float(report["total"]) / 1e9),
        p50_ms=percentiles[50],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
    )
    return GhzRun(sample, ok, errors, loadgen_cpu / wall, server_cpu / wall)


async def fixed_rate(call: Callable[[], Awaitable[object]], rate: float, duration_s: float) -> Sample:
    """Open loop: start a call every ``1 / rate`` seconds whether or not the
    previous ones have returned, for ``duration_s``, so a slow call never lowers
    the rate (no coordinated omission). Each latency runs from the moment the
    call is made, not from its slot, so that asyncio's timer slack (up to about
    a millisecond) does not pad both sides' figures."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    total = int(rate * duration_s)
    latencies: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        t0 = time.perf_counter_ns()
        await call()
        latencies.append(time.perf_counter_ns() - t0)

    started = loop.time()
    started_ns = time.perf_counter_ns()
    for i in range(total):
        due = started + i * interval
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    wall = (time.perf_counter_ns() - started_ns) / 1e9
    return summarize(latencies, total, wall)
