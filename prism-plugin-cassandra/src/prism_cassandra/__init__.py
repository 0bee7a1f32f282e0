"""Prism's Cassandra backend: the Netflix KeyValue data model, time-bucketed
TimeSeries and Counters (counter tables, and an event log with rollup for
exact mode) on Apache Cassandra.

Install the distribution and name ``plugin: cassandra`` under ``backends:`` in
``prism.yaml``; :mod:`prism_cassandra.plugin` registers it through the
``prism.backends`` entry point.
"""

from __future__ import annotations

from prism_cassandra.counter import COUNTER, CassandraCounter
from prism_cassandra.keyvalue import KEYVALUE, CassandraKeyValue, CassandraSettings
from prism_cassandra.timeseries import TIMESERIES, CassandraTimeSeries

__all__ = [
    "COUNTER",
    "KEYVALUE",
    "TIMESERIES",
    "CassandraCounter",
    "CassandraKeyValue",
    "CassandraSettings",
    "CassandraTimeSeries",
]
