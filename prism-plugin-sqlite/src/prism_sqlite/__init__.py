"""Prism's SQLite backend: a durable KeyValue store and a durable Queue in one
local file.

Install the distribution and name ``plugin: sqlite`` under ``backends:`` in
``prism.yaml``; :mod:`prism_sqlite.plugin` registers both abstractions through
the ``prism.backends`` entry point.
"""

from __future__ import annotations

from prism_sqlite.connection import SqliteConnection, SqliteSettings
from prism_sqlite.keyvalue import KEYVALUE, SqliteKeyValue
from prism_sqlite.queue import QUEUE, SqliteQueue

__all__ = ["KEYVALUE", "QUEUE", "SqliteConnection", "SqliteKeyValue", "SqliteQueue", "SqliteSettings"]
