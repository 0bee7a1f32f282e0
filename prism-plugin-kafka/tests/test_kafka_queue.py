"""The kafka Queue backend against the real test broker: round trips, groups,
leases, dead letters, ordering by key, commit semantics, restarts and a killed
consumer process. Each test works under its own topic prefix. Waiting is done
with consume's own ``wait`` or by polling with a deadline, never bare sleeps."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from kafka_support import committed_offsets, config, wait_for_commit

import prism
from prism.errors import BackendError, InvalidArgument, LimitExceeded
from prism.queue.namespace import DEAD_LETTER_ATTEMPTS, DEAD_LETTER_ID, DEAD_LETTER_REASON

T = TypeVar("T")
HERE = Path(__file__).resolve().parent


def run(cfg: dict[str, Any], body: Callable[[prism.AsyncPrism], Awaitable[T]]) -> T:
    async def main() -> T:
        async with prism.open_async(cfg) as db:
            return await body(db)

    return asyncio.run(main())


def msg(key: str, payload: str, **kw: Any) -> prism.Message:
    return prism.Message(key, payload, **kw)


def offset_of(message_id: str) -> tuple[int, int]:
    partition, _, offset = message_id.partition("-")
    return int(partition), int(offset)


def partition_count(bootstrap: str, topic: str) -> int:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic=topic, timeout=10)
    return len(metadata.topics[topic].partitions)


# -- round trips and groups ---------------------------------------------------------------


def test_publish_and_consume_round_trip(kafka_bootstrap: str, kafka_prefix: str) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        before = datetime.now(UTC)
        ids = await q.publish("orders", [msg("k1", "one", headers={"trace": "abc"}), msg("", "two")])
        assert len(set(ids)) == 2
        assert all(offset_of(i) for i in ids)
        # The two messages are on two partitions, which the reader fetches
        # separately: gather until both arrived, with a deadline.
        got: list[prism.Delivery] = []
        deadline = asyncio.get_running_loop().time() + 30
        while len(got) < 2 and asyncio.get_running_loop().time() < deadline:
            got += await q.consume("orders", "billing", max_messages=10, wait=5)
        assert sorted(d.id for d in got) == sorted(ids)
        first = next(d for d in got if d.id == ids[0])
        assert (first.key, first.payload, first.headers) == (b"k1", b"one", {"trace": b"abc"})
        assert (first.topic, first.group, first.attempt) == ("orders", "billing", 1)
        assert before - timedelta(seconds=2) <= first.published_at <= datetime.now(UTC) + timedelta(seconds=2)
        await q.ack("orders", "billing", got)
        assert await q.consume("orders", "billing", wait=0.3) == []

    run(config(kafka_bootstrap, kafka_prefix), body)


def test_ids_sort_in_publish_order_within_a_partition(kafka_bootstrap: str, kafka_prefix: str) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        first = await q.publish("t", [msg("same", str(i)) for i in range(5)])
        second = await q.publish("t", [msg("same", str(i)) for i in range(5, 10)])
        ids = first + second
        assert len({offset_of(i)[0] for i in ids}) == 1  # one key, one partition
        assert ids == sorted(ids)
        got: list[prism.Delivery] = []
        while len(got) < 10:  # one key: one in flight at a time
            [d] = await q.consume("t", "g", max_messages=10, wait=10)
            got.append(d)
            await q.ack("t", "g", [d])
        assert [d.id for d in got] == ids

    run(config(kafka_bootstrap, kafka_prefix), body)


def test_every_group_sees_every_message(kafka_bootstrap: str, kafka_prefix: str) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        ids = await q.publish("t", [msg("", f"m{i}") for i in range(5)])
        for group in ("a", "b"):
            got = await q.consume("t", group, max_messages=10, wait=10)
            assert sorted(d.id for d in got) == sorted(ids)
            await q.ack("t", group, got)

    run(config(kafka_bootstrap, kafka_prefix), body)


def test_competing_consumers_never_hold_the_same_message(kafka_bootstrap: str, kafka_prefix: str) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        ids = await q.publish("t", [msg(f"k{i}", f"m{i}") for i in range(12)])
        seen: list[str] = []
        async with q.consumer("t", "g") as one, q.consumer("t", "g") as two:
            while len(seen) < len(ids):
                a = await one.consume(max_messages=3, wait=10)
                b = await two.consume(max_messages=3, wait=1)
                assert not {d.id for d in a} & {d.id for d in b}
                seen += [d.id for d in a + b]
                await one.ack(a)
                await two.ack(b)
        assert sorted(seen) == sorted(ids)

    run(config(kafka_bootstrap, kafka_prefix), body)


def test_topics_are_sized_from_the_namespace_needs(kafka_bootstrap: str, kafka_prefix: str) -> None:
    cfg = config(kafka_bootstrap, kafka_prefix, partitions=2, partition_write_rps=100)
    cfg["namespaces"]["busy"] = {"abstraction": "queue", "needs": {"write_rps": 450}}

    async def body(db: prism.AsyncPrism) -> None:
        await db.queue("q").publish("small", [msg("", "x")])
        await db.queue("busy").publish("big", [msg("", "x")])

    run(cfg, body)
    assert partition_count(kafka_bootstrap, f"{kafka_prefix}q.small") == 2
    assert partition_count(kafka_bootstrap, f"{kafka_prefix}busy.big") == 5  # ceil(450 / 100)


def test_two_processes_in_one_group_split_the_partitions(kafka_bootstrap: str, kafka_prefix: str) -> None:
    """Two Prism instances stand for two processes: Kafka assigns each some of
    the partitions, and together they receive everything exactly once."""
    cfg = config(kafka_bootstrap, kafka_prefix, session_timeout="6s")
    group_id = f"{kafka_prefix}q.g"

    def members_with_partitions() -> int:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        [description] = [f.result(timeout=20) for f in admin.describe_consumer_groups([group_id]).values()]
        return sum(1 for m in description.members if m.assignment.topic_partitions)

    async def main() -> None:
        async with prism.open_async(cfg) as one, prism.open_async(cfg) as two:
            q1, q2 = one.queue("q"), two.queue("q")
            await q1.publish("t", [msg("warm-up", "x")])  # creates the topic
            deadline = asyncio.get_running_loop().time() + 30
            while await asyncio.to_thread(members_with_partitions) < 2:
                assert asyncio.get_running_loop().time() < deadline, "the group never split its partitions"
                await q1.consume("t", "g", wait=0.2)
                await q2.consume("t", "g", wait=0.2)
            ids = await q1.publish("t", [msg(f"k{i}", str(i)) for i in range(30)])
            seen: dict[str, list[str]] = {"one": [], "two": []}
            deadline = asyncio.get_running_loop().time() + 60
            while len(set(seen["one"] + seen["two"]) & set(ids)) < len(ids):
                assert asyncio.get_running_loop().time() < deadline, "not every message arrived"
                for name, q in (("one", q1), ("two", q2)):
                    batch = await q.consume("t", "g", max_messages=50, wait=0.5)
                    seen[name] += [d.id for d in batch]
                    await q.ack("t", "g", batch)
            one_ids, two_ids = set(seen["one"]) & set(ids), set(seen["two"]) & set(ids)
            assert one_ids, "the second process received everything"
            assert two_ids, "the first process received everything"
            assert not one_ids & two_ids, "a message reached both processes"

    asyncio.run(main())


def test_a_small_buffer_pauses_fetching_and_loses_nothing(kafka_bootstrap: str, kafka_prefix: str) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        ids: list[str] = []
        for start in range(0, 60, 10):
            ids += await q.publish("t", [msg("", str(i)) for i in range(start, start + 10)])
        seen: list[str] = []
        while len(seen) < len(ids):
            got = await q.consume("t", "g", max_messages=7, wait=10)
            assert got, f"stalled after {len(seen)} of {len(ids)}"
            seen += [d.id for d in got]
            await q.ack("t", "g", got)
        assert sorted(seen) == sorted(ids)
        assert await q.consume("t", "g", wait=0.5) == []

    run(config(kafka_bootstrap, kafka_prefix, max_buffered_messages=4), body)


# -- leases ---------------------------------------------------------------------------


def test_unacked_delivery_comes_back_after_the_visibility_timeout(
    kafka_bootstrap: str, kafka_prefix: str
) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        [message_id] = await q.publish("t", [msg("", "x")])
        [first] = await q.consume("t", "g", wait=10)
        assert (first.id, first.attempt) == (message_id, 1)
        [again] = await q.consume("t", "g", wait=10)
        assert (again.id, again.attempt) == (message_id, 2)
        await q.ack("t", "g", [again])
        assert await q.consume("t", "g", wait=0.5) == []

    run(config(kafka_bootstrap, kafka_prefix, queue={"visibility_timeout": "300ms"}), body)


def test_closing_a_consumer_gives_back_what_it_did_not_ack(kafka_bootstrap: str, kafka_prefix: str) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")  # 10 min visibility: only the close can bring it back
        ids = await q.publish("t", [msg("", "a"), msg("", "b")])
        async with q.consumer("t", "g") as worker:
            got = await worker.consume(max_messages=2, wait=10)
            assert [d.id for d in got] == ids
            await worker.ack([got[0]])
        async with q.consumer("t", "g") as other:
            [back] = await other.consume(max_messages=10)
            assert (back.id, back.attempt) == (ids[1], 2)
            await other.ack([back])

    run(config(kafka_bootstrap, kafka_prefix), body)


def test_attempts_count_up_and_then_the_message_is_dead_lettered(
    kafka_bootstrap: str, kafka_prefix: str
) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")  # max_attempts 3
        [message_id] = await q.publish("jobs", [msg("k", "boom", headers={"h": "v"})])
        attempts = []
        for _ in range(3):
            [d] = await q.consume("jobs", "workers", wait=10)
            attempts.append(d.attempt)
            await q.nack("jobs", "workers", [d])
        assert attempts == [1, 2, 3]
        assert await q.consume("jobs", "workers", wait=0.3) == []
        [dead] = await q.consume("jobs.dlq", "ops", wait=10)
        assert (dead.key, dead.payload, dead.headers["h"]) == (b"k", b"boom", b"v")
        assert dead.headers[DEAD_LETTER_REASON] == b"max_attempts"
        assert dead.headers[DEAD_LETTER_ATTEMPTS] == b"3"
        assert dead.headers[DEAD_LETTER_ID] == message_id.encode()
        await q.ack("jobs.dlq", "ops", [dead])
        await q.ack("jobs", "workers", [message_id])  # acked by the move: acking again is fine

    run(config(kafka_bootstrap, kafka_prefix), body)


def test_messages_with_one_key_arrive_in_order_over_several_partitions(
    kafka_bootstrap: str, kafka_prefix: str
) -> None:
    keys = [f"key{i}" for i in range(6)]

    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        published: dict[str, list[str]] = {k: [] for k in keys}
        for round_ in range(4):
            ids = await q.publish("t", [msg(k, f"{k}-{round_}") for k in keys])
            for k, i in zip(keys, ids, strict=True):
                published[k].append(i)
        assert len({offset_of(i)[0] for ids in published.values() for i in ids}) > 1
        received: dict[str, list[str]] = {k: [] for k in keys}
        total = 0
        while total < 4 * len(keys):
            got = await q.consume("t", "g", max_messages=50, wait=10)
            assert got
            assert len({d.key for d in got}) == len(got)  # one in flight per key
            for d in got:
                received[d.key.decode()].append(d.id)
            total += len(got)
            await q.ack("t", "g", got[::-1])
        assert received == published

    run(config(kafka_bootstrap, kafka_prefix, partitions=4), body)


# -- ids ----------------------------------------------------------------------------


def test_unknown_ids_are_refused_and_change_nothing(kafka_bootstrap: str, kafka_prefix: str) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        ids = await q.publish("t", [msg("", "a"), msg("", "b")])
        [d] = await q.consume("t", "g", max_messages=1, wait=10)
        never = ids[1]  # published but not delivered to the group yet
        for bad in (["nonsense"], [never], [d.id, "0-99999999999999999999"]):
            with pytest.raises(InvalidArgument, match="unknown delivery ids"):
                await q.ack("t", "g", bad)
            with pytest.raises(InvalidArgument, match="unknown delivery ids"):
                await q.nack("t", "g", bad)
        with pytest.raises(InvalidArgument, match="unknown delivery ids"):
            await q.ack("t", "other-group", [d.id])
        # Nothing was acked by the refused calls: d is still leased, then ackable.
        await q.ack("t", "g", [d])
        await q.ack("t", "g", [d])

    run(config(kafka_bootstrap, kafka_prefix), body)


# -- commits, restarts and crashes ------------------------------------------------------


def test_commits_advance_only_over_the_contiguous_acked_prefix(
    kafka_bootstrap: str, kafka_prefix: str
) -> None:
    topic = f"{kafka_prefix}q.t"
    group = f"{kafka_prefix}q.g"

    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        ids = await q.publish("t", [msg("", str(i)) for i in range(5)])  # one call: one partition
        [(partition, base)] = {offset_of(ids[0])}
        assert [offset_of(i) for i in ids] == [(partition, base + i) for i in range(5)]
        got = await q.consume("t", "g", max_messages=10, wait=10)
        assert [d.id for d in got] == ids
        await q.ack("t", "g", [ids[0], ids[2], ids[3]])  # 1 is still out
        seen = await asyncio.to_thread(
            wait_for_commit, kafka_bootstrap, group, topic, 3, {partition: base + 1}
        )
        assert seen == {partition: base + 1}
        await q.ack("t", "g", [ids[1]])
        seen = await asyncio.to_thread(
            wait_for_commit, kafka_bootstrap, group, topic, 3, {partition: base + 4}
        )
        assert seen == {partition: base + 4}
        await q.ack("t", "g", [ids[4]])
        seen = await asyncio.to_thread(
            wait_for_commit, kafka_bootstrap, group, topic, 3, {partition: base + 5}
        )
        assert seen == {partition: base + 5}

    run(config(kafka_bootstrap, kafka_prefix), body)


def test_after_a_restart_unacked_come_back_and_acked_never_do(
    kafka_bootstrap: str, kafka_prefix: str
) -> None:
    cfg = config(kafka_bootstrap, kafka_prefix)

    async def first(db: prism.AsyncPrism) -> list[str]:
        q = db.queue("q")
        ids = await q.publish("t", [msg("", str(i)) for i in range(6)])
        ids += await q.publish("t", [msg("", str(i)) for i in range(6, 12)])
        got = await q.consume("t", "g", max_messages=20, wait=10)
        while len(got) < len(ids):
            got += await q.consume("t", "g", max_messages=20, wait=10)
        assert sorted(d.id for d in got) == sorted(ids)
        # Out of order, with gaps in both partitions' prefixes.
        await q.ack("t", "g", [i for n, i in enumerate(ids) if n % 3 != 1])
        return ids

    ids = run(cfg, first)
    unacked = {i for n, i in enumerate(ids) if n % 3 == 1}

    async def second(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        back: list[prism.Delivery] = []
        while len(back) < len(unacked):
            got = await q.consume("t", "g", max_messages=20, wait=10)
            assert got
            back += got
        assert {d.id for d in back} == unacked
        assert all(d.attempt == 2 for d in back)  # the count survives the restart (commit metadata)
        # Acked before the restart: known to the group, acking again is fine.
        await q.ack("t", "g", [i for i in ids if i not in unacked])
        await q.ack("t", "g", back)
        assert await q.consume("t", "g", max_messages=20, wait=1) == []

    run(cfg, second)


def test_a_killed_consumer_loses_nothing_and_repeats_nothing_committed(
    kafka_bootstrap: str, kafka_prefix: str
) -> None:
    cfg = config(kafka_bootstrap, kafka_prefix, session_timeout="6s")
    total = 60

    async def publish(db: prism.AsyncPrism) -> list[str]:
        q = db.queue("q")
        ids: list[str] = []
        for start in range(0, total, 10):
            ids += await q.publish("jobs", [msg(f"k{i % 7}", str(i)) for i in range(start, start + 10)])
        return ids

    ids = run(cfg, publish)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "kafka_worker.py"), kafka_bootstrap, kafka_prefix, "20", "5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked: list[str] = []
    held: list[str] = []
    committed: dict[int, int] = {}
    try:
        assert worker.stdout is not None
        for line in worker.stdout:  # ends early only if the worker dies
            if line.strip() == "holding":
                break
            if line.startswith("held "):
                held.append(line.split()[1])
            else:
                acked.append(line.strip())
        # Mid-stream: 20 acked (some committed), 5 leased and not acked, the rest waiting.
        deadline = time.monotonic() + 30
        while not committed and time.monotonic() < deadline:
            committed = committed_offsets(kafka_bootstrap, f"{kafka_prefix}q.g", f"{kafka_prefix}q.jobs", 3)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    assert (len(acked), len(held)) == (20, 5)
    assert committed, "the worker committed nothing before it was killed"
    committed = committed_offsets(kafka_bootstrap, f"{kafka_prefix}q.g", f"{kafka_prefix}q.jobs", 3)

    def is_committed(message_id: str) -> bool:
        partition, offset = offset_of(message_id)
        return offset < committed.get(partition, 0)

    unacked = set(ids) - set(acked)

    attempts: dict[str, int] = {}

    async def resume(db: prism.AsyncPrism) -> list[str]:
        q = db.queue("q")
        seen: list[str] = []
        # The dead worker holds its partitions until its session times out (6s).
        deadline = asyncio.get_running_loop().time() + 60
        while not unacked <= set(seen):
            assert asyncio.get_running_loop().time() < deadline, f"lost: {sorted(unacked - set(seen))}"
            got = await q.consume("jobs", "g", max_messages=50, wait=5)
            seen += [d.id for d in got]
            attempts.update((d.id, d.attempt) for d in got)
            await q.ack("jobs", "g", got)
        seen += [d.id for d in await q.consume("jobs", "g", max_messages=50, wait=1)]
        return seen

    redelivered = run(cfg, resume)
    assert not [i for i in redelivered if is_committed(i)]
    assert unacked <= set(redelivered)
    assert set(redelivered) <= set(ids)
    # The dead worker's deliveries count: the attempts went into the commit metadata.
    assert {attempts[i] for i in held} == {2}


# -- limits and errors ----------------------------------------------------------------


def test_a_message_at_the_size_limit_round_trips_and_can_be_dead_lettered(
    kafka_bootstrap: str, kafka_prefix: str
) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        limit = q.max_message_bytes
        assert limit == 1024 * 1024
        headers = {"h": b"x" * 100}
        payload = "p" * (limit - 3 - 1 - 100)
        [message_id] = await q.publish("t", [msg("key", payload, headers=headers)])
        with pytest.raises(LimitExceeded, match="max_message_bytes"):
            await q.publish("t", [msg("key", payload + "p", headers=headers)])
        [d] = await q.consume("t", "g", wait=10)
        assert (d.id, len(d.payload)) == (message_id, len(payload))
        await q.nack("t", "g", [d], requeue=False)  # the dead letter adds headers
        [dead] = await q.consume("t.dlq", "g", wait=10)
        assert dead.payload == d.payload
        assert dead.headers[DEAD_LETTER_REASON] == b"nack"

    run(config(kafka_bootstrap, kafka_prefix), body)


def test_a_topic_name_too_long_for_kafka_is_refused_clearly(kafka_bootstrap: str, kafka_prefix: str) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        with pytest.raises(LimitExceeded, match="Kafka's limit of 249") as caught:
            await q.publish("t" * 180, [msg("", "x")])
        assert caught.value.namespace == "q"
        assert "topic_prefix" in str(caught.value)

    run(config(kafka_bootstrap, kafka_prefix, topic_prefix=kafka_prefix + "p" * 70), body)


def test_an_unreachable_broker_fails_clearly_at_start() -> None:
    cfg = config("127.0.0.1:1", "x.", connect_timeout="1s", client_config={"log_level": "0"})

    async def body(db: prism.AsyncPrism) -> None:
        await db.queue("q").publish("t", [msg("", "x")])

    with pytest.raises(BackendError, match=r"127\.0\.0\.1:1.*no broker answered"):
        run(cfg, body)


def test_a_failed_delivery_is_a_clear_error_naming_the_topic(kafka_bootstrap: str, kafka_prefix: str) -> None:
    """A topic made outside Prism with a smaller record limit: the broker refuses
    the record, and publish says which topic and why instead of returning ids."""
    topic = f"{kafka_prefix}q.tiny"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    new = NewTopic(topic, num_partitions=1, replication_factor=1, config={"max.message.bytes": "2000"})
    admin.create_topics([new])[topic].result(timeout=30)

    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("q")
        [ok] = await q.publish("tiny", [msg("", "small")])
        with pytest.raises(BackendError, match=rf"{kafka_bootstrap}.*{topic}.*namespace 'q', topic 'tiny'"):
            await q.publish("tiny", [msg("", "x" * 10_000)])
        [d] = await q.consume("tiny", "g", wait=10)
        assert d.id == ok

    run(config(kafka_bootstrap, kafka_prefix), body)
