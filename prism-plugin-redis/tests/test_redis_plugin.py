"""Discovery through the entry point, and settings through prism.yaml."""

from __future__ import annotations

from datetime import timedelta

import pytest

import prism_redis
from prism.config import parse_config
from prism.errors import ConfigError
from prism.plugins import load_plugins
from prism_redis import RedisSettings


def test_load_plugins_finds_redis_through_its_entry_point() -> None:
    plugins = load_plugins(disabled=())
    assert plugins.registry.keyvalue["redis"] is prism_redis.KEYVALUE
    assert plugins.registry.queue["redis"] is prism_redis.QUEUE
    [loaded] = [p for p in plugins.loaded if p.name == "redis"]
    assert loaded.module == "prism_redis.plugin"
    assert loaded.distribution == "prism-plugin-redis"
    assert loaded.abstractions == ("counter", "keyvalue", "queue", "timeseries")
    assert set(loaded.capabilities) == {"kv.atomic_mutate", "kv.scan", "counter.best_effort", "counter.exact"}
    assert plugins.registry.timeseries["redis"] is prism_redis.TIMESERIES
    assert plugins.registry.counter["redis"] is prism_redis.COUNTER
    assert not [b for b in plugins.broken if b.name == "redis"]


def test_redis_can_be_blocked() -> None:
    plugins = load_plugins(disabled={"redis"})
    assert "redis" not in plugins.registry.keyvalue
    assert "redis" not in plugins.registry.queue
    assert "redis" in plugins.disabled


def test_settings_are_read_from_prism_yaml() -> None:
    registry = load_plugins(disabled=()).registry
    config = parse_config(
        {
            "backends": {
                "cache": {
                    "plugin": "redis",
                    "url": "redis://10.0.0.5:6380/2",
                    "key_prefix": "app",
                    "connect_timeout": "250ms",
                    "socket_timeout": "2s",
                    "max_connections": 8,
                    "retries": 0,
                    "expiry_grace": "5m",
                    "durable": True,
                    "max_item_bytes": "512KiB",
                    "max_value_bytes": "16MiB",
                    "max_message_bytes": "4MiB",
                }
            }
        },
        registry,
    )
    assert config.backends["cache"].settings == RedisSettings(
        url="redis://10.0.0.5:6380/2",
        key_prefix="app",
        connect_timeout=timedelta(milliseconds=250),
        socket_timeout=timedelta(seconds=2),
        max_connections=8,
        retries=0,
        expiry_grace=timedelta(minutes=5),
        durable=True,
        max_item_bytes=512 * 1024,  # type: ignore[arg-type]
        max_value_bytes=16 * 1024 * 1024,  # type: ignore[arg-type]
        max_message_bytes=4 * 1024 * 1024,  # type: ignore[arg-type]
    )


def test_defaults_and_traits() -> None:
    registry = load_plugins(disabled=()).registry
    config = parse_config({"backends": {"r": {"plugin": "redis"}}}, registry)
    settings = config.backends["r"].settings
    assert settings == RedisSettings()
    assert settings.url == "redis://127.0.0.1:6379/0"
    assert settings.key_prefix == "prism"
    assert (settings.connect_timeout, settings.socket_timeout) == (timedelta(seconds=5), timedelta(seconds=5))
    assert (settings.max_item_bytes, settings.max_value_bytes) == (1024 * 1024, 64 * 1024 * 1024)
    traits = prism_redis.KEYVALUE.traits(settings)
    assert (traits.durability, traits.consistency) == ("ephemeral", "strong")
    assert prism_redis.KEYVALUE.traits(RedisSettings(durable=True)).durability == "durable"
    queue = prism_redis.QUEUE.traits(settings)
    # Room above the core's default namespace limit (1 MiB) for dead-letter headers.
    assert (queue.durability, queue.max_message_bytes) == ("ephemeral", 16 * 1024 * 1024)
    assert prism_redis.QUEUE.traits(RedisSettings(durable=True)).durability == "durable"
    assert prism_redis.QUEUE.settings_type is prism_redis.KEYVALUE.settings_type
    # Streams cannot honour per-key order or delays: neither is declared.
    assert prism_redis.QUEUE.capabilities == frozenset()


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"urll": "redis://x"}, "unknown key 'urll'"),
        ({"url": "http://127.0.0.1:6379"}, "url"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"connect_timeout": "0s"}, "connect_timeout"),
        ({"socket_timeout": "soon"}, "socket_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_item_bytes": 0}, "max_item_bytes"),
        ({"max_item_bytes": "2MiB", "max_value_bytes": "1MiB"}, "max_value_bytes"),
        ({"max_item_bytes": "1GiB", "max_value_bytes": "2GiB"}, "512 MB"),
        ({"max_message_bytes": 0}, "max_message_bytes"),
        ({"max_message_bytes": "1GiB"}, "512 MB"),
    ],
)
def test_invalid_settings_are_reported_with_their_path(settings: dict[str, object], problem: str) -> None:
    registry = load_plugins(disabled=()).registry
    with pytest.raises(ConfigError) as info:
        parse_config({"backends": {"cache": {"plugin": "redis", **settings}}}, registry)
    text = "\n".join(info.value.problems)
    assert "backends.cache" in text
    assert problem in text


def test_a_bad_url_never_shows_its_password() -> None:
    with pytest.raises(ValueError, match="redis://") as info:
        RedisSettings(url="http://user:hunter2@example.com:6379")
    assert "hunter2" not in str(info.value)
