"""The redis Counter backend at the SPI, on a real Redis server.

best_effort (INCRBY) and exact (a Lua script with a token set): values,
replays of adds and clears, concurrent adders on several connections, a clear
racing with adds, overflow at both ends, token pruning. Every test uses its
own key prefix, whose keys are deleted afterwards; waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

import prism
from prism.config import CounterSettings, NamespaceConfig
from prism.errors import BackendError, InvalidArgument, LimitExceeded
from prism.models import now_micros
from prism.plugins.registry import BackendRegistry
from prism.spi import COUNTER_MAX, COUNTER_MIN, CounterBackend, CounterOverflow, CounterToken
from prism_redis.counter import COUNTER, RedisCounter, delta_parts
from prism_redis.keyvalue import RedisSettings
from prism_redis.plugin import prism_register_counter

NS = "counts"


def token() -> CounterToken:
    return CounterToken(now_micros(), os.urandom(8).hex())


@asynccontextmanager
async def opened(
    url: str, prefix: str, window: timedelta = timedelta(minutes=10), **settings: Any
) -> AsyncIterator[RedisCounter]:
    backend = RedisCounter("test", RedisSettings(url=url, key_prefix=prefix, **settings))
    await backend.start()
    try:
        config = NamespaceConfig(
            abstraction="counter", counter=CounterSettings(mode="exact", token_window=window)
        )
        await backend.provision(NS, config)
        yield backend
    finally:
        await backend.close()


def run_with(url: str, body: Callable[[RedisCounter], Awaitable[None]], **settings: Any) -> None:
    prefix = f"prism-test-{uuid.uuid4().hex[:12]}"

    async def main() -> None:
        try:
            async with opened(url, prefix, **settings) as backend:
                await body(backend)
        finally:
            client = aioredis.Redis.from_url(url)
            try:
                keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()

    asyncio.run(main())


def test_backend_satisfies_the_spi_and_is_registered() -> None:
    assert isinstance(RedisCounter("x", RedisSettings()), CounterBackend)
    assert {"counter.best_effort", "counter.exact"} == COUNTER.capabilities
    assert COUNTER.settings_type is RedisSettings
    assert COUNTER.traits(RedisSettings()).durability == "ephemeral"
    assert COUNTER.traits(RedisSettings(durable=True)).durability == "durable"
    registry = BackendRegistry()
    prism_register_counter(registry)
    assert registry.counter == {"redis": COUNTER}


@pytest.mark.parametrize("exact", [False, True])
def test_add_get_clear(redis_url: str, exact: bool) -> None:
    def tok() -> CounterToken | None:
        return token() if exact else None

    async def body(b: RedisCounter) -> None:
        assert await b.get(NS, "c") == 0
        assert await b.add(NS, "c", 5, tok()) == 5
        assert await b.add(NS, "c", -7, tok()) == -2
        assert await b.add(NS, "c", 0, tok()) == -2
        assert await b.get(NS, "c") == -2
        assert await b.get(NS, "other") == 0
        await b.clear(NS, "c", tok())
        assert await b.get(NS, "c") == 0
        await b.clear(NS, "never", tok())
        assert await b.get(NS, "never") == 0
        # Values beyond 2**53 stay exact (a Lua number would round them).
        assert await b.add(NS, "big", 2**53 + 1, tok()) == 2**53 + 1
        assert await b.add(NS, "big", 2, tok()) == 2**53 + 3
        assert await b.get(NS, "big") == 2**53 + 3
        # Names with braces keep their two keys in one slot and apart from others.
        assert await b.add(NS, "a}b{", 1, tok()) == 1
        assert await b.add(NS, "a", 1, tok()) == 1

    run_with(redis_url, body)


def test_exact_replays_never_count_twice(redis_url: str) -> None:
    async def body(b: RedisCounter) -> None:
        first = token()
        assert await b.add(NS, "c", 10, first) == 10
        assert await b.add(NS, "c", 10, first) == 10
        assert await b.add(NS, "c", 1, token()) == 11
        # A replay returns the current value, and changes nothing.
        assert await b.add(NS, "c", 10, first) == 11
        # The same token on another counter is another operation.
        assert await b.add(NS, "d", 3, first) == 3

        clear = token()
        await b.clear(NS, "c", clear)
        assert await b.get(NS, "c") == 0
        assert await b.add(NS, "c", 4, token()) == 4
        # A replayed clear keeps the adds made since the first one.
        await b.clear(NS, "c", clear)
        assert await b.get(NS, "c") == 4
        # An add from before the clear, replayed after it, is still recognised.
        assert await b.add(NS, "c", 10, first) == 4

        # Replays racing their first call: each token counts once.
        tokens = [token() for _ in range(30)]
        await asyncio.gather(*(b.add(NS, "r", 1, t) for t in tokens for _ in range(3)))
        assert await b.get(NS, "r") == 30

    run_with(redis_url, body)


def test_best_effort_counts_each_call(redis_url: str) -> None:
    async def body(b: RedisCounter) -> None:
        await asyncio.gather(*(b.add(NS, "c", 1, None) for _ in range(50)))
        assert await b.get(NS, "c") == 50

    run_with(redis_url, body)


@pytest.mark.parametrize("exact", [False, True])
def test_overflow_changes_nothing(redis_url: str, exact: bool) -> None:
    def tok() -> CounterToken | None:
        return token() if exact else None

    async def body(b: RedisCounter) -> None:
        assert await b.add(NS, "hi", COUNTER_MAX, tok()) == COUNTER_MAX
        with pytest.raises(CounterOverflow):
            await b.add(NS, "hi", 1, tok())
        assert await b.get(NS, "hi") == COUNTER_MAX
        assert await b.add(NS, "lo", COUNTER_MIN, tok()) == COUNTER_MIN
        with pytest.raises(CounterOverflow):
            await b.add(NS, "lo", -1, tok())
        assert await b.get(NS, "lo") == COUNTER_MIN
        # Deltas beyond 64 bits: applied when the result fits, refused otherwise.
        assert await b.add(NS, "lo", COUNTER_MAX - COUNTER_MIN, tok()) == COUNTER_MAX
        with pytest.raises(CounterOverflow):
            await b.add(NS, "lo", 2**63, tok())  # the first part fits, the second not
        assert await b.get(NS, "lo") == COUNTER_MAX
        assert await b.add(NS, "lo", -(2**63) - 5, tok()) == -6
        with pytest.raises(CounterOverflow):
            await b.add(NS, "new", 2**64, tok())
        assert await b.get(NS, "new") == 0
        with pytest.raises(CounterOverflow):
            await b.add(NS, "new", 2**63, tok())
        assert await b.get(NS, "new") == 0

    run_with(redis_url, body)


def test_an_overflowing_exact_add_records_no_token(redis_url: str) -> None:
    async def body(b: RedisCounter) -> None:
        await b.add(NS, "c", COUNTER_MAX, token())
        t = token()
        with pytest.raises(CounterOverflow):
            await b.add(NS, "c", 1, t)
        await b.add(NS, "c", -1, token())
        # Not applied the first time, so the retry with the same token counts.
        assert await b.add(NS, "c", 1, t) == COUNTER_MAX

    run_with(redis_url, body)


def test_delta_parts_sum_up_and_never_overflow_early() -> None:
    for delta in [
        0,
        1,
        -1,
        COUNTER_MAX,
        COUNTER_MIN,
        COUNTER_MAX + 1,
        COUNTER_MIN - 1,
        2**64 - 1,
        -(2**64) + 1,
    ]:
        parts = delta_parts(delta)
        assert sum(parts) == delta
        assert all(COUNTER_MIN <= p <= COUNTER_MAX for p in parts)
        # From every value at which the whole add fits, no prefix leaves the range.
        for value in [COUNTER_MIN, -(2**62), -1, 0, 1, 2**62, COUNTER_MAX]:
            if not COUNTER_MIN <= value + delta <= COUNTER_MAX:
                continue
            running = value
            for p in parts:
                running += p
                assert COUNTER_MIN <= running <= COUNTER_MAX, (delta, value, parts)
    with pytest.raises(CounterOverflow):
        delta_parts(2**64)


@pytest.mark.parametrize("exact", [False, True])
def test_concurrent_adds_on_several_connections_sum_up(redis_url: str, exact: bool) -> None:
    prefix = f"prism-test-{uuid.uuid4().hex[:12]}"

    async def main() -> None:
        async with AsyncExitStack() as stack:
            backends = [await stack.enter_async_context(opened(redis_url, prefix)) for _ in range(4)]

            async def adder(b: RedisCounter, k: int) -> None:
                for i in range(50):
                    await b.add(NS, "c", k * 1000 + i, token() if exact else None)

            await asyncio.gather(*(adder(b, k) for k, b in enumerate(backends) for _ in range(2)))
            want = 2 * sum(k * 1000 + i for k in range(4) for i in range(50))
            assert [await b.get(NS, "c") for b in backends] == [want] * 4

    try:
        asyncio.run(main())
    finally:
        asyncio.run(_delete_prefix(redis_url, prefix))


async def _delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.parametrize("exact", [False, True])
def test_a_clear_racing_with_adds_erases_exactly_the_earlier_ones(redis_url: str, exact: bool) -> None:
    """Adds of distinct powers of two on four connections while a fifth clears:
    the final value must be the sum of a subset of them, containing none that
    finished before the clear started and all that started after it finished."""
    prefix = f"prism-test-{uuid.uuid4().hex[:12]}"
    count = 60

    async def main() -> None:
        async with AsyncExitStack() as stack:
            backends = [await stack.enter_async_context(opened(redis_url, prefix)) for _ in range(5)]
            spans: dict[int, tuple[float, float]] = {}
            tokens = {i: token() for i in range(count)}
            clear_span: list[float] = []

            async def adder(b: RedisCounter, bits: range) -> None:
                for i in bits:
                    start = time.monotonic()
                    await b.add(NS, "c", 1 << i, tokens[i] if exact else None)
                    spans[i] = (start, time.monotonic())

            async def clearer(b: RedisCounter) -> None:
                # Clear once about half of the adds are done (polled, with a deadline).
                deadline = time.monotonic() + 30
                while len(spans) < count // 2:
                    assert time.monotonic() < deadline, "the adds did not progress"
                    await asyncio.sleep(0)
                start = time.monotonic()
                await b.clear(NS, "c", token() if exact else None)
                clear_span.extend([start, time.monotonic()])

            quarter = count // 4
            await asyncio.gather(
                clearer(backends[4]),
                *(adder(backends[k], range(k * quarter, (k + 1) * quarter)) for k in range(4)),
            )
            value = await backends[0].get(NS, "c")
            assert 0 <= value < 1 << count
            kept = {i for i in range(count) if value >> i & 1}
            clear_start, clear_end = clear_span
            before = {i for i, (_, end) in spans.items() if end < clear_start}
            after = {i for i, (start, _) in spans.items() if start > clear_end}
            assert before, "no add finished before the clear: the test proves nothing"
            assert not kept & before
            assert after <= kept
            if exact:
                # Replaying every add changes nothing, whichever side of the clear it fell on.
                for i in range(count):
                    await backends[i % 4].add(NS, "c", 1 << i, tokens[i])
                assert await backends[0].get(NS, "c") == value

    try:
        asyncio.run(main())
    finally:
        asyncio.run(_delete_prefix(redis_url, prefix))


def test_a_token_older_than_the_window_is_refused_and_old_tokens_are_pruned(redis_url: str) -> None:
    async def body(b: RedisCounter) -> None:
        client = b._server.client
        _, tokens_key = b.counter_keys(NS, "c")
        with pytest.raises(InvalidArgument, match=r"counter 'c' in namespace 'counts'.*token_window"):
            await b.add(NS, "c", 1, CounterToken(now_micros() - 3_000_000, "stale"))
        assert await b.get(NS, "c") == 0
        with pytest.raises(InvalidArgument, match="token_window"):
            await b.clear(NS, "c", CounterToken(now_micros() - 3_000_000, "stale"))

        old = token()
        await b.add(NS, "c", 1, old)
        member = f"{old.generation_time_us}:{old.nonce}".encode()
        assert await client.zscore(tokens_key, member) is not None
        # The set expires by itself after the latest token's window.
        assert await client.pexpiretime(tokens_key.decode()) == -(
            -(old.generation_time_us + 1_000_000) // 1000
        )
        # Once the window has passed, the next operation drops the old token.
        deadline = time.monotonic() + 20
        while await client.zscore(tokens_key, member) is not None:
            assert time.monotonic() < deadline, "the old token was never pruned"
            await b.add(NS, "c", 1, token())
            await asyncio.sleep(0.05)
        assert await client.zcard(tokens_key) >= 1

    run_with(redis_url, body, window=timedelta(seconds=1), expiry_grace=timedelta(0))


def test_failures_name_the_counter_and_the_server(redis_url: str) -> None:
    async def body(b: RedisCounter) -> None:
        value_key, _ = b.counter_keys(NS, "c")
        await b._server.client.set(value_key, b"not a number")
        with pytest.raises(BackendError, match=r"add to counter counts/c failed"):
            await b.add(NS, "c", 1, None)
        with pytest.raises(BackendError, match=r"add to counter counts/c failed"):
            await b.add(NS, "c", 1, token())

    run_with(redis_url, body)


def test_closed_backend_refuses_calls(redis_url: str) -> None:
    prefix = f"prism-test-{uuid.uuid4().hex[:12]}"

    async def main() -> None:
        async with opened(redis_url, prefix) as b:
            pass
        with pytest.raises(BackendError, match="not started, or closed"):
            await b.add(NS, "c", 1, token())

    asyncio.run(main())


def test_end_to_end_through_the_public_api(redis_url: str, redis_prefix: str) -> None:
    config = {
        "backends": {"r": {"plugin": "redis", "url": redis_url, "key_prefix": redis_prefix}},
        "namespaces": {
            "exact": {"abstraction": "counter", "counter": {"mode": "exact"}},
            "rough": {"abstraction": "counter"},
        },
    }
    with prism.open(config) as db:
        c = db.counter("exact")
        t = prism.IdempotencyToken.new()
        assert c.add("views", 5, token=t) == 5
        assert c.add("views", 5, token=t) == 5  # a replay
        assert c.add("views", 2) == 7  # the core makes a token
        clear = prism.IdempotencyToken.new()
        c.clear("views", token=clear)
        assert c.add("views", 1) == 1
        c.clear("views", token=clear)  # a replayed clear keeps the later add
        assert c.get("views") == 1
        assert c.add("views", 5, token=t) == 1  # an add from before the clear, replayed
        c.add("top", COUNTER_MAX)
        with pytest.raises(LimitExceeded):
            c.add("top", 1)
        assert c.get("top") == COUNTER_MAX

        r = db.counter("rough")
        assert r.add("hits") == 1
        assert r.add("hits", 41) == 42
        r.clear("hits")
        assert r.get("hits") == 0
