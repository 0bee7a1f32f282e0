"""Bearer tokens with per-namespace grants, through a real gateway.

The matrix runs every role against every prism.v1 method and asserts the exact
status code. For each refusal it also proves that nothing happened: a refused
write left no record, a refused consume left the message deliverable (attempt
1) to an authorised consumer, a refused ack left the delivery un-acked.
Effects are checked with a ``root`` token through the remote client."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from structlog.testing import capture_logs

import prism
import prism.remote
from prism.config import load_config
from prism.errors import ConfigError, InvalidPageToken
from prism.gateway.auth import REQUIRED_ROLE, Authenticator, hash_token
from prism.gateway.testing import GatewayThread
from prism.gateway.timeseries_service import time_to_proto
from prism.gateway.tokens import TOKEN_PREFIX, add_token_parser
from prism.plugins.manager import load_plugins
from prism.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    counter_pb2,
    counter_pb2_grpc,
    keyvalue_pb2,
    keyvalue_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
    timeseries_pb2,
    timeseries_pb2_grpc,
)

#: The secret of each test token; the config holds only their hashes.
SECRETS = {
    "root": "root-" + os.urandom(16).hex(),
    "read": "read-" + os.urandom(16).hex(),
    "write": "write-" + os.urandom(16).hex(),
    "admin": "admin-" + os.urandom(16).hex(),
    "read+write": "rw-" + os.urandom(16).hex(),
    "none": "none-" + os.urandom(16).hex(),
    "star-read": "star-" + os.urandom(16).hex(),
}
GRANTS: dict[str, dict[str, list[str]]] = {
    "root": {"*": ["read", "write", "admin"]},
    "read": {"kv": ["read"], "q": ["read"], "ts": ["read"], "cnt": ["read"]},
    "write": {"kv": ["write"], "q": ["write"], "ts": ["write"], "cnt": ["write"]},
    "admin": {"kv": ["admin"], "q": ["admin"], "ts": ["admin"], "cnt": ["admin"]},
    "read+write": {
        "kv": ["read", "write"],
        "q": ["read", "write"],
        "ts": ["read", "write"],
        "cnt": ["read", "write"],
    },
    # Everything on another namespace: grants do not leak across namespaces.
    "none": {"other": ["read", "write", "admin"]},
    "star-read": {"*": ["read"]},
}
ROLES = ("none", "read", "write", "admin", "read+write")

CONFIG: dict[str, Any] = {
    "backends": {"mem": {"plugin": "memory"}},
    "namespaces": {
        "kv": {"abstraction": "keyvalue", "needs": {"capabilities": ["kv.scan"]}},
        "kv2": {"abstraction": "keyvalue", "needs": {"capabilities": ["kv.scan"]}},
        "other": {"abstraction": "keyvalue"},
        "q": {"abstraction": "queue", "queue": {"visibility_timeout": "10m", "max_wait": "30s"}},
        "ts": {"abstraction": "timeseries"},
        "cnt": {"abstraction": "counter", "counter": {"mode": "exact"}},
    },
    "gateway": {
        "auth": {
            "tokens": [
                {"name": f"{role}-service", "sha256": hash_token(secret), "grants": GRANTS[role]}
                for role, secret in SECRETS.items()
            ]
        }
    },
}


def bearer(role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {SECRETS[role]}"),)


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread(CONFIG) as running:
        yield running


@pytest.fixture(scope="module")
def channel(gateway: GatewayThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address) as chan:
        yield chan


@pytest.fixture(scope="module")
def root(gateway: GatewayThread) -> Iterator[prism.remote.RemotePrism]:
    with prism.remote.connect(gateway.target, token=SECRETS["root"], timeout=10) as db:
        yield db


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.kv = keyvalue_pb2_grpc.KeyValueServiceStub(channel)
        self.q = queue_pb2_grpc.QueueServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.ts = timeseries_pb2_grpc.TimeSeriesServiceStub(channel)
        self.cnt = counter_pb2_grpc.CounterServiceStub(channel)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


def item(key: bytes, value: bytes) -> keyvalue_pb2.Item:
    return keyvalue_pb2.Item(key=key, value=value)


def consume_until(
    db: prism.remote.RemotePrism, topic: str, group: str, count: int, deadline_s: float = 10
) -> list[prism.Delivery]:
    """Deliveries for ``group`` until ``count`` arrived or the deadline passed."""
    got: list[prism.Delivery] = []
    deadline = time.monotonic() + deadline_s
    while len(got) < count and time.monotonic() < deadline:
        got += db.queue("q").consume(topic, group, max_messages=count - len(got), wait=timedelta(seconds=1))
    return got


# -- one scenario per method: (stubs, metadata, root client) -> status code, with its own checks -----

Metadata = tuple[tuple[str, str], ...]


def put_items(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    record = unique("put")
    code = code_of(
        lambda: s.kv.PutItems(
            keyvalue_pb2.PutItemsRequest(namespace="kv", id=record, items=[item(b"k", b"v")]),
            metadata=md,
            timeout=10,
        )
    )
    assert root.keyvalue("kv").get_items(record).as_dict() == ({b"k": b"v"} if allowed else {})
    return code


def get_items(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    record = unique("get")
    root.keyvalue("kv").put_items(record, {b"k": b"secret"})
    response: list[keyvalue_pb2.GetItemsResponse] = []
    code = code_of(
        lambda: response.append(
            s.kv.GetItems(keyvalue_pb2.GetItemsRequest(namespace="kv", id=record), metadata=md, timeout=10)
        )
    )
    if allowed:
        assert [(i.key, i.value) for i in response[0].items] == [(b"k", b"secret")]
    else:
        assert response == []
    return code


def scan(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    record = unique("scan")
    root.keyvalue("kv").put_items(record, {b"k": b"v"})
    response: list[keyvalue_pb2.ScanResponse] = []
    code = code_of(
        lambda: response.append(
            s.kv.Scan(keyvalue_pb2.ScanRequest(namespace="kv", limit=1000), metadata=md, timeout=10)
        )
    )
    assert (record in response[0].record_ids) if allowed else response == []
    return code


def delete_items(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    record = unique("delete")
    root.keyvalue("kv").put_items(record, {b"k": b"v"})
    code = code_of(
        lambda: s.kv.DeleteItems(
            keyvalue_pb2.DeleteItemsRequest(namespace="kv", id=record), metadata=md, timeout=10
        )
    )
    assert root.keyvalue("kv").get_items(record).as_dict() == ({} if allowed else {b"k": b"v"})
    return code


def mutate_items(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    record = unique("mutate")
    root.keyvalue("kv").put_items(record, {b"old": b"v"})
    mutations = [keyvalue_pb2.Mutation(put=item(b"new", b"v")), keyvalue_pb2.Mutation(delete=b"old")]
    code = code_of(
        lambda: s.kv.MutateItems(
            keyvalue_pb2.MutateItemsRequest(namespace="kv", id=record, mutations=mutations),
            metadata=md,
            timeout=10,
        )
    )
    expected = {b"new": b"v"} if allowed else {b"old": b"v"}
    assert root.keyvalue("kv").get_items(record).as_dict() == expected
    return code


def publish(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    topic = unique("publish")
    code = code_of(
        lambda: s.q.Publish(
            queue_pb2.PublishRequest(namespace="q", topic=topic, messages=[queue_pb2.Message(payload=b"m")]),
            metadata=md,
            timeout=10,
        )
    )
    if allowed:
        assert [d.payload for d in consume_until(root, topic, "g", 1)] == [b"m"]
    else:
        # Nothing was published: an immediate consume (no wait) finds nothing.
        assert root.queue("q").consume(topic, "g", max_messages=10) == []
    return code


def consume(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    topic = unique("consume")
    root.queue("q").publish(topic, prism.Message(b"", b"m"))
    response: list[queue_pb2.ConsumeResponse] = []
    request = queue_pb2.ConsumeRequest(namespace="q", topic=topic, group="g", max_messages=1)
    request.wait.FromTimedelta(timedelta(seconds=5))
    code = code_of(lambda: response.append(s.q.Consume(request, metadata=md, timeout=10)))
    if allowed:
        assert [d.payload for d in response[0].deliveries] == [b"m"]
        assert root.queue("q").consume(topic, "g", max_messages=10) == []  # leased to the caller
    else:
        (delivery,) = consume_until(root, topic, "g", 1)
        assert delivery.attempt == 1  # never leased by the refused call
    return code


def subscribe(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    topic = unique("subscribe")
    root.queue("q").publish(topic, prism.Message(b"", b"m"))
    stream = s.q.Subscribe(
        queue_pb2.SubscribeRequest(namespace="q", topic=topic, group="g"), metadata=md, timeout=10
    )
    events: list[queue_pb2.SubscribeResponse] = []
    try:
        for event in stream:
            events.append(event)
            if event.HasField("delivery"):
                break
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    finally:
        stream.cancel()
    if allowed:
        assert events[0].subscription_id
        assert events[-1].delivery.payload == b"m"
    else:
        assert events == []
        (delivery,) = consume_until(root, topic, "g", 1)
        assert delivery.attempt == 1
    return code


def ack(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    topic = unique("ack")
    root.queue("q").publish(topic, prism.Message(b"", b"m"))
    (delivery,) = consume_until(root, topic, "g", 1)
    code = code_of(
        lambda: s.q.Ack(
            queue_pb2.AckRequest(namespace="q", topic=topic, group="g", ids=[delivery.id]),
            metadata=md,
            timeout=10,
        )
    )
    # Hand the lease back: an acked message is gone for good, an un-acked one returns.
    root.queue("q").nack(topic, "g", [delivery.id])
    if allowed:
        assert root.queue("q").consume(topic, "g", max_messages=10) == []
    else:
        (again,) = consume_until(root, topic, "g", 1)
        assert again.attempt == 2
    return code


def nack(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    topic = unique("nack")
    root.queue("q").publish(topic, prism.Message(b"", b"m"))
    (delivery,) = consume_until(root, topic, "g", 1)
    code = code_of(
        lambda: s.q.Nack(
            queue_pb2.NackRequest(namespace="q", topic=topic, group="g", ids=[delivery.id], dead_letter=True),
            metadata=md,
            timeout=10,
        )
    )
    if allowed:
        assert [d.payload for d in consume_until(root, topic + ".dlq", "g", 1)] == [b"m"]
    else:
        # Still leased by root, not dead-lettered; root can ack it.
        assert root.queue("q").consume(topic + ".dlq", "g", max_messages=10) == []
        assert root.queue("q").consume(topic, "g", max_messages=10) == []
        root.queue("q").ack(topic, "g", [delivery.id])
    return code


def _read_ids(root: prism.remote.RemotePrism, series: str, at: datetime) -> list[str]:
    page = root.timeseries("ts").read_events(series, at, at + timedelta(seconds=1))
    return [e.event_id for e in page.events]


def write_events(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    series = unique("write")
    at = datetime.now(UTC) - timedelta(seconds=5)
    event = timeseries_pb2.Event(event_time=time_to_proto(at), event_id="e", payload=b"p")
    code = code_of(
        lambda: s.ts.WriteEvents(
            timeseries_pb2.WriteEventsRequest(namespace="ts", series=series, events=[event]),
            metadata=md,
            timeout=10,
        )
    )
    assert _read_ids(root, series, at) == (["e"] if allowed else [])
    return code


def read_events(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    series = unique("read")
    at = datetime.now(UTC) - timedelta(seconds=5)
    root.timeseries("ts").write_events(series, [prism.Event(at, "secret")])
    response: list[timeseries_pb2.ReadEventsResponse] = []
    request = timeseries_pb2.ReadEventsRequest(
        namespace="ts", series=series, start=time_to_proto(at), end=time_to_proto(at + timedelta(seconds=1))
    )
    code = code_of(lambda: response.append(s.ts.ReadEvents(request, metadata=md, timeout=10)))
    if allowed:
        assert [e.event_id for e in response[0].events] == ["secret"]
    else:
        assert response == []
    return code


def add(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    counter = unique("add")
    code = code_of(
        lambda: s.cnt.Add(
            counter_pb2.AddRequest(namespace="cnt", counter=counter, delta=3), metadata=md, timeout=10
        )
    )
    assert root.counter("cnt").get(counter) == (3 if allowed else 0)
    return code


def get(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    counter = unique("get")
    root.counter("cnt").add(counter, 5)
    response: list[counter_pb2.GetResponse] = []
    code = code_of(
        lambda: response.append(
            s.cnt.Get(counter_pb2.GetRequest(namespace="cnt", counter=counter), metadata=md, timeout=10)
        )
    )
    assert (response[0].value == 5) if allowed else response == []
    return code


def clear(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    counter = unique("clear")
    root.counter("cnt").add(counter, 5)
    code = code_of(
        lambda: s.cnt.Clear(
            counter_pb2.ClearRequest(namespace="cnt", counter=counter), metadata=md, timeout=10
        )
    )
    assert root.counter("cnt").get(counter) == (0 if allowed else 5)
    return code


def get_plan(s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool) -> grpc.StatusCode:
    response: list[admin_pb2.Namespace] = []
    code = code_of(
        lambda: response.append(s.admin.GetPlan(admin_pb2.GetPlanRequest(name="kv"), metadata=md, timeout=10))
    )
    assert (response[0].backend == "mem") if allowed else response == []
    return code


def create_namespace(
    s: Stubs, md: Metadata, root: prism.remote.RemotePrism, allowed: bool
) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        s.admin.CreateNamespace(admin_pb2.CreateNamespaceRequest(name="kv"), metadata=md, timeout=10)
    # Refused either way, today: with the admin role by the gateway's policy
    # (the existing message), without it for the missing role.
    details = caught.value.details() or ""
    if allowed:
        assert "creating namespaces at run time is not enabled" in details
    elif caught.value.code() is grpc.StatusCode.PERMISSION_DENIED:
        assert "CreateNamespace needs the admin role" in details
    code: grpc.StatusCode = caught.value.code()
    return code


SCENARIOS: dict[str, Callable[[Stubs, Metadata, prism.remote.RemotePrism, bool], grpc.StatusCode]] = {
    "GetItems": get_items,
    "Scan": scan,
    "PutItems": put_items,
    "DeleteItems": delete_items,
    "MutateItems": mutate_items,
    "Publish": publish,
    "Consume": consume,
    "Subscribe": subscribe,
    "Ack": ack,
    "Nack": nack,
    "WriteEvents": write_events,
    "ReadEvents": read_events,
    "Add": add,
    "Get": get,
    "Clear": clear,
    "GetPlan": get_plan,
    "CreateNamespace": create_namespace,
}

#: The documented table, restated independently of prism.gateway.auth.
ALLOWED: dict[str, set[str]] = {
    "GetItems": {"read", "read+write"},
    "Scan": {"read", "read+write"},
    "PutItems": {"write", "read+write"},
    "DeleteItems": {"write", "read+write"},
    "MutateItems": {"write", "read+write"},
    "Publish": {"write", "read+write"},
    "Consume": {"read", "read+write"},
    "Subscribe": {"read", "read+write"},
    "Ack": {"read", "read+write"},
    "Nack": {"read", "read+write"},
    "WriteEvents": {"write", "read+write"},
    "ReadEvents": {"read", "read+write"},
    "Add": {"write", "read+write"},
    "Get": {"read", "read+write"},
    "Clear": {"write", "read+write"},
    "GetPlan": {"read", "write", "admin", "read+write"},
    "CreateNamespace": {"admin"},
}


def test_every_method_is_in_the_matrix() -> None:
    assert set(SCENARIOS) == set(REQUIRED_ROLE) == set(ALLOWED)
    services = [
        keyvalue_pb2.DESCRIPTOR.services_by_name["KeyValueService"],
        queue_pb2.DESCRIPTOR.services_by_name["QueueService"],
        timeseries_pb2.DESCRIPTOR.services_by_name["TimeSeriesService"],
        counter_pb2.DESCRIPTOR.services_by_name["CounterService"],
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    ]
    methods = {m.name for service in services for m in service.methods}
    assert methods == set(SCENARIOS) | {"ListNamespaces"}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("method", sorted(SCENARIOS))
def test_role_matrix(method: str, role: str, channel: grpc.Channel, root: prism.remote.RemotePrism) -> None:
    allowed = role in ALLOWED[method]
    code = SCENARIOS[method](Stubs(channel), bearer(role), root, allowed)
    if method == "CreateNamespace":
        # With the role, still refused by policy (create_namespace checks which message).
        assert code is grpc.StatusCode.PERMISSION_DENIED
    else:
        assert code is (grpc.StatusCode.OK if allowed else grpc.StatusCode.PERMISSION_DENIED)


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer not-a-token-we-know"),),
        (("authorization", f"Basic {SECRETS['root']}"),),
        (("authorization", "Bearer"),),
        (("authorization", SECRETS["root"]),),
    ],
    ids=["missing", "unknown", "basic-scheme", "empty-bearer", "no-scheme"],
)
@pytest.mark.parametrize("method", sorted(SCENARIOS))
def test_unauthenticated_matrix(
    method: str, metadata: Metadata, channel: grpc.Channel, root: prism.remote.RemotePrism
) -> None:
    assert SCENARIOS[method](Stubs(channel), metadata, root, False) is grpc.StatusCode.UNAUTHENTICATED


def test_list_namespaces_shows_only_granted_namespaces(channel: grpc.Channel) -> None:
    admin = Stubs(channel).admin

    def names(role: str) -> list[str]:
        response = admin.ListNamespaces(admin_pb2.ListNamespacesRequest(), metadata=bearer(role), timeout=10)
        return sorted(n.name for n in response.namespaces)

    assert names("root") == ["cnt", "kv", "kv2", "other", "q", "ts"]
    assert names("star-read") == ["cnt", "kv", "kv2", "other", "q", "ts"]
    for role in ("read", "write", "admin", "read+write"):
        assert names(role) == ["cnt", "kv", "q", "ts"], role
    assert names("none") == ["other"]
    with pytest.raises(grpc.RpcError) as caught:
        admin.ListNamespaces(admin_pb2.ListNamespacesRequest(), timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_a_star_grant_covers_every_namespace_for_its_roles_only(
    gateway: GatewayThread, root: prism.remote.RemotePrism
) -> None:
    root.keyvalue("kv2").put_items("star", {b"k": b"v"})
    with prism.remote.connect(gateway.target, token=SECRETS["star-read"], timeout=10) as db:
        assert db.keyvalue("kv2").get_items("star").as_dict() == {b"k": b"v"}
        assert db.keyvalue("other").get_items("star").as_dict() == {}
        with pytest.raises(prism.remote.PermissionDenied):
            db.keyvalue("kv2").put_items("star", {b"k": b"changed"})
    assert root.keyvalue("kv2").get_items("star").as_dict() == {b"k": b"v"}


def test_a_page_token_from_one_namespace_is_refused_in_another(root: prism.remote.RemotePrism) -> None:
    record = unique("paged")
    root.keyvalue("kv").put_items(record, {b"a": b"1", b"b": b"2", b"c": b"3"})
    page = root.keyvalue("kv").get_items(record, limit=1)
    assert page.next_page_token
    with pytest.raises(InvalidPageToken, match="issued for namespace 'kv'") as caught:
        root.keyvalue("kv2").get_items(record, limit=1, page_token=page.next_page_token)
    assert caught.value.namespace == "kv2"
    scan_page = root.keyvalue("kv").scan(limit=1)
    assert scan_page.next_page_token
    with pytest.raises(InvalidPageToken):
        root.keyvalue("kv2").scan(limit=1, page_token=scan_page.next_page_token)


def test_a_page_token_replay_needs_read_on_the_namespace(
    channel: grpc.Channel, root: prism.remote.RemotePrism
) -> None:
    """A write-only token holding another caller's page token still gets PERMISSION_DENIED."""
    record = unique("paged")
    root.keyvalue("kv").put_items(record, {b"a": b"1", b"b": b"2"})
    page = root.keyvalue("kv").get_items(record, limit=1)
    request = keyvalue_pb2.GetItemsRequest(
        namespace="kv", id=record, limit=1, page_token=page.next_page_token or ""
    )
    code = code_of(lambda: Stubs(channel).kv.GetItems(request, metadata=bearer("write"), timeout=10))
    assert code is grpc.StatusCode.PERMISSION_DENIED


def test_the_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored(
    channel: grpc.Channel,
) -> None:
    admin = Stubs(channel).admin
    for value in (f"bearer {SECRETS['read']}", f"BEARER {SECRETS['read']}", f"Bearer   {SECRETS['read']} "):
        response = admin.GetPlan(
            admin_pb2.GetPlanRequest(name="kv"), metadata=(("authorization", value),), timeout=10
        )
        assert response.name == "kv"
    # The token itself is case-sensitive.
    upper = (("authorization", f"Bearer {SECRETS['read'].upper()}"),)
    assert code_of(
        lambda: admin.GetPlan(admin_pb2.GetPlanRequest(name="kv"), metadata=upper, timeout=10)
    ) is (grpc.StatusCode.UNAUTHENTICATED)


def test_the_metadata_key_is_matched_without_regard_to_case() -> None:
    """HTTP/2 lowercases header names, and grpc refuses upper case on the way
    out; a proxy that passes ``Authorization`` through is still understood."""
    auth = Authenticator(load_config_from({"auth": CONFIG["gateway"]["auth"]}))
    assert auth.authenticate([("Authorization", f"Bearer {SECRETS['read']}")]).name == "read-service"
    with pytest.raises(Exception, match="send one authorization header"):
        auth.authenticate([("authorization", "Bearer a"), ("Authorization", "Bearer b")])


def load_config_from(gateway_section: dict[str, Any]) -> Any:
    from prism.config import parse_config

    config = parse_config(
        {"backends": {"mem": {"plugin": "memory"}}, "gateway": gateway_section}, load_plugins().registry
    )
    return config.gateway.auth


def test_a_token_with_a_trailing_newline_works_through_the_client(gateway: GatewayThread) -> None:
    # What `token = open("token.txt").read()` gives.
    with prism.remote.connect(gateway.target, token=SECRETS["read"] + "\n", timeout=10) as db:
        assert db.plan("kv").backend == "mem"
    with pytest.raises(ValueError, match="no spaces or control characters inside"):
        prism.remote.connect(gateway.target, token="two words")
    with pytest.raises(ValueError, match="non-empty"):
        prism.remote.connect(gateway.target, token="\n")


def test_the_remote_client_raises_clear_prism_errors(gateway: GatewayThread) -> None:
    with (
        prism.remote.connect(gateway.target, timeout=10) as anonymous,
        pytest.raises(prism.remote.Unauthenticated, match="requires a token") as unauth,
    ):
        anonymous.keyvalue("kv").get_items("x")
    assert unauth.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert unauth.value.request_id
    assert SECRETS["root"] not in str(unauth.value)
    with (
        prism.remote.connect(gateway.target, token="wrong", timeout=10) as stranger,
        pytest.raises(prism.remote.Unauthenticated, match="not valid on this gateway"),
    ):
        stranger.queue("q").publish("t", prism.Message(b"", b"m"))
    with (
        prism.remote.connect(gateway.target, token=SECRETS["read"], timeout=10) as reader,
        pytest.raises(prism.remote.PermissionDenied) as denied,
    ):
        reader.keyvalue("kv").put_items("x", {b"k": b"v"})
    error = denied.value
    assert isinstance(error, prism.PrismError)
    assert (error.code, error.namespace, error.role) == (grpc.StatusCode.PERMISSION_DENIED, "kv", "write")
    assert str(error).startswith("namespace 'kv': PutItems needs the write role")
    assert "read-service" in str(error)
    assert SECRETS["read"] not in str(error)


def test_denials_are_logged_with_the_token_name_never_the_secret(
    gateway: GatewayThread, channel: grpc.Channel
) -> None:
    stubs = Stubs(channel)
    with capture_logs() as logs:
        code_of(
            lambda: stubs.kv.GetItems(
                keyvalue_pb2.GetItemsRequest(namespace="kv", id="x"), metadata=bearer("write"), timeout=10
            )
        )
        code_of(lambda: stubs.kv.GetItems(keyvalue_pb2.GetItemsRequest(namespace="kv", id="x"), timeout=10))
    # Refusals are access log lines like any call's, with their status code.
    denied = [e for e in logs if e["event"] == "rpc" and e["code"] == "PERMISSION_DENIED"]
    assert [(e["token"], e["method"], e["namespace"], e["role"], e["log_level"]) for e in denied] == [
        ("write-service", "GetItems", "kv", "read", "info")
    ]
    unauthenticated = [e for e in logs if e["event"] == "rpc" and e["code"] == "UNAUTHENTICATED"]
    assert [(e["method"], e["reason"]) for e in unauthenticated] == [
        ("GetItems", "no authorization metadata")
    ]
    assert all(SECRETS["write"] not in repr(e) for e in logs)


def test_health_stays_open_without_a_token(channel: grpc.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_without_gateway_auth_every_call_is_allowed() -> None:
    config = {k: v for k, v in CONFIG.items() if k != "gateway"}
    with GatewayThread(config) as open_gateway, grpc.insecure_channel(open_gateway.address) as chan:
        with prism.remote.connect(open_gateway.target, timeout=10) as db:
            db.keyvalue("kv").put_items("open", {b"k": b"v"})
            assert db.keyvalue("kv").get_items("open").as_dict() == {b"k": b"v"}
        # A token is ignored when auth is off, even one the gateway cannot know.
        response = Stubs(chan).admin.ListNamespaces(
            admin_pb2.ListNamespacesRequest(), metadata=(("authorization", "Bearer whatever"),), timeout=10
        )
        assert sorted(n.name for n in response.namespaces) == ["cnt", "kv", "kv2", "other", "q", "ts"]


def test_an_empty_token_list_refuses_everyone() -> None:
    config = {**CONFIG, "gateway": {"auth": {"tokens": []}}}
    with (
        GatewayThread(config) as locked,
        prism.remote.connect(locked.target, token=SECRETS["root"], timeout=10) as db,
        pytest.raises(prism.remote.Unauthenticated),
    ):
        db.plan("kv")


# -- configuration --------------------------------------------------------------------------------


def config_problems(gateway_section: object) -> list[str]:
    from prism.config import parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"backends": {"mem": {"plugin": "memory"}}, "gateway": gateway_section}, load_plugins().registry
        )
    return caught.value.problems


def test_a_plain_token_where_the_hash_belongs_is_refused_without_echoing_it() -> None:
    secret = "prism_" + os.urandom(24).hex()
    problems = config_problems({"auth": {"tokens": [{"name": "a", "sha256": secret, "grants": {}}]}})
    assert len(problems) == 1
    assert problems[0].startswith(
        "gateway.auth.tokens[0].sha256: expected the SHA-256 of the token as 64 hex"
    )
    assert "looks like a plain token" in problems[0]
    assert "prism token new" in problems[0]
    assert secret not in problems[0]


def test_gateway_config_errors_name_their_path() -> None:
    good = hash_token("x")
    problems = config_problems(
        {
            "auth": {
                "tokens": [
                    {"name": "a", "sha256": good, "grants": {"kv": ["read", "wirte"], "Bad-Name": ["read"]}},
                    {"name": "a", "sha256": good.upper(), "grants": {"kv": []}},
                    {"name": "b", "sha256": hash_token("y"), "grant": {}},
                ],
                "token": [],
            },
            "tsl": {},
        }
    )
    assert any(p.startswith("gateway: unknown key 'tsl'; expected one of: auth, tls,") for p in problems)
    assert "gateway.auth: unknown key 'token'; expected one of: tokens" in problems
    assert any(p.startswith("gateway.auth.tokens[0].grants.kv: unknown roles 'wirte'") for p in problems)
    assert any(
        p.startswith("gateway.auth.tokens[0].grants.Bad-Name: grant a namespace name") for p in problems
    )
    assert any(p.startswith("gateway.auth.tokens[1].grants.kv: grant at least one of") for p in problems)
    assert any(p.startswith("gateway.auth.tokens[2]: unknown key 'grant'") for p in problems), problems
    problems = config_problems(
        {"auth": {"tokens": [{"name": "a", "sha256": good}, {"name": "a", "sha256": good.upper()}]}}
    )
    assert any(
        p.startswith("gateway.auth.tokens[1].name: 'a' is also the name of tokens[0]") for p in problems
    )
    assert any(p.startswith("gateway.auth.tokens[1].sha256: the same hash as tokens[0]") for p in problems)
    problems = config_problems({"tls": {"cert": "s.pem"}})
    assert problems == ["gateway.tls.key: required key 'key' is missing"] or any(
        p.startswith("gateway.tls") and "key" in p for p in problems
    )


def test_tls_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    file = tmp_path / "prism.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "backends": {"mem": {"plugin": "memory"}},
                "gateway": {"tls": {"cert": "certs/s.pem", "key": "/abs/k.pem"}},
            }
        )
    )
    config = load_config(file, load_plugins().registry)
    assert config.gateway.tls is not None
    assert (config.gateway.tls.cert, config.gateway.tls.key, config.gateway.tls.client_ca) == (
        tmp_path / "certs/s.pem",
        Path("/abs/k.pem"),
        None,
    )
    assert config.gateway.auth is None


# -- prism token new ------------------------------------------------------------------------------


def test_token_new_prints_a_token_and_a_config_entry_that_accepts_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="prism")
    add_token_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["token", "new", "--name", "billing-service"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    token = out[0].removeprefix("token: ")
    assert token.startswith(TOKEN_PREFIX)
    assert len(token) >= len(TOKEN_PREFIX) + 43
    (entry,) = yaml.safe_load(out[1])
    assert entry == {
        "name": "billing-service",
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "grants": {},
    }
    assert token not in out[1]
    # Pasted into prism.yaml with a grant, the entry lets the token in.
    entry["grants"] = {"kv": ["read"]}
    config = {**CONFIG, "gateway": {"auth": {"tokens": [entry]}}}
    with (
        GatewayThread(config) as running,
        prism.remote.connect(running.target, token=token, timeout=10) as db,
    ):
        assert db.plan("kv").backend == "mem"
    # Each run makes a different token.
    assert args.func(args) == 0
    assert capsys.readouterr().out.splitlines()[0] != out[0]
    with pytest.raises(SystemExit):
        parser.parse_args(["token", "new", "--name", "has space"])


# -- prism serve's start-up warning -----------------------------------------------------------------


def serve_logs(config: dict[str, Any], listen: str) -> list[MutableMapping[str, Any]]:
    """The log events of a run_gateway that starts on ``listen`` and is stopped
    as soon as it logged that it listens."""
    from prism.gateway.server import run_gateway

    async def body(logs: list[MutableMapping[str, Any]]) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_gateway(config, listen=listen, grace_s=1, stop=stop))
        deadline = time.monotonic() + 20
        while not any(e["event"] == "prism gateway listening" for e in logs):
            assert time.monotonic() < deadline, "the gateway did not start in time"
            assert not task.done(), "the gateway stopped before it listened"
            await asyncio.sleep(0.01)
        stop.set()
        await task

    # Not asyncio.run: it leaves the main thread with no current event loop,
    # which later tests that rely on the implicit default loop trip over.
    loop = asyncio.new_event_loop()
    try:
        with capture_logs() as logs:
            loop.run_until_complete(body(logs))
    finally:
        loop.close()
    return logs


def test_serve_warns_when_reachable_beyond_loopback_without_auth() -> None:
    open_config = {k: v for k, v in CONFIG.items() if k != "gateway"}
    warnings = [e for e in serve_logs(open_config, "0.0.0.0:0") if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "without auth" in warnings[0]["event"]
    assert "gateway.auth" in warnings[0]["event"]
    # With auth but no TLS: the warning is about tokens in clear text.
    warnings = [e for e in serve_logs(CONFIG, "0.0.0.0:0") if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "without TLS" in warnings[0]["event"]
    # Loopback: nobody else can reach it, no warning.
    listening = serve_logs(open_config, "127.0.0.1:0")
    assert [e for e in listening if e["log_level"] == "warning"] == []
    (started,) = [e for e in listening if e["event"] == "prism gateway listening"]
    assert (started["auth"], started["tls"]) == ("off", "off")
