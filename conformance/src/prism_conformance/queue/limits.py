"""Limits and validation: every refusal is a ``LimitExceeded`` or
``InvalidArgument`` naming the namespace and the limit, and a refused call
publishes or changes nothing. Also what must work right at each limit: a
message of exactly the largest size, a batch of exactly ``max_batch``, a topic
name of exactly ``max_topic_name_bytes``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import prism
from prism_conformance.handles import QueueHandle
from prism_conformance.marks import NotApplicable
from prism_conformance.queue.base import QueueSuiteBase
from prism_conformance.queue.support import (
    assert_nothing,
    collect,
    ids_of,
    numbered,
    of_group,
)

#: Never allocate more than this to prove a backend-wide message limit.
LARGEST_PROBE = 64 * 1024 * 1024


def _assert_names_the_limit(
    exc: prism.LimitExceeded, queue: QueueHandle, limit_name: str, limit: int | None = None
) -> None:
    assert exc.namespace == queue.name, (
        f"LimitExceeded must name the namespace {queue.name!r}, got {exc.namespace!r}"
    )
    assert queue.name in str(exc), f"the message must name the namespace: {exc}"
    assert exc.limit_name == limit_name, (
        f"expected the limit {limit_name!r} to be named, got {exc.limit_name!r}"
    )
    assert limit_name in str(exc), f"the message must name the limit {limit_name!r}: {exc}"
    if limit is not None:
        assert exc.limit == limit, f"{limit_name}: expected the limit {limit}, got {exc.limit}"


def _message_of_size(size: int, *, key: bytes, headers: dict[str, bytes]) -> prism.Message:
    """A message whose key, payload, header names (UTF-8) and values add up to ``size`` bytes."""
    overhead = len(key) + sum(len(name.encode()) + len(value) for name, value in headers.items())
    payload = bytes(i % 251 for i in range(size - overhead))
    return prism.Message(key, payload, headers=headers)


class LimitTests(QueueSuiteBase):
    def _size_limit_round_trip(self, q: QueueHandle, topic: str) -> None:
        limit = q.max_message_bytes
        headers = {"ключ": b"vv", "h": b"\x00"}
        exact = _message_of_size(limit, key=b"kk", headers=headers)
        over = _message_of_size(limit + 1, key=b"kk", headers=headers)
        [message_id] = q.publish(topic, [exact])
        with pytest.raises(prism.LimitExceeded) as refused:
            q.publish(topic, [prism.Message(b"", b"fine"), over])
        _assert_names_the_limit(refused.value, q, "max_message_bytes", limit)
        assert refused.value.actual == limit + 1, f"the refusal must say the size, got {refused.value.actual}"
        assert "message 1" in str(refused.value), f"the refusal must say which message: {refused.value}"
        [got] = collect(of_group(q, topic, "g"), 1, what="the message at the size limit")
        assert got.id == message_id
        assert (got.key, dict(got.headers)) == (b"kk", headers)
        assert got.payload == exact.payload, (
            f"a message of exactly {limit} bytes did not round-trip: payload of {len(got.payload)} bytes, "
            f"expected {len(exact.payload)}"
        )
        q.ack(topic, "g", [got])
        assert_nothing(of_group(q, topic, "g"), what="the refused batch must publish nothing")

    def test_message_at_the_namespace_size_limit_round_trips_and_one_byte_more_is_refused(self) -> None:
        q = self.open_queue(queue={"max_message_bytes": 1024})
        assert q.max_message_bytes <= 1024, "the namespace limit must cap the message size"
        self._size_limit_round_trip(q, "t")

    def test_message_at_the_effective_size_limit_round_trips_and_one_byte_more_is_refused(
        self, queue: QueueHandle
    ) -> None:
        """With the default ``queue.max_message_bytes`` (1 MiB), capped by what
        the backend says it stores: a backend that declares more than it can
        hold fails here."""
        if queue.max_message_bytes >= LARGEST_PROBE:
            raise NotApplicable(
                f"the namespace accepts messages up to {queue.max_message_bytes} bytes; too large to probe"
            )
        assert queue.max_message_bytes == min(1024 * 1024, queue.traits.max_message_bytes)
        self._size_limit_round_trip(queue, "large")

    def test_a_batch_of_max_batch_round_trips_and_one_more_is_refused(self) -> None:
        q = self.open_queue(queue={"max_batch": 200, "visibility_timeout": "10m"})
        messages = numbered(200, key=lambda i: f"k{i % 3}".encode() if i % 2 else b"")
        ids = q.publish("bulk", messages)
        assert len(set(ids)) == len(ids) == 200, f"{len(set(ids))} distinct ids for 200 messages"
        got: list[prism.Delivery] = []
        while len(got) < 200:
            batch = collect(
                of_group(q, "bulk", "g"), 1, what=f"{200 - len(got)} more of 200", max_messages=200
            )
            got += batch
            q.ack("bulk", "g", batch)  # acked as they come, so keyed messages queued behind them follow
        assert len(set(ids_of(got))) == len(got) == 200, (
            f"{len(got)} deliveries, {len(set(ids_of(got)))} distinct: messages were duplicated"
        )
        by_id = {d.id: d.payload for d in got}
        assert [by_id.get(i) for i in ids] == [m.payload for m in messages], (
            "publish must return the ids in the order of the messages: the i-th id names the i-th message"
        )
        assert_nothing(of_group(q, "bulk", "g"), what="every message was acknowledged")
        # One over max_batch, in each call that takes a batch.
        with pytest.raises(prism.LimitExceeded) as refused:
            q.publish("bulk", numbered(201, prefix="over"))
        _assert_names_the_limit(refused.value, q, "max_batch", 200)
        assert refused.value.actual == 201
        with pytest.raises(prism.LimitExceeded) as consume_refused:
            q.consume("bulk", "g", max_messages=201)
        _assert_names_the_limit(consume_refused.value, q, "max_batch", 200)
        for call in (q.ack, q.nack):
            with pytest.raises(prism.LimitExceeded) as ack_refused:
                call("bulk", "g", [*ids, "one-too-many"])
            _assert_names_the_limit(ack_refused.value, q, "max_batch", 200)
        assert_nothing(of_group(q, "bulk", "g"), what="the refused publish must publish nothing")

    def test_topic_and_group_names_are_checked(self) -> None:
        q = self.open_queue(queue={"max_topic_name_bytes": 20})
        for bad in ("", "has space", "-leading", ".leading", "ünï", "a/b", "a:b", "tab\t"):
            with pytest.raises(prism.InvalidArgument) as refused:
                q.publish(bad, [prism.Message(b"", b"x")])
            assert (refused.value.namespace, refused.value.field) == (q.name, "topic"), refused.value
            with pytest.raises(prism.InvalidArgument) as group_refused:
                q.consume("t", bad)
            assert group_refused.value.field == "group", group_refused.value
        longest = "t" * 20
        with pytest.raises(prism.LimitExceeded) as too_long:
            q.publish(longest + "t", [prism.Message(b"", b"x")])
        _assert_names_the_limit(too_long.value, q, "max_topic_name_bytes", 20)
        assert too_long.value.field == "topic"
        with pytest.raises(prism.LimitExceeded) as group_too_long:
            q.consume("t", "g" * 21)
        assert group_too_long.value.field == "group"
        # Right at the limit, and with every allowed character, names work.
        for topic, group in ((longest, "g" * 20), ("A.b_c-9", "G.h_i-0")):
            q.publish(topic, [prism.Message(b"", topic.encode())])
            [got] = collect(of_group(q, topic, group), 1, what=f"topic {topic!r}, group {group!r}")
            assert got.payload == topic.encode()
            q.ack(topic, group, [got])

    def test_the_longest_names_work_for_dead_letters_too(self, queue: QueueHandle) -> None:
        """The longest topic and group names (200 bytes, the default limit),
        and the topic's dead-letter topic (the core allows the suffix on top),
        must fit the backend, however it builds its own names from them (Kafka
        topics stop at 249 characters)."""
        longest_group = "g" * 200
        topic = "t" * 200
        [message_id] = queue.publish(topic, [prism.Message(b"", b"x")])
        [d] = collect(of_group(queue, topic, longest_group), 1, what="a message with the longest names")
        queue.nack(topic, longest_group, [d], requeue=False)
        dead_topic = queue.dead_letter_topic(topic)
        assert len(dead_topic) == 200 + len(queue.dead_letter_topic(""))
        [dead] = collect(of_group(queue, dead_topic, longest_group), 1, what="its dead letter")
        assert dict(dead.headers)["prism-dead-letter-id"] == message_id.encode()
        queue.ack(dead_topic, longest_group, [dead])

    def test_wait_and_batch_arguments_are_checked(self) -> None:
        q = self.open_queue(queue={"max_wait": "2s"})
        with pytest.raises(prism.LimitExceeded) as refused:
            q.consume("t", "g", wait=timedelta(seconds=3))
        _assert_names_the_limit(refused.value, q, "max_wait")
        assert "queue.max_wait" in str(refused.value)
        with pytest.raises(prism.LimitExceeded):
            q.consume("t", "g", wait=2.5)
        assert q.consume("t", "g", wait=timedelta(milliseconds=100)) == []  # within the limit: fine
        # Deliberately wrong types, as an untyped caller could send them.
        raw: Any = b"raw bytes"
        single_id: Any = "an-id"
        bad_calls: list[tuple[str, Any]] = [
            ("negative wait", lambda: q.consume("t", "g", wait=-1)),
            ("max_messages 0", lambda: q.consume("t", "g", max_messages=0)),
            ("not a message", lambda: q.publish("t", [raw])),
            ("a single id", lambda: q.ack("t", "g", single_id)),
            ("an empty id", lambda: q.ack("t", "g", [""])),
        ]
        for what, call in bad_calls:
            with pytest.raises(prism.InvalidArgument) as bad:
                call()
            assert bad.value.namespace == q.name, f"{what}: the error must name the namespace: {bad.value}"
        assert_nothing(of_group(q, "t", "g"), what="refused calls must publish nothing")

    def test_unknown_namespace_is_refused(self) -> None:
        opened = self._harness.open_queues(1)
        with pytest.raises(prism.NamespaceNotFound) as refused:
            opened.db.queue("no_such_namespace")
        assert refused.value.namespace == "no_such_namespace"
        assert "no_such_namespace" in str(refused.value)
