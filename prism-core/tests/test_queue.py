"""Queue semantics through the public API on the memory backend: fan-out,
competing consumers, redelivery, attempts, dead letters, ordering by key,
delays, acks, limits, and the sync and async clients. Time-dependent checks
wait with deadlines (consume's own ``wait``), never with bare sleeps."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any, TypeVar

import pytest

import prism
from prism.errors import InvalidArgument, LimitExceeded, PlanError, Unsupported, WrongAbstraction
from prism.plugins import hookimpl, load_plugins
from prism.plugins.registry import BackendRegistry
from prism.queue.namespace import DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_REASON

T = TypeVar("T")

CONFIG: dict[str, Any] = {
    "backends": {"mem": {"plugin": "memory"}},
    "namespaces": {
        # Short visibility for redelivery tests.
        "fast": {
            "abstraction": "queue",
            "queue": {
                "visibility_timeout": "200ms",
                "max_attempts": 3,
                "max_batch": 50,
                "max_message_bytes": 1024,
                "max_topic_name_bytes": 20,
                "max_wait": "10s",
                "max_delay": "1h",
            },
        },
        # Long visibility: anything that comes back early came back on purpose.
        "slow": {"abstraction": "queue", "queue": {"visibility_timeout": "10m"}},
        "kv": {"abstraction": "keyvalue"},
    },
}


def run(body: Callable[[prism.AsyncPrism], Awaitable[T]], config: Any = None) -> T:
    async def main() -> T:
        async with prism.open_async(config if config is not None else CONFIG) as db:
            return await body(db)

    return asyncio.run(main())


def msg(key: str, payload: str, **kw: Any) -> prism.Message:
    return prism.Message(key, payload, **kw)


# -- publish and consume ---------------------------------------------------------------


def test_publish_returns_ids_and_consume_returns_full_deliveries() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        before = datetime.now(UTC)
        ids = await q.publish("orders", [msg("k1", "one", headers={"trace": "abc"}), msg("", "two")])
        assert len(ids) == len(set(ids)) == 2
        got = await q.consume("orders", "billing", max_messages=10)
        assert [d.id for d in got] == ids
        first = got[0]
        assert (first.key, first.payload, first.headers) == (b"k1", b"one", {"trace": b"abc"})
        assert (first.topic, first.group, first.attempt) == ("orders", "billing", 1)
        assert first.published_at.tzinfo is not None
        assert before - timedelta(seconds=1) <= first.published_at <= datetime.now(UTC) + timedelta(seconds=1)
        await q.ack("orders", "billing", got)
        assert await q.consume("orders", "billing") == []
        assert await q.publish("orders", []) == []

    run(body)


def test_every_group_sees_every_message() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", str(i)) for i in range(5)])
        for group in ("a", "b", "c"):
            got = await q.consume("t", group, max_messages=10)
            assert [d.id for d in got] == ids
            await q.ack("t", group, got)

    run(body)


def test_competing_consumers_share_and_never_hold_the_same_message() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", str(i)) for i in range(10)])
        async with q.consumer("t", "g") as one, q.consumer("t", "g") as two:
            a = await one.consume(max_messages=4)
            b = await two.consume(max_messages=10)
            assert not {d.id for d in a} & {d.id for d in b}
            assert sorted(d.id for d in a + b) == sorted(ids)
            assert await one.consume() == []  # everything is in flight
            await one.ack(a)
            await two.ack(b)

    run(body)


def test_waiting_consumer_wakes_on_publish() -> None:
    async def body(db: prism.AsyncPrism) -> float:
        q = db.queue("fast")
        started = time.monotonic()
        waiting = asyncio.ensure_future(q.consume("t", "g", wait=8))
        await asyncio.sleep(0)  # let the consumer start waiting
        await q.publish("t", [msg("", "hello")])
        got = await waiting
        assert [d.payload for d in got] == [b"hello"]
        return time.monotonic() - started

    # Generous bound: a consumer that only gave up at its deadline would take 8s.
    assert run(body) < 4


def test_wait_returns_empty_at_the_deadline() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        assert await q.consume("t", "g", wait=timedelta(milliseconds=50)) == []

    run(body)


# -- redelivery and attempts --------------------------------------------------------------


def test_unacked_delivery_comes_back_after_the_visibility_timeout() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        [message_id] = await q.publish("t", [msg("", "x")])
        [first] = await q.consume("t", "g")
        assert first.attempt == 1
        assert await q.consume("t", "g") == []  # still leased
        [again] = await q.consume("t", "g", wait=5)
        assert (again.id, again.attempt) == (message_id, 2)
        await q.ack("t", "g", [again])
        assert await q.consume("t", "g", wait=0.4) == []

    run(body)


def test_closing_a_consumer_gives_back_what_it_did_not_ack() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")  # 10 min visibility: only the close can bring it back
        ids = await q.publish("t", [msg("", "a"), msg("", "b")])
        async with q.consumer("t", "g") as worker:
            got = await worker.consume(max_messages=2)
            await worker.ack([got[0]])
        with pytest.raises(InvalidArgument, match="closed"):
            await worker.consume()
        async with q.consumer("t", "g") as other:
            [back] = await other.consume(max_messages=10)
            assert (back.id, back.attempt) == (ids[1], 2)
            await other.ack([back])

    run(body)


def test_attempts_count_up_and_then_the_message_is_dead_lettered() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")  # max_attempts 3
        [message_id] = await q.publish("jobs", [msg("k", "boom", headers={"h": "v"})])
        attempts = []
        for _ in range(3):
            [d] = await q.consume("jobs", "workers", wait=5)
            attempts.append(d.attempt)
            await q.nack("jobs", "workers", [d])
        assert attempts == [1, 2, 3]
        assert await q.consume("jobs", "workers", wait=0.3) == []
        assert q.dead_letter_topic("jobs") == "jobs.dlq"
        [dead] = await q.consume("jobs.dlq", "ops")
        assert (dead.key, dead.payload, dead.attempt) == (b"k", b"boom", 1)
        assert dead.headers["h"] == b"v"
        assert dead.headers[DEAD_LETTER_REASON] == b"max_attempts"
        assert dead.headers[DEAD_LETTER_ATTEMPTS] == b"3"
        assert dead.headers[DEAD_LETTER_GROUP] == b"workers"
        assert dead.headers["prism-dead-letter-id"] == message_id.encode()
        await q.ack("jobs.dlq", "ops", [dead])
        # The original is acknowledged in its group: acking it again is fine.
        await q.ack("jobs", "workers", [message_id])

    run(body)


def test_timeouts_count_as_attempts_towards_dead_letters() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        await q.publish("t", [msg("", "x")])
        seen = []
        for _ in range(3):
            [d] = await q.consume("t", "g", wait=5)
            seen.append(d.attempt)  # never acked: its lease runs out
        assert seen == [1, 2, 3]
        # The move happens when the group next asks for work and the message is due.
        assert await q.consume("t", "g", wait=0.5) == []
        [dead] = await q.consume("t.dlq", "g")
        assert dead.payload == b"x"

    run(body)


def test_dead_letters_are_never_moved_again() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        await q.publish("t.dlq", [msg("", "x")])
        for attempt in range(1, 6):
            [d] = await q.consume("t.dlq", "g", wait=5)
            assert d.attempt == attempt
            await q.nack("t.dlq", "g", [d])
        [d] = await q.consume("t.dlq", "g")
        await q.nack("t.dlq", "g", [d], requeue=False)  # on a dead-letter topic: dropped
        assert await q.consume("t.dlq", "g") == []
        assert await q.consume("t.dlq.dlq", "g") == []

    run(body)


def test_nack_requeue_true_and_false() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", "again"), msg("", "poison")])
        first = await q.consume("t", "g", max_messages=2)
        await q.nack("t", "g", [first[0]], requeue=True)
        await q.nack("t", "g", [first[1]], requeue=False)
        [back] = await q.consume("t", "g", max_messages=10)
        assert (back.id, back.attempt) == (ids[0], 2)
        [dead] = await q.consume("t.dlq", "g")
        assert dead.payload == b"poison"
        assert dead.headers[DEAD_LETTER_REASON] == b"nack"
        await q.ack("t", "g", [back])
        # Nacking something already acknowledged changes nothing.
        await q.nack("t", "g", ids, requeue=True)
        await q.nack("t", "g", ids, requeue=False)
        assert await q.consume("t", "g") == []
        assert await q.consume("t.dlq", "g") == []

    run(body)


# -- acks -----------------------------------------------------------------------------------


def test_ack_is_idempotent() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        await q.publish("t", [msg("", "x")])
        got = await q.consume("t", "g")
        await q.ack("t", "g", got)
        await q.ack("t", "g", got)
        await q.ack("t", "g", [got[0].id, got[0].id])
        assert await q.consume("t", "g", wait=0.4) == []

    run(body)


def test_acking_an_unknown_id_is_a_clear_error_and_changes_nothing() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", "a"), msg("", "b")])
        [a] = await q.consume("t", "g", max_messages=1)
        with pytest.raises(InvalidArgument) as info:
            await q.ack("t", "g", [a.id, "no-such-id"])
        text = str(info.value)
        for part in ("'slow'", "'t'", "'g'", "'no-such-id'", "never delivered"):
            assert part in text
        assert info.value.field == "ids"
        # Published but never delivered to this group: unknown to it as well.
        with pytest.raises(InvalidArgument, match=ids[1]):
            await q.ack("t", "g", [ids[1]])
        # Delivered to another group only: unknown to this one.
        with pytest.raises(InvalidArgument):
            await q.ack("t", "other", [a.id])
        with pytest.raises(InvalidArgument):
            await q.nack("t", "g", ["nope"])
        with pytest.raises(InvalidArgument):
            await q.nack("t", "g", ["nope"], requeue=False)
        # Nothing was acknowledged by the failed call: a is still in flight, b waits.
        [b] = await q.consume("t", "g", max_messages=10)
        assert b.id == ids[1]
        with pytest.raises(InvalidArgument, match="list of ids"):
            await q.ack("t", "g", a.id)

    run(body)


# -- ordering and delays --------------------------------------------------------------------


def test_messages_with_one_key_arrive_in_order_one_at_a_time() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        assert "queue.ordered_by_key" in q.capabilities
        await q.publish("t", [msg("a", "a1"), msg("b", "b1"), msg("a", "a2"), msg("", "x"), msg("a", "a3")])
        async with q.consumer("t", "g") as one, q.consumer("t", "g") as two:
            first = await one.consume(max_messages=10)
            assert [d.payload for d in first] == [b"a1", b"b1", b"x"]
            await one.ack(first[1:])
            assert await two.consume(max_messages=10) == []  # a2 waits behind a1
            await one.nack([first[0]])  # a1 comes back first, before a2
            [again] = await two.consume(max_messages=10)
            assert (again.payload, again.attempt) == (b"a1", 2)
            await two.ack([again])
            assert [d.payload for d in await one.consume(max_messages=10)] == [b"a2"]
        # The close gave a2 back; it is still ahead of a3.
        got = await q.consume("t", "g", max_messages=10)
        assert [d.payload for d in got] == [b"a2"]
        await q.ack("t", "g", got)
        assert [d.payload for d in await q.consume("t", "g", max_messages=10)] == [b"a3"]

    run(body)


def test_other_groups_are_not_held_back_by_a_busy_key() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        await q.publish("t", [msg("a", "1"), msg("a", "2")])
        assert [d.payload for d in await q.consume("t", "g1", max_messages=10)] == [b"1"]
        assert [d.payload for d in await q.consume("t", "g2", max_messages=10)] == [b"1"]

    run(body)


def test_deliver_after_holds_a_message_back() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        later = datetime.now(UTC) + timedelta(milliseconds=300)
        await q.publish(
            "t",
            [
                msg("", "delayed", deliver_after=timedelta(milliseconds=300)),
                msg("", "at", deliver_after=later),
                msg("", "now"),
                msg("", "past", deliver_after=datetime.now(UTC) - timedelta(hours=1)),
            ],
        )
        got = await q.consume("t", "g", max_messages=10)
        assert [d.payload for d in got] == [b"now", b"past"]
        await q.ack("t", "g", got)
        seen: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            batch = await q.consume("t", "g", max_messages=10, wait=5)
            seen += [d.payload for d in batch]
            await q.ack("t", "g", batch)
        assert sorted(seen) == [b"at", b"delayed"]
        assert datetime.now(UTC) >= later

    run(body)


def test_deliver_after_is_checked() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        with pytest.raises(InvalidArgument, match="timezone-aware"):
            await q.publish("t", [msg("", "x", deliver_after=datetime(2030, 1, 1))])
        with pytest.raises(LimitExceeded) as info:
            await q.publish("t", [msg("", "x", deliver_after=timedelta(hours=2))])
        assert info.value.limit_name == "max_delay"
        with pytest.raises(InvalidArgument, match="timedelta or datetime"):
            await q.publish("t", [msg("", "x", deliver_after=5)])

    run(body)


# -- limits --------------------------------------------------------------------------------


def test_message_at_the_size_limit_is_accepted_and_one_above_is_refused() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")  # max_message_bytes 1024: key + payload + headers
        assert q.max_message_bytes == 1024
        exact = msg("kk", "p" * (1024 - 2 - len("h") - 2), headers={"h": "vv"})
        [message_id] = await q.publish("t", [exact])
        [d] = await q.consume("t", "g")
        assert (d.id, len(d.payload)) == (message_id, 1019)
        over = msg("kk", "p" * 1020, headers={"h": "vv"})
        with pytest.raises(LimitExceeded) as info:
            await q.publish("t", [msg("", "fine"), over])
        err = info.value
        assert (err.limit_name, err.limit, err.actual, err.namespace) == (
            "max_message_bytes",
            1024,
            1025,
            "fast",
        )
        assert "message 1" in str(err)
        assert "queue.max_message_bytes" in str(err)
        await q.ack("t", "g", [d])
        assert await q.consume("t", "g") == []  # the refused batch published nothing

    run(body)


def test_batch_topic_and_wait_limits() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")  # max_batch 50, topic names up to 20 bytes, max_wait 10s
        with pytest.raises(LimitExceeded) as info:
            await q.publish("t", [msg("", str(i)) for i in range(51)])
        assert info.value.limit_name == "max_batch"
        assert "queue.max_batch" in str(info.value)
        with pytest.raises(LimitExceeded, match="max_batch"):
            await q.consume("t", "g", max_messages=51)
        with pytest.raises(LimitExceeded, match="max_batch"):
            await q.ack("t", "g", [str(i) for i in range(51)])
        with pytest.raises(LimitExceeded) as info:
            await q.publish("t" * 21, [msg("", "x")])
        assert (info.value.limit_name, info.value.field) == ("max_topic_name_bytes", "topic")
        with pytest.raises(LimitExceeded) as info:
            await q.consume("t", "g" * 21)
        assert info.value.field == "group"
        # The dead-letter topic of the longest topic name can be consumed, but
        # the suffix allowance is for dead-letter topics only.
        assert await q.consume("t" * 20 + ".dlq", "g") == []
        with pytest.raises(LimitExceeded):
            await q.consume("t" * 21 + ".dlq", "g")
        with pytest.raises(LimitExceeded):
            await q.consume("t" * 20, "g" * 20 + ".dlq")
        for bad in ("", "has space", "-leading", "ünï", "a/b"):
            with pytest.raises(InvalidArgument, match="name"):
                await q.publish(bad, [msg("", "x")])
        with pytest.raises(LimitExceeded, match="max_wait"):
            await q.consume("t", "g", wait=11)
        with pytest.raises(InvalidArgument, match="max_messages"):
            await q.consume("t", "g", max_messages=0)
        with pytest.raises(InvalidArgument, match="wait"):
            await q.consume("t", "g", wait=-1)
        with pytest.raises(InvalidArgument, match=r"prism\.Message"):
            await q.publish("t", [b"raw bytes"])  # type: ignore[list-item]

    run(body)


def test_a_large_batch_round_trips() -> None:
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
        assert sorted(seen) == sorted(ids)

    run(body)


# -- many consumers ---------------------------------------------------------------------


def test_nothing_is_lost_while_consumers_come_and_go() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")  # only consumer closes bring work back early
        rng = random.Random(7)
        published: set[str] = set()
        acked: set[str] = set()
        done_publishing = asyncio.Event()

        async def publisher() -> None:
            for round_ in range(20):
                ids = await q.publish("t", [msg(f"k{i % 5}", f"{round_}-{i}") for i in range(15)])
                published.update(ids)
                await asyncio.sleep(0)
            done_publishing.set()

        dead: set[str] = set()

        async def worker() -> None:
            while not (done_publishing.is_set() and acked | dead == published):
                async with q.consumer("t", "g") as consumer:
                    for _ in range(rng.randint(1, 3)):
                        batch = await consumer.consume(max_messages=rng.randint(1, 8), wait=0.05)
                        # Ack some, and leave the rest to the close.
                        keep = [d for d in batch if rng.random() < 0.6]
                        await consumer.ack(keep)
                        acked.update(d.id for d in keep)
                # A close counts as an attempt, so an unlucky message may reach
                # max_attempts and move to the dead-letter topic: not lost either.
                letters = await q.consume("t.dlq", "g", max_messages=100)
                dead.update(d.headers["prism-dead-letter-id"].decode() for d in letters)
                await q.ack("t.dlq", "g", letters)

        await asyncio.wait_for(asyncio.gather(publisher(), *(worker() for _ in range(4))), 60)
        assert acked | dead == published
        assert len(published) == 300
        assert not acked & dead
        assert await q.consume("t", "g", max_messages=1000) == []

    run(body)


# -- clients, config and capabilities -----------------------------------------------------


def test_sync_client() -> None:
    with prism.open(CONFIG) as db:
        q = db.queue("slow")
        assert db.queue("slow") is q
        ids = q.publish("t", [prism.Message(b"k", b"v")])
        with q.consumer("t", "g") as consumer:
            [d] = consumer.consume(max_messages=5, wait=1)
            assert d.id == ids[0]
            consumer.nack([d])
            [d] = consumer.consume()
            assert d.attempt == 2
        [d] = q.consume("t", "g")  # the close gave it back
        assert d.attempt == 3
        q.ack("t", "g", [d])
        q.nack("t", "g", [d], requeue=False)  # already acked: nothing happens
        assert q.consume("t", "g") == []
        assert q.consume("t.dlq", "g") == []
        assert db.plan("slow").abstraction == "queue"


def test_namespace_abstraction_is_enforced() -> None:
    async def body(db: prism.AsyncPrism) -> None:
        with pytest.raises(WrongAbstraction, match="queue"):
            db.queue("kv")
        with pytest.raises(WrongAbstraction):
            db.keyvalue("slow")

    run(body)


def test_auto_namespaces_plan_queues_too() -> None:
    config = {"backends": {"mem": {"plugin": "memory"}}, "auto_namespaces": True}

    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("events")
        await q.publish("t", [msg("", "x")])
        assert len(await q.consume("t", "g")) == 1

    run(body, config)


def _plain_queue_plugin() -> ModuleType:
    """A Queue backend that declares no capabilities, built on the memory one."""
    from prism.backends.memory import MemorySettings, _queue_traits
    from prism.backends.memory_queue import MemoryQueue
    from prism.spi import QueueBackendType

    module = ModuleType("plain_queue_plugin")

    @hookimpl
    def prism_register_queue(registry: BackendRegistry) -> None:
        registry.add_queue(
            "plainq",
            QueueBackendType(
                settings_type=MemorySettings,
                create=MemoryQueue,
                capabilities=frozenset(),
                traits=_queue_traits,
            ),
        )

    module.prism_register_queue = prism_register_queue  # type: ignore[attr-defined]
    return module


def test_undeclared_capabilities_are_refused() -> None:
    plugins = load_plugins(disabled=(), extra={"plainq": _plain_queue_plugin()})
    plain = next(p for p in plugins.loaded if p.name == "plainq")
    assert plain.abstractions == ("queue",)
    config = {
        "backends": {"plain": {"plugin": "plainq"}},
        "namespaces": {
            "q": {"abstraction": "queue"},
            "ordered": {"abstraction": "queue", "needs": {"capabilities": ["queue.ordered_by_key"]}},
        },
    }

    async def main() -> None:
        async with prism.open_async(config, plugins=plugins) as db:
            q = db.queue("q")
            with pytest.raises(Unsupported, match=r"queue\.delay"):
                await q.publish("t", [msg("", "x", deliver_after=timedelta(seconds=1))])
            await q.publish("t", [msg("", "x")])  # without a delay it works
            with pytest.raises(PlanError, match=r"lacks capabilities queue\.ordered_by_key"):
                db.queue("ordered")

    asyncio.run(main())


def test_durable_need_is_not_met_by_memory() -> None:
    config = {
        "backends": {"mem": {"plugin": "memory"}},
        "namespaces": {"wal": {"abstraction": "queue", "needs": {"durability": "durable"}}},
    }
    with prism.open(config) as db, pytest.raises(PlanError, match="needs durability durable"):
        db.queue("wal")
