"""Core KeyValue behaviour that the conformance suite cannot see through the
public API: what is left in the store (purges, chunk clean-up), request
validation, and the async client. Semantics users see are proven for every
backend by prism-conformance."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import prism
from prism.backends.memory import MemoryKeyValue
from prism.errors import InvalidArgument, LimitExceeded, NamespaceNotFound, WrongAbstraction

CONFIG: dict[str, Any] = {
    "backends": {"mem": {"plugin": "memory", "max_item_bytes": 1000}},
    "namespaces": {
        "kv": {"abstraction": "keyvalue", "limits": {"max_items_per_call": 5, "max_key_bytes": 16}},
        "short": {"abstraction": "keyvalue", "needs": {"ttl": "50ms"}},
    },
}


def _store(db: prism.Prism) -> MemoryKeyValue:
    backend = db._async._runtime._backends["mem"]
    assert isinstance(backend, MemoryKeyValue)
    return backend


def _poll(condition: Any, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not reached before the deadline"
        time.sleep(0.01)


def test_overwritten_and_lost_chunk_sets_are_deleted() -> None:
    with prism.open(CONFIG) as db:
        kv = db.keyvalue("kv")
        kv.put_items("r", {b"big": b"a" * 5000})
        assert len(_store(db)._chunks) == 1
        kv.put_items("r", {b"big": b"b" * 4000})
        assert len(_store(db)._chunks) == 1, "the replaced value's chunks must go"
        old = prism.IdempotencyToken.at(datetime(2020, 1, 1, tzinfo=UTC))
        kv.put_items("r", {b"big": b"c" * 3000}, token=old)
        assert len(_store(db)._chunks) == 1, "a losing write must not leave chunks behind"
        assert kv.get_items("r").as_dict()[b"big"] == b"b" * 4000
        kv.put_items("r", {b"big": b"small"})
        assert _store(db)._chunks == {}
        kv.put_items("r", {b"big": b"d" * 2500})
        kv.delete_items("r")
        assert kv.get_items("r").items == []


def test_expired_items_are_purged_from_the_store() -> None:
    with prism.open(CONFIG) as db:
        kv = db.keyvalue("short")
        kv.put_items("r", {b"a": b"1", b"big": b"x" * 3000})
        _poll(lambda: kv.get_items("r").items == [])
        assert "r" not in _store(db)._namespaces["short"]
        assert _store(db)._chunks == {}


def test_request_validation_errors_name_namespace_and_limit() -> None:
    with prism.open(CONFIG) as db:
        kv = db.keyvalue("kv")
        with pytest.raises(LimitExceeded, match=r"namespace 'kv'.*6 items in one call.*limit of 5") as info:
            kv.put_items("r", {str(i): b"v" for i in range(6)})
        assert info.value.limit == 5
        assert info.value.actual == 6
        with pytest.raises(LimitExceeded, match="max_key_bytes"):
            kv.put_items("r", {b"k" * 17: b"v"})
        with pytest.raises(LimitExceeded, match="record id"):
            kv.get_items("r" * 17)
        with pytest.raises(InvalidArgument, match="must not be empty"):
            kv.put_items("r", {b"": b"v"})
        with pytest.raises(InvalidArgument, match="appears twice"):
            kv.put_items("r", [prism.Item(b"a", b"1"), prism.Item(b"a", b"2")])
        with pytest.raises(InvalidArgument, match="appears twice"):
            kv.mutate_items("r", [prism.Put(b"a", b"1"), prism.Delete(b"a")])
        with pytest.raises(InvalidArgument, match="ttl must be positive"):
            kv.put_items("r", [prism.Item(b"a", b"1", ttl=timedelta(0))])
        with pytest.raises(InvalidArgument, match=r"start .* is after its end"):
            kv.get_items("r", prism.KeyRange(b"b", b"a"))
        with pytest.raises(InvalidArgument, match="predicate must be"):
            kv.get_items("r", "everything")  # type: ignore[arg-type]
        with pytest.raises(LimitExceeded, match="max_page_items"):
            kv.get_items("r", limit=10_000)
        future = prism.IdempotencyToken.at(datetime.now(UTC) + timedelta(hours=2))
        with pytest.raises(InvalidArgument, match=r"in the future.*max_token_skew"):
            kv.put_items("r", {b"a": b"1"}, token=future)
        with pytest.raises(InvalidArgument, match="reserved"):
            kv.put_items("r", {b"a": b"1"}, token=prism.IdempotencyToken(1, "~x"))
        assert kv.get_items("r").items == [], "a refused request writes nothing"


def test_unknown_and_mismatched_namespaces() -> None:
    with (
        prism.open(CONFIG) as db,
        pytest.raises(NamespaceNotFound, match=r"'nope' is not configured.*kv, short"),
    ):
        db.keyvalue("nope")
    with prism.open({**CONFIG, "auto_namespaces": True}) as db:
        assert db.keyvalue("anything").backend_name == "mem"
        with pytest.raises(InvalidArgument, match="namespace name 'Not OK' is invalid"):
            db.keyvalue("Not OK")


def test_wrong_abstraction_is_named() -> None:
    with prism.open(CONFIG) as db, pytest.raises(WrongAbstraction, match="declared as keyvalue, not queue"):
        db._async._runtime.namespace_config("kv", "queue")


def test_async_client_has_the_same_shape() -> None:
    async def main() -> dict[bytes, bytes]:
        async with prism.open_async(CONFIG) as db:
            kv = db.keyvalue("kv")
            await asyncio.gather(*(kv.put_items(f"r{i}", {b"k": str(i).encode()}) for i in range(5)))
            await kv.mutate_items("r0", [prism.Put(b"x", b"y")])
            page = await kv.get_items("r0")
            assert (await kv.scan()).record_ids == [f"r{i}" for i in range(5)]
            return page.as_dict()

    assert asyncio.run(main()) == {b"k": b"0", b"x": b"y"}


def test_sync_client_works_inside_a_running_loop() -> None:
    async def main() -> bytes:
        with prism.open(CONFIG) as db:
            kv = db.keyvalue("kv")
            kv.put_items("r", {b"a": b"1"})
            return kv.get_items("r").items[0].value

    assert asyncio.run(main()) == b"1"


def test_closed_handle_refuses_new_namespaces() -> None:
    db = prism.open(CONFIG)
    db.close()
    db.close()
    with pytest.raises(RuntimeError, match="closed"):
        db.keyvalue("short")
