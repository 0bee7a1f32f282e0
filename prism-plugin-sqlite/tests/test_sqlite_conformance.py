"""The KeyValue conformance suite against the sqlite backend, through the public API."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from prism_conformance import KeyValueSuite


class TestSqlite(KeyValueSuite):
    @pytest.fixture
    def prism_backend(self, tmp_path: Path) -> Mapping[str, Any]:
        return {"plugin": "sqlite", "path": str(tmp_path / "prism.db")}


class TestSqliteSmallChunks(KeyValueSuite):
    """Values above 4 KiB are chunked, so chunking on SQLite is exercised often."""

    @pytest.fixture
    def prism_backend(self, tmp_path: Path) -> Mapping[str, Any]:
        return {"plugin": "sqlite", "path": str(tmp_path / "prism.db"), "max_item_bytes": 4096}
