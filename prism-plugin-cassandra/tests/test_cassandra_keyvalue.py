"""The cassandra backend through its SPI: encodings (no server needed), and key
order, LWW under concurrent writers, TTLs, chunks and errors on a real node."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from datetime import timedelta

import pytest
from cassandra_support import run_with, settings_for

from prism.errors import BackendError
from prism.spi import ReadQuery, StoredItem, Version
from prism_cassandra import CassandraKeyValue, CassandraSettings
from prism_cassandra.keyvalue import (
    MAX_TTL_SECONDS,
    _Statements,
    chunk_bounds,
    chunk_key,
    decode_row,
    encode_nonce,
    encode_row,
    range_clause,
    ttl_seconds,
)

NS = "things"
REC = "r"
BINARY_KEYS = [
    b"\x00",
    b"\x00\x00",
    b"\x00\x01",
    b"\x01",
    b"\x7f",
    b"\x80",
    b"\xfe\xff",
    b"\xff",
    b"\xff\x00",
]


def item(key: bytes, value: bytes, micros: int, nonce: str = "n", **extra: object) -> StoredItem:
    return StoredItem(key, value, Version(micros, nonce), value_size=len(value), **extra)  # type: ignore[arg-type]


# -- pure Python: what the statements carry -----------------------------------------------


def test_nonce_encoding_keeps_string_order() -> None:
    rng = random.Random(7)
    alphabet = ["\x00", "\x01", "a", "b", "~", "\x7f", "é", "\uffff", "😀"]
    nonces = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(600)}
    nonces |= {"nonce-a", "nonce-b", "nonce-a\x00", "nonce-", "~server-00"}
    by_string = sorted(nonces)
    by_bytes = sorted(nonces, key=encode_nonce)
    assert by_string == by_bytes


def test_a_greater_nonce_makes_a_greater_cell_whatever_follows() -> None:
    # Cassandra keeps the greater cell value on a timestamp tie: the cell of the
    # greater nonce must be greater even when its value is smaller.
    low = encode_row(item(b"k", b"\xff" * 10, 5, "nonce-a"))
    high = encode_row(item(b"k", b"", 5, "nonce-b"))
    prefix = encode_row(item(b"k", b"\xff", 5, "nonce"))
    assert prefix < low < high


@pytest.mark.parametrize(
    "row",
    [
        item(b"k", b"value", 1, "n"),
        item(b"k", b"", 2**52, "with\x00nul", expires_at_us=123),
        StoredItem(b"\x00", b"", Version(9, "t"), expires_at_us=0, tombstone=True),
        StoredItem(b"k", b"", Version(9, "c"), chunk_count=3, chunk_set="abc123", value_size=3 * 2**20),
        item(b"k", bytes(range(256)), 3, "ünï"),
    ],
)
def test_rows_round_trip(row: StoredItem) -> None:
    assert decode_row(row.key, encode_row(row), row.version.micros) == row


def test_ttl_rounds_up_never_early() -> None:
    now = 1_000_000_000
    assert ttl_seconds(None, now) == 0  # no TTL
    assert ttl_seconds(now + 1, now) == 2
    assert ttl_seconds(now + 1_000_000, now) == 2
    assert ttl_seconds(now + 1_000_001, now) == 3
    assert ttl_seconds(now - 5_000_000, now) == 1  # already expired: gone soon, never "no TTL"
    assert ttl_seconds(now + (MAX_TTL_SECONDS + 5) * 1_000_000, now) == 0  # beyond Cassandra: core hides it


def test_range_clause_merges_lower_bounds() -> None:
    assert range_clause(ReadQuery(limit=1)) == ("", [])
    assert range_clause(ReadQuery(limit=1, start=b"b", end=b"d")) == (
        " AND key >= ? AND key < ?",
        [b"b", b"d"],
    )
    assert range_clause(ReadQuery(limit=1, start=b"b", after=b"c")) == (" AND key > ?", [b"c"])
    assert range_clause(ReadQuery(limit=1, start=b"c", after=b"b")) == (" AND key >= ?", [b"c"])
    assert range_clause(ReadQuery(limit=1, start=b"c", after=b"c")) == (" AND key > ?", [b"c"])


def test_every_range_statement_is_prepared_at_provision() -> None:
    statements = _Statements("ks", "things")
    prepared = set(statements.everything())
    for start in (None, b"a"):
        for end in (None, b"z"):
            for after in (None, b"0", b"m"):
                clause, _ = range_clause(ReadQuery(limit=1, start=start, end=end, after=after))
                assert statements.range_select(clause) in prepared


def test_chunk_keys_of_a_set_stay_inside_its_bounds() -> None:
    lo, hi = chunk_bounds("ab")
    keys = [chunk_key("ab", i) for i in (0, 1, 255, 256, 2**32 - 1)]
    assert keys == sorted(keys)
    assert all(lo <= k < hi for k in keys)
    # A set whose id extends another's never falls into its range.
    assert not lo <= chunk_key("ab0", 0) < hi
    assert not lo <= chunk_key("a", 0) < hi


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="contact point"):
        CassandraSettings(contact_points=[])
    with pytest.raises(ValueError, match="keyspace"):
        CassandraSettings(keyspace="bad-name")
    with pytest.raises(ValueError, match="max_value_bytes"):
        CassandraSettings(max_item_bytes=2**20, max_value_bytes=2**10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="username and password"):
        CassandraSettings(username="u")


# -- connection errors: no server needed ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_is_a_clear_bounded_error() -> None:
    port = _free_port()

    async def main() -> None:
        backend = CassandraKeyValue(
            "cass-down", CassandraSettings(port=port, connect_timeout=timedelta(seconds=1))
        )
        began = time.monotonic()
        with pytest.raises(BackendError) as info:
            await backend.start()
        elapsed = time.monotonic() - began
        message = str(info.value)
        assert "cassandra backend 'cass-down'" in message
        assert f"127.0.0.1:{port}" in message
        assert "refused" in message.lower() or "unable to connect" in message.lower()
        assert elapsed < 10, f"took {elapsed:.1f}s"
        await backend.close()

    asyncio.run(main())


def test_calls_before_start_fail_clearly() -> None:
    async def main() -> None:
        backend = CassandraKeyValue("t", CassandraSettings())
        with pytest.raises(BackendError, match="not started"):
            await backend.read(NS, REC, ReadQuery(limit=1))
        await backend.close()  # closing an unstarted backend is harmless

    asyncio.run(main())


def test_bad_namespace_names_never_reach_cql() -> None:
    with pytest.raises(BackendError, match="not a valid namespace"):
        CassandraKeyValue("t", CassandraSettings())._sql('x"; DROP KEYSPACE prism; --')


# -- against the server -------------------------------------------------------------------------


def test_binary_keys_come_back_in_unsigned_bytewise_order(
    cassandra_contact: str, module_keyspace: str
) -> None:
    async def body(b: CassandraKeyValue) -> None:
        await b.provision(NS)
        shuffled = BINARY_KEYS[:]
        random.Random(3).shuffle(shuffled)
        await b.write(NS, "order", [item(k, k, 1) for k in shuffled], atomic=False)
        rows = await b.read(NS, "order", ReadQuery(limit=100))
        assert [r.key for r in rows] == sorted(BINARY_KEYS) == BINARY_KEYS
        ranged = await b.read(NS, "order", ReadQuery(limit=100, start=b"\x00\x01", end=b"\xff"))
        assert [r.key for r in ranged] == [b"\x00\x01", b"\x01", b"\x7f", b"\x80", b"\xfe\xff"]
        paged = await b.read(NS, "order", ReadQuery(limit=2, start=b"\x00", after=b"\x7f"))
        assert [r.key for r in paged] == [b"\x80", b"\xfe\xff"]
        picked = await b.read(
            NS, "order", ReadQuery(limit=3, keys=(b"\xff", b"\x00", b"nope", b"\x80", b"\x01"))
        )
        assert [r.key for r in picked] == [b"\x00", b"\x01", b"\x80"]

    run_with(cassandra_contact, module_keyspace, body)


def test_equal_or_older_versions_change_nothing(cassandra_contact: str, module_keyspace: str) -> None:
    async def body(b: CassandraKeyValue) -> None:
        await b.provision(NS)
        await b.write(NS, "lww", [item(b"k", b"v10b", 10, "b")], atomic=False)
        for older in (
            item(b"k", b"replay", 10, "b"),
            item(b"k", b"v10a", 10, "a"),
            item(b"k", b"v9z", 9, "z"),
        ):
            assert await b.write(NS, "lww", [older], atomic=False) == []
        [row] = await b.read(NS, "lww", ReadQuery(limit=5))
        assert (row.value, row.version) == (b"v10b", Version(10, "b"))
        await b.write(NS, "lww", [item(b"k", b"v10c", 10, "c")], atomic=False)
        [row] = await b.read(NS, "lww", ReadQuery(limit=5))
        assert (row.value, row.version) == (b"v10c", Version(10, "c"))

    run_with(cassandra_contact, module_keyspace, body)


def _plan(seed: int) -> tuple[list[list[tuple[str, list[StoredItem]]]], dict[tuple[str, bytes], StoredItem]]:
    """Random versions of every key split between writers, each in its own
    shuffled order and batching; and the LWW winner of each key."""
    rng = random.Random(seed)
    records = ("r1", "r2")
    keys = [b"\x00", b"\xff", *(bytes([i, j]) for i in (1, 0x80) for j in range(8))]
    shares: list[list[tuple[str, StoredItem]]] = [[], [], []]
    winners: dict[tuple[str, bytes], StoredItem] = {}
    for record_id in records:
        for key in keys:
            # A narrow time range, so that equal times with different nonces occur.
            versions = {Version(rng.randint(1, 5), rng.choice(["a", "b", "c", "bb"])) for _ in range(8)}
            for version in versions:
                tombstone = rng.random() < 0.2
                value = b"" if tombstone else f"{version.micros}{version.nonce}".encode() * rng.randint(1, 3)
                row = StoredItem(key, value, version, tombstone=tombstone, value_size=len(value))
                shares[rng.randrange(len(shares))].append((record_id, row))
                current = winners.get((record_id, key))
                if current is None or version > current.version:
                    winners[(record_id, key)] = row
    plans: list[list[tuple[str, list[StoredItem]]]] = []
    for share in shares:
        rng.shuffle(share)
        plan: list[tuple[str, list[StoredItem]]] = []
        for record_id, row in share:
            batch = plan[-1][1] if plan and plan[-1][0] == record_id else None
            if batch is not None and len(batch) < 3 and all(r.key != row.key for r in batch):
                batch.append(row)
            else:
                plan.append((record_id, [row]))
        plans.append(plan)
    return plans, winners


def test_last_write_wins_under_concurrent_writers(cassandra_contact: str, module_keyspace: str) -> None:
    """Three backends (three driver clusters) write conflicting versions at once;
    every key must end with its greatest version, ties on time broken by nonce."""
    plans, winners = _plan(seed=20241126)
    settings = settings_for(cassandra_contact, module_keyspace)

    async def writer(plan: list[tuple[str, list[StoredItem]]]) -> None:
        backend = CassandraKeyValue("writer", settings)
        await backend.start()
        try:
            await backend.provision("race")
            # Several calls in flight per writer, too.
            for i in range(0, len(plan), 4):
                await asyncio.gather(
                    *(backend.write("race", r, rows, atomic=len(rows) > 1) for r, rows in plan[i : i + 4])
                )
        finally:
            await backend.close()

    async def main() -> dict[tuple[str, bytes], StoredItem]:
        await asyncio.gather(*(writer(plan) for plan in plans))
        backend = CassandraKeyValue("check", settings)
        await backend.start()
        try:
            state: dict[tuple[str, bytes], StoredItem] = {}
            for record_id in ("r1", "r2"):
                for row in await backend.read("race", record_id, ReadQuery(limit=1000)):
                    state[(record_id, row.key)] = row
            assert await backend.scan_records("race", None, 10) == ["r1", "r2"]
            return state
        finally:
            await backend.close()

    state = asyncio.run(main())
    assert state.keys() == winners.keys()
    wrong = {k: (state[k], w) for k, w in winners.items() if state[k] != w}
    assert not wrong, f"{len(wrong)} keys do not hold their LWW winner, e.g. {next(iter(wrong.items()))}"


def test_write_returns_replaced_chunked_rows(cassandra_contact: str, module_keyspace: str) -> None:
    async def body(b: CassandraKeyValue) -> None:
        await b.provision(NS)
        chunked = StoredItem(b"big", b"", Version(5, "n"), chunk_count=2, chunk_set="s1", value_size=6)
        await b.write_chunks(NS, "chunks", b"big", "s1", [b"abc", b"def"], None)
        assert await b.write(NS, "chunks", [chunked], atomic=False) == []
        assert await b.read_chunks(NS, "chunks", b"big", "s1", 2) == [b"abc", b"def"]
        assert await b.write(NS, "chunks", [item(b"big", b"old", 4)], atomic=False) == []
        assert await b.write(NS, "chunks", [item(b"big", b"new", 6)], atomic=False) == [chunked]
        await b.delete_chunks(NS, "chunks", b"big", "s1")
        assert await b.read_chunks(NS, "chunks", b"big", "s1", 2) == []
        await b.delete_chunks(NS, "chunks", b"big", "missing")  # not an error

    run_with(cassandra_contact, module_keyspace, body)


def test_read_chunks_never_returns_a_gap(cassandra_contact: str, module_keyspace: str) -> None:
    async def body(b: CassandraKeyValue) -> None:
        await b.provision(NS)
        await b.write_chunks(NS, "gap", b"k", "s", [b"0", b"1", b"2"], None)
        session = b._live_session()
        await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: session.execute(
                f'DELETE FROM "{module_keyspace}"."{NS}" WHERE record_id = %s AND kind = 1 AND key = %s',
                ("gap", chunk_key("s", 1)),
            ),
        )
        assert await b.read_chunks(NS, "gap", b"k", "s", 3) == [b"0"]

    run_with(cassandra_contact, module_keyspace, body)


def test_rows_and_chunks_expire_natively(cassandra_contact: str, module_keyspace: str) -> None:
    async def body(b: CassandraKeyValue) -> None:
        await b.provision(NS)
        now = time.time_ns() // 1000
        soon = now + 200_000
        await b.write_chunks(NS, "ttl", b"k", "s", [b"x"], soon)
        await b.write(
            NS,
            "ttl",
            [
                item(b"a", b"1", now, expires_at_us=soon),
                item(b"b", b"2", now),
                item(b"t", b"", now, tombstone=True, expires_at_us=soon),
            ],
            atomic=True,
        )
        assert len(await b.read(NS, "ttl", ReadQuery(limit=10))) == 3
        await asyncio.sleep(2.5)  # whole seconds, rounded up, plus one (see ttl_seconds)
        assert [r.key for r in await b.read(NS, "ttl", ReadQuery(limit=10))] == [b"b"]
        assert await b.read_chunks(NS, "ttl", b"k", "s", 1) == []

    run_with(cassandra_contact, module_keyspace, body)


def test_remove_deletes_only_the_matching_version(cassandra_contact: str, module_keyspace: str) -> None:
    async def body(b: CassandraKeyValue) -> None:
        await b.provision(NS)
        await b.write(NS, "rm", [item(b"a", b"1", 10, "x"), item(b"b", b"2", 10, "x")], atomic=True)
        await b.write(NS, "rm", [item(b"b", b"3", 11, "x")], atomic=False)
        await b.remove(
            NS, "rm", [(b"a", Version(10, "x")), (b"b", Version(10, "x")), (b"zz", Version(1, "x"))]
        )
        rows = await b.read(NS, "rm", ReadQuery(limit=10))
        assert [(r.key, r.value) for r in rows] == [(b"b", b"3")]

    run_with(cassandra_contact, module_keyspace, body)


def test_scan_lists_records_in_utf8_order(cassandra_contact: str, module_keyspace: str) -> None:
    ids = ["b", "a", "ä", "z", "é", "😀", "A", "a\x00", "ab"]

    async def body(b: CassandraKeyValue) -> None:
        await b.provision("scan_order")
        for record_id in ids:
            await b.write("scan_order", record_id, [item(b"k", b"v", 1)], atomic=False)
        expected = sorted(ids, key=lambda r: r.encode("utf-8"))
        assert await b.scan_records("scan_order", None, 100) == expected
        assert await b.scan_records("scan_order", "a", 3) == expected[expected.index("a") + 1 :][:3]

    run_with(cassandra_contact, module_keyspace, body)


def test_two_namespaces_are_isolated(cassandra_contact: str, module_keyspace: str) -> None:
    async def body(b: CassandraKeyValue) -> None:
        await b.provision("iso_a")
        await b.provision("iso_b")
        await b.write("iso_a", "r", [item(b"k", b"a", 1)], atomic=False)
        assert await b.read("iso_b", "r", ReadQuery(limit=10)) == []
        assert await b.scan_records("iso_b", None, 10) == []

    run_with(cassandra_contact, module_keyspace, body)


def test_a_server_that_never_answers_is_a_bounded_error() -> None:
    # Accepts TCP connections (the kernel does, from the backlog) but never
    # speaks CQL: the driver's handshake must time out, not hang.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = int(listener.getsockname()[1])

        async def main() -> None:
            backend = CassandraKeyValue(
                "cass-silent", CassandraSettings(port=port, connect_timeout=timedelta(seconds=1))
            )
            began = time.monotonic()
            with pytest.raises(BackendError) as info:
                await backend.start()
            elapsed = time.monotonic() - began
            assert "cassandra backend 'cass-silent'" in str(info.value)
            assert f"127.0.0.1:{port}" in str(info.value)
            assert elapsed < 10, f"took {elapsed:.1f}s"
            await backend.close()

        asyncio.run(main())


def test_an_unprovisioned_namespace_is_named_in_the_error(
    cassandra_contact: str, module_keyspace: str
) -> None:
    async def body(b: CassandraKeyValue) -> None:
        await b.provision(NS)  # creates the keyspace, not the table below
        with pytest.raises(BackendError, match="not provisioned"):
            await b.read("never_made", REC, ReadQuery(limit=1))

    run_with(cassandra_contact, module_keyspace, body)


def test_reads_are_not_cut_at_a_driver_page(cassandra_contact: str, module_keyspace: str) -> None:
    # The driver pages at 5000 rows by default; a read must still return all it was asked for.
    async def body(b: CassandraKeyValue) -> None:
        await b.provision(NS)
        keys = [i.to_bytes(2, "big") for i in range(5200)]
        await b.write(NS, "wide", [item(k, b"", 1) for k in keys], atomic=False)
        rows = await b.read(NS, "wide", ReadQuery(limit=6000))
        assert [r.key for r in rows] == keys

    run_with(cassandra_contact, module_keyspace, body)


def test_tie_caveat_an_expiring_row_wins_a_tie_on_time(cassandra_contact: str, module_keyspace: str) -> None:
    """Pins the documented deviation (README, "Ties"): at equal microseconds
    Cassandra prefers a row with a TTL over one without, before it looks at the
    nonce. Without TTLs on either side the greater nonce wins, as the SPI asks."""

    async def body(b: CassandraKeyValue) -> None:
        await b.provision(NS)
        far = time.time_ns() // 1000 + 3_600_000_000
        tomb = StoredItem(b"k", b"", Version(50, "a"), expires_at_us=far, tombstone=True)
        await b.write(NS, "tie", [tomb], atomic=False)
        await b.write(NS, "tie", [item(b"k", b"put", 50, "b")], atomic=False)
        [row] = await b.read(NS, "tie", ReadQuery(limit=5))
        assert row == tomb  # the SPI would keep the put (nonce "b" > "a")

    run_with(cassandra_contact, module_keyspace, body)
