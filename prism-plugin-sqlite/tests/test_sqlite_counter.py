"""The sqlite Counter backend at the SPI, on a real database file: both modes,
replays of adds and clears, overflow leaving everything unchanged (with and
without ``RETURNING``), concurrent adds, forgetting old tokens, two real
processes adding to one counter with replays racing across them, and an
end-to-end check through ``prism.open``."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

import prism
from prism import capabilities
from prism.config import CounterSettings, NamespaceConfig
from prism.models import now_micros
from prism.plugins import load_plugins
from prism.spi import COUNTER_MAX, COUNTER_MIN, CounterBackend, CounterOverflow, CounterToken
from prism_sqlite import SqliteSettings
from prism_sqlite.counter import COUNTER, HAS_RETURNING, KEEP_WINDOWS, SqliteCounter

T = TypeVar("T")

WINDOW = timedelta(minutes=1)


def tok(nonce: str, age: timedelta = timedelta(0)) -> CounterToken:
    return CounterToken(now_micros() - int(age.total_seconds() * 1e6), nonce)


def with_backend(path: Path, body: Callable[[SqliteCounter], Awaitable[T]], *, returning: bool = True) -> T:
    async def main() -> T:
        backend = SqliteCounter("local", SqliteSettings(path=path))
        backend.returning = returning and HAS_RETURNING
        await backend.start()
        try:
            exact = CounterSettings(mode="exact", token_window=WINDOW)
            await backend.provision("exact", NamespaceConfig(abstraction="counter", counter=exact))
            await backend.provision("best", NamespaceConfig(abstraction="counter"))
            return await body(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def token_rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM counter_tokens").fetchone()
        return int(count)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "c.db"


@pytest.fixture(params=[True, False], ids=["returning", "read-back"])
def returning(request: pytest.FixtureRequest) -> bool:
    value = bool(request.param)
    if value and not HAS_RETURNING:
        pytest.skip(f"SQLite {sqlite3.sqlite_version} has no RETURNING")
    return value


def test_registered_with_both_modes_and_the_shared_settings() -> None:
    registry = load_plugins(disabled=()).registry
    assert registry.counter["sqlite"] is COUNTER
    assert COUNTER.settings_type is registry.keyvalue["sqlite"].settings_type is SqliteSettings
    assert COUNTER.capabilities == {capabilities.COUNTER_BEST_EFFORT, capabilities.COUNTER_EXACT}
    assert COUNTER.traits(SqliteSettings(path=Path("x.db"))).durability == "durable"
    assert COUNTER.traits(SqliteSettings(path=Path(":memory:"))).durability == "ephemeral"
    assert isinstance(SqliteCounter("x", SqliteSettings()), CounterBackend)


def test_best_effort_adds_gets_and_clears_and_survives_reopening(db_path: Path, returning: bool) -> None:
    async def first(c: SqliteCounter) -> None:
        assert await c.get("best", "views") == 0
        assert await c.add("best", "views", 5, None) == 5
        assert await c.add("best", "views", -7, None) == -2
        assert await c.add("best", "other", 1, None) == 1
        assert await c.get("exact", "views") == 0
        await c.clear("best", "other", None)
        assert await c.get("best", "other") == 0

    async def second(c: SqliteCounter) -> None:
        assert await c.get("best", "views") == -2
        assert await c.get("best", "other") == 0
        assert await c.add("best", "other", 3, None) == 3

    with_backend(db_path, first, returning=returning)
    with_backend(db_path, second, returning=returning)
    assert token_rows(db_path) == 0


def test_exact_replays_change_nothing(db_path: Path, returning: bool) -> None:
    async def body(c: SqliteCounter) -> None:
        t1, t2, clear1 = tok("1"), tok("2"), tok("c")
        assert await c.add("exact", "n", 10, t1) == 10
        assert await c.add("exact", "n", 10, t1) == 10
        assert await c.add("exact", "n", 5, t2) == 15
        assert await c.add("exact", "n", 999, t1) == 15
        await c.clear("exact", "n", clear1)
        assert await c.get("exact", "n") == 0
        assert await c.add("exact", "n", 3, tok("3")) == 3
        await c.clear("exact", "n", clear1)
        assert await c.add("exact", "n", 10, t1) == 3
        assert await c.get("exact", "n") == 3
        assert await c.add("exact", "m", 4, t1) == 4

    with_backend(db_path, body, returning=returning)


@pytest.mark.parametrize("namespace", ["best", "exact"])
def test_overflow_changes_nothing(db_path: Path, returning: bool, namespace: str) -> None:
    def token(nonce: str) -> CounterToken | None:
        return tok(nonce) if namespace == "exact" else None

    async def body(c: SqliteCounter) -> None:
        assert await c.add(namespace, "hi", COUNTER_MAX - 1, token("a")) == COUNTER_MAX - 1
        t = token("b")
        with pytest.raises(CounterOverflow, match=rf"counter 'hi' in namespace '{namespace}'"):
            await c.add(namespace, "hi", 2, t)
        assert await c.get(namespace, "hi") == COUNTER_MAX - 1
        # The refused add's token was rolled back with it: the same token applies now.
        assert await c.add(namespace, "hi", 1, t) == COUNTER_MAX
        with pytest.raises(CounterOverflow):
            await c.add(namespace, "hi", COUNTER_MAX, token("c"))
        # A first add that is itself out of range.
        with pytest.raises(CounterOverflow):
            await c.add(namespace, "new", COUNTER_MAX + 1, token("d"))
        assert await c.get(namespace, "new") == 0
        assert await c.add(namespace, "lo", COUNTER_MIN, token("e")) == COUNTER_MIN
        with pytest.raises(CounterOverflow):
            await c.add(namespace, "lo", -1, token("f"))
        assert await c.get(namespace, "lo") == COUNTER_MIN
        assert await c.add(namespace, "lo", COUNTER_MAX, token("g")) == -1
        # An applied token replayed with an overflowing delta is still a replay.
        if namespace == "exact":
            assert await c.add(namespace, "hi", COUNTER_MAX, t) == COUNTER_MAX

    with_backend(db_path, body, returning=returning)
    if namespace == "exact":
        # a, b, e, g: the refused adds left no token behind.
        assert token_rows(db_path) == 4


@pytest.mark.parametrize("namespace", ["best", "exact"])
def test_concurrent_adds_sum_up(db_path: Path, namespace: str) -> None:
    async def body(c: SqliteCounter) -> None:
        tokens = [tok(f"n{i}") if namespace == "exact" else None for i in range(200)]
        calls = [c.add(namespace, "n", i % 7 - 2, t) for i, t in enumerate(tokens)]
        if namespace == "exact":
            calls += [c.add(namespace, "n", i % 7 - 2, tokens[i]) for i in range(0, 200, 3)]
        random.Random(3).shuffle(calls)
        await asyncio.gather(*calls)
        assert await c.get(namespace, "n") == sum(i % 7 - 2 for i in range(200))

    with_backend(db_path, body)


def test_old_tokens_are_forgotten_so_the_table_stays_bounded(db_path: Path) -> None:
    stale = WINDOW * KEEP_WINDOWS + timedelta(seconds=10)

    async def body(c: SqliteCounter) -> None:
        recent = tok("recent", age=WINDOW * KEEP_WINDOWS - timedelta(seconds=10))
        assert await c.add("exact", "n", 1, recent) == 1
        assert await c.add("exact", "n", 1, recent) == 1
        # Older than what is kept: the core would refuse it; the backend has
        # forgotten it by the time it is replayed, so it counts again.
        old = tok("old", age=stale)
        assert await c.add("exact", "n", 1, old) == 2
        assert await c.add("exact", "n", 1, old) == 3
        # Counters no longer used: their tokens go in the namespace-wide sweep,
        # which runs at most once per window in this process, and has just run.
        for i in range(20):
            await c.add("exact", f"idle{i}", 1, tok(f"t{i}", age=stale))
        assert token_rows(db_path) == 22
        c._swept_at.clear()  # as if a window had passed
        await c.clear("exact", "n", tok("fresh"))

    with_backend(db_path, body)
    # Left: "recent" and "fresh".
    assert token_rows(db_path) == 2


# Each child prints "ready", then waits for "go" on stdin, so both start at
# once on a signal rather than after a sleep. Every child adds every token of
# the plan (its own share in order, the others' as replays racing the owner).
ADDER = r"""
import asyncio, json, random, sys
from datetime import timedelta
from prism.config import CounterSettings, NamespaceConfig
from prism.spi import CounterToken
from prism_sqlite import SqliteSettings
from prism_sqlite.counter import SqliteCounter

async def main() -> None:
    path, plan, seed = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    rng.shuffle(plan)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(3)
    backend = SqliteCounter("adder", SqliteSettings(path=path, busy_timeout=timedelta(seconds=60)))
    await backend.start()
    await backend.provision("exact", NamespaceConfig(abstraction="counter", counter=CounterSettings(mode="exact")))
    results = []
    for delta, time_us, nonce in plan:
        results.append(await backend.add("exact", "shared", delta, CounterToken(time_us, nonce)))
    await backend.close()
    print(json.dumps(results), flush=True)

asyncio.run(main())
"""


def test_two_processes_adding_with_replays_count_each_token_once(db_path: Path) -> None:
    rng = random.Random(5)
    now = now_micros()
    plan: list[tuple[int, int, str]] = [(rng.randint(-50, 100), now + i, f"n{i}") for i in range(300)]
    # Both processes carry every token; each shuffles differently, so each
    # token's first use and its replay race across the processes.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ADDER, str(db_path), json.dumps(plan), str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs: list[list[int]] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    expected = sum(delta for delta, _, _ in plan)
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT value FROM counter_values WHERE counter = 'shared'").fetchone() == (
            expected,
        )
        assert conn.execute("SELECT count(*) FROM counter_tokens").fetchone() == (len(plan),)
    # The last add to commit saw the final value.
    assert expected in (outputs[0][-1], outputs[1][-1])


def test_end_to_end_through_prism_open(db_path: Path) -> None:
    config: dict[str, Any] = {
        "backends": {"local": {"plugin": "sqlite", "path": str(db_path)}},
        "namespaces": {
            "views": {"abstraction": "counter"},
            "exact": {"abstraction": "counter", "counter": {"mode": "exact"}},
        },
    }
    with prism.open(config) as db:
        views = db.counter("views")
        views.add("home", 2)
        views.add("home")
        assert views.get("home") == 3
        exact = db.counter("exact")
        token = prism.IdempotencyToken.new()
        exact.add("n", 5, token=token)
        exact.add("n", 5, token=token)
        exact.add("n", 1)
        assert exact.get("n") == 6
        clear = prism.IdempotencyToken.new()
        exact.clear("n", token=clear)
        exact.add("n", 2)
        exact.clear("n", token=clear)
        assert exact.get("n") == 2
    with prism.open(config) as db:
        assert db.counter("views").get("home") == 3
        assert db.counter("exact").get("n") == 2
