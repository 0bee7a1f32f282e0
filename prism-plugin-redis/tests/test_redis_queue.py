"""The redis Queue backend through the public API, on a real Redis server.

Fan-out, competing consumers (in one process and across two clients),
redelivery after the visibility timeout, release on close, attempt counting,
dead letters, durability, a consumer process killed mid-stream, unknown ids,
and blocking waits that wake on publish and release. Every test uses its own
key prefix (``redis_prefix``), whose keys are deleted afterwards. Time-dependent
checks wait with deadlines (consume's own ``wait``, or polling until a
deadline), never with bare sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
import redis

import prism
from prism.errors import BackendError, InvalidArgument, PlanError, Unsupported
from prism.queue.namespace import DEAD_LETTER_ATTEMPTS, DEAD_LETTER_REASON

T = TypeVar("T")


def make_config(url: str, prefix: str, **backend: Any) -> dict[str, Any]:
    return {
        "backends": {"r": {"plugin": "redis", "url": url, "key_prefix": prefix, **backend}},
        "namespaces": {
            # Short visibility for redelivery tests.
            "fast": {
                "abstraction": "queue",
                "queue": {"visibility_timeout": "300ms", "max_attempts": 3, "max_wait": "20s"},
            },
            "mid": {"abstraction": "queue", "queue": {"visibility_timeout": "2s", "max_wait": "20s"}},
            # Long visibility: anything that comes back early came back on purpose.
            "slow": {"abstraction": "queue", "queue": {"visibility_timeout": "10m", "max_wait": "20s"}},
            "wal": {"abstraction": "queue", "needs": {"durability": "durable"}},
        },
    }


def run(config: dict[str, Any], body: Callable[[prism.AsyncPrism], Awaitable[T]]) -> T:
    async def main() -> T:
        async with prism.open_async(config) as db:
            return await body(db)

    return asyncio.run(main())


def msg(key: str, payload: str, **kw: Any) -> prism.Message:
    return prism.Message(key, payload, **kw)


@pytest.fixture
def config(redis_url: str, redis_prefix: str) -> dict[str, Any]:
    return make_config(redis_url, redis_prefix)


# -- publish, fan-out, competing consumers ---------------------------------------------


def test_messages_round_trip_in_publish_order_as_stream_entries(
    config: dict[str, Any], redis_url: str, redis_prefix: str
) -> None:
    async def body(db: prism.AsyncPrism) -> list[str]:
        q = db.queue("slow")
        ids = await q.publish(
            "orders",
            [
                msg("k1", "one", headers={"trace": b"\x00\xff", "z": b""}),
                prism.Message(b"\x00bin", b"\xff\x00payload"),
                msg("", ""),
            ],
        )
        ids += await q.publish("orders", [msg("", str(i)) for i in range(50)])
        got = await q.consume("orders", "billing", max_messages=100)
        assert [d.id for d in got] == ids
        first, second, third = got[:3]
        assert (first.key, first.payload, first.headers) == (b"k1", b"one", {"trace": b"\x00\xff", "z": b""})
        assert (second.key, second.payload, second.headers) == (b"\x00bin", b"\xff\x00payload", {})
        assert (third.key, third.payload) == (b"", b"")
        assert [d.payload for d in got[3:]] == [str(i).encode() for i in range(50)]
        assert {d.attempt for d in got} == {1}
        await q.ack("orders", "billing", got)
        assert await q.consume("orders", "billing") == []
        return ids

    ids = run(config, body)
    # The ids are the stream's ids: the layout the README documents.
    client = redis.Redis.from_url(redis_url)
    try:
        entries: Any = client.xrange(f"{redis_prefix}:slow:stream:orders")
        assert [e[0].decode() for e in entries] == ids
        assert entries[0][1][b"p"] == b"one"
        groups: Any = client.xinfo_groups(f"{redis_prefix}:slow:stream:orders")
        assert [(g["name"], g["pending"]) for g in groups] == [(b"billing", 0)]
    finally:
        client.close()


def test_every_group_sees_every_message(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", str(i)) for i in range(5)])
        for group in ("a", "b", "c"):
            got = await q.consume("t", group, max_messages=10)
            assert [d.id for d in got] == ids
            await q.ack("t", group, got)
        # A group created later still starts at the beginning of the topic.
        late = await q.consume("t", "late", max_messages=10)
        assert [d.id for d in late] == ids

    run(config, body)


def test_competing_consumers_share_and_never_hold_the_same_message(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", str(i)) for i in range(10)])
        async with q.consumer("t", "g") as one, q.consumer("t", "g") as two:
            a = await one.consume(max_messages=4)
            b = await two.consume(max_messages=10)
            assert len(a) == 4
            assert not {d.id for d in a} & {d.id for d in b}
            assert sorted(d.id for d in a + b) == sorted(ids)
            assert await one.consume() == []  # everything is in flight
            await one.ack(a)
            await two.ack(b)

    run(config, body)


def test_two_clients_consume_concurrently_and_share_the_work(config: dict[str, Any]) -> None:
    """Two separate ``prism.open`` instances (two Redis clients) compete in one group."""
    total = 300
    with prism.open(config) as publisher:
        ids = publisher.queue("slow").publish("jobs", [msg("", str(i)) for i in range(total)])
    seen: list[list[str]] = [[], []]
    errors: list[BaseException] = []
    deadline = time.monotonic() + 60

    def worker(slot: int) -> None:
        try:
            with prism.open(config) as db:
                q = db.queue("slow")
                with q.consumer("jobs", "workers") as consumer:
                    while sum(len(s) for s in seen) < total and time.monotonic() < deadline:
                        got = consumer.consume(max_messages=7, wait=0.5)
                        seen[slot].extend(d.id for d in got)
                        consumer.ack(got)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    everything = seen[0] + seen[1]
    assert len(everything) == len(set(everything)) == total  # each message once
    assert set(everything) == set(ids)
    # Each client's own deliveries come in publish order.
    for mine in seen:
        assert mine == sorted(mine, key=ids.index)


def test_a_large_batch_round_trips(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")  # default max_batch 1000
        ids = await q.publish("bulk", [msg(f"k{i % 7}" if i % 2 else "", f"m{i}") for i in range(1000)])
        assert len(set(ids)) == 1000
        seen: list[str] = []
        while True:
            batch = await q.consume("bulk", "g", max_messages=1000)
            if not batch:
                break
            seen += [d.id for d in batch]
            await q.ack("bulk", "g", batch)
        assert seen == ids

    run(config, body)


def test_nothing_is_lost_while_consumers_come_and_go(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")  # only consumer closes bring work back early
        rng = random.Random(7)
        published: set[str] = set()
        acked: set[str] = set()
        dead: set[str] = set()
        done_publishing = asyncio.Event()

        async def publisher() -> None:
            for round_ in range(20):
                ids = await q.publish("t", [msg(f"k{i % 5}", f"{round_}-{i}") for i in range(15)])
                published.update(ids)
                await asyncio.sleep(0)
            done_publishing.set()

        async def worker() -> None:
            while not (done_publishing.is_set() and acked | dead == published):
                async with q.consumer("t", "g") as consumer:
                    for _ in range(rng.randint(1, 3)):
                        batch = await consumer.consume(max_messages=rng.randint(1, 8), wait=0.05)
                        keep = [d for d in batch if rng.random() < 0.6]  # the close returns the rest
                        await consumer.ack(keep)
                        acked.update(d.id for d in keep)
                # A close counts as an attempt, so an unlucky message may reach
                # max_attempts and move to the dead-letter topic: not lost either.
                letters = await q.consume("t.dlq", "g", max_messages=100)
                dead.update(d.headers["prism-dead-letter-id"].decode() for d in letters)
                await q.ack("t.dlq", "g", letters)

        await asyncio.wait_for(asyncio.gather(publisher(), *(worker() for _ in range(4))), 120)
        assert acked | dead == published
        assert len(published) == 300
        assert not acked & dead
        assert await q.consume("t", "g", max_messages=1000) == []

    run(config, body)


# -- leases ---------------------------------------------------------------------------


def test_unacked_delivery_comes_back_after_the_visibility_timeout(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        [mid] = await q.publish("t", [msg("", "x")])
        [first] = await q.consume("t", "g")
        assert first.attempt == 1
        assert await q.consume("t", "g") == []  # leased
        # The wait is capped at the lease's expiry, so this returns with the message.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        again = await q.consume("t", "g", wait=15)
        assert loop.time() < deadline  # woke for the expiry, did not time out
        assert [(d.id, d.attempt) for d in again] == [(mid, 2)]
        await q.ack("t", "g", again)
        assert await q.consume("t", "g", wait=0.5) == []

    run(config, body)


def test_an_expired_lease_behind_a_live_one_is_reclaimed_and_the_live_one_is_not(
    config: dict[str, Any],
) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("mid")  # visibility 2s
        one, two = await q.publish("t", [msg("", "1"), msg("", "2")])
        assert [d.id for d in await q.consume("t", "g", max_messages=2)] == [one, two]
        # Both run out; take back only the first, so the pending list holds a
        # live lease (one) before an expired one (two).
        [again] = await q.consume("t", "g", max_messages=1, wait=15)
        assert (again.id, again.attempt) == (one, 2)
        got = await q.consume("t", "g", max_messages=5)
        assert [(d.id, d.attempt) for d in got] == [(two, 2)]
        await q.ack("t", "g", [again, *got])

    run(config, body)


def test_closing_a_consumer_gives_back_what_it_did_not_ack(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", str(i)) for i in range(4)])
        async with q.consumer("t", "g") as worker:
            got = await worker.consume(max_messages=4)
            await worker.ack(got[:1])
        # Visibility is 10 minutes: only the close can have released them.
        back = await q.consume("t", "g", max_messages=10)
        assert [(d.id, d.attempt) for d in back] == [(i, 2) for i in ids[1:]]
        with pytest.raises(InvalidArgument, match="closed"):
            await worker.consume()

    run(config, body)


def test_closing_a_consumer_removes_it_from_the_redis_group(
    config: dict[str, Any], redis_url: str, redis_prefix: str
) -> None:
    async def body(db: prism.AsyncPrism) -> str:
        q = db.queue("slow")
        await q.publish("t", [msg("", "x")])
        async with q.consumer("t", "g") as worker:
            await worker.consume()
            return worker.id

    consumer_id = run(config, body)
    client = redis.Redis.from_url(redis_url)
    try:
        names = {c["name"].decode() for c in client.xinfo_consumers(f"{redis_prefix}:slow:stream:t", "g")}
    finally:
        client.close()
    assert consumer_id not in names
    assert "prism-released" in names  # the neutral holder of released entries


def test_nack_requeues_at_once_and_attempts_count_up_to_the_dead_letter_topic(
    config: dict[str, Any],
) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        q_fast = db.queue("fast")  # max_attempts 3
        [mid] = await q_fast.publish("t", [msg("k", "poison", headers={"h": b"1"})])
        attempts = []
        for _ in range(3):
            [d] = await q_fast.consume("t", "g")
            attempts.append(d.attempt)
            await q_fast.nack("t", "g", [d])
        assert attempts == [1, 2, 3]
        # The fourth delivery exceeds max_attempts: it moves to the dead-letter topic.
        assert await q_fast.consume("t", "g") == []
        [dead] = await q_fast.consume(q_fast.dead_letter_topic("t"), "ops")
        assert (dead.key, dead.payload, dead.headers["h"]) == (b"k", b"poison", b"1")
        assert dead.headers[DEAD_LETTER_REASON] == b"max_attempts"
        assert dead.headers[DEAD_LETTER_ATTEMPTS] == b"3"
        assert dead.headers["prism-dead-letter-id"] == mid.encode()
        # nack(requeue=False) dead-letters at once.
        [other] = await q.publish("t", [msg("", "bad")])
        [d] = await q.consume("t", "g")
        await q.nack("t", "g", [d], requeue=False)
        assert await q.consume("t", "g") == []
        [dead2] = await q.consume("t.dlq", "ops")
        assert dead2.headers[DEAD_LETTER_REASON] == b"nack"
        assert dead2.headers["prism-dead-letter-id"] == other.encode()

    run(config, body)


def test_timeouts_count_as_attempts_towards_dead_letters(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")  # visibility 300ms, max_attempts 3
        await q.publish("t", [msg("", "slowpoke")])
        attempts: list[int] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(attempts) < 3 and loop.time() < deadline:
            got = await q.consume("t", "g", wait=5)  # never acked: each lease runs out
            attempts += [d.attempt for d in got]
        assert attempts == [1, 2, 3]
        dead: list[prism.Delivery] = []
        while not dead and loop.time() < deadline:
            # The next expiry makes it the fourth delivery: dead-lettered, not returned.
            assert await q.consume("t", "g", wait=1) == []
            dead = await q.consume("t.dlq", "ops")
        assert [d.payload for d in dead] == [b"slowpoke"]
        assert dead[0].headers[DEAD_LETTER_ATTEMPTS] == b"3"

    run(config, body)


def test_ack_is_idempotent_and_acked_ids_are_left_alone_by_nack(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        await q.publish("t", [msg("", "x")])
        got = await q.consume("t", "g")
        await q.ack("t", "g", got)
        await q.ack("t", "g", got)
        await q.nack("t", "g", got)
        await q.nack("t", "g", got, requeue=False)
        assert await q.consume("t", "g") == []
        assert await q.consume("t.dlq", "ops") == []

    run(config, body)


# -- unknown ids --------------------------------------------------------------------


def test_unknown_ids_are_refused_and_nothing_changes(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", "a"), msg("", "b")])
        [held] = await q.consume("t", "g", max_messages=1)
        not_delivered = ids[1]  # published, but never delivered to g
        for bogus in (not_delivered, "1-1", "nope", "01-1", "99999999999999999999-0", held.id + "0"):
            for call in (q.ack, q.nack):
                with pytest.raises(InvalidArgument, match="unknown delivery ids") as info:
                    await call("t", "g", [held.id, bogus])
                assert repr(bogus) in str(info.value)
                assert "Nothing was changed" in str(info.value)
            with pytest.raises(InvalidArgument, match="unknown delivery ids"):
                await q.nack("t", "g", [held.id, bogus], requeue=False)
        # Another group has seen nothing at all; another topic has no such group.
        with pytest.raises(InvalidArgument, match="unknown delivery ids"):
            await q.ack("t", "other", [held.id])
        with pytest.raises(InvalidArgument, match="unknown delivery ids"):
            await q.nack("elsewhere", "g", [held.id])
        # Nothing changed: `held` is still leased (not acked, not released, not
        # dead-lettered), and the undelivered message is still new.
        rest = await q.consume("t", "g", max_messages=10)
        assert [(d.id, d.attempt) for d in rest] == [(not_delivered, 1)]
        assert await q.consume("t.dlq", "ops") == []
        await q.nack("t", "g", [held])
        [back] = await q.consume("t", "g")
        assert (back.id, back.attempt) == (held.id, 2)
        await q.ack("t", "g", [back, *rest])

    run(config, body)


# -- waiting --------------------------------------------------------------------------


def test_a_waiting_consumer_wakes_on_publish(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        await q.consume("t", "g")  # the group exists and has seen everything
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        waiting = asyncio.ensure_future(q.consume("t", "g", wait=20))
        await asyncio.sleep(0.05)  # not needed for correctness: a publish before the wait is seen too
        await q.publish("t", [msg("", "hello")])
        got = await waiting
        assert [d.payload for d in got] == [b"hello"]
        assert loop.time() < deadline  # woken, not timed out

    run(config, body)


def test_a_waiting_consumer_wakes_on_release(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")  # visibility 10 minutes: only a release frees the message
        await q.publish("t", [msg("", "x")])
        async with q.consumer("t", "g") as holder, q.consumer("t", "g") as waiter:
            [held] = await holder.consume()
            loop = asyncio.get_running_loop()
            # Released entries are deliverable to the final look at the deadline
            # too, so what proves the wake-up is returning before the deadline.
            deadline = loop.time() + 15
            waiting = asyncio.ensure_future(waiter.consume(wait=15))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await holder.nack([held])
            got = await waiting
            assert [(d.id, d.attempt) for d in got] == [(held.id, 2)]
            assert loop.time() < deadline
            # And on a consumer's close.
            deadline = loop.time() + 15
            waiting = asyncio.ensure_future(holder.consume(wait=15))
            await asyncio.sleep(0.05)
            await waiter.close()
            got = await waiting
            assert [(d.id, d.attempt) for d in got] == [(held.id, 3)]
            assert loop.time() < deadline
            await holder.ack(got)

    run(config, body)


def test_a_cancelled_wait_leaves_the_backend_usable(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        await q.consume("t", "g")
        for _ in range(3):
            waiting = asyncio.ensure_future(q.consume("t", "g", wait=10))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        # Later waits and commands get sane replies, not a cancelled call's leftovers.
        waiting = asyncio.ensure_future(q.consume("t", "g", wait=10))
        await q.publish("t", [msg("", "after")])
        assert [d.payload for d in await waiting] == [b"after"]
        assert await q.consume("t", "g", wait=0.2) == []

    run(config, body)


def test_wait_returns_empty_at_the_deadline(config: dict[str, Any]) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await q.consume("t", "g", wait=0.3) == []
        assert loop.time() - started >= 0.3

    run(config, body)


# -- a consumer process that dies -------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys, prism
    config = json.loads(sys.argv[1])
    with prism.open(config) as db:
        q = db.queue("fast")
        consumer = q.consumer("jobs", "workers")
        got = consumer.consume(max_messages=6)
        consumer.ack(got[:3])
        print(json.dumps({"acked": [d.id for d in got[:3]], "held": [d.id for d in got[3:]]}), flush=True)
        sys.stdin.read()  # hold the leases until killed
    """
)


def test_a_killed_consumer_process_gives_back_only_what_it_did_not_ack(config: dict[str, Any]) -> None:
    with prism.open(config) as db:
        q = db.queue("fast")  # visibility 300ms
        ids = q.publish("jobs", [msg("", str(i)) for i in range(10)])
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            report = json.loads(child.stdout.readline())
            os.kill(child.pid, signal.SIGKILL)  # no close, no release: the process just dies
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert report["acked"] == ids[:3]
        assert report["held"] == ids[3:6]
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while len(seen) < 7 and time.monotonic() < deadline:
            got = q.consume("jobs", "workers", max_messages=10, wait=2)
            for d in got:
                assert d.id not in seen
                seen[d.id] = d.attempt
            q.ack("jobs", "workers", got)
        # The never-delivered ones come at once; the dead process's after its leases ran out.
        assert seen == {**{i: 2 for i in ids[3:6]}, **{i: 1 for i in ids[6:]}}
        assert q.consume("jobs", "workers", wait=1) == []  # nothing acked ever comes back


# -- capabilities and durability ---------------------------------------------------------


def test_ordered_by_key_and_delay_are_refused(config: dict[str, Any]) -> None:
    config["namespaces"]["ordered"] = {
        "abstraction": "queue",
        "needs": {"capabilities": ["queue.ordered_by_key"]},
    }

    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        with pytest.raises(Unsupported, match=r"queue\.delay"):
            await q.publish("t", [msg("", "x", deliver_after=timedelta(seconds=5))])
        with pytest.raises(PlanError, match=r"lacks capabilities queue\.ordered_by_key"):
            db.queue("ordered")

    run(config, body)


def test_a_durable_queue_is_not_planned_on_plain_redis(config: dict[str, Any]) -> None:
    with prism.open(config) as db:
        assert db.queue("slow").traits.durability == "ephemeral"
        with pytest.raises(PlanError, match="needs durability durable") as refused:
            db.queue("wal")
    # The refusal says what would make Redis durable.
    assert "appendonly yes and appendfsync always" in str(refused.value)


def test_durable_true_is_verified_against_the_server(redis_url: str, redis_prefix: str) -> None:
    config = make_config(redis_url, redis_prefix, durable=True)
    client = redis.Redis.from_url(redis_url)
    try:
        append = client.config_get("append*")
    finally:
        client.close()
    always = append.get("appendonly") == "yes" and append.get("appendfsync") == "always"
    with prism.open(config) as db:
        wal = db.queue("wal")  # planned: the setting asserts durability
        assert wal.traits.durability == "durable"
        if always:
            [mid] = wal.publish("log", [msg("", "x")])
            assert [d.id for d in wal.consume("log", "g")] == [mid]
        else:
            with pytest.raises(BackendError, match="durable is set, but the server runs"):
                wal.publish("log", [msg("", "x")])
