"""The fixture contract every Queue suite test builds on.

A plugin author sets ``backend`` (or overrides the ``prism_backend`` fixture);
everything else here belongs to the suite and may not be overridden (the guard
test in :mod:`prism_conformance.queue.suite` checks that).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, ClassVar

import pytest

import prism
from prism import capabilities
from prism_conformance.handles import QueueHandle
from prism_conformance.queue.support import DELIVERY_DEADLINE, QUIET, use_delivery_deadline
from prism_conformance.suite_base import ConformanceSuiteBase

#: Where the refusal of ``queue.delay`` is probed.
PROBE_TOPIC = "prism-conformance-refusal-probe"
PROBE_GROUP = "prism-conformance-probe"


class QueueSuiteBase(ConformanceSuiteBase):
    """Fixtures and helpers of the Queue suite. Not collected by itself."""

    __test__ = False

    abstraction: ClassVar[str] = "queue"
    #: How long a test waits for deliveries it expects before it fails. Raise
    #: it for a backend that is slow to deliver (a broker whose groups take long
    #: to join); a correct backend never makes a test wait this long.
    delivery_deadline: ClassVar[timedelta] = DELIVERY_DEADLINE

    @pytest.fixture(autouse=True)
    def prism_queue_deadline(self) -> Iterator[None]:
        """Apply the class's ``delivery_deadline`` to the test."""
        with use_delivery_deadline(type(self).delivery_deadline):
            yield

    @pytest.fixture
    def queue(self, prism_harness: None) -> QueueHandle:
        """A fresh, empty Queue namespace with the default ``queue:`` settings
        (30 s visibility timeout, 5 attempts) and no declared needs. Nothing
        comes back within a test unless it is nacked or its consumer closes."""
        return self.open_queue()

    # -- helpers ----------------------------------------------------------------------------

    def open_queue(
        self, *, queue: Mapping[str, Any] | None = None, needs: Mapping[str, Any] | None = None
    ) -> QueueHandle:
        """A fresh, empty Queue namespace with these ``queue:`` settings and
        ``needs`` (as in ``prism.yaml``, e.g. ``queue={"visibility_timeout": "2s",
        "max_attempts": 3}``, ``needs={"capabilities": ["queue.delay"]}``)."""
        return self._harness.open_queues(1, queue=queue, needs=needs).queues[0]

    def open_queues(
        self, count: int, *, queue: Mapping[str, Any] | None = None, needs: Mapping[str, Any] | None = None
    ) -> tuple[QueueHandle, ...]:
        """``count`` fresh Queue namespaces in one Prism, sharing one backend instance."""
        return self._harness.open_queues(count, queue=queue, needs=needs).queues

    def _verify_refusal(self, capability: str) -> str:
        """An undeclared Queue capability must be refused both ways a user can
        ask for it: the planner refuses a namespace that needs it, and (for
        ``queue.delay``) publishing a delayed message raises ``Unsupported``
        and publishes nothing, not even the other messages of the batch."""
        planned: prism.PlanError | None = None
        try:
            self._harness.open_queues(1, needs={"capabilities": [capability]})
        except prism.PlanError as exc:
            planned = exc
        if planned is None:
            pytest.fail(
                f"the backend does not declare {capability}, yet a namespace that needs it was planned "
                "onto it: the planner must refuse it with PlanError",
                pytrace=False,
            )
        assert capability in str(planned), (
            f"a namespace needing {capability} was refused, but the error does not name it: {planned}"
        )
        if capability != capabilities.QUEUE_DELAY:
            return f"backend does not declare {capability} (refusal verified: the planner refuses it)"
        q = self.open_queue()
        batch = [
            prism.Message(b"", b"plain"),
            prism.Message(b"", b"delayed", deliver_after=timedelta(seconds=1)),
        ]
        refusal: prism.Unsupported | None = None
        try:
            q.publish(PROBE_TOPIC, batch)
        except prism.Unsupported as exc:
            refusal = exc
        if refusal is None:
            pytest.fail(
                f"the backend does not declare {capability}, yet a message with deliver_after was "
                "published: an undeclared capability must be refused with prism.Unsupported, never ignored",
                pytrace=False,
            )
        assert refusal.capability == capability, (
            f"the backend does not declare {capability}; publishing was refused, "
            f"but for {refusal.capability!r}: {refusal}"
        )
        leftover = q.consume(PROBE_TOPIC, PROBE_GROUP, max_messages=10, wait=QUIET)
        assert leftover == [], f"a refused publish left messages behind: {leftover!r}"
        return (
            f"backend does not declare {capability} (refusal verified: the planner refuses it and "
            "publishing with deliver_after raises Unsupported)"
        )
