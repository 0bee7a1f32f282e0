"""Prism's Cassandra backend: the Netflix KeyValue data model on Apache Cassandra.

Install the distribution and name ``plugin: cassandra`` under ``backends:`` in
``prism.yaml``; :mod:`prism_cassandra.plugin` registers it through the
``prism.backends`` entry point.
"""

from __future__ import annotations

from prism_cassandra.keyvalue import KEYVALUE, CassandraKeyValue, CassandraSettings

__all__ = ["KEYVALUE", "CassandraKeyValue", "CassandraSettings"]
