"""``queue.delay``: a message published with ``deliver_after`` is delivered to
no group before then, and then like any other. Without the capability,
publishing one is refused with ``Unsupported`` (checked by the suite before
these tests are reported not applicable)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

import prism
from prism import capabilities
from prism_conformance.marks import requires_capability
from prism_conformance.queue.base import QueueSuiteBase
from prism_conformance.queue.redelivery import LONG_VISIBILITY
from prism_conformance.queue.support import (
    assert_nothing,
    collect,
    describe,
    now,
    of_group,
    payloads,
)

DELAYED = {"capabilities": [capabilities.QUEUE_DELAY]}
#: Short enough to keep the suite quick, long enough to tell apart from no delay.
DELAY = timedelta(seconds=2)
#: Room for a datastore that keeps times in milliseconds.
CLOCK_TOLERANCE = timedelta(milliseconds=50)


class DelayTests(QueueSuiteBase):
    @requires_capability(capabilities.QUEUE_DELAY)
    def test_deliver_after_holds_a_message_back_for_every_group(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY}, needs=DELAYED)
        published_at = now()
        due_at = published_at + DELAY
        ids = q.publish(
            "t",
            [
                prism.Message(b"", b"delayed", deliver_after=DELAY),
                prism.Message(b"", b"at", deliver_after=due_at),
                prism.Message(b"", b"now"),
                prism.Message(b"", b"past", deliver_after=published_at - timedelta(hours=1)),
            ],
        )
        # A delayed message is due no earlier than its deliver_after, measured from
        # before the publish call (a timedelta counts from the call).
        due = {ids[0]: published_at + DELAY, ids[1]: due_at, ids[2]: None, ids[3]: None}
        for group in ("g1", "g2"):
            received: list[tuple[prism.Delivery, datetime]] = []
            while len(received) < 4:
                batch = collect(of_group(q, "t", group), 1, what=f"group {group!r}: {4 - len(received)} more")
                returned_at = now()
                received += [(d, returned_at) for d in batch]
            for d, returned_at in received:
                due_time = due[d.id]
                if due_time is not None:
                    assert returned_at >= due_time - CLOCK_TOLERANCE, (
                        f"group {group!r}: {d.payload!r} was delivered at {returned_at.isoformat()}, before "
                        f"its deliver_after {due_time.isoformat()}"
                    )
                assert d.attempt == 1, describe([d])
            assert sorted(payloads(d for d, _ in received)) == [b"at", b"delayed", b"now", b"past"]
            q.ack("t", group, [d for d, _ in received])
            assert_nothing(of_group(q, "t", group), what=f"group {group!r} acknowledged everything")

    @requires_capability(capabilities.QUEUE_DELAY)
    def test_undelayed_messages_are_not_held_back_by_delayed_ones(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY}, needs=DELAYED)
        before = now()
        q.publish(
            "t",
            [prism.Message(b"", b"later", deliver_after=timedelta(minutes=10)), prism.Message(b"", b"now")],
        )
        [d] = collect(of_group(q, "t", "g"), 1, what="the undelayed message")
        assert d.payload == b"now", f"a message delayed by 10 minutes was delivered after {now() - before}"
        q.ack("t", "g", [d])
        assert_nothing(of_group(q, "t", "g"), what="a message delayed by 10 minutes was delivered")

    @requires_capability(capabilities.QUEUE_DELAY)
    def test_deliver_after_is_checked(self) -> None:
        q = self.open_queue(queue={"max_delay": "1m"}, needs=DELAYED)
        with pytest.raises(prism.LimitExceeded) as refused:
            q.publish(
                "t",
                [prism.Message(b"", b"fine"), prism.Message(b"", b"x", deliver_after=timedelta(minutes=2))],
            )
        assert (refused.value.namespace, refused.value.limit_name) == (q.name, "max_delay"), refused.value
        assert "queue.max_delay" in str(refused.value)
        with pytest.raises(prism.InvalidArgument, match="timezone-aware"):
            q.publish("t", [prism.Message(b"", b"x", deliver_after=datetime(2030, 1, 1))])
        assert_nothing(of_group(q, "t", "g"), what="refused publishes must publish nothing")
