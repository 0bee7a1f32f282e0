"""Prism's SQLite backend: a durable KeyValue store in one local file.

Install the distribution and name ``plugin: sqlite`` under ``backends:`` in
``prism.yaml``; :mod:`prism_sqlite.plugin` registers it through the
``prism.backends`` entry point.
"""

from __future__ import annotations

from prism_sqlite.keyvalue import KEYVALUE, SqliteKeyValue, SqliteSettings

__all__ = ["KEYVALUE", "SqliteKeyValue", "SqliteSettings"]
