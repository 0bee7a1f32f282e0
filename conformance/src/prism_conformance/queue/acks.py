"""Acknowledgements: idempotent, per message and per group; an id the group
was never given is a clear ``InvalidArgument`` and then nothing changes, not
even for the valid ids of the same call."""

from __future__ import annotations

from datetime import timedelta

import pytest

import prism
from prism_conformance.handles import QueueHandle
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

#: Short enough to keep tests quick, long enough that a consumer acks well
#: before its deliveries time out, even on a slow machine.
SHORT_VISIBILITY = timedelta(seconds=2)


def _assert_unknown_ids_refused(exc: prism.InvalidArgument, queue: QueueHandle, *parts: str) -> None:
    text = str(exc)
    assert exc.namespace == queue.name, f"the error must name the namespace {queue.name!r}: {text}"
    assert exc.field == "ids", f"the error must name the field 'ids', got {exc.field!r}: {text}"
    for part in (repr(queue.name), *parts):
        assert part in text, f"the error must name {part}: {text}"


class AckTests(QueueSuiteBase):
    def test_ack_is_idempotent_and_sticks(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": f"{SHORT_VISIBILITY.total_seconds():g}s"})
        ids = q.publish("t", numbered(3))
        got = collect(of_group(q, "t", "g"), 3, what="published messages")
        q.ack("t", "g", got)
        q.ack("t", "g", got)  # twice: not an error
        q.ack("t", "g", [ids[0], ids[0], got[1]])  # ids and deliveries, repeated
        q.ack("t", "g", [])
        # Past the visibility timeout: an acknowledged message never comes back.
        assert_nothing(
            of_group(q, "t", "g"),
            what="acknowledged messages must never be delivered again, also after the visibility timeout",
            wait=SHORT_VISIBILITY + QUIET,
        )

    def test_ack_acknowledges_only_the_ids_given(self, queue: QueueHandle) -> None:
        ids = queue.publish("t", numbered(6))
        with queue.consumer("t", "g") as worker:
            got = collect(of_consumer(worker), 6, what="published messages")
            worker.ack([d for d in got if d.id == ids[2]])
        # The close gave back everything but the acknowledged one, at once.
        back = collect(of_group(queue, "t", "g"), 5, what="the unacknowledged messages after the close")
        assert sorted(ids_of(back)) == sorted(i for i in ids if i != ids[2]), (
            f"acking one message must acknowledge only that one; came back: {describe(back)}"
        )
        assert all(d.attempt == 2 for d in back), f"second deliveries: {describe(back)}"

    def test_acking_an_unknown_id_is_refused_and_acks_nothing(self, queue: QueueHandle) -> None:
        ids = queue.publish("t", numbered(2))
        [a] = collect(of_group(queue, "t", "g"), 1, what="the first message", max_messages=1)
        with pytest.raises(prism.InvalidArgument) as refused:
            queue.ack("t", "g", [a.id, "no-such-id"])
        _assert_unknown_ids_refused(refused.value, queue, "'t'", "'g'", "'no-such-id'")
        [b_id] = [i for i in ids if i != a.id]
        # Published but never delivered to this group: unknown to it as well.
        with pytest.raises(prism.InvalidArgument) as not_delivered:
            queue.ack("t", "g", [a.id, b_id])
        _assert_unknown_ids_refused(not_delivered.value, queue, repr(b_id))
        # Delivered to another group only: unknown to this one.
        with pytest.raises(prism.InvalidArgument):
            queue.ack("t", "other", [a.id])
        # Known on another topic only: unknown here.
        with pytest.raises(prism.InvalidArgument):
            queue.ack("elsewhere", "g", [a.id])
        # None of the refused calls acknowledged a: given back, it is delivered again.
        queue.nack("t", "g", [a])
        got = collect(of_group(queue, "t", "g"), 2, what="both messages after the refused acks")
        assert sorted(ids_of(got)) == sorted(ids), (
            f"a refused ack must acknowledge nothing, not even its valid ids; got {describe(got)}"
        )
        assert {d.id: d.attempt for d in got} == {a.id: 2, b_id: 1}, describe(got)
        # ...and group "other" still gets everything.
        other = collect(of_group(queue, "t", "other"), 2, what="group 'other'")
        assert sorted(ids_of(other)) == sorted(ids)

    def test_nacking_an_unknown_id_is_refused_and_changes_nothing(self, queue: QueueHandle) -> None:
        ids = queue.publish("t", numbered(2))
        [a] = collect(of_group(queue, "t", "g"), 1, what="the first message", max_messages=1)
        [b_id] = [i for i in ids if i != a.id]
        for requeue in (True, False):
            with pytest.raises(prism.InvalidArgument) as refused:
                queue.nack("t", "g", [a.id, "no-such-id"], requeue=requeue)
            _assert_unknown_ids_refused(refused.value, queue, "'t'", "'g'", "'no-such-id'")
        # a is still held by its consumer: neither given back nor dead-lettered.
        got = collect(of_group(queue, "t", "g"), 1, what="the second message")
        assert ids_of(got) == [b_id], f"a refused nack gave back a message: {describe(got)}"
        assert_nothing(of_group(queue, "t", "g"), what="a refused nack must not give back the valid ids")
        assert_nothing(
            of_group(queue, queue.dead_letter_topic("t"), "g"),
            what="a refused nack(requeue=False) must not dead-letter the valid ids",
        )

    def test_acking_after_the_lease_ran_out_still_acknowledges(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": f"{SHORT_VISIBILITY.total_seconds():g}s"})
        q.publish("t", numbered(1))
        [first] = collect(of_group(q, "t", "g"), 1, what="the message")
        [again] = collect(of_group(q, "t", "g"), 1, what="the message after its visibility timeout")
        assert (again.id, again.attempt) == (first.id, 2), describe([first, again])
        # The id stays known to the group: acking with the first delivery works.
        q.ack("t", "g", [first])
        assert_nothing(
            of_group(q, "t", "g"), what="an acknowledged message came back", wait=SHORT_VISIBILITY + QUIET
        )
