"""At least once: an unacknowledged delivery comes back after the visibility
timeout, at once when it is nacked or its consumer closes, and its attempt
counts 1, 2, 3..."""

from __future__ import annotations

import time

import pytest

import prism
from prism_conformance.queue.acks import SHORT_VISIBILITY
from prism_conformance.queue.base import QueueSuiteBase
from prism_conformance.queue.support import (
    QUIET,
    assert_nothing,
    collect,
    describe,
    ids_of,
    numbered,
    of_consumer,
    of_group,
)

#: So long that nothing comes back by timing out within a test: whatever comes
#: back came back because it was nacked or its consumer closed.
LONG_VISIBILITY = "10m"


class RedeliveryTests(QueueSuiteBase):
    def test_unacked_delivery_comes_back_after_the_visibility_timeout(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": f"{SHORT_VISIBILITY.total_seconds():g}s"})
        [message_id] = q.publish("t", [prism.Message(b"k", b"x", headers={"h": b"v"})])
        # The lease starts after this moment, so the redelivery may not come before it + the timeout.
        before_lease = time.monotonic()
        [first] = collect(of_group(q, "t", "g"), 1, what="the message")
        assert first.attempt == 1, describe([first])
        early = q.consume("t", "g", max_messages=10)
        if time.monotonic() - before_lease < SHORT_VISIBILITY.total_seconds() / 2:
            assert early == [], (
                f"a message in flight was delivered again before its timeout: {describe(early)}"
            )
        [again] = collect(of_group(q, "t", "g"), 1, what="the unacknowledged message after its timeout")
        waited = time.monotonic() - before_lease
        # 10% slack for a datastore that keeps lease times in coarser units.
        assert waited >= SHORT_VISIBILITY.total_seconds() * 0.9, (
            f"the message came back after {waited:.2f}s, before its visibility timeout of "
            f"{SHORT_VISIBILITY.total_seconds():g}s"
        )
        assert (again.id, again.attempt) == (message_id, 2), describe([again])
        assert (again.key, again.payload, dict(again.headers)) == (b"k", b"x", {"h": b"v"})
        assert again.published_at == first.published_at, "a redelivery must keep the publish time"
        q.ack("t", "g", [again])
        assert_nothing(
            of_group(q, "t", "g"), what="the message was acknowledged", wait=SHORT_VISIBILITY + QUIET
        )

    def test_attempt_counts_up_on_every_redelivery(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY, "max_attempts": 10})
        [message_id] = q.publish("t", numbered(1))
        attempts: list[int] = []
        for _ in range(5):
            [d] = collect(of_group(q, "t", "g"), 1, what=f"delivery {len(attempts) + 1}")
            assert d.id == message_id
            attempts.append(d.attempt)
            q.nack("t", "g", [d])  # requeue: deliverable again at once
        assert attempts == [1, 2, 3, 4, 5], f"attempts must count 1, 2, 3...; got {attempts}"
        # Counting is per group: another group starts at 1.
        [other] = collect(of_group(q, "t", "other"), 1, what="group 'other'")
        assert other.attempt == 1, f"a group's first delivery is attempt 1, got {other.attempt}"

    def test_closing_a_consumer_gives_back_its_unacked_deliveries_at_once(self) -> None:
        """With a 10 min visibility timeout, only the close can bring them back
        within the test."""
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY})
        ids = q.publish("t", numbered(3))
        worker = q.consumer("t", "g")
        got = collect(of_consumer(worker), 3, what="published messages")
        worker.ack([got[0]])
        worker.close()
        worker.close()  # closing twice is fine
        with pytest.raises(prism.InvalidArgument, match="closed"):
            worker.consume()
        with q.consumer("t", "g") as other:
            back = collect(of_consumer(other), 2, what="the deliveries a closed consumer had not acked")
            assert sorted(ids_of(back)) == sorted(i for i in ids if i != got[0].id), describe(back)
            assert all(d.attempt == 2 for d in back), f"redeliveries must be attempt 2: {describe(back)}"
            other.ack(back)
        assert_nothing(of_group(q, "t", "g"), what="everything was acknowledged")

    def test_closing_one_consumer_leaves_the_others_deliveries_alone(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY})
        q.publish("t", numbered(4))
        one, two = q.consumer("t", "g"), q.consumer("t", "g")
        try:
            held_by_one = collect(of_consumer(one), 2, what="consumer one's deliveries", max_messages=2)
            held_by_two = collect(of_consumer(two), 2, what="consumer two's deliveries", max_messages=2)
            one.close()
            with q.consumer("t", "g") as three:
                back = collect(of_consumer(three), 2, what="what consumer one held")
                assert sorted(ids_of(back)) == sorted(ids_of(held_by_one)), (
                    f"closing consumer one must give back exactly what it held ({describe(held_by_one)}), "
                    f"got {describe(back)}"
                )
                assert_nothing(
                    of_consumer(three), what="consumer two is open: what it holds must stay with it"
                )
                three.ack(back)
            two.ack(held_by_two)
        finally:
            one.close()
            two.close()

    def test_nack_gives_back_at_once_and_leaves_acked_messages_alone(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY})
        ids = q.publish("t", numbered(2))
        got = collect(of_group(q, "t", "g"), 2, what="published messages")
        done = next(d for d in got if d.id == ids[0])
        retry = next(d for d in got if d.id == ids[1])
        q.ack("t", "g", [done])
        q.nack("t", "g", [done, retry])  # the acked one is left alone
        [back] = collect(of_group(q, "t", "g"), 1, what="the nacked message")
        assert (back.id, back.attempt) == (ids[1], 2), describe([back])
        q.ack("t", "g", [back])
        q.nack("t", "g", ids)  # both acknowledged: nothing happens
        q.nack("t", "g", ids, requeue=False)
        assert_nothing(of_group(q, "t", "g"), what="nacking acknowledged messages must change nothing")
        assert_nothing(
            of_group(q, q.dead_letter_topic("t"), "g"),
            what="nack(requeue=False) of acknowledged messages must not dead-letter them",
        )

    def test_a_redelivery_can_go_to_another_consumer(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY})
        [message_id] = q.publish("t", numbered(1))
        with q.consumer("t", "g") as one, q.consumer("t", "g") as two:
            [d] = collect(of_consumer(one), 1, what="the message")
            assert_nothing(of_consumer(two), what="the only message is held by consumer one")
            one.nack([d])
            [again] = collect(of_consumer(two), 1, what="the message nacked by consumer one")
            assert (again.id, again.attempt) == (message_id, 2), describe([again])
            two.ack([again])
            assert_nothing(of_consumer(one), what="consumer two acknowledged the message")

    def test_visibility_timeouts_and_nacks_count_alike(self) -> None:
        q = self.open_queue(
            queue={"visibility_timeout": f"{SHORT_VISIBILITY.total_seconds():g}s", "max_attempts": 10}
        )
        q.publish("t", numbered(1))
        [d1] = collect(of_group(q, "t", "g"), 1, what="attempt 1")
        q.nack("t", "g", [d1])
        [d2] = collect(of_group(q, "t", "g"), 1, what="attempt 2")
        # not acked: times out
        [d3] = collect(of_group(q, "t", "g"), 1, what="attempt 3, after a timeout")
        with q.consumer("t", "g") as worker:
            q.nack("t", "g", [d3])
            [d4] = collect(of_consumer(worker), 1, what="attempt 4")
        [d5] = collect(of_group(q, "t", "g"), 1, what="attempt 5, after the consumer closed")
        attempts = [d.attempt for d in (d1, d2, d3, d4, d5)]
        assert attempts == [1, 2, 3, 4, 5], f"every redelivery counts, however it came about: {attempts}"
        assert len({d.id for d in (d1, d2, d3, d4, d5)}) == 1
        q.ack("t", "g", [d5])
