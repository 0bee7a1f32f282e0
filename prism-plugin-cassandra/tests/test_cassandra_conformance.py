"""The KeyValue conformance suite against a real Cassandra node, through the public API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from cassandra_support import split_contact

from prism_conformance import KeyValueSuite


def _backend(contact: str, keyspace: str, **extra: Any) -> dict[str, Any]:
    host, port = split_contact(contact)
    # The keys the services runner writes into .services/prism.yaml, plus a
    # keyspace of the class's own so that runs never see each other's data.
    return {
        "plugin": "cassandra",
        "contact_points": [host],
        "port": port,
        "replication_factor": 1,
        "keyspace": keyspace,
        **extra,
    }


class TestCassandra(KeyValueSuite):
    @pytest.fixture
    def prism_backend(self, cassandra_contact: str, class_keyspace: str) -> Mapping[str, Any]:
        return _backend(cassandra_contact, class_keyspace)


class TestCassandraSmallChunks(KeyValueSuite):
    """Values above 4 KiB are chunked, so chunking on Cassandra is exercised often."""

    @pytest.fixture
    def prism_backend(self, cassandra_contact: str, class_keyspace: str) -> Mapping[str, Any]:
        return _backend(cassandra_contact, class_keyspace, max_item_bytes=4096)
