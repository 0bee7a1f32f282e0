"""Dead letters: after ``max_attempts`` deliveries to a group (however they
ended: nack, timeout) and on ``nack(requeue=False)``, a message moves to the
dead-letter topic with ``prism-dead-letter-*`` headers, and that topic is
consumed like any other."""

from __future__ import annotations

import time

import prism
from prism_conformance.queue.acks import SHORT_VISIBILITY
from prism_conformance.queue.base import QueueSuiteBase
from prism_conformance.queue.redelivery import LONG_VISIBILITY
from prism_conformance.queue.support import (
    assert_nothing,
    collect,
    delivery_deadline,
    describe,
    of_group,
)

#: The headers the core adds to a dead letter (prism.queue.namespace).
DEAD_LETTER_TOPIC = "prism-dead-letter-topic"
DEAD_LETTER_GROUP = "prism-dead-letter-group"
DEAD_LETTER_ID = "prism-dead-letter-id"
DEAD_LETTER_REASON = "prism-dead-letter-reason"
DEAD_LETTER_ATTEMPTS = "prism-dead-letter-attempts"


def _assert_dead_letter(
    dead: prism.Delivery,
    *,
    original: prism.Delivery | prism.Message,
    message_id: str,
    topic: str,
    group: str,
    reason: bytes,
    attempts: int | None,
) -> None:
    headers = dict(dead.headers)
    assert (dead.key, dead.payload) == (original.key, original.payload), (
        f"a dead letter must keep the key and payload: got key={dead.key!r} payload={dead.payload!r}"
    )
    for name, value in original.headers.items():
        assert headers.get(name) == value, f"a dead letter lost the header {name!r}: {headers!r}"
    expected = {
        DEAD_LETTER_TOPIC: topic.encode(),
        DEAD_LETTER_GROUP: group.encode(),
        DEAD_LETTER_ID: message_id.encode(),
        DEAD_LETTER_REASON: reason,
    }
    for name, value in expected.items():
        assert headers.get(name) == value, f"dead letter header {name!r}: expected {value!r}, got {headers!r}"
    if attempts is not None:
        assert headers.get(DEAD_LETTER_ATTEMPTS) == str(attempts).encode(), (
            f"dead letter header {DEAD_LETTER_ATTEMPTS!r}: expected {attempts}, got {headers!r}"
        )
    assert dead.attempt == 1, f"the first delivery of a dead letter is attempt 1, got {dead.attempt}"


class DeadLetterTests(QueueSuiteBase):
    def test_nacked_max_attempts_times_moves_to_the_dead_letter_topic(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY, "max_attempts": 3})
        sent = prism.Message(b"k", b"poison", headers={"trace": b"t-1"})
        [message_id] = q.publish("jobs", [sent])
        attempts: list[int] = []
        for _ in range(3):
            [d] = collect(of_group(q, "jobs", "workers"), 1, what=f"attempt {len(attempts) + 1}")
            assert d.id == message_id
            attempts.append(d.attempt)
            q.nack("jobs", "workers", [d])
        assert attempts == [1, 2, 3], f"attempts before dead-lettering: {attempts}"
        assert_nothing(
            of_group(q, "jobs", "workers"), what="a message nacked max_attempts (3) times was delivered again"
        )
        dead_topic = q.dead_letter_topic("jobs")
        assert dead_topic == "jobs.dlq", f"the default dead-letter suffix is '.dlq', got {dead_topic!r}"
        [dead] = collect(of_group(q, dead_topic, "ops"), 1, what="the dead letter")
        _assert_dead_letter(
            dead,
            original=sent,
            message_id=message_id,
            topic="jobs",
            group="workers",
            reason=b"max_attempts",
            attempts=3,
        )
        q.ack(dead_topic, "ops", [dead])
        assert_nothing(of_group(q, dead_topic, "ops"), what="the dead letter was acknowledged")
        # The original is acknowledged in its group: acking it again is fine.
        q.ack("jobs", "workers", [message_id])

    def test_timed_out_max_attempts_times_moves_to_the_dead_letter_topic(self) -> None:
        q = self.open_queue(
            queue={"visibility_timeout": f"{SHORT_VISIBILITY.total_seconds():g}s", "max_attempts": 2}
        )
        sent = prism.Message(b"", b"slow job", headers={"h": b"v"})
        [message_id] = q.publish("jobs", [sent])
        for attempt in (1, 2):
            [d] = collect(of_group(q, "jobs", "workers"), 1, what=f"attempt {attempt}")
            assert (d.id, d.attempt) == (message_id, attempt), describe([d])
            # not acked: the lease runs out
        # The move happens when the group next asks for work and the lease has run
        # out: keep asking (nothing may be delivered) until the dead letter shows up.
        dead_topic = q.dead_letter_topic("jobs")
        dead: list[prism.Delivery] = []
        give_up = time.monotonic() + delivery_deadline().total_seconds()
        while not dead:
            assert time.monotonic() < give_up, (
                f"no dead letter after {delivery_deadline().total_seconds():g}s for a message whose "
                "2 deliveries timed out (max_attempts 2)"
            )
            again = q.consume("jobs", "workers", max_messages=10, wait=SHORT_VISIBILITY / 2)
            assert again == [], f"a message past max_attempts (2) was delivered again: {describe(again)}"
            dead = q.consume(dead_topic, "ops", max_messages=10)
        [letter] = dead
        _assert_dead_letter(
            letter,
            original=sent,
            message_id=message_id,
            topic="jobs",
            group="workers",
            reason=b"max_attempts",
            attempts=2,
        )

    def test_nack_without_requeue_dead_letters_at_once(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY})
        sent = prism.Message(b"key", b"bad input", headers={"ключ": b"\x00"})
        [message_id] = q.publish("jobs", [sent])
        [d] = collect(of_group(q, "jobs", "workers"), 1, what="the message")
        q.nack("jobs", "workers", [d], requeue=False)
        assert_nothing(
            of_group(q, "jobs", "workers"), what="a message nacked with requeue=False was delivered again"
        )
        dead_topic = q.dead_letter_topic("jobs")
        [dead] = collect(of_group(q, dead_topic, "ops"), 1, what="the dead letter")
        _assert_dead_letter(
            dead,
            original=sent,
            message_id=message_id,
            topic="jobs",
            group="workers",
            reason=b"nack",
            attempts=None,
        )
        # Dead-lettering is per group: another group still gets the message.
        [other] = collect(of_group(q, "jobs", "auditors"), 1, what="group 'auditors'")
        assert (other.id, other.attempt) == (message_id, 1), describe([other])
        q.nack("jobs", "workers", [d], requeue=False)  # already dead-lettered: nothing happens
        letters = collect(of_group(q, dead_topic, "ops2"), 1, what="the dead letter for a second group")
        assert len(letters) == 1
        assert_nothing(
            of_group(q, dead_topic, "ops2"),
            what="nacking an already dead-lettered message must not dead-letter it twice",
        )

    def test_dead_letter_topic_is_consumed_like_any_topic_and_never_moved_again(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY, "max_attempts": 2})
        [message_id] = q.publish("jobs", [prism.Message(b"", b"x")])
        [d] = collect(of_group(q, "jobs", "workers"), 1, what="the message")
        q.nack("jobs", "workers", [d], requeue=False)
        dead_topic = q.dead_letter_topic("jobs")
        # Fan-out and redelivery work on the dead-letter topic too; past
        # max_attempts its messages stay where they are.
        for group in ("ops", "audit"):
            [first] = collect(of_group(q, dead_topic, group), 1, what=f"the dead letter for {group!r}")
            assert dict(first.headers)[DEAD_LETTER_ID] == message_id.encode()
            q.nack(dead_topic, group, [first])
        attempts = []
        for _ in range(4):
            [again] = collect(of_group(q, dead_topic, "ops"), 1, what="the dead letter again")
            attempts.append(again.attempt)
            q.nack(dead_topic, "ops", [again])
        assert attempts == [2, 3, 4, 5], (
            f"a dead letter is never moved again, past max_attempts (2) too: attempts {attempts}"
        )
        second_dead_topic = q.dead_letter_topic(dead_topic)
        assert_nothing(of_group(q, second_dead_topic, "ops"), what="a dead letter was moved again")
        # nack(requeue=False) on a dead-letter topic drops the message for that group.
        [last] = collect(of_group(q, dead_topic, "ops"), 1, what="the dead letter")
        q.nack(dead_topic, "ops", [last], requeue=False)
        assert_nothing(of_group(q, dead_topic, "ops"), what="a dropped dead letter came back")
        assert_nothing(of_group(q, second_dead_topic, "ops"), what="a dropped dead letter was moved again")
