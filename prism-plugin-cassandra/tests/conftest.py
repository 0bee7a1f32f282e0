"""Fixtures shared by the Cassandra tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cassandra_support import drop_keyspace, unique_keyspace


@pytest.fixture(scope="class")
def class_keyspace(request: pytest.FixtureRequest, cassandra_contact: str) -> Iterator[str]:
    """A keyspace of the test class's own, dropped when the class is done."""
    keyspace = unique_keyspace(request.node.name.lower()[:12])
    yield keyspace
    drop_keyspace(cassandra_contact, keyspace)


@pytest.fixture(scope="module")
def module_keyspace(request: pytest.FixtureRequest, cassandra_contact: str) -> Iterator[str]:
    keyspace = unique_keyspace("mod")
    yield keyspace
    drop_keyspace(cassandra_contact, keyspace)
