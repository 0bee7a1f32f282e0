"""The TimeSeries and Counter conformance suites against the sqlite backend,
through the public API."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from prism_conformance import CounterSuite, TimeSeriesSuite


class TestSqliteTimeSeries(TimeSeriesSuite):
    @pytest.fixture
    def prism_backend(self, tmp_path: Path) -> Mapping[str, Any]:
        return {"plugin": "sqlite", "path": tmp_path / "ts.db"}


class TestSqliteCounter(CounterSuite):
    @pytest.fixture
    def prism_backend(self, tmp_path: Path) -> Mapping[str, Any]:
        return {"plugin": "sqlite", "path": tmp_path / "counter.db"}
