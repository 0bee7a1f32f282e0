"""The redis backend against the KeyValue SPI, called directly, on a real server."""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError
from redis.utils import HIREDIS_AVAILABLE

from prism.errors import BackendError
from prism.spi import KeyValueBackend, ReadQuery, StoredItem, Version
from prism_redis import KEYVALUE, RedisKeyValue, RedisSettings
from prism_redis.keyvalue import decode_row, encode_row, version_bytes

NS = "things"
REC = "rec"


def item(key: bytes, value: bytes, micros: int, nonce: str = "n", **extra: Any) -> StoredItem:
    return StoredItem(key=key, value=value, version=Version(micros, nonce), **extra)


def now_us() -> int:
    return time.time_ns() // 1000


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def opened(url: str, **settings: Any) -> AsyncIterator[RedisKeyValue]:
    # The account that deletes the test's keys afterwards (SCAN may be forbidden to ``url``'s user).
    admin_url = settings.pop("admin_url", url)
    settings.setdefault("key_prefix", f"prism-test-{uuid.uuid4().hex[:12]}")
    backend = RedisKeyValue("test", RedisSettings(url=url, **settings))
    await backend.start()
    try:
        await backend.provision(NS)
        yield backend
    finally:
        await backend.close()
        # The server is shared: delete this test's keys, never anything else.
        async with raw_client(admin_url) as client:
            keys = [k async for k in client.scan_iter(match=f"{settings['key_prefix']}:*", count=1000)]
            if keys:
                await client.delete(*keys)


def run_with(url: str, body: Callable[[RedisKeyValue], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        async with opened(url, **settings) as backend:
            await body(backend)

    asyncio.run(main())


async def read_all(backend: RedisKeyValue, record_id: str = REC) -> list[StoredItem]:
    return await backend.read(NS, record_id, ReadQuery(limit=100_000))


async def values(backend: RedisKeyValue, record_id: str = REC) -> dict[bytes, bytes]:
    return {row.key: row.value for row in await read_all(backend, record_id)}


def test_backend_satisfies_the_spi_protocol() -> None:
    assert isinstance(KEYVALUE.create("x", RedisSettings()), KeyValueBackend)


def test_hiredis_parses_replies(redis_url: str) -> None:
    assert HIREDIS_AVAILABLE

    async def body(b: RedisKeyValue) -> None:
        client = b._redis()
        conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            assert type(conn._parser).__name__ == "_AsyncHiredisParser"
        finally:
            await client.connection_pool.release(conn)

    run_with(redis_url, body)


def test_row_encoding_round_trips() -> None:
    rows = [
        item(b"", b"", 0, ""),
        item(b"\x00\xff", b"\x00" * 300, -5, "é\x00z", expires_at_us=123, tombstone=True),
        item(b"k", b"", 2**62, "n", chunk_count=7, chunk_set="ab" * 12, value_size=7 * 4096),
    ]
    for row in rows:
        assert decode_row(row.key, encode_row(row)) == row


def test_version_bytes_order_is_version_order() -> None:
    rng = random.Random(7)
    nonces = ["", "a", "a\x00", "a\x01", "b", "z", "é", "\uffff", "\U0001f600", "A"]
    versions = [
        Version(rng.choice([-(2**40), -1, 0, 1, 2, 2**52, 2**62]), rng.choice(nonces)) for _ in range(300)
    ]
    assert sorted(versions) == sorted(versions, key=version_bytes)


def test_last_write_wins(redis_url: str) -> None:
    async def body(b: RedisKeyValue) -> None:
        await b.write(NS, REC, [item(b"k", b"first", 10, "m")], atomic=False)
        await b.write(NS, REC, [item(b"k", b"older", 9, "z")], atomic=False)
        assert await values(b) == {b"k": b"first"}
        await b.write(NS, REC, [item(b"k", b"replay", 10, "m")], atomic=False)
        assert await values(b) == {b"k": b"first"}, "an equal version must change nothing"
        await b.write(NS, REC, [item(b"k", b"lower-nonce", 10, "a")], atomic=False)
        assert await values(b) == {b"k": b"first"}
        await b.write(NS, REC, [item(b"k", b"higher-nonce", 10, "n")], atomic=False)
        assert await values(b) == {b"k": b"higher-nonce"}
        await b.write(
            NS, REC, [item(b"k", b"", 11, "a", tombstone=True, expires_at_us=now_us() + 10**8)], atomic=False
        )
        await b.write(NS, REC, [item(b"k", b"late", 10, "z")], atomic=False)
        [row] = await read_all(b)
        assert row.tombstone
        assert row.version == Version(11, "a")

    run_with(redis_url, body)


def test_nonces_compare_bytewise_whatever_the_server_locale(redis_url: str) -> None:
    # Lua's `<` is strcoll: locale-dependent and blind past a NUL byte. The
    # scripts must order nonces exactly like Python orders them.
    nonces = ["a", "a\x00", "a\x00b", "B", "b", "é", "e", "\U0001f600", "Z"]

    async def body(b: RedisKeyValue) -> None:
        for i, nonce in enumerate(nonces):
            key = b"k%d" % i
            await b.write(NS, REC, [item(key, b"base", 5, nonce)], atomic=False)
            for other in nonces:
                await b.write(NS, REC, [item(key, other.encode(), 5, other)], atomic=False)
            [row] = await b.read(NS, REC, ReadQuery(limit=1, keys=(key,)))
            assert row.version == Version(5, max(nonces)), (nonce, row)

    run_with(redis_url, body)


BINARY_KEYS = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x00\x01",
    b"\x01",
    b"\x7f",
    b"\x7f\xff",
    b"\x80",
    b"\x80\x00",
    b"a",
    b"a\x00",
    b"ab",
    b"\xfe\xff",
    b"\xff",
    b"\xff\x00",
    b"\xff\xff",
    b"\xff\xff\xff",
]


def test_keys_come_back_in_unsigned_bytewise_order(redis_url: str) -> None:
    keys = list(BINARY_KEYS)
    random.Random(3).shuffle(keys)

    async def body(b: RedisKeyValue) -> None:
        await b.write(NS, REC, [item(k, b"v" + k, 1) for k in keys], atomic=False)
        assert [r.key for r in await read_all(b)] == sorted(BINARY_KEYS)
        assert all(r.value == b"v" + r.key for r in await read_all(b))

        async def keys_of(**query: Any) -> list[bytes]:
            return [r.key for r in await b.read(NS, REC, ReadQuery(**query))]

        ordered = sorted(BINARY_KEYS)
        for start in ordered:
            for end in ordered:
                expected = [k for k in ordered if start <= k < end]
                assert await keys_of(limit=1000, start=start, end=end) == expected, (start, end)
            after = [k for k in ordered if k > start]
            assert await keys_of(limit=1000, after=start) == after
            assert await keys_of(limit=2, after=start) == after[:2]
            assert await keys_of(limit=1000, start=b"\x7f", after=start) == [k for k in after if k >= b"\x7f"]
        assert await keys_of(limit=1000, end=b"\x00") == [b""]
        assert await keys_of(limit=1000, start=b"\xff") == [k for k in ordered if k >= b"\xff"]
        wanted = (b"\xff", b"missing", b"", b"\x00\x00", b"\x80")
        assert await keys_of(limit=1000, keys=wanted) == sorted(set(wanted) - {b"missing"})
        assert await keys_of(limit=2, keys=wanted) == [b"", b"\x00\x00"]
        assert await keys_of(limit=1000, keys=wanted, start=b"\x01", end=b"\xff") == [b"\x80"]

    run_with(redis_url, body)


def test_concurrent_writers_leave_the_greatest_version(redis_url: str) -> None:
    """Many writers race on the same keys with random versions, alone or in atomic
    batches, over many connections; each key must end at its greatest version,
    and every replaced chunked row is reported exactly once."""
    rng = random.Random(20261126)
    keys = [bytes([i]) for i in (0, 1, 0x7F, 0x80, 0xFF)] + [b"k%d" % i for i in range(10)]
    calls: list[tuple[list[StoredItem], bool]] = []
    best: dict[bytes, StoredItem] = {}
    for _ in range(400):
        batch: list[StoredItem] = []
        for key in rng.sample(keys, rng.choice([1, 1, 2, 5])):
            version = Version(rng.randint(1, 40), rng.choice("abcd"))
            chunked = rng.random() < 0.3
            row = StoredItem(
                key,
                b"" if chunked else f"{version.micros}{version.nonce}".encode(),
                version,
                chunk_count=2 if chunked else 0,
                chunk_set=uuid.uuid4().hex[:24] if chunked else "",
            )
            batch.append(row)
            if key not in best or version > best[key].version:
                best[key] = row
        calls.append((batch, len(batch) > 1 and rng.random() < 0.5))

    async def body(b: RedisKeyValue) -> None:
        replaced_lists = await asyncio.gather(
            *(b.write(NS, REC, rows, atomic=atomic) for rows, atomic in calls)
        )
        final = {r.key: r for r in await read_all(b)}
        assert final == best
        replaced = [r for rs in replaced_lists for r in rs]
        sets = [r.chunk_set for r in replaced]
        assert len(sets) == len(set(sets)), "a replaced chunked row was reported twice"
        assert all(r.chunk_count > 0 for r in replaced)
        assert not set(sets) & {r.chunk_set for r in final.values() if r.chunk_set}
        assert all(r.version < final[r.key].version for r in replaced)

    run_with(redis_url, body, max_connections=16)


def test_atomic_write_is_seen_whole_by_concurrent_readers(redis_url: str) -> None:
    keys = [b"a", b"b", b"c", b"d"]

    async def body(b: RedisKeyValue) -> None:
        stop = asyncio.Event()
        seen: set[frozenset[int]] = set()

        async def reader() -> None:
            while not stop.is_set():
                rows = await read_all(b)
                seen.add(frozenset(r.version.micros for r in rows))

        readers = [asyncio.create_task(reader()) for _ in range(4)]
        for v in range(1, 150):
            await b.write(NS, REC, [item(k, b"x", v) for k in keys], atomic=True)
            await asyncio.sleep(0)
        stop.set()
        await asyncio.gather(*readers)
        assert all(len(versions) <= 1 for versions in seen), sorted(map(sorted, seen))[:5]

    run_with(redis_url, body, max_connections=8)


def test_remove_only_deletes_the_matching_version_and_forgets_empty_records(redis_url: str) -> None:
    async def body(b: RedisKeyValue) -> None:
        await b.write(NS, REC, [item(b"a", b"1", 5), item(b"b", b"2", 5)], atomic=False)
        await b.remove(NS, REC, [(b"a", Version(4, "n")), (b"missing", Version(5, "n"))])
        assert await values(b) == {b"a": b"1", b"b": b"2"}
        await b.remove(NS, REC, [(b"a", Version(5, "n"))])
        assert await values(b) == {b"b": b"2"}
        assert await b.scan_records(NS, None, 10) == [REC]
        await b.remove(NS, REC, [(b"b", Version(5, "n"))])
        assert await values(b) == {}
        assert await b.scan_records(NS, None, 10) == []
        async with raw_client(b.settings.url) as client:
            assert await client.keys(f"{b.settings.key_prefix}:*") == []

    run_with(redis_url, body)


def test_scan_pages_through_records_in_utf8_order_without_keys_or_scan(redis_url: str) -> None:
    """The backend connects as an ACL user that may not run KEYS or SCAN (nor
    CONFIG, which the backend only reads to warn about risky server settings)."""
    ids = ["a", "b", "a b", "Z", "é", "e", "\U0001f600", "\uffff", "r:1", "r:10", "r:2", "日本"]
    user = f"prism-noscan-{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex

    async def main() -> None:
        async with raw_client(redis_url) as admin:
            await admin.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-keys", "-scan", "-config"
            )
            try:
                host_part = redis_url.split("://", 1)[1]
                url = f"redis://{user}:{password}@{host_part}"
                async with opened(url, admin_url=redis_url) as b:
                    for rid in ids:
                        await b.write(NS, rid, [item(b"k", b"v", 1)], atomic=False)
                    expected = sorted(ids, key=lambda s: s.encode("utf-8"))
                    assert await b.scan_records(NS, None, 100) == expected
                    paged: list[str] = []
                    after: str | None = None
                    while True:
                        page = await b.scan_records(NS, after, 5)
                        paged += page
                        if len(page) < 5:
                            break
                        after = page[-1]
                    assert paged == expected
                    assert await b.scan_records(NS, "e", 3) == [i for i in expected if i.encode() > b"e"][:3]
                    async with raw_client(url) as limited:
                        with pytest.raises(NoPermissionError):
                            await limited.keys("*")
            finally:
                await admin.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]

    asyncio.run(main())


def test_a_record_whose_rows_all_expire_is_removed_by_redis(redis_url: str) -> None:
    async def body(b: RedisKeyValue) -> None:
        prefix = b.settings.key_prefix
        soon = now_us() + 300_000
        await b.write(NS, "gone", [item(b"a", b"1", 1, expires_at_us=soon)], atomic=False)
        await b.write(
            NS, "kept", [item(b"a", b"1", 1, expires_at_us=soon), item(b"b", b"2", 1)], atomic=False
        )
        async with raw_client(b.settings.url) as client:
            assert await client.pttl(f"{prefix}:{NS}:h:gone") > 0
            assert await client.pttl(f"{prefix}:{NS}:h:kept") == -1, "a row without expiry keeps its record"
            await asyncio.sleep(0.6)
            assert (
                await client.exists(f"{prefix}:{NS}:z:gone", f"{prefix}:{NS}:h:gone", f"{prefix}:{NS}:m:gone")
                == 0
            )
            assert await values(b, "kept") == {b"a": b"1", b"b": b"2"}, (
                "the core hides expired rows, not Redis"
            )
            # The expired record's id is dropped from the record set on the next scan.
            assert await client.zrange(f"{prefix}:{NS}:records", 0, -1) == [b"gone", b"kept"]
            assert await b.scan_records(NS, None, 10) == ["kept"]
            assert await client.zrange(f"{prefix}:{NS}:records", 0, -1) == [b"kept"]
            # Once the last row without expiry is removed, Redis expires the rest.
            await b.remove(NS, "kept", [(b"b", Version(1, "n"))])
            assert (
                await client.pttl(f"{prefix}:{NS}:h:kept") == -2
                or await client.exists(f"{prefix}:{NS}:h:kept") == 0
            )
            # ...and a new row without expiry makes a record persistent again.
            later = now_us() + 60_000_000
            await b.write(NS, "again", [item(b"a", b"1", 1, expires_at_us=later)], atomic=False)
            assert await client.pttl(f"{prefix}:{NS}:h:again") > 0
            await b.write(NS, "again", [item(b"b", b"2", 1)], atomic=False)
            assert await client.pttl(f"{prefix}:{NS}:h:again") == -1
            assert await client.pttl(f"{prefix}:{NS}:z:again") == -1
            await b.remove(NS, "again", [(b"b", Version(1, "n"))])
            assert await client.pttl(f"{prefix}:{NS}:h:again") > 0

    run_with(redis_url, body, expiry_grace=timedelta(0))


def test_a_record_expires_only_after_its_latest_row(redis_url: str) -> None:
    async def body(b: RedisKeyValue) -> None:
        prefix = b.settings.key_prefix
        base = now_us()
        await b.write(NS, REC, [item(b"late", b"1", 1, expires_at_us=base + 5_000_000)], atomic=False)
        await b.write(NS, REC, [item(b"early", b"2", 1, expires_at_us=base + 200_000)], atomic=False)
        await asyncio.sleep(0.4)
        assert await values(b) == {b"late": b"1", b"early": b"2"}
        async with raw_client(b.settings.url) as client:
            ttl = await client.pttl(f"{prefix}:{NS}:z:{REC}")
            assert 60_000 < ttl <= 65_000, "the default grace is added on top of the latest expiry"

    run_with(redis_url, body)


def test_chunks_round_trip_and_expire_natively(redis_url: str) -> None:
    async def body(b: RedisKeyValue) -> None:
        key = b"\x00:weird:\xff"
        chunks = [bytes([i]) * 1000 for i in range(5)]
        await b.write_chunks(NS, REC, key, "set1", chunks, None)
        assert await b.read_chunks(NS, REC, key, "set1", 5) == chunks
        assert await b.read_chunks(NS, REC, key, "set1", 3) == chunks[:3]
        assert await b.read_chunks(NS, REC, key, "other", 5) == []
        assert await b.read_chunks(NS, REC, b"\x00:weird", "set1", 5) == []
        # A retry with fewer chunks leaves exactly what it wrote.
        await b.write_chunks(NS, REC, key, "set1", chunks[:2], None)
        assert await b.read_chunks(NS, REC, key, "set1", 5) == chunks[:2]
        await b.delete_chunks(NS, REC, key, "set1")
        await b.delete_chunks(NS, REC, key, "set1")
        assert await b.read_chunks(NS, REC, key, "set1", 5) == []
        await b.write_chunks(NS, REC, b"k", "set2", chunks, now_us() + 200_000)
        assert await b.read_chunks(NS, REC, b"k", "set2", 5) == chunks
        await asyncio.sleep(0.45)
        assert await b.read_chunks(NS, REC, b"k", "set2", 5) == []

    run_with(redis_url, body, expiry_grace=timedelta(0))


def test_namespaces_and_prefixes_are_isolated(redis_url: str) -> None:
    async def main() -> None:
        async with opened(redis_url) as one, opened(redis_url) as two:
            await one.write(NS, REC, [item(b"k", b"one", 1)], atomic=False)
            await one.write("other", REC, [item(b"k", b"other", 1)], atomic=False)
            assert await values(one) == {b"k": b"one"}
            assert await values(two) == {}
            assert await two.scan_records(NS, None, 10) == []
            assert [r.value for r in await one.read("other", REC, ReadQuery(limit=10))] == [b"other"]

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_server_fails_fast_with_a_clear_error() -> None:
    port = _free_port()
    backend = RedisKeyValue(
        "cache",
        RedisSettings(url=f"redis://user:s3cret@127.0.0.1:{port}/0", connect_timeout=timedelta(seconds=1)),
    )

    async def main() -> None:
        await asyncio.wait_for(backend.start(), 10)

    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        asyncio.run(main())
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "redis backend 'cache'" in message
    assert f"redis://127.0.0.1:{port}/0" in message
    assert "connect" in message.lower()
    assert "refused" in message.lower() or "error" in message.lower()
    assert "s3cret" not in message


def test_a_server_that_never_answers_fails_within_the_bound() -> None:
    # A listening socket that never replies: connecting works, PING hangs.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = RedisSettings(
            url=f"redis://127.0.0.1:{port}/0",
            connect_timeout=timedelta(milliseconds=300),
            socket_timeout=timedelta(milliseconds=300),
            retries=0,
        )
        backend = RedisKeyValue("silent", settings)
        started = time.monotonic()
        with pytest.raises(BackendError) as info:
            asyncio.run(asyncio.wait_for(backend.start(), 10))
        assert time.monotonic() - started < 3
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "'silent'" in str(info.value)


def test_operations_after_close_are_refused(redis_url: str) -> None:
    async def main() -> None:
        async with opened(redis_url) as b:
            pass
        with pytest.raises(BackendError, match="not started"):
            await b.read(NS, REC, ReadQuery(limit=1))
        with pytest.raises(BackendError, match="not started"):
            await b.write(NS, REC, [item(b"k", b"v", 1)], atomic=False)

    asyncio.run(main())


def test_durable_is_checked_against_the_server(redis_url: str) -> None:
    async def main() -> None:
        async with raw_client(redis_url) as client:
            config = await client.config_get("append*")
        really = config.get("appendonly") == "yes" and config.get("appendfsync") == "always"
        backend = RedisKeyValue(
            "d", RedisSettings(url=redis_url, durable=True, key_prefix="prism-test-durable")
        )
        if really:
            await backend.start()
            await backend.close()
        else:
            with pytest.raises(BackendError, match="appendfsync"):
                await backend.start()

    asyncio.run(main())
