"""AdminService.CreateNamespace: run-time namespaces under the operator's
policy (``gateway.create_namespaces``), through a real gateway on loopback
and the remote client, as an application declares its namespaces at start-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

import prism
import prism.remote
from prism.config import parse_config
from prism.errors import ConfigError
from prism.gateway.auth import hash_token
from prism.gateway.testing import GatewayThread
from prism.plugins.manager import load_plugins
from prism.remote import PermissionDenied, RemoteError, Unauthenticated
from prism.runtime import NamespaceConflict
from prism.spi import KeyValueTraits


def config(tmp_path: Path, **policy: Any) -> dict[str, Any]:
    """SQLite and memory backends, one namespace in the file, and the policy."""
    data: dict[str, Any] = {
        "backends": {
            "lite": {"plugin": "sqlite", "path": str(tmp_path / "prism.db")},
            "mem": {"plugin": "memory"},
        },
        "namespaces": {"in_file": {"abstraction": "keyvalue", "backend": "mem"}},
    }
    if policy:
        data["gateway"] = {"create_namespaces": policy}
    return data


@pytest.fixture
def allowed(tmp_path: Path) -> Iterator[GatewayThread]:
    with GatewayThread(config(tmp_path, allow=True, max_namespaces=5)) as gateway:
        yield gateway


def test_without_the_policy_create_namespace_is_refused_naming_the_key(tmp_path: Path) -> None:
    for policy in ({}, {"allow": False}):
        with GatewayThread(config(tmp_path, **policy)) as gateway, prism.connect(gateway.target) as db:
            with pytest.raises(PermissionDenied) as refused:
                db.create_namespace("carts")
            assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
            assert "gateway.create_namespaces" in str(refused.value)
            assert "allow: true" in str(refused.value)
            with pytest.raises(prism.NamespaceNotFound):
                db.keyvalue("carts").get_items("r")


def test_a_created_namespace_is_served_with_its_limits_and_usable(allowed: GatewayThread) -> None:
    with prism.connect(allowed.target) as db:
        served = db.create_namespace(
            "carts", needs={"ttl": "1d", "durability": "durable"}, limits={"max_key_bytes": 16}
        )
        assert (served.name, served.abstraction, served.backend, served.plugin) == (
            "carts",
            "keyvalue",
            "lite",
            "sqlite",
        )
        assert served.runtime
        assert "kv.scan" in served.capabilities
        assert served.limits is not None
        assert isinstance(served.traits, KeyValueTraits)
        assert served.traits.max_item_bytes > 0  # the chunking threshold
        assert served.limits.max_key_bytes == 16
        assert served.limits.max_value_bytes == 8 * 1024 * 1024  # the default, below SQLite's limit
        assert served.traits.durability == "durable"
        carts = db.keyvalue("carts")
        carts.put_items("user:1", {b"item": b"book"})
        assert carts.get_items("user:1").as_dict() == {b"item": b"book"}
        with pytest.raises(prism.LimitExceeded) as over:
            carts.put_items("user:1", {b"k" * 17: b"v"})
        assert over.value.limit_name == "max_key_bytes"
        assert db.plan("carts").backend == "lite"
        listed = db.namespace("carts")
        assert listed.runtime
        assert listed.limits == served.limits


def test_the_same_declaration_again_succeeds_and_keeps_the_data(allowed: GatewayThread) -> None:
    with prism.connect(allowed.target) as db:
        first = db.create_namespace("jobs", "queue", queue={"visibility_timeout": "2s", "max_attempts": 3})
        [message_id] = db.queue("jobs").publish("t", [prism.Message(b"", b"one")])
        again = db.create_namespace("jobs", "queue", queue={"visibility_timeout": "2s", "max_attempts": 3})
        assert again == first
        assert again.queue is not None
        assert (again.queue.visibility_timeout, again.queue.max_attempts) == (timedelta(seconds=2), 3)
        [delivery] = db.queue("jobs").consume("t", "g", wait=5)
        assert (delivery.id, delivery.payload) == (message_id, b"one")
        # A prism.yaml namespace declared as it is there is a success too.
        assert db.create_namespace("in_file", backend="mem").runtime is False


def test_a_different_declaration_is_already_exists_naming_what_differs(allowed: GatewayThread) -> None:
    with prism.connect(allowed.target) as db:
        db.create_namespace("carts", limits={"max_key_bytes": 16})
        with pytest.raises(RemoteError) as clash:
            db.create_namespace("carts", limits={"max_key_bytes": 32}, needs={"ttl": "1h"})
        assert clash.value.code is grpc.StatusCode.ALREADY_EXISTS
        assert "limits.max_key_bytes: in place 16, declared 32" in str(clash.value)
        assert "needs.ttl: in place unset, declared 1h" in str(clash.value)
        with pytest.raises(RemoteError) as abstraction:
            db.create_namespace("carts", "queue")
        assert abstraction.value.code is grpc.StatusCode.ALREADY_EXISTS
        assert "abstraction: in place keyvalue, declared queue" in str(abstraction.value)
        with pytest.raises(RemoteError) as in_file:
            db.create_namespace("in_file", backend="mem", limits={"max_items_per_call": 5})
        assert in_file.value.code is grpc.StatusCode.ALREADY_EXISTS
        assert "prism.yaml" in str(in_file.value)


def test_needs_no_backend_meets_are_a_plan_error(allowed: GatewayThread) -> None:
    with prism.connect(allowed.target) as db:
        with pytest.raises(prism.PlanError) as refused:
            db.create_namespace("huge", backend="mem", needs={"durability": "durable"})
        assert refused.value.namespace == "huge"
        assert "mem" in refused.value.reasons
        with pytest.raises(prism.PlanError) as unpinned:
            db.create_namespace("huge", needs={"max_value_bytes": "100GiB"})
        assert set(unpinned.value.reasons) == {"lite", "mem"}
        # Refused declarations leave nothing behind.
        with pytest.raises(prism.NamespaceNotFound):
            db.plan("huge")


def test_only_the_allowed_backends_take_run_time_namespaces(tmp_path: Path) -> None:
    with (
        GatewayThread(config(tmp_path, allow=True, backends=["lite"])) as gateway,
        prism.connect(gateway.target) as db,
    ):
        with pytest.raises(PermissionDenied) as refused:
            db.create_namespace("cache", backend="mem")
        assert "'mem'" in str(refused.value)
        assert "gateway.create_namespaces.backends allows lite" in str(refused.value)
        # Unpinned, it lands on an allowed backend even where another comes first.
        assert db.create_namespace("cache").backend == "lite"
        assert db.create_namespace("cache").backend == "lite"


def test_max_namespaces_is_resource_exhausted(tmp_path: Path) -> None:
    with (
        GatewayThread(config(tmp_path, allow=True, max_namespaces=2)) as gateway,
        prism.connect(gateway.target) as db,
    ):
        db.create_namespace("one")
        db.create_namespace("two")
        with pytest.raises(RemoteError) as full:
            db.create_namespace("three")
        assert full.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_namespaces (2)" in str(full.value)
        db.create_namespace("two")  # declaring one that exists still works at the limit


@pytest.mark.parametrize(
    ("name", "settings", "field", "text"),
    [
        ("Bad-Name", {}, "name", "namespace names are 1-48 lowercase letters"),
        (
            "q",
            {"abstraction": "queue", "queue": {"visibility_timeout": 0}},
            "queue.visibility_timeout",
            "must be longer than 0",
        ),
        (
            "kv",
            {"needs": {"capabilities": ["queue.delay"]}},
            "needs.capabilities",
            "do not apply to keyvalue",
        ),
        ("kv", {"needs": {"capabilities": ["kv.teleport"]}}, "needs.capabilities", "unknown capabilities"),
        ("kv", {"queue": {"max_batch": 5}}, "queue", "only queue namespaces take queue settings"),
        ("kv", {"backend": "nowhere"}, "backend", "no backend is named 'nowhere' (backends: lite, mem)"),
        (
            "q",
            {"abstraction": "queue", "queue": {"dead_letter_suffix": "/dlq"}},
            "queue.dead_letter_suffix",
            "use letters, digits",
        ),
    ],
)
def test_settings_prism_yaml_refuses_are_invalid_argument_naming_the_field(
    allowed: GatewayThread, name: str, settings: dict[str, Any], field: str, text: str
) -> None:
    abstraction = settings.pop("abstraction", "keyvalue")
    with prism.connect(allowed.target) as db, pytest.raises(prism.InvalidArgument) as refused:
        db.create_namespace(name, abstraction, **settings)
    assert refused.value.field == field, refused.value
    assert text in str(refused.value)


def test_what_the_wire_cannot_carry_is_refused_by_the_client_naming_the_field(allowed: GatewayThread) -> None:
    with prism.connect(allowed.target) as db:
        for settings, field in (
            ({"limits": {"max_kee_bytes": 1}}, "limits.max_kee_bytes"),
            ({"needs": {"ttl": "soon"}}, "needs.ttl"),
            ({"needs": {"durability": "forever"}}, "needs.durability"),
            ({"limits": {"max_value_bytes": "lots"}}, "limits.max_value_bytes"),
        ):
            with pytest.raises(prism.InvalidArgument) as refused:
                db.create_namespace("kv", **settings)
            assert refused.value.field == field
        with pytest.raises(
            prism.InvalidArgument, match="expected 'keyvalue', 'queue', 'timeseries' or 'counter'"
        ):
            db.create_namespace("kv", "graph")


def test_with_auth_only_the_admin_grant_creates(tmp_path: Path) -> None:
    data = config(tmp_path, allow=True)
    data["gateway"]["auth"] = {
        "tokens": [
            {"name": "ops", "sha256": hash_token("ops-secret"), "grants": {"*": ["admin"]}},
            {"name": "app", "sha256": hash_token("app-secret"), "grants": {"carts": ["read", "write"]}},
        ]
    }
    with GatewayThread(data) as gateway:
        with (
            prism.connect(gateway.target, token="app-secret") as app,
            pytest.raises(PermissionDenied) as denied,
        ):
            app.create_namespace("carts")
        assert (denied.value.namespace, denied.value.role) == ("carts", "admin")
        with prism.connect(gateway.target) as anonymous, pytest.raises(Unauthenticated):
            anonymous.create_namespace("carts")
        with prism.connect(gateway.target, token="ops-secret") as ops:
            assert ops.create_namespace("carts").backend == "lite"
        with prism.connect(gateway.target, token="app-secret") as app:
            app.keyvalue("carts").put_items("r", {b"k": b"v"})
            assert app.keyvalue("carts").get_items("r").as_dict() == {b"k": b"v"}


def test_the_async_client_creates_namespaces_too(allowed: GatewayThread) -> None:
    async def main() -> None:
        async with prism.remote.connect_async(allowed.target) as db:
            served = await db.create_namespace("events", "queue", queue={"max_message_bytes": "1KiB"})
            assert served.queue is not None
            assert served.queue.max_message_bytes == 1024
            await db.queue("events").publish("t", [prism.Message(b"", b"x" * 100)])
            with pytest.raises(prism.LimitExceeded):
                await db.queue("events").publish("t", [prism.Message(b"", b"x" * 2000)])

    asyncio.run(main())


def test_the_embedded_runtime_declares_with_the_same_rules(tmp_path: Path) -> None:
    with prism.open(config(tmp_path)) as db:
        plan = db.declare("carts", {"abstraction": "keyvalue", "limits": {"max_key_bytes": 16}})
        assert plan.namespace == "carts"
        db.keyvalue("carts").put_items("r", {b"k": b"v"})
        assert db.declare("carts", {"abstraction": "keyvalue", "limits": {"max_key_bytes": 16}}) == plan
        with pytest.raises(NamespaceConflict, match=r"limits\.max_key_bytes: in place 16, declared 8"):
            db.declare("carts", {"abstraction": "keyvalue", "limits": {"max_key_bytes": 8}})
        with pytest.raises(prism.InvalidArgument) as bad:
            db.declare("other", {"abstraction": "keyvalue", "limits": {"max_key_bytes": "many"}})
        assert bad.value.field == "limits.max_key_bytes"
        assert db.keyvalue("carts").get_items("r").as_dict() == {b"k": b"v"}


def test_the_policy_block_is_checked_like_the_rest_of_prism_yaml() -> None:
    registry = load_plugins().registry
    backends = {"lite": {"plugin": "memory"}}
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "backends": backends,
                "gateway": {"create_namespaces": {"allow": "yes", "backends": ["lite"], "max": 1}},
            },
            registry,
        )
    problems = caught.value.problems
    assert "gateway.create_namespaces.allow: expected true or false, got 'yes'" in problems
    assert any(p.startswith("gateway.create_namespaces: unknown key 'max'") for p in problems)
    with pytest.raises(ConfigError) as unknown:
        parse_config(
            {"backends": backends, "gateway": {"create_namespaces": {"backends": ["lite", "gone"]}}}, registry
        )
    assert unknown.value.problems == [
        "gateway.create_namespaces.backends.1: no backend is named 'gone' (backends: lite)"
    ]
    with pytest.raises(ConfigError) as zero:
        parse_config(
            {"backends": backends, "gateway": {"create_namespaces": {"max_namespaces": 0}}}, registry
        )
    assert zero.value.problems[0].startswith("gateway.create_namespaces.max_namespaces: must be at least 1")
    parsed = parse_config({"backends": backends, "gateway": {"create_namespaces": {"allow": True}}}, registry)
    assert parsed.gateway.create_namespaces is not None
    assert (parsed.gateway.create_namespaces.backends, parsed.gateway.create_namespaces.max_namespaces) == (
        None,
        10000,
    )
