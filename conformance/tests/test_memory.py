"""The suites against the reference ``memory`` backend: everything passes."""

from __future__ import annotations

from typing import ClassVar

from prism_conformance import CounterSuite, KeyValueSuite, QueueSuite, TimeSeriesSuite


class TestMemory(KeyValueSuite):
    backend: ClassVar[dict[str, object]] = {"plugin": "memory"}


class TestMemorySmallChunks(KeyValueSuite):
    """Values above 4 KiB are chunked, so chunking is exercised cheaply and often."""

    backend: ClassVar[dict[str, object]] = {"plugin": "memory", "max_item_bytes": 4096}


class TestMemoryQueue(QueueSuite):
    backend: ClassVar[dict[str, object]] = {"plugin": "memory"}


class TestMemoryTimeSeries(TimeSeriesSuite):
    backend: ClassVar[dict[str, object]] = {"plugin": "memory"}


class TestMemoryCounter(CounterSuite):
    backend: ClassVar[dict[str, object]] = {"plugin": "memory"}
