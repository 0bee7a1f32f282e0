"""KeyValue, embedded: ``prism.open_async`` against the raw driver doing the
same storage work (see :mod:`benchmarks.raw_sqlite`, :mod:`benchmarks.raw_redis`,
:mod:`benchmarks.raw_cassandra` and :mod:`benchmarks.raw_dynamodb`), and, on
the memory backend, against a plain dict store (:mod:`benchmarks.raw_memory`).

One call in flight at a time, so ops/s is the inverse of the time per op and
the ratio is the cost of Prism's core on top of the driver. Both sides read
the same stored rows (Prism writes them, in the plugin's layout, which is the
baseline's layout too); writes go to separate records so that neither side's
versions win over the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import prism
from benchmarks.harness import Progress, Result, Settings, Target, closed_loop, interleaved
from benchmarks.profiling import pyinstrument_profile
from benchmarks.raw_cassandra import RawCassandra
from benchmarks.raw_dynamodb import RawDynamo
from benchmarks.raw_memory import RawDict
from benchmarks.raw_redis import RawRedis
from benchmarks.raw_sqlite import RawSqlite
from benchmarks.stats import Sample

NAMESPACE = "bench_kv"
#: Values above this are chunked by the core; 1 MiB values become 4 chunks.
CHUNK_BYTES = 256 * 1024
SMALL = 100
LARGE = 1024 * 1024

#: The backends issue 6 sets embedded targets for.
TARGETED = frozenset({"sqlite", "redis"})
SINGLE_TARGET = Target("time per op <= 1.3x the raw driver's", "max_time_ratio", 1.3)
BATCH_TARGET = Target("time per op <= 1.15x the raw driver's", "max_time_ratio", 1.15)


class RawKeyValue(Protocol):
    async def get(self, record_id: str, keys: list[bytes]) -> dict[bytes, bytes]: ...
    async def get_range(self, record_id: str, start: bytes, end: bytes, limit: int) -> list[bytes]: ...
    async def put(self, record_id: str, items: list[tuple[bytes, bytes]]) -> None: ...
    async def put_chunked(self, record_id: str, key: bytes, value: bytes, chunk_bytes: int) -> None: ...
    async def get_chunked(self, record_id: str, key: bytes) -> bytes: ...


#: How many calls of each kind ("small", "batch", "large") a repetition makes at most,
#: per backend, quick and full: the slow services get fewer calls, not other scenarios.
Caps = dict[str, int]


@dataclass(frozen=True)
class Case:
    scenario: str
    kind: str
    calls: Callable[[Settings], int]
    prism: Callable[[prism.AsyncKeyValue, int], Awaitable[object]]
    raw: Callable[[RawKeyValue, int], Awaitable[object]]
    target: Target | None


def _value(size: int, seed: int = 0) -> bytes:
    return bytes((seed + i) % 251 for i in range(size))


SMALL_VALUE = _value(SMALL)
LARGE_VALUE = _value(LARGE, 7)
BATCH = [(b"k%03d" % i, _value(SMALL, i)) for i in range(100)]
BATCH_DICT = dict(BATCH)
RANGE = prism.KeyRange(b"k000", b"k999")
ONE_KEY = prism.Keys([b"k"])
BIG_KEY = prism.Keys([b"v"])


CASES = [
    Case(
        "kv.get 100B",
        "small",
        lambda s: s.small_ops,
        lambda kv, i: kv.get_items("get", ONE_KEY),
        lambda raw, i: raw.get("get", [b"k"]),
        SINGLE_TARGET,
    ),
    Case(
        "kv.put 100B",
        "small",
        lambda s: s.small_ops,
        lambda kv, i: kv.put_items("put-prism", {b"k": SMALL_VALUE}),
        lambda raw, i: raw.put("put-raw", [(b"k", SMALL_VALUE)]),
        SINGLE_TARGET,
    ),
    Case(
        "kv.put batch 100x100B",
        "batch",
        lambda s: s.batch_ops,
        lambda kv, i: kv.put_items("batch-prism", BATCH_DICT),
        lambda raw, i: raw.put("batch-raw", BATCH),
        BATCH_TARGET,
    ),
    Case(
        "kv.get range 100x100B",
        "batch",
        lambda s: s.batch_ops,
        lambda kv, i: kv.get_items("range", RANGE, limit=100),
        lambda raw, i: raw.get_range("range", b"k000", b"k999", 100),
        None,
    ),
    # The 1 MiB get runs before the 1 MiB put: after a connection has written many
    # 1 MiB values, SQLite's reads on *that* connection stay ~5x slower (seen on
    # 3.4x WAL), which would make the raw side look slow for reasons not Prism's.
    Case(
        "kv.get 1MiB (4 chunks)",
        "large",
        lambda s: s.large_ops,
        lambda kv, i: kv.get_items("big", BIG_KEY),
        lambda raw, i: raw.get_chunked("big", b"v"),
        None,
    ),
    Case(
        "kv.put 1MiB (4 chunks)",
        "large",
        lambda s: s.large_ops,
        lambda kv, i: kv.put_items("big-prism", {b"v": LARGE_VALUE}),
        lambda raw, i: raw.put_chunked("big-raw", b"v", LARGE_VALUE, CHUNK_BYTES),
        None,
    ),
]


async def _seed_and_check(
    kv: prism.AsyncKeyValue, raw: RawKeyValue, ready: Callable[[], Awaitable[None]] | None
) -> None:
    """Write what the reads read, and check both sides read the same values,
    so a broken baseline cannot pass for a fast one. The dict baseline has its
    own store, so it is seeded with the same values through its own writes."""
    await kv.put_items("get", {b"k": SMALL_VALUE})
    await kv.put_items("range", BATCH_DICT)
    await kv.put_items("big", {b"v": LARGE_VALUE})
    if ready is not None:  # a baseline that needs the tables Prism provisioned
        await ready()
    if isinstance(raw, RawDict):
        await raw.put("get", [(b"k", SMALL_VALUE)])
        await raw.put("range", BATCH)
        await raw.put_chunked("big", b"v", LARGE_VALUE, CHUNK_BYTES)
    assert (await raw.get("get", [b"k"])) == {b"k": SMALL_VALUE}
    assert (await raw.get_range("range", b"k000", b"k999", 100)) == [v for _, v in BATCH]
    assert (await raw.get_chunked("big", b"v")) == LARGE_VALUE
    page = await kv.get_items("range", RANGE, limit=100)
    assert [i.value for i in page.items] == [v for _, v in BATCH]


async def _run_cases(
    backend: str,
    config: dict[str, Any],
    raw: RawKeyValue,
    settings: Settings,
    progress: Progress,
    baseline_name: str,
    caps: Caps | None = None,
    ready: Callable[[], Awaitable[None]] | None = None,
    scale: int = 1,
) -> AsyncIterator[Result]:
    async with prism.open_async(config) as db:
        kv = db.keyvalue(NAMESPACE)
        await _seed_and_check(kv, raw, ready)
        for case in CASES:
            calls = case.calls(settings) * scale
            if caps is not None:
                calls = min(calls, caps[case.kind])
            warmup = max(3, calls // 10)

            def prism_side(case: Case = case, calls: int = calls) -> Awaitable[Sample]:
                return closed_loop(lambda n: case.prism(kv, n), calls)

            def raw_side(case: Case = case, calls: int = calls) -> Awaitable[Sample]:
                return closed_loop(lambda n: case.raw(raw, n), calls)

            progress.say(
                f"{case.scenario} on {backend}, embedded: {calls} calls x {settings.repetitions} reps"
            )
            for w in range(warmup):
                await case.prism(kv, w)
                await case.raw(raw, w)
            p, b = await interleaved(settings.repetitions, prism_side, raw_side, progress, case.scenario)
            if settings.profile:
                slug = case.scenario.split(" (")[0].replace(" ", "-").replace(".", "-")
                out = settings.results_dir / "profiles" / f"embedded-{backend}-{slug}.txt"
                await pyinstrument_profile(prism_side, out)
                progress.say(f"profile: {out}")
            yield Result(
                scenario=case.scenario,
                abstraction="keyvalue",
                backend=backend,
                mode="embedded",
                prism=p,
                baseline_name=baseline_name,
                baseline=b,
                # Issue 6's targets are set for sqlite and redis only.
                target=case.target if backend in TARGETED else None,
                notes={"calls_per_rep": calls, "concurrency": 1},
            )
        # The raw chunked write really wrote what Prism would read back.
        assert (await raw.get_chunked("big-raw", b"v")) == LARGE_VALUE
        if not isinstance(raw, RawDict):
            assert [i.value for i in (await kv.get_items("big-raw", BIG_KEY)).items] == [LARGE_VALUE]


async def run_sqlite(settings: Settings, progress: Progress) -> AsyncIterator[Result]:
    path = settings.work_dir / "kv-embedded.db"
    config = {
        "backends": {
            "sqlite": {
                "plugin": "sqlite",
                "path": str(path),
                # The same on both sides; NORMAL so that the disk's fsync, which
                # varies wildly between machines, does not hide Prism's CPU cost.
                "synchronous": "normal",
                "max_item_bytes": f"{CHUNK_BYTES}B",
            }
        },
        "namespaces": {NAMESPACE: {"abstraction": "keyvalue", "backend": "sqlite"}},
    }
    raw = RawSqlite(str(path), NAMESPACE, synchronous="NORMAL")
    await raw.start()
    try:
        async for result in _run_cases("sqlite", config, raw, settings, progress, "raw sqlite3"):
            yield result
    finally:
        await raw.close()


async def run_redis(settings: Settings, progress: Progress, url: str) -> AsyncIterator[Result]:
    prefix = f"prismbench{os.getpid()}"
    config = {
        "backends": {
            "redis": {
                "plugin": "redis",
                "url": url,
                "key_prefix": prefix,
                "max_item_bytes": f"{CHUNK_BYTES}B",
            }
        },
        "namespaces": {NAMESPACE: {"abstraction": "keyvalue", "backend": "redis"}},
    }
    raw = RawRedis(url, prefix, NAMESPACE)
    try:
        async for result in _run_cases("redis", config, raw, settings, progress, "raw redis-py asyncio"):
            yield result
    finally:
        await raw.delete_prefix(prefix + ":")
        await raw.close()


async def run_memory(settings: Settings, progress: Progress) -> AsyncIterator[Result]:
    config = {
        "backends": {"memory": {"plugin": "memory", "max_item_bytes": f"{CHUNK_BYTES}B"}},
        "namespaces": {NAMESPACE: {"abstraction": "keyvalue", "backend": "memory"}},
    }
    # Pure core overhead: calls take microseconds, so 10x the calls of the
    # I/O-bound backends, or a repetition would last a few milliseconds.
    async for result in _run_cases(
        "memory", config, RawDict(), settings, progress, "plain dict store", scale=10
    ):
        yield result


#: Cassandra answers a small call in about a millisecond, but a 100-row batch
#: put takes ~50 ms here (on both sides); these keep the group near 20 s in --quick.
CASSANDRA_CAPS: dict[bool, Caps] = {
    True: {"small": 300, "batch": 20, "large": 24},
    False: {"small": 2000, "batch": 100, "large": 60},
}
#: moto does a few hundred writes a second (a 100-item put is 102 calls, a
#: 1 MiB put 5 plus a read), so DynamoDB gets far fewer calls (about 25 s in --quick).
DYNAMODB_CAPS: dict[bool, Caps] = {
    True: {"small": 100, "batch": 4, "large": 8},
    False: {"small": 300, "batch": 12, "large": 20},
}


async def run_cassandra(settings: Settings, progress: Progress, address: str) -> AsyncIterator[Result]:
    host, _, port = address.rpartition(":")
    keyspace = "prismbench"
    config = {
        "backends": {
            "cassandra": {
                "plugin": "cassandra",
                "contact_points": [host or "127.0.0.1"],
                "port": int(port),
                "keyspace": keyspace,
                "replication_factor": 1,
                "max_item_bytes": f"{CHUNK_BYTES}B",
            }
        },
        "namespaces": {NAMESPACE: {"abstraction": "keyvalue", "backend": "cassandra"}},
    }
    raw = RawCassandra(host or "127.0.0.1", int(port), keyspace, NAMESPACE)
    caps = CASSANDRA_CAPS[settings.quick]
    try:
        async for result in _run_cases(
            "cassandra", config, raw, settings, progress, "raw cassandra-driver", caps, raw.start
        ):
            yield result
    finally:
        await raw.close()


async def run_dynamodb(settings: Settings, progress: Progress, endpoint: str) -> AsyncIterator[Result]:
    prefix = f"prismbench{os.getpid()}_"
    config = {
        "backends": {
            "dynamodb": {
                "plugin": "dynamodb",
                "endpoint_url": endpoint,
                "region": "us-east-1",
                "aws_access_key_id": "test",
                "aws_secret_access_key": "test",
                "table_prefix": prefix,
                "max_item_bytes": f"{CHUNK_BYTES}B",
            }
        },
        "namespaces": {NAMESPACE: {"abstraction": "keyvalue", "backend": "dynamodb"}},
    }
    raw = RawDynamo(endpoint, prefix, NAMESPACE)
    caps = DYNAMODB_CAPS[settings.quick]
    try:
        async for result in _run_cases("dynamodb", config, raw, settings, progress, "raw boto3", caps):
            yield result
    finally:
        for table in (raw.items, raw.chunks, raw.records):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(raw.client.delete_table, TableName=table)
        await raw.close()
