"""KeyValue through the gateway: the remote client against a real in-process
gateway over gRPC, on the memory and SQLite backends, and the proof that
application code moves between embedded and remote unchanged: the same
function runs against ``prism.open(config)`` and ``prism.remote.connect(...)``
to a gateway on the same config, and the results must be equal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

import prism
import prism.remote
from prism.gateway.testing import GatewayThread
from prism.v1 import common_pb2, keyvalue_pb2, keyvalue_pb2_grpc


def memory_config(_: Path) -> dict[str, Any]:
    return {
        "backends": {"mem": {"plugin": "memory"}},
        "namespaces": {"users": {"abstraction": "keyvalue", "limits": {"max_page_items": 50}}},
    }


def sqlite_config(data_dir: Path) -> dict[str, Any]:
    return {
        "backends": {"local": {"plugin": "sqlite", "path": str(data_dir / "prism.db")}},
        "namespaces": {"users": {"abstraction": "keyvalue", "limits": {"max_page_items": 50}}},
    }


CONFIGS = {"memory": memory_config, "sqlite": sqlite_config}


@pytest.fixture(params=sorted(CONFIGS))
def config_factory(request: pytest.FixtureRequest) -> Any:
    return CONFIGS[request.param]


@pytest.fixture
def gateway(config_factory: Any, tmp_path: Path) -> Iterator[GatewayThread]:
    (tmp_path / "gateway").mkdir()
    with GatewayThread(config_factory(tmp_path / "gateway")) as running:
        yield running


def _describe_error(exc: BaseException) -> tuple[str, str, str | None]:
    return type(exc).__name__, str(exc), getattr(exc, "field", None)


def keyvalue_app(db: Any) -> dict[str, Any]:
    """Application code written once: it only uses the public API."""
    out: dict[str, Any] = {}
    users = db.keyvalue("users")
    users.put_items("user:1", {b"name": b"Ada", "lang": "en", b"\x00bin": b"\xff\x00"})
    users.put_items("user:1", [prism.Item(b"session", b"s1", ttl=timedelta(hours=1))])
    page = users.get_items("user:1")
    out["all"] = [(i.key, i.value, i.expires_at is not None) for i in page.items]
    out["keys"] = users.get_items("user:1", prism.Keys([b"lang", b"missing"])).as_dict()
    out["range"] = users.get_items("user:1", prism.KeyRange(b"a", b"n")).as_dict()

    for n in range(7):
        users.put_items("paged", {f"k{n}": f"v{n}"})
    pages: list[list[bytes]] = []
    token: str | None = None
    while True:
        got = users.get_items("paged", limit=3, page_token=token)
        pages.append([item.key for item in got.items])
        token = got.next_page_token
        if token is None:
            break
    out["pages"] = pages

    # Last write wins by token: an older token never overwrites a newer write,
    # and replaying a write changes nothing.
    newer = prism.IdempotencyToken.at(datetime.now(UTC), "newer")
    older = prism.IdempotencyToken.at(datetime.now(UTC) - timedelta(minutes=1), "older")
    users.put_items("tokens", {b"k": b"new"}, token=newer)
    users.put_items("tokens", {b"k": b"old"}, token=older)
    users.put_items("tokens", {b"k": b"new"}, token=newer)
    out["lww"] = users.get_items("tokens").as_dict()

    users.mutate_items("user:1", [prism.Put(b"city", b"London"), prism.Delete(b"lang")])
    users.delete_items("user:1", prism.Keys([b"session"]))
    out["after_mutate"] = users.get_items("user:1").as_dict()
    users.delete_items("paged", prism.KeyRange(b"k2", b"k5"))
    out["after_range_delete"] = sorted(users.get_items("paged").as_dict())

    scanned: list[str] = []
    token = None
    while True:
        records = users.scan(limit=2, page_token=token)
        scanned += records.record_ids
        token = records.next_page_token
        if token is None:
            break
    out["scan"] = scanned

    errors: list[tuple[str, str, str | None]] = []
    attempts: list[Callable[[], object]] = [
        lambda: users.get_items("user:1", limit=51),
        lambda: users.get_items("user:1", limit=0),
        lambda: users.get_items("", prism.AllItems()),
        lambda: users.get_items("user:1", prism.KeyRange(b"z", b"a")),
        lambda: users.get_items("user:1", "not a predicate"),
        lambda: users.get_items("other", page_token=users.get_items("paged", limit=1).next_page_token),
        lambda: users.put_items("user:1", {b"": b"empty key"}),
        lambda: users.put_items("user:1", ["not an item"]),
        lambda: users.put_items(42, {b"k": b"v"}),
        lambda: db.keyvalue("missing").get_items("user:1"),
    ]
    for attempt in attempts:
        try:
            attempt()
        except prism.PrismError as exc:
            errors.append(_describe_error(exc))
        else:
            errors.append(("no error", "", None))
    out["errors"] = errors
    return out


def test_the_same_application_code_gives_the_same_results_embedded_and_remote(
    config_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "embedded").mkdir()
    (tmp_path / "gateway").mkdir()
    with prism.open(config_factory(tmp_path / "embedded")) as db:
        embedded = keyvalue_app(db)
    with (
        GatewayThread(config_factory(tmp_path / "gateway")) as gateway,
        prism.remote.connect(gateway.target) as db,
    ):
        remote = keyvalue_app(db)
    assert remote == embedded
    # And the results are the right ones, not merely equal.
    assert embedded["keys"] == {b"lang": b"en"}
    assert embedded["pages"] == [[b"k0", b"k1", b"k2"], [b"k3", b"k4", b"k5"], [b"k6"]]
    assert embedded["lww"] == {b"k": b"new"}
    assert embedded["after_mutate"] == {b"\x00bin": b"\xff\x00", b"city": b"London", b"name": b"Ada"}
    assert embedded["after_range_delete"] == [b"k0", b"k1", b"k5", b"k6"]
    assert embedded["scan"] == ["paged", "tokens", "user:1"]
    assert [name for name, _, _ in embedded["errors"]] == [
        "LimitExceeded",
        "InvalidArgument",
        "InvalidArgument",
        "InvalidArgument",
        "InvalidArgument",
        "InvalidPageToken",
        "InvalidArgument",
        "InvalidArgument",
        "InvalidArgument",
        "NamespaceNotFound",
    ]


def test_remote_errors_keep_their_attributes(gateway: GatewayThread) -> None:
    with prism.remote.connect(gateway.target) as db, pytest.raises(prism.LimitExceeded) as caught:
        db.keyvalue("users").get_items("r", limit=500)
    assert (caught.value.namespace, caught.value.field) == ("users", "limit")
    assert (caught.value.limit_name, caught.value.limit, caught.value.actual) == ("max_page_items", 50, 500)


def test_a_write_without_a_token_carries_one_the_client_made() -> None:
    """The client stamps each write with its own token, so a retried write is a
    replay: prove it by replaying the exact request the client sent, after a
    newer write; the replay must change nothing."""
    config = memory_config(Path())
    with GatewayThread(config) as gateway:
        sent: list[common_pb2.IdempotencyToken] = []

        class Recorder(grpc.aio.UnaryUnaryClientInterceptor):
            async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
                if isinstance(request, keyvalue_pb2.PutItemsRequest):
                    sent.append(request.token)
                return await continuation(details, request)

        async def body() -> dict[bytes, bytes]:
            async with prism.remote.connect_async(gateway.target) as db:
                users = db.keyvalue("users")
                # Swap the client's channel for one that records requests.
                conn = users._conn
                conn._channel = grpc.aio.insecure_channel(conn.address, interceptors=[Recorder()])
                conn._stubs = (keyvalue_pb2_grpc.KeyValueServiceStub(conn._channel), None, None)
                await users.put_items("r", {b"k": b"first"})
                await users.put_items("r", {b"k": b"second"})
                assert len(sent) == 2
                assert all(t.nonce and t.HasField("generation_time") for t in sent)
                assert sent[0].nonce != sent[1].nonce
                async with grpc.aio.insecure_channel(gateway.address) as channel:
                    stub = keyvalue_pb2_grpc.KeyValueServiceStub(channel)
                    replay = keyvalue_pb2.PutItemsRequest(
                        namespace="users",
                        id="r",
                        items=[keyvalue_pb2.Item(key=b"k", value=b"first")],
                        token=sent[0],
                    )
                    await stub.PutItems(replay)
                return (await users.get_items("r")).as_dict()

        assert asyncio.run(body()) == {b"k": b"second"}


def test_async_remote_client_round_trip(gateway: GatewayThread) -> None:
    async def body() -> None:
        async with prism.remote.connect_async(gateway.target) as db:
            users = db.keyvalue("users")
            await users.put_items("a", [prism.Item("k", "v", ttl=timedelta(minutes=5))])
            page = await users.get_items("a")
            assert [(i.key, i.value) for i in page.items] == [(b"k", b"v")]
            expires = page.items[0].expires_at
            assert expires is not None
            assert timedelta(minutes=4) < expires - datetime.now(UTC) <= timedelta(minutes=5)
            plan = await db.plan("users")
            assert (plan.namespace, plan.abstraction) == ("users", "keyvalue")
            assert plan.backend in {"mem", "local"}

    asyncio.run(body())


def test_target_must_be_a_grpc_address() -> None:
    assert prism.remote.parse_target("grpcs://127.0.0.1:1") == "127.0.0.1:1"
    with pytest.raises(ValueError, match="expected grpc://HOST:PORT"):
        prism.remote.connect_async("http://127.0.0.1:1")
    assert prism.remote.parse_target("grpc://gateway") == "gateway:50051"
    assert prism.remote.parse_target("grpc://127.0.0.1:7000/") == "127.0.0.1:7000"
    assert prism.remote.parse_target("[::1]") == "[::1]:50051"
