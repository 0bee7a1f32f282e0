"""The dynamodb backend through its SPI, against a real DynamoDB-compatible
server (moto's server): binary key order, the records index, key limits, and
bounded connection errors."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import attrs
import pytest

import prism
from prism.errors import BackendError, LimitExceeded
from prism.spi import ReadQuery, StoredItem, Version
from prism_dynamodb import DynamoKeyValue, DynamoSettings

_T = TypeVar("_T")

NS = "ns"


def _settings(url: str, **extra: object) -> DynamoSettings:
    return DynamoSettings(
        endpoint_url=url,
        table_prefix=f"pu{uuid.uuid4().hex[:10]}_",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        **extra,  # type: ignore[arg-type]
    )


def _run(url: str, body: Callable[[DynamoKeyValue], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        backend = DynamoKeyValue("ddb", _settings(url))
        await backend.start()
        try:
            await backend.provision(NS)
            return await body(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def _row(key: bytes, micros: int = 1, nonce: str = "n", value: bytes = b"v") -> StoredItem:
    return StoredItem(key=key, value=value, version=Version(micros, nonce), value_size=len(value))


# Unsigned bytewise order, the edges above all: DynamoDB must compare binary
# sort keys as unsigned bytes (0x80 and 0xff after 0x7f, a prefix first).
EDGE_KEYS = [
    b"\x00",
    b"\x00\x00",
    b"\x00\x01",
    b"\x01",
    b"\x7f",
    b"\x80",
    b"\xfe",
    b"\xff",
    b"\xff\x00",
    b"\xff\xff",
]


def test_binary_keys_come_back_in_unsigned_byte_order(dynamodb_url: str) -> None:
    async def body(kv: DynamoKeyValue) -> None:
        await kv.write(NS, "r", [_row(k) for k in reversed(EDGE_KEYS)], atomic=False)
        everything = await kv.read(NS, "r", ReadQuery(limit=100))
        assert [r.key for r in everything] == EDGE_KEYS
        ranged = await kv.read(NS, "r", ReadQuery(limit=100, start=b"\x00\x01", end=b"\xff\x00"))
        assert [r.key for r in ranged] == [b"\x00\x01", b"\x01", b"\x7f", b"\x80", b"\xfe", b"\xff"]
        after = await kv.read(NS, "r", ReadQuery(limit=3, start=b"\x01", end=b"\xff\xff", after=b"\x7f"))
        assert [r.key for r in after] == [b"\x80", b"\xfe", b"\xff"]
        tail = await kv.read(NS, "r", ReadQuery(limit=100, after=b"\xff"))
        assert [r.key for r in tail] == [b"\xff\x00", b"\xff\xff"]
        picked = await kv.read(NS, "r", ReadQuery(limit=100, keys=(b"\xff", b"\x00", b"missing")))
        assert [r.key for r in picked] == [b"\x00", b"\xff"]

    _run(dynamodb_url, body)


def test_range_reads_paginate_natively_past_a_query_page(dynamodb_url: str) -> None:
    # ~1.4 MB of rows is more than one DynamoDB Query page (1 MB), so the
    # read must follow LastEvaluatedKey.
    async def body(kv: DynamoKeyValue) -> None:
        big = b"x" * 100_000
        keys = [f"k{i:02d}".encode() for i in range(14)]
        await kv.write(NS, "r", [_row(k, value=big) for k in keys], atomic=False)
        rows = await kv.read(NS, "r", ReadQuery(limit=100))
        assert [r.key for r in rows] == keys
        assert all(r.value == big for r in rows)

    _run(dynamodb_url, body)


def test_last_write_wins_by_version_and_reports_replaced_chunked_rows(dynamodb_url: str) -> None:
    async def body(kv: DynamoKeyValue) -> None:
        chunked = StoredItem(
            key=b"k", value=b"", version=Version(10, "b"), chunk_count=2, chunk_set="s1", value_size=9
        )
        assert await kv.write(NS, "r", [chunked], atomic=False) == []
        # Older, and equal: both lose; nothing is replaced.
        assert await kv.write(NS, "r", [_row(b"k", 9, "z"), _row(b"k", 10, "b")], atomic=False) == []
        assert await kv.write(NS, "r", [_row(b"k", 10, "a")], atomic=False) == []
        [stored] = await kv.read(NS, "r", ReadQuery(limit=10))
        assert stored == chunked
        # Newer by nonce only: wins, and the chunked row it replaced comes back.
        assert await kv.write(NS, "r", [_row(b"k", 10, "c", b"new")], atomic=False) == [chunked]
        [stored] = await kv.read(NS, "r", ReadQuery(limit=10))
        assert stored.value == b"new"
        # An empty nonce is older than any other at the same time.
        await kv.write(NS, "r", [_row(b"e", 5, "")], atomic=False)
        await kv.write(NS, "r", [_row(b"e", 5, "a", b"w")], atomic=False)
        [e] = await kv.read(NS, "r", ReadQuery(limit=10, keys=(b"e",)))
        assert e.value == b"w"
        # remove() deletes only the exact version.
        await kv.remove(NS, "r", [(b"k", Version(10, "b")), (b"e", Version(5, "a"))])
        assert [r.key for r in await kv.read(NS, "r", ReadQuery(limit=10))] == [b"k"]

    _run(dynamodb_url, body)


def test_records_index_lists_in_utf8_order_and_forgets_emptied_records(dynamodb_url: str) -> None:
    async def body(kv: DynamoKeyValue) -> None:
        ids = ["b", "a", "é", "z", "\U0001f600", "aa"]
        for record_id in ids:
            await kv.write(NS, record_id, [_row(b"k")], atomic=False)
        expected = sorted(ids, key=lambda s: s.encode("utf-8"))
        assert await kv.scan_records(NS, None, 100) == expected
        assert await kv.scan_records(NS, "b", 2) == [r for r in expected if r.encode() > b"b"][:2]
        await kv.remove(NS, "z", [(b"k", Version(1, "n"))])
        assert "z" not in await kv.scan_records(NS, None, 100)
        # The stale index entry was dropped, and a new write brings it back.
        assert "z" not in await asyncio.to_thread(_index_entries, kv)
        await kv.write(NS, "z", [_row(b"k", 2)], atomic=False)
        assert await kv.scan_records(NS, None, 100) == expected

    _run(dynamodb_url, body)


def _index_entries(kv: DynamoKeyValue) -> list[str]:
    response = kv._client.query(
        TableName=kv._tables(NS).records,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "records"}},
        ConsistentRead=True,
    )
    return [bytes(raw["sk"]["B"]).decode() for raw in response["Items"]]


def test_chunks_round_trip_and_stay_out_of_range_reads(dynamodb_url: str) -> None:
    async def body(kv: DynamoKeyValue) -> None:
        chunks = [bytes([i]) * 1000 for i in range(5)]
        await kv.write_chunks(NS, "r", b"big", "set1", chunks, None)
        await kv.write_chunks(NS, "r", b"big", "set10", [b"other"], 2_000_000_000_000_000)
        assert await kv.read_chunks(NS, "r", b"big", "set1", 5) == chunks
        assert await kv.read_chunks(NS, "r", b"big", "set1", 3) == chunks[:3]
        assert await kv.read_chunks(NS, "r", b"big", "set10", 1) == [b"other"]
        assert await kv.read(NS, "r", ReadQuery(limit=100)) == []
        await kv.delete_chunks(NS, "r", b"big", "set1")
        assert await kv.read_chunks(NS, "r", b"big", "set1", 5) == []
        assert await kv.read_chunks(NS, "r", b"big", "set10", 1) == [b"other"]
        await kv.delete_chunks(NS, "r", b"big", "missing")

    _run(dynamodb_url, body)


def test_many_chunks_span_several_batch_writes_and_query_pages(dynamodb_url: str) -> None:
    # 60 chunks: three BatchWriteItem calls (25 at most each) to write, and
    # at 30 KB each more than one 1 MB Query page to read and to delete.
    async def body(kv: DynamoKeyValue) -> None:
        chunks = [bytes([i]) * 30_000 for i in range(60)]
        await kv.write_chunks(NS, "r", b"k", "s", chunks, None)
        assert await kv.read_chunks(NS, "r", b"k", "s", 60) == chunks
        await kv.delete_chunks(NS, "r", b"k", "s")
        assert await kv.read_chunks(NS, "r", b"k", "s", 60) == []

    _run(dynamodb_url, body)


def test_keys_over_the_sort_key_limit_are_refused_clearly(dynamodb_url: str) -> None:
    async def body(kv: DynamoKeyValue) -> None:
        with pytest.raises(BackendError, match=r"sort keys stop at 1024 bytes.*max_key_bytes"):
            await kv.write(NS, "r", [_row(b"k" * 1025)], atomic=False)
        await kv.write(NS, "r", [_row(b"k" * 1024)], atomic=False)
        assert [
            r.key for r in await kv.read(NS, "r", ReadQuery(limit=5, keys=(b"k" * 1024, b"k" * 1025)))
        ] == [b"k" * 1024]

    _run(dynamodb_url, body)


def test_the_core_refuses_keys_over_the_sort_key_limit_up_front(dynamodb_url: str) -> None:
    """The backend's key limit caps the namespace's: the user gets
    LimitExceeded naming the backend, before any request is sent."""
    backend = {"plugin": "dynamodb", **attrs.asdict(_settings(dynamodb_url), recurse=False)}
    backend = {k: (v.total_seconds() if isinstance(v, timedelta) else v) for k, v in backend.items()}
    config = {"backends": {"ddb": backend}, "namespaces": {"ns": {"abstraction": "keyvalue"}}}
    with prism.open(config) as db:
        kv = db.keyvalue("ns")
        with pytest.raises(
            LimitExceeded, match=r"over the namespace limit of 1024 bytes \(the most backend 'ddb'"
        ):
            kv.put_items("r", {b"k" * 1025: b"v"})
        with pytest.raises(LimitExceeded, match="record id"):
            kv.get_items("r" * 1025)
        kv.put_items("r", {b"k" * 1024: b"v"})
        assert [item.key for item in kv.get_items("r").items] == [b"k" * 1024]


def test_provision_is_idempotent_across_backends(dynamodb_url: str) -> None:
    async def main() -> None:
        settings = _settings(dynamodb_url)
        first, second = DynamoKeyValue("a", settings), DynamoKeyValue("b", settings)
        await first.start()
        await second.start()
        try:
            await asyncio.gather(first.provision(NS), second.provision(NS))
            await first.write(NS, "r", [_row(b"k")], atomic=False)
            assert [r.key for r in await second.read(NS, "r", ReadQuery(limit=5))] == [b"k"]
            # DynamoDB TTL is on for rows and chunks, on the epoch-seconds attribute.
            tables = first._tables(NS)
            for table in (tables.items, tables.chunks):
                described = await asyncio.to_thread(first._client.describe_time_to_live, TableName=table)
                assert described["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
                assert described["TimeToLiveDescription"]["AttributeName"] == "exp"
        finally:
            await first.close()
            await second.close()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_endpoint_fails_fast_and_clearly() -> None:
    url = f"http://127.0.0.1:{_free_port()}"

    async def main() -> None:
        backend = DynamoKeyValue("ddb", _settings(url))
        with pytest.raises(BackendError) as failed:
            await backend.start()
        message = str(failed.value)
        assert "dynamodb backend 'ddb'" in message
        assert url in message
        assert "Could not connect" in message

    began = time.monotonic()
    asyncio.run(main())
    # max_attempts=3 with standard backoff: a few seconds, never a hang.
    assert time.monotonic() - began < 30


def test_a_server_that_never_answers_times_out_clearly() -> None:
    # The port accepts connections (the kernel completes the handshake from
    # the backlog) but nothing ever answers: only read_timeout can end it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"

        async def main() -> None:
            backend = DynamoKeyValue(
                "ddb", _settings(url, read_timeout=timedelta(milliseconds=300), max_attempts=2)
            )
            with pytest.raises(BackendError) as failed:
                await backend.start()
            assert url in str(failed.value)
            assert "timeout" in str(failed.value).lower()

        began = time.monotonic()
        asyncio.run(main())
        assert time.monotonic() - began < 15


def test_invalid_table_names_are_refused() -> None:
    backend = DynamoKeyValue("ddb", DynamoSettings(table_prefix=""))
    with pytest.raises(BackendError, match="change table_prefix"):
        backend._tables("ab")


def test_a_malformed_endpoint_is_refused_clearly() -> None:
    async def main() -> None:
        backend = DynamoKeyValue("ddb", _settings("not a url"))
        with pytest.raises(BackendError, match=r"dynamodb backend 'ddb' at not a url: creating the client"):
            await backend.start()

    asyncio.run(main())


def test_calls_before_start_are_refused() -> None:
    async def main() -> None:
        backend = DynamoKeyValue("ddb", DynamoSettings())
        with pytest.raises(BackendError, match="not started"):
            await backend.read(NS, "r", ReadQuery(limit=1))

    asyncio.run(main())
