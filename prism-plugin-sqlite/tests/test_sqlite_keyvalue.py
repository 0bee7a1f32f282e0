"""The sqlite backend against the KeyValue SPI, called directly."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from prism import capabilities
from prism.errors import BackendError
from prism.spi import KeyValueBackend, ReadQuery, StoredItem, Version
from prism.units import ByteSize
from prism_sqlite import KEYVALUE, SqliteKeyValue, SqliteSettings

NS = "things"
REC = "rec"


def item(key: bytes, value: bytes, micros: int, nonce: str = "n", **extra: Any) -> StoredItem:
    return StoredItem(key=key, value=value, version=Version(micros, nonce), **extra)


@asynccontextmanager
async def opened(path: str | Path, namespace: str = NS, **settings: Any) -> AsyncIterator[SqliteKeyValue]:
    backend = SqliteKeyValue("test", SqliteSettings(path=str(path), **settings))
    await backend.start()
    try:
        await backend.provision(namespace)
        yield backend
    finally:
        await backend.close()


def run_with(path: str | Path, body: Callable[[SqliteKeyValue], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        async with opened(path, **settings) as backend:
            await body(backend)

    asyncio.run(main())


async def read_all(backend: SqliteKeyValue, record_id: str = REC, namespace: str = NS) -> list[StoredItem]:
    return await backend.read(namespace, record_id, ReadQuery(limit=10_000))


async def values(backend: SqliteKeyValue, record_id: str = REC) -> dict[bytes, bytes]:
    return {row.key: row.value for row in await read_all(backend, record_id)}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "kv.db"


def test_backend_satisfies_the_spi_protocol(db: Path) -> None:
    assert isinstance(KEYVALUE.create("x", SqliteSettings(path=str(db))), KeyValueBackend)


def test_last_write_wins(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        await b.write(NS, REC, [item(b"k", b"first", 10, "m")], atomic=False)
        await b.write(NS, REC, [item(b"k", b"older", 9, "z")], atomic=False)
        assert await values(b) == {b"k": b"first"}
        await b.write(NS, REC, [item(b"k", b"replay", 10, "m")], atomic=False)
        assert await values(b) == {b"k": b"first"}, "an equal version must change nothing"
        await b.write(NS, REC, [item(b"k", b"same-time-lower-nonce", 10, "a")], atomic=False)
        assert await values(b) == {b"k": b"first"}
        await b.write(NS, REC, [item(b"k", b"same-time-higher-nonce", 10, "n")], atomic=False)
        assert await values(b) == {b"k": b"same-time-higher-nonce"}
        await b.write(NS, REC, [item(b"k", b"newer", 11, "a")], atomic=False)
        assert await values(b) == {b"k": b"newer"}
        # A tombstone wins like any row, and then keeps a late older write out.
        await b.write(NS, REC, [item(b"k", b"", 12, "a", tombstone=True, expires_at_us=99)], atomic=False)
        await b.write(NS, REC, [item(b"k", b"resurrected", 11, "z")], atomic=False)
        [row] = await read_all(b)
        assert row.tombstone
        assert row.version == Version(12, "a")

    run_with(db, body)


def test_last_write_wins_within_one_call(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        rows = [item(b"k", b"v3", 3), item(b"k", b"v1", 1), item(b"k", b"v5", 5), item(b"k", b"v4", 4)]
        await b.write(NS, REC, rows, atomic=True)
        assert await values(b) == {b"k": b"v5"}

    run_with(db, body)


def test_rows_round_trip_every_field(db: Path) -> None:
    rows = [
        item(b"", b"", 1, "", expires_at_us=None),
        item(b"big", b"", 2, "\u00e9\U0001f600", chunk_count=3, chunk_set="cs-1", value_size=3_000_000),
        item(b"gone", b"", 3, "x", tombstone=True, expires_at_us=1_700_000_000_000_000),
        item(b"v", bytes(range(256)), 4, "y", expires_at_us=5, value_size=256),
    ]

    async def body(b: SqliteKeyValue) -> None:
        await b.write(NS, REC, rows, atomic=False)
        assert await read_all(b) == rows

    run_with(db, body)


def test_keys_are_ordered_bytewise_unsigned(db: Path) -> None:
    keys = [b"\xff", b"\x00", b"a", b"\x00\x00", b"\x7f", b"\x80", b"a\x00", b"", b"\xff\xff", b"\x01", b"A"]

    async def body(b: SqliteKeyValue) -> None:
        await b.write(NS, REC, [item(k, k, 1) for k in keys], atomic=False)
        got = [row.key for row in await read_all(b)]
        assert got == sorted(keys)
        assert got[:3] == [b"", b"\x00", b"\x00\x00"]
        assert got[-2:] == [b"\xff", b"\xff\xff"]
        between = await b.read(NS, REC, ReadQuery(limit=100, start=b"\x00", end=b"\xff"))
        assert [row.key for row in between] == [k for k in sorted(keys) if b"\x00" <= k < b"\xff"]
        after = await b.read(NS, REC, ReadQuery(limit=100, after=b"\x80"))
        assert [row.key for row in after] == [b"\xff", b"\xff\xff"]

    run_with(db, body)


def _random_key(rng: random.Random) -> bytes:
    alphabet = [0, 1, 0x41, 0x7F, 0x80, 0xFE, 0xFF]
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 3)))


def test_read_query_matches_a_reference_model(db: Path) -> None:
    rng = random.Random(1234)
    stored = sorted({_random_key(rng) for _ in range(200)})
    absent = [k + b"\x42" for k in stored[:20]]

    def reference(query: ReadQuery) -> list[bytes]:
        return [k for k in stored if query.matches(k)][: query.limit]

    queries = [
        ReadQuery(limit=1000),
        ReadQuery(limit=0),
        ReadQuery(limit=5),
        ReadQuery(limit=1000, keys=()),
        ReadQuery(limit=1000, keys=(b"\xff", b"\x00", b"\xff", b"nope")),
    ]
    for _ in range(300):
        pick = rng.choice
        queries.append(
            ReadQuery(
                limit=rng.choice([1, 2, 7, 50, 1000]),
                keys=tuple(rng.sample(stored + absent, rng.randint(0, 12))) if rng.random() < 0.3 else None,
                start=pick(stored + absent) if rng.random() < 0.5 else None,
                end=pick(stored + absent) if rng.random() < 0.5 else None,
                after=pick(stored + absent) if rng.random() < 0.5 else None,
            )
        )

    async def body(b: SqliteKeyValue) -> None:
        await b.write(NS, REC, [item(k, b"v" + k, 1) for k in stored], atomic=False)
        for query in queries:
            rows = await b.read(NS, REC, query)
            assert [row.key for row in rows] == reference(query), query
            assert all(row.value == b"v" + row.key for row in rows)

    run_with(db, body)


def test_after_cursor_pages_through_a_range(db: Path) -> None:
    keys = [i.to_bytes(2, "big") for i in range(0, 1000, 3)]

    async def body(b: SqliteKeyValue) -> None:
        await b.write(NS, REC, [item(k, b"x", 1) for k in keys], atomic=True)
        start, end = (30).to_bytes(2, "big"), (900).to_bytes(2, "big")
        seen: list[bytes] = []
        after: bytes | None = None
        while True:
            page = await b.read(NS, REC, ReadQuery(limit=7, start=start, end=end, after=after))
            if not page:
                break
            assert len(page) <= 7
            seen += [row.key for row in page]
            after = page[-1].key
        assert seen == [k for k in keys if start <= k < end]

    run_with(db, body)


def test_long_key_lists_are_looked_up_in_batches(db: Path) -> None:
    keys = [i.to_bytes(3, "big") for i in range(1500)]

    async def body(b: SqliteKeyValue) -> None:
        await b.write(NS, REC, [item(k, b"x", 1) for k in keys[::2]], atomic=True)
        wanted = tuple(reversed(keys))
        rows = await b.read(NS, REC, ReadQuery(limit=10_000, keys=wanted))
        assert [row.key for row in rows] == keys[::2]
        limited = await b.read(NS, REC, ReadQuery(limit=600, keys=wanted, after=keys[10]))
        assert [row.key for row in limited] == [k for k in keys[::2] if k > keys[10]][:600]

    run_with(db, body)


def test_records_and_namespaces_are_separate(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        await b.provision("other")
        await b.write(NS, "r1", [item(b"k", b"ns-r1", 1)], atomic=False)
        await b.write(NS, "r2", [item(b"k", b"ns-r2", 1)], atomic=False)
        await b.write("other", "r1", [item(b"k", b"other-r1", 1)], atomic=False)
        assert await values(b, "r1") == {b"k": b"ns-r1"}
        assert await values(b, "r2") == {b"k": b"ns-r2"}
        assert [r.value for r in await read_all(b, "r1", "other")] == [b"other-r1"]
        assert await read_all(b, "r3") == []

    run_with(db, body)


def test_remove_deletes_only_an_unchanged_version(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        await b.write(
            NS, REC, [item(b"a", b"1", 5, "x"), item(b"b", b"2", 5, "x"), item(b"c", b"3", 5)], atomic=True
        )
        await b.remove(
            NS,
            REC,
            [
                (b"a", Version(5, "x")),  # matches: removed
                (b"b", Version(4, "x")),  # older: kept
                (b"c", Version(5, "y")),  # same time, other nonce: kept
                (b"missing", Version(5, "x")),  # nothing there: no error
            ],
        )
        assert await values(b) == {b"b": b"2", b"c": b"3"}
        await b.remove(NS, REC, [])
        await b.remove(NS, "no-such-record", [(b"b", Version(5, "x"))])
        assert await values(b) == {b"b": b"2", b"c": b"3"}

    run_with(db, body)


def test_scan_records_orders_by_utf8_bytes(db: Path) -> None:
    # Code-point order equals UTF-8 byte order; UTF-16 order would differ
    # between U+FFFD and U+1F600.
    ids = ["b", "a", "ab", "A", "\u00e9", "\ufffd", "\U0001f600", "z z", "0", "a" * 300]

    async def body(b: SqliteKeyValue) -> None:
        for n, record_id in enumerate(ids):
            await b.write(NS, record_id, [item(bytes([i]), b"x", 1) for i in range(n % 3 + 1)], atomic=True)
        expected = sorted(ids, key=lambda r: r.encode("utf-8"))
        assert await b.scan_records(NS, None, 100) == expected
        assert await b.scan_records(NS, None, 3) == expected[:3]
        assert await b.scan_records(NS, expected[2], 4) == expected[3:7]
        assert await b.scan_records(NS, "a", 100) == [r for r in expected if r.encode() > b"a"]
        assert await b.scan_records(NS, expected[-1], 10) == []
        assert await b.scan_records(NS, None, 0) == []

        paged: list[str] = []
        after: str | None = None
        while page := await b.scan_records(NS, after, 4):
            paged += page
            after = page[-1]
        assert paged == expected

        # A record with no rows left is not listed.
        await b.remove(NS, "ab", [(bytes([i]), Version(1, "n")) for i in range(3)])
        assert "ab" not in await b.scan_records(NS, None, 100)

    run_with(db, body)


def test_scan_of_an_empty_namespace(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        assert await b.scan_records(NS, None, 10) == []
        assert await b.scan_records(NS, "x", 10) == []

    run_with(db, body)


def test_chunks_round_trip_and_delete(db: Path) -> None:
    chunks = [bytes([i]) * (1000 + i) for i in range(5)]

    async def body(b: SqliteKeyValue) -> None:
        await b.write_chunks(NS, REC, b"\x00k", "set-1", chunks, expires_at_us=123)
        await b.write_chunks(NS, REC, b"\x00k", "set-2", [b"other"], expires_at_us=None)
        await b.write_chunks(NS, "rec2", b"\x00k", "set-1", [b"elsewhere"], expires_at_us=None)
        assert await b.read_chunks(NS, REC, b"\x00k", "set-1", 5) == chunks
        assert await b.read_chunks(NS, REC, b"\x00k", "set-1", 2) == chunks[:2]
        assert await b.read_chunks(NS, REC, b"\x00k", "set-1", 9) == chunks
        assert await b.read_chunks(NS, REC, b"\x00k", "set-1", 0) == []
        assert await b.read_chunks(NS, REC, b"\x00k", "set-2", 1) == [b"other"]
        assert await b.read_chunks(NS, REC, b"\x00", "set-1", 5) == []

        # Rewriting a set with fewer chunks leaves exactly those.
        await b.write_chunks(NS, REC, b"\x00k", "set-1", chunks[:2], expires_at_us=123)
        assert await b.read_chunks(NS, REC, b"\x00k", "set-1", 5) == chunks[:2]

        await b.delete_chunks(NS, REC, b"\x00k", "set-1")
        assert await b.read_chunks(NS, REC, b"\x00k", "set-1", 5) == []
        assert await b.read_chunks(NS, REC, b"\x00k", "set-2", 1) == [b"other"]
        assert await b.read_chunks(NS, "rec2", b"\x00k", "set-1", 1) == [b"elsewhere"]
        await b.delete_chunks(NS, REC, b"\x00k", "set-1")  # deleting a missing set is fine

    run_with(db, body)


def test_read_chunks_stops_at_a_gap(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        await b.write_chunks(NS, REC, b"k", "s", [b"0", b"1", b"2"], expires_at_us=None)
        with closing(sqlite3.connect(db, isolation_level=None)) as raw:
            raw.execute(f'DELETE FROM "kvc_{NS}" WHERE idx = 1')
        assert await b.read_chunks(NS, REC, b"k", "s", 3) == [b"0"]

    run_with(db, body)


def test_write_returns_the_replaced_chunked_rows(db: Path) -> None:
    chunked_v1 = item(b"big", b"", 1, chunk_count=2, chunk_set="s1", value_size=10)
    chunked_v2 = item(b"big", b"", 2, chunk_count=2, chunk_set="s2", value_size=10)
    plain_v3 = item(b"big", b"small", 3, value_size=5)

    async def body(b: SqliteKeyValue) -> None:
        assert await b.write(NS, REC, [chunked_v1, item(b"p", b"x", 1)], atomic=False) == []
        assert await b.write(NS, REC, [item(b"p", b"y", 2)], atomic=False) == []  # not chunked
        assert await b.write(NS, REC, [item(b"big", b"old", 0)], atomic=False) == []  # lost LWW
        assert await b.write(NS, REC, [chunked_v1], atomic=False) == []  # replay
        assert await b.write(NS, REC, [chunked_v2], atomic=False) == [chunked_v1]
        assert await b.write(NS, REC, [plain_v3], atomic=False) == [chunked_v2]
        assert await b.write(NS, REC, [], atomic=True) == []

        # Within one call, a chunked row written and then replaced is reported too.
        v4 = item(b"big", b"", 4, chunk_count=1, chunk_set="s4")
        v5 = item(b"big", b"", 5, chunk_count=1, chunk_set="s5")
        assert await b.write(NS, REC, [v5, v4], atomic=True) == []
        v6 = item(b"big", b"", 6, chunk_count=1, chunk_set="s6")
        v7 = item(b"big", b"", 7, chunk_count=1, chunk_set="s7")
        assert await b.write(NS, REC, [v6, v7], atomic=True) == [v5, v6]

    run_with(db, body)


def test_a_failing_call_leaves_nothing_behind(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        await b.write(NS, REC, [item(b"a", b"old", 1)], atomic=True)
        # SQLite integers are 64-bit: the second row fails after the first was applied.
        with pytest.raises(OverflowError):
            await b.write(NS, REC, [item(b"a", b"new", 2), item(b"b", b"x", 2**70)], atomic=True)
        assert await values(b) == {b"a": b"old"}
        await b.write(NS, REC, [item(b"a", b"new", 2)], atomic=True)
        assert await values(b) == {b"a": b"new"}

    run_with(db, body)


def test_provision_is_idempotent(db: Path) -> None:
    async def main() -> None:
        async with opened(db) as b:
            await b.provision(NS)
            await b.write(NS, REC, [item(b"k", b"v", 1)], atomic=False)
            await b.provision(NS)
        async with opened(db) as b:
            await b.provision(NS)
            assert await values(b) == {b"k": b"v"}

    asyncio.run(main())


def test_an_unprovisioned_namespace_is_a_clear_error(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        with pytest.raises(BackendError, match="not provisioned"):
            await b.read("never", REC, ReadQuery(limit=1))

    run_with(db, body)


def test_data_survives_close_and_reopen(db: Path) -> None:
    async def main() -> None:
        async with opened(db) as b:
            await b.write(NS, REC, [item(b"k", b"kept", 7, "n", expires_at_us=10**18)], atomic=True)
            await b.write_chunks(NS, REC, b"k2", "s", [b"c0", b"c1"], expires_at_us=None)
        async with opened(db) as b:
            assert await read_all(b) == [item(b"k", b"kept", 7, "n", expires_at_us=10**18)]
            assert await b.read_chunks(NS, REC, b"k2", "s", 2) == [b"c0", b"c1"]
            await b.write(NS, REC, [item(b"k", b"stale", 6, "z")], atomic=True)
            assert await values(b) == {b"k": b"kept"}

    asyncio.run(main())


def test_database_uses_wal_and_the_configured_sync(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        def pragmas(conn: sqlite3.Connection) -> tuple[str, int]:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            sync = conn.execute("PRAGMA synchronous").fetchone()[0]
            return mode, sync

        assert await b._call(pragmas) == ("wal", 2)  # 2 is FULL

    run_with(db, body)
    run_with(db, lambda b: _expect_sync(b, 1), synchronous="normal")


async def _expect_sync(b: SqliteKeyValue, level: int) -> None:
    assert await b._call(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) == level


def test_relative_path_is_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    async def body(b: SqliteKeyValue) -> None:
        await b.write(NS, REC, [item(b"k", b"v", 1)], atomic=False)
        assert b.path == str(tmp_path / "deep" / "er" / "data.db")

    run_with("deep/er/data.db", body)
    assert (tmp_path / "deep" / "er" / "data.db").is_file()


def test_memory_database_works_and_is_ephemeral() -> None:
    async def main() -> None:
        async with opened(":memory:") as b:
            await b.write(NS, REC, [item(b"k", b"v", 1)], atomic=True)
            assert await values(b) == {b"k": b"v"}
        async with opened(":memory:") as b:
            assert await values(b) == {}

    asyncio.run(main())
    assert KEYVALUE.traits(SqliteSettings(path=":memory:")).durability == "ephemeral"


def test_traits_and_capabilities() -> None:
    traits = KEYVALUE.traits(SqliteSettings(max_item_bytes=ByteSize(1000), max_value_bytes=ByteSize(5000)))
    assert traits.durability == "durable"
    assert traits.consistency == "strong"
    assert (traits.max_item_bytes, traits.max_value_bytes) == (1000, 5000)
    assert KEYVALUE.capabilities == {capabilities.KV_ATOMIC_MUTATE, capabilities.KV_SCAN}
    assert capabilities.KV_NATIVE_TTL not in KEYVALUE.capabilities


def test_a_held_write_lock_times_out_with_a_backend_error(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        holder = sqlite3.connect(db, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(BackendError, match="locked"):
                await b.write(NS, REC, [item(b"k", b"v", 1)], atomic=False)
            # Readers are not blocked by a writer in WAL mode.
            assert await read_all(b) == []
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await b.write(NS, REC, [item(b"k", b"v", 1)], atomic=False)
        assert await values(b) == {b"k": b"v"}

    run_with(db, body, busy_timeout=timedelta(milliseconds=200))


def test_a_write_waits_for_a_lock_released_in_time(db: Path) -> None:
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode=WAL")
    locked = threading.Event()
    release = threading.Event()

    def hold() -> None:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("CREATE TABLE IF NOT EXISTS unrelated (x)")
        locked.set()
        release.wait(timeout=60)
        holder.execute("COMMIT")

    async def body(b: SqliteKeyValue) -> None:
        thread = threading.Thread(target=hold)
        thread.start()
        try:
            assert locked.wait(timeout=60)
            pending = asyncio.ensure_future(b.write(NS, REC, [item(b"k", b"v", 1)], atomic=False))
            # The write cannot finish while the lock is held, whatever the timing.
            done, _ = await asyncio.wait({pending}, timeout=0.05)
            assert not done
            release.set()
            await pending
        finally:
            release.set()
            thread.join(timeout=60)
            holder.close()
        assert await values(b) == {b"k": b"v"}

    run_with(db, body, busy_timeout=timedelta(seconds=60))


def test_calls_before_start_or_after_close_fail_clearly(db: Path) -> None:
    async def main() -> None:
        backend = SqliteKeyValue("t", SqliteSettings(path=str(db)))
        with pytest.raises(BackendError, match="not started"):
            await backend.read(NS, REC, ReadQuery(limit=1))
        await backend.start()
        await backend.start()  # a second start is harmless
        await backend.provision(NS)
        await backend.close()
        await backend.close()
        with pytest.raises(BackendError, match="not started"):
            await backend.read(NS, REC, ReadQuery(limit=1))

    asyncio.run(main())


def test_unopenable_path_is_a_backend_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    async def main() -> None:
        backend = SqliteKeyValue("t", SqliteSettings(path=str(blocker / "sub" / "kv.db")))
        with pytest.raises(BackendError, match="sqlite backend 't'"):
            await backend.start()
        await backend.close()

    asyncio.run(main())


def test_bad_namespace_names_never_reach_sql(db: Path) -> None:
    async def body(b: SqliteKeyValue) -> None:
        with pytest.raises(BackendError, match="not a valid namespace"):
            await b.provision('x"; DROP TABLE kv_things; --')

    run_with(db, body)
