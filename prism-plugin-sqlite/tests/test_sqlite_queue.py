"""The sqlite Queue backend through the public API (``prism.open_async`` and
``db.queue``): fan-out, competing consumers, redelivery, attempts, dead
letters, ordering by key, delays, unknown ids, and what survives reopening the
file. Time-dependent checks wait with deadlines (consume's own ``wait``), never
with bare sleeps."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

import prism
from prism import capabilities
from prism.errors import InvalidArgument
from prism.models import now_micros
from prism.plugins import load_plugins
from prism.queue.namespace import DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_REASON
from prism.spi import OutgoingMessage, ReceiveRequest
from prism_sqlite import QUEUE, SqliteQueue, SqliteSettings
from prism_sqlite.queue import format_id, parse_id

T = TypeVar("T")

MiB = 1024 * 1024


def config(path: Path, **backend: Any) -> dict[str, Any]:
    return {
        "backends": {"local": {"plugin": "sqlite", "path": str(path), **backend}},
        "namespaces": {
            # Short visibility for redelivery tests.
            "fast": {
                "abstraction": "queue",
                "queue": {"visibility_timeout": "200ms", "max_attempts": 3, "max_wait": "20s"},
            },
            # Long visibility: anything that comes back early came back on purpose.
            "slow": {"abstraction": "queue", "queue": {"visibility_timeout": "10m"}},
            "kv": {"abstraction": "keyvalue"},
        },
    }


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "q.db"


def run(path: Path, body: Callable[[prism.AsyncPrism], Awaitable[T]]) -> T:
    async def main() -> T:
        async with prism.open_async(config(path)) as db:
            return await body(db)

    return asyncio.run(main())


def msg(key: str, payload: str, **kw: Any) -> prism.Message:
    return prism.Message(key, payload, **kw)


def table_rows(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return list(conn.execute(sql, params))


# -- registration ------------------------------------------------------------------------


def test_registered_with_both_queue_capabilities_and_the_keyvalue_settings() -> None:
    registry = load_plugins(disabled=()).registry
    assert registry.queue["sqlite"] is QUEUE
    assert QUEUE.settings_type is registry.keyvalue["sqlite"].settings_type is SqliteSettings
    assert QUEUE.capabilities == {capabilities.QUEUE_ORDERED_BY_KEY, capabilities.QUEUE_DELAY}
    durable = QUEUE.traits(SqliteSettings())
    assert (durable.durability, durable.max_message_bytes) == ("durable", 16 * MiB)
    assert QUEUE.traits(SqliteSettings(path=":memory:")).durability == "ephemeral"
    # Room above the core's default 1 MiB namespace limit for dead-letter headers.
    assert durable.max_message_bytes > MiB + 1024


def test_ids_sort_in_publish_order_and_foreign_ids_are_not_ours() -> None:
    ids = [format_id(seq) for seq in (0, 1, 9, 10, 99, 100, 12345678)]
    assert sorted(ids) == ids
    assert [parse_id(i) for i in ids] == [0, 1, 9, 10, 99, 100, 12345678]
    for foreign in ("", "1", "no-such-id", "0-0", " " + ids[1], ids[1] + "0", "١" * 16, "+" + "0" * 15):
        assert parse_id(foreign) is None


# -- publish and consume ---------------------------------------------------------------


def test_publish_and_consume_round_trip_everything(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        before = datetime.now(UTC)
        binary = bytes(range(256))
        ids = await q.publish(
            "orders",
            [msg("k1", "one", headers={"trace": "abc", "bin": binary, "empty": b""}), msg("", "two")],
        )
        assert len(ids) == len(set(ids)) == 2
        assert ids == sorted(ids)
        got = await q.consume("orders", "billing", max_messages=10)
        assert [d.id for d in got] == ids
        first = got[0]
        assert (first.key, first.payload) == (b"k1", b"one")
        assert first.headers == {"trace": b"abc", "bin": binary, "empty": b""}
        assert (first.topic, first.group, first.attempt) == ("orders", "billing", 1)
        assert before - timedelta(seconds=1) <= first.published_at <= datetime.now(UTC) + timedelta(seconds=1)
        assert got[1].headers == {}
        await q.ack("orders", "billing", got)
        assert await q.consume("orders", "billing") == []
        more = await q.publish("orders", [msg("", "three")])
        assert more[0] > ids[-1]

    run(db_path, body)


def test_every_group_sees_every_message_and_topics_are_separate(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", str(i)) for i in range(5)])
        other = await q.publish("u", [msg("", "u")])
        for group in ("a", "b", "c"):
            got = await q.consume("t", group, max_messages=10)
            assert [d.id for d in got] == ids
            await q.ack("t", group, got)
        [u] = await q.consume("u", "a")
        assert (u.id, u.payload) == (other[0], b"u")
        # The same topic name in another namespace is another topic.
        assert await db.queue("fast").consume("t", "a") == []

    run(db_path, body)


def test_competing_consumers_share_and_never_hold_the_same_message(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", str(i)) for i in range(10)])
        async with q.consumer("t", "g") as one, q.consumer("t", "g") as two:
            a = await one.consume(max_messages=4)
            b = await two.consume(max_messages=10)
            assert [d.id for d in a] == ids[:4]
            assert [d.id for d in b] == ids[4:]
            assert await one.consume() == []  # everything is in flight
            await one.ack(a)
            await two.ack(b)

    run(db_path, body)


def test_waiting_consumer_wakes_on_publish_in_this_process(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> float:
        q = db.queue("fast")
        await q.consume("t", "g")  # provisioned, so the wait below starts at once
        started = time.monotonic()
        waiting = asyncio.ensure_future(q.consume("t", "g", wait=15))
        await asyncio.sleep(0)
        await q.publish("t", [msg("", "hello")])
        got = await waiting
        assert [d.payload for d in got] == [b"hello"]
        return time.monotonic() - started

    # Not a speed check: a consumer that only gave up at its deadline takes 15s.
    assert run(db_path, body) < 7.5


def test_waiting_consumer_sees_a_publish_through_another_connection(db_path: Path) -> None:
    """Two backend objects are two connections to the file, as two processes
    are: no event links them, so the wait must notice the commit itself."""

    async def body() -> float:
        settings = SqliteSettings(path=db_path)
        consumer_side, publisher_side = SqliteQueue("a", settings), SqliteQueue("b", settings)
        ns = prism.config.NamespaceConfig(abstraction="queue")
        for backend in (consumer_side, publisher_side):
            await backend.start()
            await backend.provision("ns", ns)
        try:
            assert await consumer_side.receive("ns", ReceiveRequest("t", "g", "c", 10, 10**7, 0)) == []
            started = time.monotonic()
            waiting = asyncio.ensure_future(
                consumer_side.receive("ns", ReceiveRequest("t", "g", "c", 10, 10**7, 15))
            )
            await asyncio.sleep(0.05)  # not needed for correctness: lets the wait begin first
            [message_id] = await publisher_side.publish("ns", "t", [OutgoingMessage(b"", b"hi", ())])
            [lease] = await waiting
            assert (lease.message.id, lease.message.payload, lease.attempt) == (message_id, b"hi", 1)
            return time.monotonic() - started
        finally:
            await consumer_side.close()
            await publisher_side.close()

    # Not a speed check: without the change check it would return only at 15s.
    assert asyncio.run(body()) < 7.5


def test_wait_returns_empty_at_the_deadline(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        assert await q.consume("t", "g", wait=timedelta(milliseconds=50)) == []

    run(db_path, body)


# -- redelivery and attempts --------------------------------------------------------------


def test_unacked_delivery_comes_back_after_the_visibility_timeout(db_path: Path) -> None:
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

    run(db_path, body)


def test_closing_a_consumer_gives_back_what_it_did_not_ack(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")  # 10 min visibility: only the close can bring it back
        ids = await q.publish("t", [msg("", "a"), msg("", "b")])
        async with q.consumer("t", "g") as worker:
            got = await worker.consume(max_messages=2)
            await worker.ack([got[0]])
        async with q.consumer("t", "g") as other:
            [back] = await other.consume(max_messages=10)
            assert (back.id, back.attempt) == (ids[1], 2)
            await other.ack([back])

    run(db_path, body)


def test_attempts_count_up_and_then_the_message_is_dead_lettered(db_path: Path) -> None:
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
        [dead] = await q.consume("jobs.dlq", "ops")
        assert (dead.key, dead.payload, dead.attempt) == (b"k", b"boom", 1)
        assert dead.headers["h"] == b"v"
        assert dead.headers[DEAD_LETTER_REASON] == b"max_attempts"
        assert dead.headers[DEAD_LETTER_ATTEMPTS] == b"3"
        assert dead.headers[DEAD_LETTER_GROUP] == b"workers"
        assert dead.headers["prism-dead-letter-id"] == message_id.encode()
        await q.ack("jobs.dlq", "ops", [dead])
        await q.ack("jobs", "workers", [message_id])  # acknowledged by the move: fine again

    run(db_path, body)


def test_timeouts_count_as_attempts_towards_dead_letters(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        await q.publish("t", [msg("", "x")])
        seen = []
        for _ in range(3):
            [d] = await q.consume("t", "g", wait=5)
            seen.append(d.attempt)  # never acked: its lease runs out
        assert seen == [1, 2, 3]
        assert await q.consume("t", "g", wait=0.5) == []
        [dead] = await q.consume("t.dlq", "g")
        assert dead.payload == b"x"

    run(db_path, body)


def test_nack_requeue_true_and_false(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", "again"), msg("", "poison")])
        first = await q.consume("t", "g", max_messages=2)
        await q.nack("t", "g", [first[0]], requeue=True)
        await q.nack("t", "g", [first[1]], requeue=False)
        [back] = await q.consume("t", "g", max_messages=10)
        assert (back.id, back.attempt) == (ids[0], 2)
        [dead] = await q.consume("t.dlq", "g")
        assert (dead.payload, dead.headers[DEAD_LETTER_REASON]) == (b"poison", b"nack")
        await q.ack("t", "g", [back])
        # Acknowledged ids (below the low-water mark by now) are left alone.
        await q.nack("t", "g", ids, requeue=True)
        await q.nack("t", "g", ids, requeue=False)
        assert await q.consume("t", "g") == []
        assert await q.consume("t.dlq", "g") == []

    run(db_path, body)


# -- acks and unknown ids -------------------------------------------------------------------


def test_unknown_ids_are_reported_and_change_nothing(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", "a"), msg("", "b"), msg("", "c")])
        [a] = await q.consume("t", "g", max_messages=1)
        for bad in ("no-such-id", ids[1], format_id(10**6), "0" + ids[0]):
            with pytest.raises(InvalidArgument) as info:
                await q.ack("t", "g", [a.id, bad])
            assert repr(bad) in str(info.value)
            assert "never delivered" in str(info.value)
        with pytest.raises(InvalidArgument):
            await q.ack("t", "other", [a.id])  # delivered to another group only
        with pytest.raises(InvalidArgument):
            await q.ack("u", "g", [a.id])  # another topic
        with pytest.raises(InvalidArgument):
            await q.nack("t", "g", [a.id, "nope"])
        with pytest.raises(InvalidArgument):
            await q.nack("t", "g", [a.id, "nope"], requeue=False)
        # Nothing was acknowledged or released: a is still in flight, b and c wait.
        got = await q.consume("t", "g", max_messages=10)
        assert [d.id for d in got] == ids[1:]
        await q.ack("t", "g", [a, *got])
        # Acknowledged and forgotten below the low-water mark, still known.
        await q.ack("t", "g", ids)
        with pytest.raises(InvalidArgument):
            await q.ack("t", "g", [format_id(3)])  # the next id, not published yet

    run(db_path, body)


def test_acked_prefix_is_skipped_and_its_rows_forgotten(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("", str(i)) for i in range(20)])
        got = await q.consume("t", "g", max_messages=20)
        # Ack out of order, leaving a gap at 5: the mark stops there.
        await q.ack("t", "g", got[6:])
        await q.ack("t", "g", got[:5])
        assert table_rows(db_path, "SELECT low FROM queue_groups WHERE grp = 'g'") == [(5,)]
        await q.ack("t", "g", [got[5]])
        assert table_rows(db_path, "SELECT low FROM queue_groups WHERE grp = 'g'") == [(20,)]
        assert table_rows(db_path, "SELECT count(*) FROM queue_deliveries WHERE grp = 'g'") == [(0,)]
        assert await q.consume("t", "g") == []
        [late] = await q.publish("t", [msg("", "late")])
        assert late > ids[-1]
        assert [d.id for d in await q.consume("t", "g")] == [late]

    run(db_path, body)


# -- ordering and delays --------------------------------------------------------------------


def test_messages_with_one_key_arrive_in_order_one_at_a_time(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        assert capabilities.QUEUE_ORDERED_BY_KEY in q.capabilities
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
        got = await q.consume("t", "g", max_messages=10)  # the close gave a2 back
        assert [d.payload for d in got] == [b"a2"]
        await q.ack("t", "g", got)
        assert [d.payload for d in await q.consume("t", "g", max_messages=10)] == [b"a3"]

    run(db_path, body)


def test_a_waiting_consumer_wakes_when_an_ack_frees_its_key(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        await q.publish("t", [msg("a", "1"), msg("a", "2")])
        [one] = await q.consume("t", "g", max_messages=10)
        waiting = asyncio.ensure_future(q.consume("t", "g", max_messages=10, wait=15))
        await asyncio.sleep(0)
        await q.ack("t", "g", [one])
        assert [d.payload for d in await waiting] == [b"2"]

    run(db_path, body)


def test_deliver_after_holds_a_message_back(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("fast")
        assert capabilities.QUEUE_DELAY in q.capabilities
        later = datetime.now(UTC) + timedelta(milliseconds=300)
        await q.publish(
            "t",
            [
                msg("k", "delayed", deliver_after=timedelta(milliseconds=300)),
                msg("", "at", deliver_after=later),
                msg("k", "now"),  # the delayed message with its key does not hold it back
                msg("", "past", deliver_after=datetime.now(UTC) - timedelta(hours=1)),
            ],
        )
        got = await q.consume("t", "g", max_messages=10)
        assert [d.payload for d in got] == [b"now", b"past"]
        await q.ack("t", "g", got)
        seen: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            batch = await q.consume("t", "g", max_messages=10, wait=10)
            seen += [d.payload for d in batch]
            await q.ack("t", "g", batch)
        assert sorted(seen) == [b"at", b"delayed"]
        assert datetime.now(UTC) >= later

    run(db_path, body)


# -- durability ----------------------------------------------------------------------------


def test_messages_groups_and_attempts_survive_reopening_the_file(db_path: Path) -> None:
    async def first_life(db: prism.AsyncPrism) -> list[str]:
        q = db.queue("slow")
        ids = await q.publish("t", [msg("k", "a"), msg("", "b"), msg("", "c", headers={"h": "v"})])
        got = await q.consume("t", "g", max_messages=2)
        await q.ack("t", "g", [got[1]])  # a stays leased (for 10 minutes)
        await db.keyvalue("kv").put_items("rec", {b"k": b"v"})  # KeyValue shares the file
        return ids

    ids = run(db_path, first_life)

    async def second_life(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        # a is still leased, b acknowledged: c is next, never delivered before.
        [c] = await q.consume("t", "g", max_messages=10)
        assert (c.id, c.payload, c.headers, c.attempt) == (ids[2], b"c", {"h": b"v"}, 1)
        await q.nack("t", "g", [ids[0]])  # known from the first life
        [a] = await q.consume("t", "g", max_messages=10)
        assert (a.id, a.attempt) == (ids[0], 2)
        assert [d.id for d in await q.consume("t", "other", max_messages=10)] == ids
        assert (await q.publish("t", [msg("", "d")]))[0] > ids[-1]
        assert [i.value for i in (await db.keyvalue("kv").get_items("rec")).items] == [b"v"]

    run(db_path, second_life)
    names = {row[0] for row in table_rows(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"queue_messages", "queue_groups", "queue_deliveries", "kv_kv"} <= names


def test_a_large_message_round_trips(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")  # default namespace limit: 1 MiB
        payload = bytes(range(256)) * (MiB // 256 - 1)
        await q.publish("t", [prism.Message(b"k", payload)])
        [d] = await q.consume("t", "g")
        assert d.payload == payload

    run(db_path, body)


def test_lease_rows_record_the_consumer_and_the_expiry(db_path: Path) -> None:
    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        await q.publish("t", [msg("", "x")])
        before = now_micros()
        async with q.consumer("t", "g") as worker:
            await worker.consume()
            [(consumer, until, attempt)] = table_rows(
                db_path, "SELECT consumer, lease_until_us, attempt FROM queue_deliveries"
            )
            assert (consumer, attempt) == (worker.id, 1)
            assert until >= before + 600 * 10**6
        # Closed: the lease is gone, the attempt stays.
        assert table_rows(db_path, "SELECT consumer, lease_until_us, attempt FROM queue_deliveries") == [
            (None, None, 1)
        ]

    run(db_path, body)


def test_an_in_memory_database_is_an_ephemeral_queue() -> None:
    async def main() -> None:
        cfg = {
            "backends": {"scratch": {"plugin": "sqlite", "path": ":memory:"}},
            "namespaces": {"jobs": {"abstraction": "queue"}},
        }
        async with prism.open_async(cfg) as db:
            q = db.queue("jobs")
            assert q.traits.durability == "ephemeral"
            ids = await q.publish("t", [msg("", "x")])
            got = await q.consume("t", "g")
            assert [d.id for d in got] == ids
            await q.ack("t", "g", got)

    asyncio.run(main())


def test_a_consume_that_finds_nothing_writes_nothing(db_path: Path) -> None:
    """Waiters in other processes wake when the file changes, so an empty look
    must not change it, or idle consumers would keep waking one another."""

    async def body(db: prism.AsyncPrism) -> None:
        q = db.queue("slow")
        await q.publish("t", [msg("", "x")])
        [d] = await q.consume("t", "g")  # the group exists; its one message is leased
        with closing(sqlite3.connect(db_path)) as watcher:

            def version() -> int:
                return int(watcher.execute("PRAGMA data_version").fetchone()[0])

            before = version()
            assert await q.consume("t", "g", max_messages=10) == []
            assert await q.consume("t", "g", wait=0.05) == []
            assert version() == before
            await q.ack("t", "g", [d])  # a real change is seen
            assert version() != before

    run(db_path, body)
