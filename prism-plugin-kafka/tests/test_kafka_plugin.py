"""Discovery through the entry point, settings through prism.yaml, and the
naming and sizing rules (no broker needed)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import prism_kafka
from prism import capabilities
from prism.config import NamespaceConfig, Needs, parse_config
from prism.errors import ConfigError, LimitExceeded
from prism.plugins import load_plugins
from prism_kafka import KafkaSettings
from prism_kafka.offsets import decode_progress, encode_progress, message_id, parse_message_id
from prism_kafka.settings import RECORD_HEADROOM, kafka_group_id, kafka_topic_name, partitions_for


def test_load_plugins_finds_kafka_through_its_entry_point() -> None:
    plugins = load_plugins(disabled=())
    assert plugins.registry.queue["kafka"] is prism_kafka.QUEUE
    assert "kafka" not in plugins.registry.keyvalue
    [loaded] = [p for p in plugins.loaded if p.name == "kafka"]
    assert loaded.module == "prism_kafka.plugin"
    assert loaded.distribution == "prism-plugin-kafka"
    assert loaded.abstractions == ("queue",)
    assert not [b for b in plugins.broken if b.name == "kafka"]


def test_capabilities_have_key_order_and_no_delay() -> None:
    assert prism_kafka.QUEUE.capabilities == frozenset({capabilities.QUEUE_ORDERED_BY_KEY})


def test_settings_are_read_from_prism_yaml() -> None:
    registry = load_plugins(disabled=()).registry
    config = parse_config(
        {
            "backends": {
                "log": {
                    "plugin": "kafka",
                    "bootstrap_servers": "k1:9092,k2:9092",
                    "topic_prefix": "app.",
                    "partitions": 6,
                    "partition_write_rps": 500,
                    "replication_factor": 3,
                    "min_insync_replicas": 2,
                    "max_buffered_messages": 100,
                    "max_message_bytes": "512KiB",
                    "connect_timeout": "2s",
                    "delivery_timeout": "1m",
                    "session_timeout": "6s",
                    "catch_up_timeout": "3s",
                    "client_config": {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"},
                }
            }
        },
        registry,
    )
    settings = config.backends["log"].settings
    assert settings == KafkaSettings(
        bootstrap_servers="k1:9092,k2:9092",
        topic_prefix="app.",
        partitions=6,
        partition_write_rps=500,
        replication_factor=3,
        min_insync_replicas=2,
        max_buffered_messages=100,
        max_message_bytes=512 * 1024,  # type: ignore[arg-type]
        connect_timeout=timedelta(seconds=2),
        delivery_timeout=timedelta(minutes=1),
        session_timeout=timedelta(seconds=6),
        catch_up_timeout=timedelta(seconds=3),
        client_config={"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"},
    )


def test_defaults_and_traits() -> None:
    registry = load_plugins(disabled=()).registry
    settings = parse_config({"backends": {"k": {"plugin": "kafka"}}}, registry).backends["k"].settings
    assert settings == KafkaSettings()
    assert (settings.bootstrap_servers, settings.topic_prefix) == ("127.0.0.1:9092", "prism.")
    assert (settings.partitions, settings.replication_factor) == (3, 1)
    assert settings.effective_min_insync_replicas == 1
    assert KafkaSettings(replication_factor=3).effective_min_insync_replicas == 2
    traits = prism_kafka.QUEUE.traits(settings)
    assert (traits.durability, traits.max_message_bytes) == ("durable", 1024 * 1024)
    # Records may be larger than messages: room for framing and dead-letter headers.
    assert settings.record_limit == 1024 * 1024 + RECORD_HEADROOM


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"bootstrap": "x:1"}, "unknown key 'bootstrap'"),
        ({"topic_prefix": "bad prefix"}, "topic_prefix"),
        ({"partitions": 0}, "partitions"),
        ({"replication_factor": 1, "min_insync_replicas": 2}, "min_insync_replicas"),
        ({"max_message_bytes": "1GiB"}, "max_message_bytes"),
        ({"session_timeout": "0s"}, "session_timeout"),
        ({"client_config": {"enable.auto.commit": "true"}}, "enable.auto.commit"),
    ],
)
def test_bad_settings_are_config_errors(settings: dict[str, object], problem: str) -> None:
    registry = load_plugins(disabled=()).registry
    with pytest.raises(ConfigError, match=problem):
        parse_config({"backends": {"k": {"plugin": "kafka", **settings}}}, registry)


def test_partitions_follow_the_write_rate() -> None:
    settings = KafkaSettings(partitions=3, partition_write_rps=1000)
    assert partitions_for(settings, None) == 3
    assert partitions_for(settings, NamespaceConfig("queue")) == 3
    assert partitions_for(settings, NamespaceConfig("queue", Needs(write_rps=2500))) == 3
    assert partitions_for(settings, NamespaceConfig("queue", Needs(write_rps=3001))) == 4
    assert partitions_for(settings, NamespaceConfig("queue", Needs(write_rps=50_000))) == 50


def test_topic_names_are_prefixed_and_never_collide_in_kafka() -> None:
    settings = KafkaSettings(topic_prefix="p.")
    assert kafka_topic_name(settings, "k", "orders", "created") == "p.orders.created"
    assert kafka_topic_name(settings, "k", "orders", "jobs.dlq") == "p.orders.jobs.dlq"
    assert kafka_group_id(settings, "my_ns", "billing") == "p.my_ns.billing"
    names = [
        kafka_topic_name(settings, "k", ns, topic)
        for ns, topic in [
            ("a", "b.c"),
            ("a", "b_c"),
            ("a_b", "c"),
            ("a", "b-c"),
            ("a", "b-uc"),
            ("a", "b_-c"),
            ("a", "b-_c"),
        ]
    ]
    # Kafka takes '.' and '_' as the same character when it checks for collisions.
    folded = {name.replace(".", "_") for name in names}
    assert len(folded) == len(names)


def test_a_kafka_topic_name_over_249_characters_is_refused() -> None:
    settings = KafkaSettings(topic_prefix="p" * 50)
    kafka_topic_name(settings, "k", "ns", "t" * (249 - 53))
    with pytest.raises(LimitExceeded, match="249") as caught:
        kafka_topic_name(settings, "k", "ns", "t" * (249 - 52))
    assert (caught.value.namespace, caught.value.limit, caught.value.actual) == ("ns", 249, 250)


def test_ids_round_trip_and_sort_by_offset() -> None:
    assert parse_message_id(message_id(2, 17)) == (2, 17)
    assert message_id(0, 9) < message_id(0, 10)
    for bad in (
        "",
        "1",
        "a-00000000000000000001",
        "1-1",
        "1-000000000000000000001",
        "-1-00000000000000000001",
    ):
        assert parse_message_id(bad) is None


def test_acks_and_attempts_beyond_the_commit_survive_in_the_metadata() -> None:
    acked = {103, 104, 105, 107, 110}
    attempts = {101: 2, 106: 1, 108: 4}
    metadata = encode_progress(100, acked | {99}, {**attempts, 98: 3})
    assert metadata == "prism1:3-5,7,10;1x2,6x1,8x4"
    assert decode_progress(100, metadata) == (acked, attempts)
    assert decode_progress(100, encode_progress(100, [], {102: 1})) == (set(), {102: 1})
    assert encode_progress(100, [], {}) == ""
    for foreign in ("someone else's metadata", "prism1:x", "prism1:1;2x0", ""):
        assert decode_progress(100, foreign) == (set(), {})
    # Too many gaps to fit: the tail is left out (those come back once more), never garbage.
    many = set(range(100, 100_000, 2))
    long = encode_progress(100, many, {101: 1})
    assert len(long) <= 3000
    decoded, _ = decode_progress(100, long)
    assert decoded < many
