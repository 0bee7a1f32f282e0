"""Prism's SQLite backend: durable KeyValue, Queue, TimeSeries and Counter in
one local file.

Install the distribution and name ``plugin: sqlite`` under ``backends:`` in
``prism.yaml``; :mod:`prism_sqlite.plugin` registers every abstraction through
the ``prism.backends`` entry point.
"""

from __future__ import annotations

from prism_sqlite.connection import SqliteConnection, SqliteSettings
from prism_sqlite.counter import COUNTER, SqliteCounter
from prism_sqlite.keyvalue import KEYVALUE, SqliteKeyValue
from prism_sqlite.queue import QUEUE, SqliteQueue
from prism_sqlite.timeseries import TIMESERIES, SqliteTimeSeries

__all__ = [
    "COUNTER",
    "KEYVALUE",
    "QUEUE",
    "TIMESERIES",
    "SqliteConnection",
    "SqliteCounter",
    "SqliteKeyValue",
    "SqliteQueue",
    "SqliteSettings",
    "SqliteTimeSeries",
]
