"""The gateway scenarios: ``prism serve`` in its own process, over real gRPC.

* Saturation, single-item get on memory, against the bare grpc.aio server of
  :mod:`benchmarks.echo_server` answering the same bytes; both driven by ghz
  with the same request, concurrency and connections.
* Latency at a fixed 1,000 calls/s, single-item get on redis: Prism's remote
  client through the gateway against redis-py calling Redis directly, from the
  same client process.
* Saturation, 100-item batch put on sqlite, through the gateway (ghz) against
  the same puts embedded (``prism.open_async``, as many in flight).
* Saturation, single-item get on redis, ``prism serve --workers 2`` against
  ``--workers 1``.
* 1 MiB get and put on redis (4 chunks of 256 KiB), closed loop with one call
  in flight: Prism's remote client through the gateway against redis-py doing
  the plugin's commands for a chunked value (:class:`RawRedis`), from the same
  client process. Closed loop, not a fixed rate: at 1 MiB a call, the rate a
  fixed-rate run could hold would be set by the slower side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

import prism
from benchmarks.harness import (
    Op,
    Progress,
    Result,
    Settings,
    Target,
    closed_loop,
    concurrent_closed_loop,
    interleaved,
)
from benchmarks.loadgen import GhzRun, fixed_rate, run_ghz
from benchmarks.profiling import finish_spy, start_spy
from benchmarks.raw_redis import RawRedis
from benchmarks.stats import Sample
from prism.v1 import keyvalue_pb2, keyvalue_pb2_grpc

NAMESPACE = "bench"
GET = "prism.v1.KeyValueService.GetItems"
PUT = "prism.v1.KeyValueService.PutItems"
VALUE = bytes(i % 251 for i in range(100))
BATCH = [(b"k%03d" % i, bytes((i + j) % 251 for j in range(100))) for i in range(100)]
#: ghz: calls in flight, over this many HTTP/2 connections. Enough to keep a
#: one-process server busy; the same for Prism and its baseline.
CONCURRENCY = 32
CONNECTIONS = 2
RATE = 1000.0

ECHO_TARGET = Target("throughput >= 60% of the bare echo server's", "min_throughput_ratio", 0.60)
LATENCY_TARGET = Target("added latency: p90 <= 0.75 ms, p99 <= 1.5 ms", "max_added_p90_ms", 0.75, 1.5)
BATCH_TARGET = Target("throughput >= 50% of embedded", "min_throughput_ratio", 0.50)
WORKERS_TARGET = Target("throughput >= 1.4x --workers 1", "min_throughput_ratio", 1.4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_get(address: str, request: keyvalue_pb2.GetItemsRequest, deadline_s: float, log: Path) -> bytes:
    """Call GetItems until the server answers; returns the serialized answer."""
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    with grpc.insecure_channel(address) as channel:
        stub = keyvalue_pb2_grpc.KeyValueServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                answer: keyvalue_pb2.GetItemsResponse = stub.GetItems(request, timeout=2)
                return answer.SerializeToString()
            except grpc.RpcError as exc:
                last = exc
                time.sleep(0.2)
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise RuntimeError(f"no server answered GetItems at {address} within {deadline_s:g}s: {last}\n{tail}")


@contextlib.contextmanager
def _process(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def prism_serve(
    config: dict[str, Any], settings: Settings, name: str, *, workers: int = 1
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``prism serve`` on a free loopback port; yields its address and process."""
    config_path = settings.work_dir / f"{name}.yaml"
    # JSON is YAML; limits raised so saturation runs are measured, not shed.
    config_path.write_text(json.dumps(config))
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "prism", "--log-level", "error", "serve", "--config", str(config_path)]
    command += ["--listen", address, "--workers", str(workers), "--grace", "1"]
    log = settings.work_dir / f"{name}.log"
    with _process(command, log) as proc:
        _wait_for_get(address, get_request("warmup"), 60, log)
        yield address, proc


@contextlib.contextmanager
def echo_serve(get_response: bytes, settings: Settings) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    response_path = settings.work_dir / "echo-get-response.bin"
    response_path.write_bytes(get_response)
    address = f"127.0.0.1:{free_port()}"
    log = settings.work_dir / "echo.log"
    command = [sys.executable, "-m", "benchmarks.echo_server", "--listen", address]
    command += ["--get-response", str(response_path)]
    with _process(command, log) as proc:
        _wait_for_get(address, get_request("warmup"), 30, log)
        yield address, proc


def get_request(record_id: str) -> keyvalue_pb2.GetItemsRequest:
    return keyvalue_pb2.GetItemsRequest(
        namespace=NAMESPACE,
        id=record_id,
        predicate=keyvalue_pb2.Predicate(keys=keyvalue_pb2.Keys(keys=[b"k"])),
    )


def put_batch_request(record_id: str) -> keyvalue_pb2.PutItemsRequest:
    items = [keyvalue_pb2.Item(key=k, value=v) for k, v in BATCH]
    return keyvalue_pb2.PutItemsRequest(namespace=NAMESPACE, id=record_id, items=items)


def gateway_config(backend: dict[str, Any]) -> dict[str, Any]:
    return {
        "backends": {"b": backend},
        "namespaces": {NAMESPACE: {"abstraction": "keyvalue", "backend": "b"}},
        "gateway": {"limits": {"max_concurrency": 100_000}},
    }


def _seed(target: str) -> None:
    with prism.connect(target) as db:
        db.keyvalue(NAMESPACE).put_items("get", {b"k": VALUE})


async def _ghz_side(
    address: str,
    method: str,
    request: bytes,
    pid: int,
    settings: Settings,
    runs: list[GhzRun],
    concurrency: int,
) -> Sample:
    run = await asyncio.to_thread(
        run_ghz,
        address,
        method,
        request,
        duration_s=settings.load_s,
        concurrency=concurrency,
        connections=CONNECTIONS,
        server_pid=pid,
        work_dir=settings.work_dir,
    )
    runs.append(run)
    return run.sample


def _merged(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for code, n in c.items():
            out[code] = out.get(code, 0) + n
    return out


def _ghz_notes(prism_runs: list[GhzRun], base_runs: list[GhzRun], concurrency: int) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return round(sorted(values)[len(values) // 2], 2)

    return {
        "loadgen": f"ghz {CONNECTIONS} connections, {concurrency} in flight",
        "prism_server_cpu_cores": med([r.server_cpu_cores for r in prism_runs]),
        "prism_loadgen_cpu_cores": med([r.loadgen_cpu_cores for r in prism_runs]),
        "baseline_server_cpu_cores": med([r.server_cpu_cores for r in base_runs]),
        "baseline_loadgen_cpu_cores": med([r.loadgen_cpu_cores for r in base_runs]),
        "non_ok_calls": _merged([r.errors for r in prism_runs + base_runs]),
    }


async def run_saturation_memory(settings: Settings, progress: Progress) -> AsyncIterator[Result]:
    config = gateway_config({"plugin": "memory"})
    with prism_serve(config, settings, "gateway-memory") as (address, proc):
        _seed(f"grpc://{address}")
        request = get_request("get")
        answer = _wait_for_get(address, request, 10, settings.work_dir / "gateway-memory.log")
        assert keyvalue_pb2.GetItemsResponse.FromString(answer).items[0].value == VALUE
        with echo_serve(answer, settings) as (echo_address, echo_proc):
            progress.say(
                f"gateway get 100B, memory, saturation: ghz {settings.load_s:g}s x {settings.repetitions} reps"
            )
            prism_runs: list[GhzRun] = []
            base_runs: list[GhzRun] = []
            body = request.SerializeToString()
            p, b = await interleaved(
                settings.repetitions,
                lambda: _ghz_side(address, GET, body, proc.pid, settings, prism_runs, CONCURRENCY),
                lambda: _ghz_side(echo_address, GET, body, echo_proc.pid, settings, base_runs, CONCURRENCY),
                progress,
                "gateway get 100B",
            )
            if settings.profile:
                out = settings.results_dir / "profiles" / "gateway-memory-get.collapsed"
                spy = start_spy(proc.pid, settings.load_s, out)
                await _ghz_side(address, GET, body, proc.pid, settings, [], CONCURRENCY)
                progress.say(f"profile: {finish_spy(spy, out)}")
    yield Result(
        "kv.get 100B",
        "keyvalue",
        "memory",
        "gateway saturation",
        p,
        "bare grpc.aio server",
        b,
        ECHO_TARGET,
        _ghz_notes(prism_runs, base_runs, CONCURRENCY),
    )


async def run_fixed_rate_redis(settings: Settings, progress: Progress, url: str) -> AsyncIterator[Result]:
    prefix = f"prismbenchgw{os.getpid()}"
    config = gateway_config({"plugin": "redis", "url": url, "key_prefix": prefix})
    raw = RawRedis(url, prefix, NAMESPACE)
    try:
        with prism_serve(config, settings, "gateway-redis") as (address, server):
            _seed(f"grpc://{address}")
            async with prism.connect_async(f"grpc://{address}") as db:
                kv = db.keyvalue(NAMESPACE)
                keys = prism.Keys([b"k"])
                assert (await kv.get_items("get", keys)).as_dict() == {b"k": VALUE}
                assert await raw.get("get", [b"k"]) == {b"k": VALUE}
                for _ in range(200):  # warm both paths: channel, pool, scripts
                    await kv.get_items("get", keys)
                    await raw.get("get", [b"k"])
                progress.say(
                    f"gateway get 100B, redis, {RATE:g} calls/s: {settings.load_s:g}s x {settings.repetitions} reps"
                )
                p, b = await interleaved(
                    settings.repetitions,
                    lambda: fixed_rate(lambda: kv.get_items("get", keys), RATE, settings.load_s),
                    lambda: fixed_rate(lambda: raw.get("get", [b"k"]), RATE, settings.load_s),
                    progress,
                    "gateway get 100B @1000/s",
                )
                if settings.profile:
                    out = settings.results_dir / "profiles" / "gateway-redis-get-1000rps.collapsed"
                    spy = start_spy(server.pid, settings.load_s, out)
                    await fixed_rate(lambda: kv.get_items("get", keys), RATE, settings.load_s)
                    progress.say(f"profile: {finish_spy(spy, out)}")
    finally:
        await raw.delete_prefix(prefix + ":")
        await raw.close()
    yield Result(
        "kv.get 100B @1000/s",
        "keyvalue",
        "redis",
        "gateway fixed rate",
        p,
        "raw redis-py asyncio (same client)",
        b,
        LATENCY_TARGET,
        {"loadgen": "open-loop asyncio client, Prism's remote client vs redis-py HMGET"},
    )


async def run_batch_put_sqlite(settings: Settings, progress: Progress) -> AsyncIterator[Result]:
    concurrency = 8
    gw_path = settings.work_dir / "gateway-batch.db"
    emb_path = settings.work_dir / "embedded-batch.db"

    def backend(path: Path) -> dict[str, Any]:
        return {"plugin": "sqlite", "path": str(path), "synchronous": "normal"}

    prism_runs: list[GhzRun] = []
    with prism_serve(gateway_config(backend(gw_path)), settings, "gateway-sqlite") as (address, proc):
        emb_config = gateway_config(backend(emb_path))
        del emb_config["gateway"]
        async with prism.open_async(emb_config) as db:
            kv = db.keyvalue(NAMESPACE)
            items = dict(BATCH)
            calls = max(50, int(settings.batch_ops * 2))

            def embedded() -> Any:
                return concurrent_closed_loop(lambda i: kv.put_items("batch", items), calls, concurrency)

            body = put_batch_request("batch").SerializeToString()
            progress.say(f"batch put 100x100B, sqlite, gateway vs embedded, {concurrency} in flight")
            p, b = await interleaved(
                settings.repetitions,
                lambda: _ghz_side(address, PUT, body, proc.pid, settings, prism_runs, concurrency),
                embedded,
                progress,
                "batch put gateway vs embedded",
            )
    notes = _ghz_notes(prism_runs, prism_runs, concurrency)
    notes = {k: v for k, v in notes.items() if not k.startswith("baseline_")}
    notes["baseline"] = f"prism.open_async in the benchmark process, {concurrency} in flight"
    yield Result(
        "kv.put batch 100x100B",
        "keyvalue",
        "sqlite",
        "gateway saturation",
        p,
        "embedded (prism.open_async)",
        b,
        BATCH_TARGET,
        notes,
    )


async def run_workers_redis(settings: Settings, progress: Progress, url: str) -> AsyncIterator[Result]:
    prefix = f"prismbenchwk{os.getpid()}"
    config = gateway_config({"plugin": "redis", "url": url, "key_prefix": prefix})
    raw = RawRedis(url, prefix, NAMESPACE)
    # More in flight than the single-process runs: two processes each need their fill.
    concurrency = 2 * CONCURRENCY
    try:
        with (
            prism_serve(config, settings, "gateway-w1", workers=1) as (one, one_proc),
            prism_serve(config, settings, "gateway-w2", workers=2) as (two, two_proc),
        ):
            _seed(f"grpc://{one}")
            body = get_request("get").SerializeToString()
            progress.say(
                f"gateway get 100B, redis, --workers 2 vs 1: ghz {settings.load_s:g}s x {settings.repetitions}"
            )
            two_runs: list[GhzRun] = []
            one_runs: list[GhzRun] = []
            p, b = await interleaved(
                settings.repetitions,
                lambda: _ghz_side(two, GET, body, two_proc.pid, settings, two_runs, concurrency),
                lambda: _ghz_side(one, GET, body, one_proc.pid, settings, one_runs, concurrency),
                progress,
                "workers 2 vs 1",
            )
    finally:
        await raw.delete_prefix(prefix + ":")
        await raw.close()
    yield Result(
        "kv.get 100B, --workers 2",
        "keyvalue",
        "redis",
        "gateway saturation",
        p,
        "prism serve --workers 1",
        b,
        WORKERS_TARGET,
        _ghz_notes(two_runs, one_runs, concurrency),
    )


LARGE = bytes((7 + i) % 251 for i in range(1024 * 1024))


def _looped(op: Op, calls: int) -> Callable[[], Awaitable[Sample]]:
    return lambda: closed_loop(op, calls)


CHUNK_BYTES = 256 * 1024


async def run_large_redis(settings: Settings, progress: Progress, url: str) -> AsyncIterator[Result]:
    prefix = f"prismbenchgl{os.getpid()}"
    config = gateway_config(
        {"plugin": "redis", "url": url, "key_prefix": prefix, "max_item_bytes": f"{CHUNK_BYTES}B"}
    )
    raw = RawRedis(url, prefix, NAMESPACE)
    # A 1 MiB call takes milliseconds: more calls than embedded, so a repetition lasts ~0.25 s.
    calls = max(20, settings.large_ops * 5)
    results: list[Result] = []
    try:
        with prism_serve(config, settings, "gateway-redis-large") as (address, _):
            async with prism.connect_async(f"grpc://{address}") as db:
                kv = db.keyvalue(NAMESPACE)
                big = prism.Keys([b"v"])
                await kv.put_items("big", {b"v": LARGE})
                assert [i.value for i in (await kv.get_items("big", big)).items] == [LARGE]
                assert await raw.get_chunked("big", b"v") == LARGE
                cases: list[tuple[str, Op, Op]] = [
                    (
                        "kv.get 1MiB (4 chunks)",
                        lambda i: kv.get_items("big", big),
                        lambda i: raw.get_chunked("big", b"v"),
                    ),
                    (
                        "kv.put 1MiB (4 chunks)",
                        lambda i: kv.put_items("big-prism", {b"v": LARGE}),
                        lambda i: raw.put_chunked("big-raw", b"v", LARGE, CHUNK_BYTES),
                    ),
                ]
                for label, prism_op, raw_op in cases:
                    for w in range(3):
                        await prism_op(w)
                        await raw_op(w)
                    progress.say(
                        f"gateway {label}, redis, closed loop: {calls} calls x {settings.repetitions} reps"
                    )
                    p, b = await interleaved(
                        settings.repetitions,
                        _looped(prism_op, calls),
                        _looped(raw_op, calls),
                        progress,
                        label,
                    )
                    results.append(
                        Result(
                            label,
                            "keyvalue",
                            "redis",
                            "gateway closed loop",
                            p,
                            "raw redis-py asyncio (same client)",
                            b,
                            None,
                            {
                                "loadgen": "one call in flight: Prism's remote client vs redis-py (HMGET+LRANGE, "
                                "MULTI/EXEC RPUSH + the plugin's write script)",
                                "calls_per_rep": calls,
                            },
                        )
                    )
                # The raw side's chunked write reads back through the gateway too.
                assert [i.value for i in (await kv.get_items("big-raw", big)).items] == [LARGE]
    finally:
        await raw.delete_prefix(prefix + ":")
        await raw.close()
    for result in results:
        yield result
