"""Publish and consume: what a delivery carries, byte for byte; fan-out to
every group; and isolation between topics, namespaces and tests."""

from __future__ import annotations

import threading
from datetime import timedelta

import prism
from prism_conformance.handles import QueueHandle
from prism_conformance.queue.base import QueueSuiteBase
from prism_conformance.queue.support import (
    QUIET,
    assert_nothing,
    collect,
    describe,
    ids_of,
    now,
    numbered,
    of_group,
    payloads,
)
from prism_conformance.support import run_threads

#: Published by one test; the next test (they run in this order) must not see it.
LEAK_PROBE_TOPIC = "prism-conformance-leak-probe"
#: How far ``published_at`` may stray from the publish call: clocks of a
#: client and a server on one machine agree, but a server may keep milliseconds.
CLOCK_TOLERANCE = timedelta(seconds=1)


class DeliveryTests(QueueSuiteBase):
    def test_fresh_namespace_has_no_messages(self, queue: QueueHandle) -> None:
        assert_nothing(of_group(queue, "orders", "billing"), what="a fresh namespace delivered messages")

    def test_publish_then_consume_round_trips(self, queue: QueueHandle) -> None:
        before = now()
        ids = queue.publish(
            "orders",
            [
                prism.Message(b"user:1", b"one", headers={"trace": b"abc"}),
                prism.Message(b"", b"two"),
                prism.Message(b"user:2", b"three", headers={"a": b"1", "b": b"2"}),
            ],
        )
        after = now()
        assert len(ids) == 3, f"publish of 3 messages returned {len(ids)} ids: {ids!r}"
        assert len(set(ids)) == 3, f"publish returned repeated ids: {ids!r}"
        assert all(isinstance(i, str) and i for i in ids), f"ids must be non-empty strings: {ids!r}"
        got = collect(of_group(queue, "orders", "billing"), 3, what="published messages")
        assert sorted(ids_of(got)) == sorted(ids), f"expected ids {ids!r}, got {describe(got)}"
        by_id = {d.id: d for d in got}
        expected = {
            ids[0]: (b"user:1", b"one", {"trace": b"abc"}),
            ids[1]: (b"", b"two", {}),
            ids[2]: (b"user:2", b"three", {"a": b"1", "b": b"2"}),
        }
        for message_id, (key, payload, headers) in expected.items():
            d = by_id[message_id]
            assert (d.key, d.payload, dict(d.headers)) == (key, payload, headers), (
                f"message {message_id} came back as key={d.key!r} payload={d.payload!r} headers={d.headers!r}; "
                "each id must belong to the message published at its position"
            )
            assert (d.topic, d.group, d.attempt) == ("orders", "billing", 1)
            assert d.published_at.tzinfo is not None, "published_at must be timezone-aware"
            assert before - CLOCK_TOLERANCE <= d.published_at <= after + CLOCK_TOLERANCE, (
                f"published_at {d.published_at.isoformat()} is not the publish time "
                f"(between {before.isoformat()} and {after.isoformat()})"
            )
        queue.ack("orders", "billing", got)
        assert_nothing(of_group(queue, "orders", "billing"), what="every message was acknowledged")
        assert queue.publish("orders", []) == [], "publishing nothing must return no ids"

    def test_key_payload_and_headers_round_trip_byte_exact(self, queue: QueueHandle) -> None:
        cases = [
            prism.Message(b"", b""),
            prism.Message(b"\x00", bytes(range(256))),
            prism.Message(bytes(range(255, -1, -1)), b"\x00" * 64 + b"\xff" * 64),
            prism.Message("ключ", "значение 日本語 🙂"),
            prism.Message(
                b"k",
                b"with headers",
                headers={
                    "ключ": "значение".encode(),
                    "日本語": b"\x00\x01\xff",
                    "emoji-🙂": b"",
                    "Case": b"upper",
                    "case": b"lower",
                    "spaces and: colons": b"\r\n",
                },
            ),
            prism.Message(b"trailing-nul\x00", b"trailing-nul\x00\x00", headers={"h": b"\x00"}),
        ]
        ids = queue.publish("bytes", cases)
        got = collect(of_group(queue, "bytes", "g"), len(cases), what="published messages")
        by_id = {d.id: d for d in got}
        assert sorted(by_id) == sorted(ids), f"expected ids {ids!r}, got {describe(got)}"
        for message_id, sent in zip(ids, cases, strict=True):
            d = by_id[message_id]
            assert d.key == sent.key, f"key {sent.key!r} came back as {d.key!r}"
            assert d.payload == sent.payload, f"payload {sent.payload!r} came back as {d.payload!r}"
            assert dict(d.headers) == dict(sent.headers), (
                f"headers {dict(sent.headers)!r} came back as {dict(d.headers)!r}"
            )

    def test_ids_are_unique_across_publishes(self, queue: QueueHandle) -> None:
        ids: list[str] = []
        for round_ in range(5):
            ids += queue.publish("t", numbered(4, prefix=f"r{round_}-"))
        assert len(set(ids)) == len(ids) == 20, f"ids repeat across publish calls: {ids!r}"
        got = collect(of_group(queue, "t", "g"), 20, what="20 published messages")
        assert sorted(ids_of(got)) == sorted(ids)
        queue.ack("t", "g", got)
        # An id must not be reused once its message is acknowledged.
        later = queue.publish("t", numbered(3, prefix="later-"))
        assert not set(later) & set(ids), f"ids were reused after an ack: {sorted(set(later) & set(ids))}"

    def test_every_group_gets_every_message(self, queue: QueueHandle) -> None:
        ids = queue.publish("t", numbered(6))
        for group in ("a", "b", "c"):
            got = collect(of_group(queue, "t", group), 6, what=f"group {group!r}")
            assert sorted(ids_of(got)) == sorted(ids), f"group {group!r} got {describe(got)}"
            assert all(d.attempt == 1 for d in got), f"first deliveries to {group!r}: {describe(got)}"
            # Each group acknowledges for itself only: the others still get everything.
            queue.ack("t", group, got)
            assert_nothing(of_group(queue, "t", group), what=f"group {group!r} acknowledged everything")

    def test_a_new_group_starts_at_the_beginning_of_the_topic(self, queue: QueueHandle) -> None:
        early = queue.publish("t", numbered(3, prefix="early"))
        first = collect(of_group(queue, "t", "first"), 3, what="group 'first'")
        queue.ack("t", "first", first)
        late = queue.publish("t", numbered(2, prefix="late"))
        got = collect(of_group(queue, "t", "late-joiner"), 5, what="a group created after publishing")
        assert sorted(ids_of(got)) == sorted(early + late), (
            f"a new group must see the whole topic, got {describe(got)}"
        )
        again = collect(of_group(queue, "t", "first"), 2, what="group 'first', the later messages")
        assert sorted(ids_of(again)) == sorted(late)

    def test_topics_are_independent(self, queue: QueueHandle) -> None:
        # Names that are prefixes, case variants or separators of one another, as
        # a naive key or topic layout would confuse.
        topics = ["orders", "orders2", "Orders", "orders.v2", "orders-v2", "orders_v2"]
        for topic in topics:
            queue.publish(topic, [prism.Message(b"", topic.encode())])
        for topic in topics:
            got = collect(of_group(queue, topic, "g"), 1, what=f"topic {topic!r}", max_messages=10)
            assert payloads(got) == [topic.encode()], f"topic {topic!r} delivered {describe(got)}"
        for topic in topics:
            extra = queue.consume(topic, "g", max_messages=10)
            assert extra == [], f"topic {topic!r} had one message, then delivered {describe(extra)}"

    def test_namespaces_are_isolated(self) -> None:
        first, second = self.open_queues(2)
        first.publish("shared-topic", [prism.Message(b"k", b"first")])
        assert_nothing(
            of_group(second, "shared-topic", "g"), what="a message published in another namespace arrived"
        )
        [got] = collect(of_group(first, "shared-topic", "g"), 1, what="the namespace's own message")
        assert got.payload == b"first"
        # Acknowledging in one namespace must not touch the other.
        second.publish("shared-topic", [prism.Message(b"k", b"second")])
        first.ack("shared-topic", "g", [got])
        [other] = collect(of_group(second, "shared-topic", "g"), 1, what="the other namespace's message")
        assert other.payload == b"second"

    def test_isolation_1_publishes_a_probe(self, queue: QueueHandle) -> None:
        """Publishes a message the next test must not see (they run in this order)."""
        queue.publish(LEAK_PROBE_TOPIC, [prism.Message(b"probe", b"published by an earlier test")])
        [got] = collect(of_group(queue, LEAK_PROBE_TOPIC, "g"), 1, what="the probe")
        assert got.payload == b"published by an earlier test"

    def test_isolation_2_the_probe_is_gone(self, queue: QueueHandle) -> None:
        """Runs after the probe was published: a fresh namespace must not show it."""
        assert_nothing(
            of_group(queue, LEAK_PROBE_TOPIC, "g"), what="a message leaked from an earlier test's namespace"
        )
        assert_nothing(
            of_group(queue, LEAK_PROBE_TOPIC, "other"),
            what="a message leaked from an earlier test's namespace",
        )

    def test_a_waiting_consumer_receives_what_is_published_meanwhile(self, queue: QueueHandle) -> None:
        """A consume with ``wait`` blocks until something arrives: a message
        published while it waits is returned by that same call."""
        started = threading.Event()
        received: list[prism.Delivery] = []
        queue.publish("warm-up", [prism.Message(b"", b"x")])  # lets a backend set the namespace up first

        def consume() -> None:
            started.set()
            received.extend(queue.consume("t", "g", max_messages=10, wait=timedelta(seconds=15)))

        def publish() -> None:
            assert started.wait(timeout=60), "the consumer thread did not start"
            queue.publish("t", [prism.Message(b"", b"hello")])

        run_threads([consume, publish])
        assert payloads(received) == [b"hello"], (
            "a consume waiting up to 15s returned without the message published while it waited: "
            f"{describe(received)}"
        )
        assert_nothing(of_group(queue, "t", "g"), what="the only message is in flight", wait=QUIET)
