"""Fixtures of the kafka plugin's tests.

The broker is shared with other test runs, so every test works under its own
``topic_prefix`` and, afterwards, deletes exactly the topics and consumer
groups under that prefix (which it created) and nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient


@pytest.fixture
def kafka_prefix(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh topic prefix; its topics and groups are deleted after the test."""
    prefix = f"t{uuid.uuid4().hex[:12]}."
    yield prefix
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=10).values():
                future.result(timeout=20)
        listed = admin.list_consumer_groups(request_timeout=10).result(timeout=20)
        groups = [g.group_id for g in listed.valid if g.group_id.startswith(prefix)]
        if groups:
            for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
                future.result(timeout=20)
    except KafkaException:
        pass  # cleanup is best effort: a leftover topic never breaks another test
