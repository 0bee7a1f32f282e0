"""Discovery through the entry point, settings through prism.yaml, and traits."""

from __future__ import annotations

from datetime import timedelta

import pytest

import prism_cassandra
from prism.config import parse_config
from prism.errors import ConfigError
from prism.plugins import load_plugins
from prism_cassandra import CassandraSettings


def test_load_plugins_finds_cassandra_through_its_entry_point() -> None:
    plugins = load_plugins(disabled=())
    assert plugins.registry.keyvalue["cassandra"] is prism_cassandra.KEYVALUE
    [loaded] = [p for p in plugins.loaded if p.name == "cassandra"]
    assert loaded.module == "prism_cassandra.plugin"
    assert loaded.distribution == "prism-plugin-cassandra"
    assert loaded.abstractions == ("counter", "keyvalue", "timeseries")
    assert set(loaded.capabilities) == {
        "kv.atomic_mutate",
        "kv.scan",
        "kv.native_ttl",
        "timeseries.native_retention",
        "counter.best_effort",
        "counter.exact",
    }
    assert not [b for b in plugins.broken if b.name == "cassandra"]


def test_cassandra_can_be_blocked() -> None:
    plugins = load_plugins(disabled={"cassandra"})
    assert "cassandra" not in plugins.registry.keyvalue
    assert "cassandra" in plugins.disabled


def test_the_services_runner_settings_parse() -> None:
    # Exactly what `nox -s services -- up` writes into .services/prism.yaml.
    registry = load_plugins(disabled=()).registry
    config = parse_config(
        {
            "backends": {
                "cassandra": {
                    "plugin": "cassandra",
                    "contact_points": ["127.0.0.1"],
                    "port": 19042,
                    "replication_factor": 1,
                }
            }
        },
        registry,
    )
    assert config.backends["cassandra"].settings == CassandraSettings(
        contact_points=["127.0.0.1"], port=19042
    )


def test_every_setting_is_read_from_prism_yaml() -> None:
    registry = load_plugins(disabled=()).registry
    config = parse_config(
        {
            "backends": {
                "c": {
                    "plugin": "cassandra",
                    "contact_points": ["10.0.0.1", "10.0.0.2"],
                    "port": 9142,
                    "keyspace": "kv_prod",
                    "replication": {"dc1": 3, "dc2": 3},
                    "local_datacenter": "dc1",
                    "consistency": "quorum",
                    "connect_timeout": "2s",
                    "request_timeout": "1500ms",
                    "username": "prism",
                    "password": "secret",
                    "max_item_bytes": "512KiB",
                    "max_value_bytes": "32MiB",
                }
            }
        },
        registry,
    )
    settings = config.backends["c"].settings
    assert settings == CassandraSettings(
        contact_points=["10.0.0.1", "10.0.0.2"],
        port=9142,
        keyspace="kv_prod",
        replication={"dc1": 3, "dc2": 3},
        local_datacenter="dc1",
        consistency="quorum",
        connect_timeout=timedelta(seconds=2),
        request_timeout=timedelta(milliseconds=1500),
        username="prism",
        password="secret",
        max_item_bytes=512 * 1024,  # type: ignore[arg-type]
        max_value_bytes=32 * 1024 * 1024,  # type: ignore[arg-type]
    )
    assert "secret" not in repr(settings)


def test_defaults() -> None:
    registry = load_plugins(disabled=()).registry
    config = parse_config({"backends": {"c": {"plugin": "cassandra"}}}, registry)
    settings = config.backends["c"].settings
    assert settings == CassandraSettings()
    assert (settings.contact_points, settings.port, settings.keyspace) == (["127.0.0.1"], 9042, "prism")
    assert (settings.replication_factor, settings.replication, settings.consistency) == (
        1,
        None,
        "local_quorum",
    )
    assert (settings.connect_timeout, settings.request_timeout) == (
        timedelta(seconds=5),
        timedelta(seconds=10),
    )
    assert (settings.max_item_bytes, settings.max_value_bytes) == (1024 * 1024, 64 * 1024 * 1024)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"contact_point": "x"}, "unknown key 'contact_point'"),
        ({"consistency": "any"}, "consistency"),
        ({"port": 0}, "port"),
        ({"keyspace": "no-dashes"}, "keyspace"),
        ({"connect_timeout": "0s"}, "connect_timeout"),
        ({"max_item_bytes": "2MiB", "max_value_bytes": "1MiB"}, "max_value_bytes"),
        ({"replication": {"dc1": 0}}, "replication"),
    ],
)
def test_invalid_settings_are_reported_with_their_path(settings: dict[str, object], problem: str) -> None:
    registry = load_plugins(disabled=()).registry
    with pytest.raises(ConfigError) as info:
        parse_config({"backends": {"local": {"plugin": "cassandra", **settings}}}, registry)
    text = "\n".join(info.value.problems)
    assert "backends.local" in text
    assert problem in text


@pytest.mark.parametrize(
    ("settings", "consistency"),
    [
        (CassandraSettings(), "strong"),
        (CassandraSettings(consistency="one"), "strong"),  # one replica: every level sees every write
        (CassandraSettings(consistency="one", replication_factor=3), "eventual"),
        (CassandraSettings(consistency="local_quorum", replication_factor=3), "strong"),
    ],
)
def test_traits_follow_the_settings(settings: CassandraSettings, consistency: str) -> None:
    traits = prism_cassandra.KEYVALUE.traits(settings)
    assert traits.consistency == consistency
    assert traits.durability == "durable"
    assert traits.max_item_bytes == settings.max_item_bytes
    assert traits.max_ttl is not None
    assert traits.max_ttl < timedelta(days=365 * 20)
