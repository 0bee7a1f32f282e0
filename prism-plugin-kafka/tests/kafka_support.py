"""Shared helpers of the kafka plugin's tests (imported, not a conftest)."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

QUEUE_LIMITS: dict[str, Any] = {"visibility_timeout": "10m", "max_attempts": 3, "max_wait": "20s"}


def config(
    bootstrap: str, prefix: str, *, queue: dict[str, Any] | None = None, **backend: Any
) -> dict[str, Any]:
    """A prism.yaml mapping with one kafka backend and one queue namespace ``q``."""
    return {
        "backends": {
            "k": {"plugin": "kafka", "bootstrap_servers": bootstrap, "topic_prefix": prefix, **backend}
        },
        "namespaces": {"q": {"abstraction": "queue", "queue": {**QUEUE_LIMITS, **(queue or {})}}},
    }


def committed_offsets(bootstrap: str, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (absent when none), from the broker."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = [ConsumerGroupTopicPartitions(group_id, [TopicPartition(topic, p) for p in range(partitions)])]
    answer = admin.list_consumer_group_offsets(request)[group_id].result(timeout=20)
    return {tp.partition: tp.offset for tp in answer.topic_partitions or [] if tp.offset >= 0}


def wait_for_commit(
    bootstrap: str, group_id: str, topic: str, partitions: int, expected: dict[int, int], timeout: float = 20
) -> dict[int, int]:
    """Poll the committed offsets until they equal ``expected`` or the deadline passes
    (commits are sent by the reader thread shortly after the ack); returns the last seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = committed_offsets(bootstrap, group_id, topic, partitions)
        if seen == expected or time.monotonic() >= deadline:
            return seen
        time.sleep(0.1)
