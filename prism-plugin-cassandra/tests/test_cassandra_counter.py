"""The cassandra Counter backend through its SPI, on a real node: best-effort
epochs, exact replays of adds and clears, concurrent adds, a clear racing adds,
and the rollup of the exact mode's log."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from cassandra_support import settings_for

from prism.config import CounterSettings, NamespaceConfig
from prism.spi import COUNTER_MAX, COUNTER_MIN, CounterOverflow, CounterToken
from prism_cassandra.counter import (
    KIND_ADD,
    KIND_CLEAR,
    LOG_TABLE,
    CassandraCounter,
    Entry,
    decode_rollup,
    encode_rollup,
    fold,
)
from prism_cassandra.keyvalue import now_micros


def ns_config(mode: str, window: timedelta = timedelta(minutes=10)) -> NamespaceConfig:
    return NamespaceConfig(
        abstraction="counter",
        counter=CounterSettings(mode=mode, token_window=window),  # type: ignore[arg-type]
    )


def unique_ns(label: str) -> str:
    return f"c_{label}_{os.urandom(4).hex()}"


def token(offset_us: int = 0) -> CounterToken:
    return CounterToken(now_micros() + offset_us, os.urandom(8).hex())


def run(contact: str, keyspace: str, body: Callable[[CassandraCounter], Awaitable[None]]) -> None:
    async def main() -> None:
        backend = CassandraCounter("test", settings_for(contact, keyspace))
        await backend.start()
        try:
            await body(backend)
        finally:
            await backend.close()

    asyncio.run(main())


# -- pure Python ---------------------------------------------------------------------------


def test_rollup_cells_order_as_their_cut() -> None:
    cuts = [(5, "a"), (5, "a\x00"), (5, "b"), (6, ""), (2**62, "z")]
    cells = [
        encode_rollup(cut, value)
        for cut, value in zip(cuts, (9, -3, 0, COUNTER_MAX, COUNTER_MIN), strict=True)
    ]
    assert cells == sorted(cells)
    assert [decode_rollup(c) for c in cells] == list(
        zip(cuts, (9, -3, 0, COUNTER_MAX, COUNTER_MIN), strict=True)
    )


def test_fold_resets_at_a_clear() -> None:
    rows = [Entry((1, "a"), KIND_ADD, 5), Entry((2, "b"), KIND_CLEAR, 0), Entry((3, "c"), KIND_ADD, 2)]
    assert fold(100, rows) == 2
    assert fold(100, rows[:1]) == 105
    assert fold(100, rows[:2]) == 0


# -- best effort ---------------------------------------------------------------------------


def test_best_effort_adds_gets_and_clears(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("be")

    async def body(backend: CassandraCounter) -> None:
        await backend.provision(ns, ns_config("best_effort"))
        assert await backend.get(ns, "c") == 0
        assert await backend.add(ns, "c", 5, None) is None
        await backend.add(ns, "c", -2, None)
        await backend.add(ns, "other", 7, None)
        assert await backend.get(ns, "c") == 3
        await backend.clear(ns, "c", None)
        assert await backend.get(ns, "c") == 0
        await backend.clear(ns, "c", None)
        await backend.add(ns, "c", 4, None)
        assert await backend.get(ns, "c") == 4
        assert await backend.get(ns, "other") == 7
        # Old epochs are deleted: one row left per counter.
        rows = await backend._run(
            f'SELECT epoch FROM "{module_keyspace}".prism_counter_values WHERE namespace = ? AND counter = ?',
            (ns, "c"),
            "test",
        )
        assert len(rows) == 1

    run(cassandra_contact, module_keyspace, body)


def test_best_effort_concurrent_adds_all_count(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("beconc")

    async def body(backend: CassandraCounter) -> None:
        await backend.provision(ns, ns_config("best_effort"))
        await asyncio.gather(*(backend.add(ns, "c", i, None) for i in range(1, 201)))
        assert await backend.get(ns, "c") == sum(range(1, 201))

    run(cassandra_contact, module_keyspace, body)


def test_best_effort_clear_racing_adds_keeps_whole_adds(cassandra_contact: str, module_keyspace: str) -> None:
    """Deltas are distinct powers of two, so the value says exactly which adds
    survived: it must be a sum of whole adds, and every add that finished
    before the clear started is gone, every add started after it ended kept."""
    ns = unique_ns("berace")

    async def body(backend: CassandraCounter) -> None:
        await backend.provision(ns, ns_config("best_effort"))
        before = [2**i for i in range(0, 10)]
        racing = [2**i for i in range(10, 40)]
        after = [2**i for i in range(40, 50)]
        await asyncio.gather(*(backend.add(ns, "c", d, None) for d in before))
        await asyncio.gather(backend.clear(ns, "c", None), *(backend.add(ns, "c", d, None) for d in racing))
        await asyncio.gather(*(backend.add(ns, "c", d, None) for d in after))
        value = await backend.get(ns, "c")
        assert value >= 0
        assert value & sum(before) == 0
        assert value & sum(after) == sum(after)
        assert value & ~(sum(before) | sum(racing) | sum(after)) == 0

    run(cassandra_contact, module_keyspace, body)


def test_best_effort_refuses_an_add_past_64_bits(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("beover")

    async def body(backend: CassandraCounter) -> None:
        await backend.provision(ns, ns_config("best_effort"))
        await backend.add(ns, "c", COUNTER_MAX - 1, None)
        with pytest.raises(CounterOverflow, match="'c'"):
            await backend.add(ns, "c", 2, None)
        assert await backend.get(ns, "c") == COUNTER_MAX - 1
        await backend.add(ns, "c", 1, None)
        assert await backend.get(ns, "c") == COUNTER_MAX

    run(cassandra_contact, module_keyspace, body)


# -- exact ---------------------------------------------------------------------------------


def test_exact_replays_of_adds_and_clears_count_once(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("ex")

    async def body(backend: CassandraCounter) -> None:
        await backend.provision(ns, ns_config("exact"))
        assert await backend.get(ns, "c") == 0
        t1, t2 = token(), token(1)
        await backend.add(ns, "c", 5, t1)
        await backend.add(ns, "c", 5, t1)
        await asyncio.gather(*(backend.add(ns, "c", 3, t2) for _ in range(10)))  # replays racing
        assert await backend.get(ns, "c") == 8
        clear = token(2)
        await backend.clear(ns, "c", clear)
        assert await backend.get(ns, "c") == 0
        await backend.add(ns, "c", 4, token(3))
        # The clear replayed after an add: the add is kept.
        await backend.clear(ns, "c", clear)
        await backend.add(ns, "c", 5, t1)
        assert await backend.get(ns, "c") == 4
        # A late add whose token is older than the clear's is erased by it.
        await backend.add(ns, "c", 100, token(-1_000_000))
        assert await backend.get(ns, "c") == 4
        assert await backend.get(ns, "other") == 0

    run(cassandra_contact, module_keyspace, body)


def test_exact_concurrent_adds_all_count(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("exconc")

    async def body(backend: CassandraCounter) -> None:
        await backend.provision(ns, ns_config("exact"))
        tokens = [token(i) for i in range(150)]
        # Each add sent twice, all at once.
        await asyncio.gather(
            *(backend.add(ns, "c", i + 1, t) for _ in range(2) for i, t in enumerate(tokens))
        )
        assert await backend.get(ns, "c") == sum(range(1, 151))

    run(cassandra_contact, module_keyspace, body)


def test_exact_clear_racing_adds_splits_them_by_token(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("exrace")

    async def body(backend: CassandraCounter) -> None:
        await backend.provision(ns, ns_config("exact"))
        base = now_micros()
        adds = [(CounterToken(base + 10 * i, f"n{i:02d}"), 2**i) for i in range(40)]
        clear = CounterToken(base + 10 * 20 + 5, "clear")
        await asyncio.gather(backend.clear(ns, "c", clear), *(backend.add(ns, "c", d, t) for t, d in adds))
        expected = sum(d for t, d in adds if t > clear)
        assert await backend.get(ns, "c") == expected
        assert expected == sum(2**i for i in range(21, 40))

    run(cassandra_contact, module_keyspace, body)


def test_exact_refuses_an_add_past_64_bits(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("exover")

    async def body(backend: CassandraCounter) -> None:
        await backend.provision(ns, ns_config("exact"))
        await backend.add(ns, "c", COUNTER_MIN + 1, token())
        with pytest.raises(CounterOverflow, match="'c'"):
            await backend.add(ns, "c", -2, token(1))
        assert await backend.get(ns, "c") == COUNTER_MIN + 1

    run(cassandra_contact, module_keyspace, body)


async def log_rows(backend: CassandraCounter, keyspace: str, ns: str) -> tuple[int, bytes | None]:
    """The number of clustering rows of the counter's log, and its rollup cell."""
    rows = await backend._run(
        f'SELECT rollup, token_time_us FROM "{keyspace}".{LOG_TABLE} WHERE namespace = ? AND counter = ?',
        (ns, "c"),
        "test",
    )
    return sum(1 for r in rows if r[1] is not None), (bytes(rows[0][0]) if rows and rows[0][0] else None)


def test_exact_rollup_happens_and_keeps_the_value(cassandra_contact: str, module_keyspace: str) -> None:
    ns = unique_ns("roll")
    window = timedelta(seconds=1)

    async def body(backend: CassandraCounter) -> None:
        backend.rollup_min_rows = 1
        await backend.provision(ns, ns_config("exact", window))
        started = time.monotonic()
        first = [token(i) for i in range(6)]
        for i, t in enumerate(first):
            await backend.add(ns, "c", 2**i, t)
        await backend.clear(ns, "c", token(10))
        later = [token(20 + i) for i in range(6)]
        for i, t in enumerate(later):
            await backend.add(ns, "c", 2 ** (i + 10), t)
        expected = sum(2 ** (i + 10) for i in range(6))
        assert await backend.get(ns, "c") == expected
        count, rollup = await log_rows(backend, module_keyspace, ns)
        if time.monotonic() - started < window.total_seconds():
            # Nothing is two windows old yet: nothing may be rolled up.
            assert (count, rollup) == (13, None)
        # Once the rows are two windows old they are final: a get rolls them up.
        deadline = time.monotonic() + 60
        while True:
            assert await backend.get(ns, "c") == expected
            count, rollup = await log_rows(backend, module_keyspace, ns)
            if rollup is not None and count == 0:
                break
            assert time.monotonic() < deadline, f"not rolled up within 60s: {count} rows, rollup {rollup!r}"
            await asyncio.sleep(0.2)
        cut, value = decode_rollup(rollup)
        assert (cut, value) == ((later[-1].generation_time_us, later[-1].nonce), expected)
        # Replays of rolled-up tokens change nothing; new adds count on top.
        for i, t in enumerate(first):
            await backend.add(ns, "c", 2**i, t)
        await backend.clear(ns, "c", CounterToken(first[0].generation_time_us, "x"))
        await backend.add(ns, "c", 1, token())
        assert await backend.get(ns, "c") == expected + 1

    run(cassandra_contact, module_keyspace, body)


def test_exact_rollups_with_different_cuts_agree(cassandra_contact: str, module_keyspace: str) -> None:
    """Two rollups computed from one read, with different cut-offs, applied in
    the 'wrong' order (the later cut first): the later cut wins whole, the
    value never changes, and a reader holding the pre-rollup read agrees."""
    ns = unique_ns("cuts")

    async def body(backend: CassandraCounter) -> None:
        backend.rollup_min_rows = 10**6  # only the explicit rollups below
        await backend.provision(ns, ns_config("exact"))
        old = now_micros() - 3600 * 1_000_000  # far past two windows: final
        ops = [Entry((old + i, f"n{i}"), KIND_CLEAR if i == 4 else KIND_ADD, 2**i) for i in range(10)]
        for e in ops:
            t = CounterToken(*e.position)
            await (backend.clear(ns, "c", t) if e.kind == KIND_CLEAR else backend.add(ns, "c", e.delta, t))
        expected = sum(2**i for i in range(5, 10))
        assert await backend.get(ns, "c") == expected
        state = await backend._read_log(ns, "c")
        assert len(state.entries) == 10
        await backend.roll_up(ns, "c", state, state.entries[:7])
        assert await backend.get(ns, "c") == expected
        await backend.roll_up(ns, "c", state, state.entries[:3])
        assert await backend.get(ns, "c") == expected
        count, rollup = await log_rows(backend, module_keyspace, ns)
        assert rollup is not None
        assert decode_rollup(rollup) == (ops[6].position, 2**5 + 2**6)
        assert count == 3
        # A rollup reading after the first continues from its cut.
        after = await backend._read_log(ns, "c")
        assert after.cut == ops[6].position
        assert after.value == state.value == expected
        await backend.roll_up(ns, "c", after, after.entries)
        count, rollup = await log_rows(backend, module_keyspace, ns)
        assert count == 0
        assert rollup is not None
        assert decode_rollup(rollup) == (ops[9].position, expected)
        assert await backend.get(ns, "c") == expected

    run(cassandra_contact, module_keyspace, body)


# -- end to end, through the public API ----------------------------------------------------


@pytest.mark.parametrize("mode", ["best_effort", "exact"])
def test_end_to_end_through_prism_open(cassandra_contact: str, module_keyspace: str, mode: str) -> None:
    from cassandra_support import split_contact

    import prism

    host, port = split_contact(cassandra_contact)
    ns = unique_ns("e2e")
    config = {
        "backends": {
            "cass": {
                "plugin": "cassandra",
                "contact_points": [host],
                "port": port,
                "replication_factor": 1,
                "keyspace": module_keyspace,
            }
        },
        "namespaces": {ns: {"abstraction": "counter", "backend": "cass", "counter": {"mode": mode}}},
    }
    with prism.open(config) as db:
        c = db.counter(ns)
        t = prism.IdempotencyToken.new()
        c.add("hits", 5, token=t)
        c.add("hits", 5, token=t)  # a replay: counts once in exact mode, twice in best_effort
        c.add("hits", -1)
        assert c.get("hits") == (4 if mode == "exact" else 9)
        c.clear("hits")
        assert c.get("hits") == 0
        c.add("hits", 3)
        assert c.get("hits") == 3
