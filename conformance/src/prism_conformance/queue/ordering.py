"""``queue.ordered_by_key``: within a group, messages with the same non-empty
key are delivered in publish order, one at a time; other keys, the empty key
and other groups are not held back."""

from __future__ import annotations

import threading
import time

import prism
from prism import capabilities
from prism_conformance.marks import requires_capability
from prism_conformance.queue.acks import SHORT_VISIBILITY
from prism_conformance.queue.base import QueueSuiteBase
from prism_conformance.queue.concurrency import WORKER_WAIT
from prism_conformance.queue.redelivery import LONG_VISIBILITY
from prism_conformance.queue.support import (
    assert_nothing,
    collect,
    delivery_deadline,
    describe,
    of_consumer,
    of_group,
    payloads,
)
from prism_conformance.support import run_threads

ORDERED = {"capabilities": [capabilities.QUEUE_ORDERED_BY_KEY]}


def _msg(key: str, payload: str) -> prism.Message:
    return prism.Message(key, payload)


class OrderingTests(QueueSuiteBase):
    @requires_capability(capabilities.QUEUE_ORDERED_BY_KEY)
    def test_same_key_arrives_in_publish_order_one_at_a_time(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY}, needs=ORDERED)
        q.publish("t", [_msg("a", "a1"), _msg("b", "b1"), _msg("a", "a2"), _msg("", "x"), _msg("a", "a3")])
        with q.consumer("t", "g") as one, q.consumer("t", "g") as two:
            first = collect(of_consumer(one), 3, what="the first message of each key, and the unkeyed one")
            assert sorted(payloads(first)) == [b"a1", b"b1", b"x"], (
                f"while a1 is in flight, a2 and a3 must wait: got {describe(first)}"
            )
            assert_nothing(of_consumer(two), what="a2 must wait while a1 is in flight")
            assert_nothing(of_consumer(one), what="a2 must wait while a1 is in flight")
            one.ack([d for d in first if d.payload != b"a1"])
            assert_nothing(
                of_consumer(two), what="a2 must wait while a1 is in flight, whatever else is acked"
            )
            one.nack([d for d in first if d.payload == b"a1"])
            [again] = collect(of_consumer(two), 1, what="a1, given back")
            assert (again.payload, again.attempt) == (b"a1", 2), (
                f"a nacked a1 must come back before a2: got {describe([again])}"
            )
            two.ack([again])
            [second] = collect(of_consumer(one), 1, what="a2, after a1 was acknowledged")
            assert second.payload == b"a2", describe([second])
        # The close gave a2 back; it is still ahead of a3.
        [back] = collect(of_group(q, "t", "g"), 1, what="a2, given back by the close")
        assert (back.payload, back.attempt) == (b"a2", 2), describe([back])
        assert_nothing(of_group(q, "t", "g"), what="a3 must wait while a2 is in flight")
        q.ack("t", "g", [back])
        [last] = collect(of_group(q, "t", "g"), 1, what="a3")
        assert last.payload == b"a3", describe([last])

    @requires_capability(capabilities.QUEUE_ORDERED_BY_KEY)
    def test_a_busy_key_holds_back_only_its_own_key_in_its_own_group(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY}, needs=ORDERED)
        q.publish("t", [_msg("a", "a1"), _msg("a", "a2"), _msg("b", "b1"), _msg("b", "b2")])
        got = collect(of_group(q, "t", "g1"), 2, what="the first message of each key")
        assert sorted(payloads(got)) == [b"a1", b"b1"], describe(got)
        # Another group is not held back by g1's leases.
        other = collect(of_group(q, "t", "g2"), 2, what="group g2")
        assert sorted(payloads(other)) == [b"a1", b"b1"], describe(other)
        # Acking a1 frees key a only.
        q.ack("t", "g1", [d for d in got if d.payload == b"a1"])
        [next_a] = collect(of_group(q, "t", "g1"), 1, what="a2, after a1 was acknowledged")
        assert next_a.payload == b"a2", describe([next_a])
        assert_nothing(of_group(q, "t", "g1"), what="b2 must wait while b1 is in flight")

    @requires_capability(capabilities.QUEUE_ORDERED_BY_KEY)
    def test_a_timed_out_message_comes_back_before_later_ones_of_its_key(self) -> None:
        q = self.open_queue(
            queue={"visibility_timeout": f"{SHORT_VISIBILITY.total_seconds():g}s"}, needs=ORDERED
        )
        q.publish("t", [_msg("k", "1"), _msg("k", "2")])
        [first] = collect(of_group(q, "t", "g"), 1, what="the first message")
        assert first.payload == b"1"
        [again] = collect(of_group(q, "t", "g"), 1, what="the first message, after its timeout")
        assert (again.payload, again.attempt) == (b"1", 2), (
            f"after its lease ran out, message 1 must come back before message 2: got {describe([again])}"
        )
        q.ack("t", "g", [again])
        [second] = collect(of_group(q, "t", "g"), 1, what="the second message")
        assert (second.payload, second.attempt) == (b"2", 1), describe([second])

    @requires_capability(capabilities.QUEUE_ORDERED_BY_KEY)
    def test_key_order_holds_for_competing_consumers_on_several_threads(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY}, needs=ORDERED)
        keys = [f"key-{k}" for k in range(4)]
        per_key = 12
        q.publish(
            "t",
            [
                _msg(keys[i % len(keys)], f"{keys[i % len(keys)]}/{i // len(keys)}")
                for i in range(per_key * len(keys))
            ],
        )
        lock = threading.Lock()
        in_flight: dict[bytes, str] = {}
        seen: dict[bytes, list[int]] = {key.encode(): [] for key in keys}
        violations: list[str] = []
        give_up = time.monotonic() + delivery_deadline().total_seconds()
        total = per_key * len(keys)

        def done() -> bool:
            with lock:
                return sum(len(v) for v in seen.values()) >= total

        def worker() -> None:
            with q.consumer("t", "g") as consumer:
                while not done() and time.monotonic() < give_up:
                    batch = consumer.consume(max_messages=5, wait=WORKER_WAIT)
                    with lock:
                        for d in batch:
                            holder = in_flight.get(d.key)
                            if holder is not None:
                                violations.append(
                                    f"{d.payload!r} was delivered to {consumer.id} while {holder} was in flight"
                                )
                            in_flight[d.key] = d.payload.decode()
                            seen[d.key].append(int(d.payload.decode().split("/")[1]))
                    for d in batch:
                        # Freed before the ack, so a correct backend can never be
                        # seen handing out the next one while this one counts as held.
                        with lock:
                            in_flight.pop(d.key, None)
                        consumer.ack([d])

        run_threads([worker, worker, worker])
        assert not violations, "two messages of one key were in flight at once:\n" + "\n".join(
            violations[:20]
        )
        for key, order in seen.items():
            assert order == list(range(per_key)), (
                f"key {key!r}: delivered in the order {order}, expected publish order {list(range(per_key))}"
            )
