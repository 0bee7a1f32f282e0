"""Many consumers at once, on several threads: competing consumers of one
group never hold the same message at the same time, every group gets every
message, and nothing is lost or delivered again after its ack while consumers
come and go."""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import Counter
from datetime import timedelta

import attrs

import prism
from prism_conformance.queue.base import QueueSuiteBase
from prism_conformance.queue.redelivery import LONG_VISIBILITY
from prism_conformance.queue.support import (
    DELIVERY_DEADLINE,
    assert_nothing,
    delivery_deadline,
    numbered,
    of_group,
)
from prism_conformance.support import run_threads

#: How long one consume call of a worker thread waits.
WORKER_WAIT = timedelta(milliseconds=300)


@attrs.define
class Ledger:
    """What the consumers of one group were given and acknowledged, kept
    under one lock, and every rule they saw broken."""

    lock: threading.Lock = attrs.Factory(threading.Lock)
    held: dict[str, str] = attrs.Factory(dict)
    """Message id -> the consumer holding it now."""
    acked: Counter[str] = attrs.Factory(Counter)
    deliveries: list[tuple[str, str, int]] = attrs.Factory(list)
    """(consumer, message id, attempt), in the order received."""
    violations: list[str] = attrs.Factory(list)

    def received(self, consumer: str, batch: list[prism.Delivery]) -> None:
        with self.lock:
            for d in batch:
                self.deliveries.append((consumer, d.id, d.attempt))
                if d.id in self.acked:
                    self.violations.append(f"{d.id} was delivered to {consumer} after it was acknowledged")
                holder = self.held.get(d.id)
                if holder is not None:
                    self.violations.append(
                        f"{d.id} was delivered to {consumer} while {holder} held it (attempt {d.attempt})"
                    )
                self.held[d.id] = consumer

    def acknowledged(self, consumer: str, batch: list[prism.Delivery]) -> None:
        with self.lock:
            for d in batch:
                self.acked[d.id] += 1
                if self.held.get(d.id) == consumer:
                    del self.held[d.id]

    def giving_back(self, consumer: str) -> None:
        """Called before a consumer closes: what it held is free to go elsewhere."""
        with self.lock:
            for message_id in [i for i, holder in self.held.items() if holder == consumer]:
                del self.held[message_id]

    def count_acked(self) -> int:
        with self.lock:
            return len(self.acked)


class ConcurrencyTests(QueueSuiteBase):
    def test_competing_consumers_never_hold_the_same_message(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY})
        ids = q.publish("t", numbered(60))
        ledger = Ledger()
        give_up = time.monotonic() + delivery_deadline().total_seconds()

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            with q.consumer("t", "g") as consumer:
                mine: list[prism.Delivery] = []
                while len(ledger.deliveries) < len(ids) and time.monotonic() < give_up:
                    batch = consumer.consume(max_messages=rng.randint(1, 7), wait=WORKER_WAIT)
                    ledger.received(consumer.id, batch)
                    mine += batch
                # Everything is acked only once all arrived: until then each
                # consumer holds what it got, and nobody else may get it.
                consumer.ack(mine)
                ledger.acknowledged(consumer.id, mine)

        run_threads([functools.partial(worker, seed) for seed in range(4)])
        assert not ledger.violations, "\n".join(ledger.violations[:20])
        delivered = Counter(message_id for _, message_id, _ in ledger.deliveries)
        twice = {i: n for i, n in delivered.items() if n > 1}
        assert not twice, f"messages delivered more than once to one group's live consumers: {twice}"
        assert sorted(delivered) == sorted(ids), (
            f"{len(set(ids) - set(delivered))} of {len(ids)} messages never arrived within "
            f"{delivery_deadline().total_seconds():g}s"
        )
        assert all(attempt == 1 for _, _, attempt in ledger.deliveries), "a redelivery happened with no cause"
        assert_nothing(of_group(q, "t", "g"), what="every message was acknowledged")

    def test_each_group_shares_every_message_among_its_consumers(self) -> None:
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY})
        ids = q.publish("t", numbered(30))
        ledgers = {"a": Ledger(), "b": Ledger()}
        give_up = time.monotonic() + delivery_deadline().total_seconds()

        def worker(group: str) -> None:
            ledger = ledgers[group]
            with q.consumer("t", group) as consumer:
                while ledger.count_acked() < len(ids) and time.monotonic() < give_up:
                    batch = consumer.consume(max_messages=4, wait=WORKER_WAIT)
                    ledger.received(consumer.id, batch)
                    consumer.ack(batch)
                    ledger.acknowledged(consumer.id, batch)

        groups = ["a", "a", "a", "b", "b", "b"]
        run_threads(
            [functools.partial(worker, g) for g in groups],
            names=[f"group-{g}-{i}" for i, g in enumerate(groups)],
        )
        for group, ledger in ledgers.items():
            assert not ledger.violations, f"group {group!r}:\n" + "\n".join(ledger.violations[:20])
            assert sorted(ledger.acked) == sorted(ids), (
                f"group {group!r} got {len(ledger.acked)} of the {len(ids)} messages"
            )
            assert all(n == 1 for n in ledger.acked.values())
            assert_nothing(of_group(q, "t", group), what=f"group {group!r} acknowledged everything")

    def test_nothing_is_lost_or_delivered_after_its_ack_while_consumers_come_and_go(self) -> None:
        """Publishers and consumers at once. Each worker opens a consumer,
        consumes a few times, acks some deliveries and closes with the rest
        unacknowledged (so they come back at once), again and again. In the
        end the group acknowledged every message exactly once, and nothing was
        delivered after its ack or to two live consumers at once."""
        # Closes count as attempts; with 1000 of them nothing is dead-lettered.
        q = self.open_queue(queue={"visibility_timeout": LONG_VISIBILITY, "max_attempts": 1000})
        ledger = Ledger()
        published: list[str] = []
        done_publishing = threading.Event()
        # The whole workload's deadline: a correct backend takes seconds; never
        # less than the default, since this is many deliveries, not one.
        churn_deadline = max(DELIVERY_DEADLINE, delivery_deadline()) * 1.5
        give_up = time.monotonic() + churn_deadline.total_seconds()

        def publisher() -> None:
            try:
                for round_ in range(20):
                    ids = q.publish(
                        "t",
                        numbered(
                            10, prefix=f"r{round_}-", key=lambda i: f"k{i % 4}".encode() if i % 3 else b""
                        ),
                    )
                    with ledger.lock:
                        published.extend(ids)
            finally:
                done_publishing.set()

        def finished() -> bool:
            with ledger.lock:
                return done_publishing.is_set() and len(ledger.acked) >= len(published)

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            while not finished():
                assert time.monotonic() < give_up, (
                    f"only {ledger.count_acked()} of {len(published)} messages were acknowledged within "
                    f"{churn_deadline.total_seconds():g}s"
                )
                consumer = q.consumer("t", "g")
                try:
                    for _ in range(rng.randint(1, 3)):
                        batch = consumer.consume(max_messages=rng.randint(1, 8), wait=WORKER_WAIT)
                        ledger.received(consumer.id, batch)
                        keep = [d for d in batch if rng.random() < 0.6]
                        if keep:
                            consumer.ack(keep)
                            ledger.acknowledged(consumer.id, keep)
                finally:
                    ledger.giving_back(consumer.id)
                    consumer.close()

        run_threads([publisher, *(functools.partial(worker, seed) for seed in range(4))])
        assert not ledger.violations, "\n".join(ledger.violations[:20])
        assert len(set(published)) == len(published) == 200, f"{len(set(published))} distinct ids published"
        assert set(ledger.acked) == set(published), (
            f"{len(set(published) - set(ledger.acked))} messages were never acknowledged"
        )
        twice = {i: n for i, n in ledger.acked.items() if n > 1}
        assert not twice, f"messages acknowledged more than once (so delivered after an ack): {twice}"
        assert_nothing(of_group(q, "t", "g"), what="every message was acknowledged")
        assert_nothing(
            of_group(q, q.dead_letter_topic("t"), "g"), what="no message reached max_attempts (1000)"
        )
