"""Queue publish on Kafka, embedded: ``prism.open_async`` against raw
confluent-kafka with the producer settings the ``kafka`` plugin uses
(``enable.idempotence``, ``acks=all``, the same ``message.max.bytes`` and
``delivery.timeout.ms``), producing to the very topic Prism created, to the
partition Prism picks, and waiting like Prism until every message's delivery
is confirmed. The raw side waits the idiomatic way, ``flush()`` on a worker
thread; Prism waits on delivery-report futures served by its poll thread.

``ops_per_s`` counts messages; latencies are per publish call.

Publish-to-ack (:func:`run_round_trip`): one message published, received by a
consumer of a group and acknowledged, one after the other; the latency runs
from the start of the publish to the end of the ack. Prism: ``publish``, then
``AsyncConsumer.consume(max_messages=1)`` (the plugin's group reader thread
fetches the record, and commits the delivery count before handing it out),
then ``ack`` (which returns once the reader thread has committed the offset).
Raw: confluent-kafka with the plugin's producer and consumer settings:
``produce`` and ``flush``, then ``poll`` on a consumer of its own group until
that record arrives, then a synchronous ``commit`` of the offset after it.
Each side has its own topic (both created by Prism, so configured alike) and group.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

import prism
from benchmarks.harness import Progress, Result, Settings, Target, closed_loop, interleaved
from benchmarks.stats import Sample
from prism_kafka.settings import KafkaSettings, kafka_group_id, kafka_topic_name

NAMESPACE = "bench_q"
TOPIC = "publish"
PAYLOAD = bytes(i % 251 for i in range(100))
TARGET = Target("throughput >= 70% of raw confluent-kafka", "min_throughput_ratio", 0.70)


def _per_message(sample: Sample, batch: int) -> Sample:
    return Sample(sample.ops_per_s * batch, sample.p50_ms, sample.p90_ms, sample.p99_ms)


async def run_publish(settings: Settings, progress: Progress, bootstrap: str) -> AsyncIterator[Result]:
    backend = {"plugin": "kafka", "bootstrap_servers": bootstrap, "topic_prefix": "prismbench."}
    config: dict[str, Any] = {
        "backends": {"kafka": backend},
        "namespaces": {NAMESPACE: {"abstraction": "queue", "backend": "kafka"}},
    }
    kafka_settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix="prismbench.")
    topic = kafka_topic_name(kafka_settings, "kafka", NAMESPACE, TOPIC)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "message.max.bytes": kafka_settings.record_limit,
            "delivery.timeout.ms": int(kafka_settings.delivery_timeout.total_seconds() * 1000),
            "allow.auto.create.topics": False,
        }
    )
    turn = 0

    async def raw_publish(count: int) -> None:
        nonlocal turn
        # Prism sends one call's unkeyed messages to one partition, in turn per call.
        partition = turn % kafka_settings.partitions
        turn += 1
        for _ in range(count):
            producer.produce(topic, value=PAYLOAD, partition=partition)
        left = await asyncio.to_thread(producer.flush, 30.0)
        if left:
            raise RuntimeError(f"raw producer: {left} messages not delivered to {topic}")

    try:
        async with prism.open_async(config) as db:
            queue = db.queue(NAMESPACE)
            one = [prism.Message(b"", PAYLOAD)]
            batch = [prism.Message(b"", PAYLOAD)] * 100
            await queue.publish(TOPIC, batch)  # creates the topic the raw side also writes to
            for batch_size, calls, messages in (
                (100, max(20, settings.batch_ops // 2), batch),
                (1, max(50, settings.small_ops // 4), one),
            ):
                for _ in range(5):
                    await queue.publish(TOPIC, messages)
                    await raw_publish(batch_size)
                label = f"queue.publish {batch_size}x100B"
                progress.say(f"{label} on kafka, embedded: {calls} calls x {settings.repetitions} reps")

                async def prism_side(messages: list[prism.Message] = messages, calls: int = calls) -> Sample:
                    return await closed_loop(lambda i: queue.publish(TOPIC, messages), calls)

                async def raw_side(batch_size: int = batch_size, calls: int = calls) -> Sample:
                    return await closed_loop(lambda i: raw_publish(batch_size), calls)

                p, b = await interleaved(settings.repetitions, prism_side, raw_side, progress, label)
                yield Result(
                    label,
                    "queue",
                    "kafka",
                    "embedded",
                    _per_message(p, batch_size),
                    "raw confluent-kafka (same producer settings)",
                    _per_message(b, batch_size),
                    TARGET if batch_size > 1 else None,
                    {
                        "ops": "messages/s; latency per publish call",
                        "calls_per_rep": calls,
                        "pid": os.getpid(),
                    },
                )
    finally:
        await asyncio.to_thread(producer.flush, 30.0)


def _raw_consumer_config(kafka_settings: KafkaSettings, bootstrap: str, group: str) -> dict[str, Any]:
    """The consumer settings the plugin's group reader uses (``prism_kafka.queue``)."""
    session_ms = int(kafka_settings.session_timeout.total_seconds() * 1000)
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "allow.auto.create.topics": False,
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": max(100, session_ms // 10),
    }


def _poll_for(consumer: Consumer, partition: int, offset: int, timeout_s: float) -> Message:
    """Poll until the record at ``partition``/``offset`` arrives (skipping
    end-of-partition events and older records, such as the one that created the topic)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = consumer.poll(0.1)
        if record is None:
            continue
        error = record.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                continue
            raise RuntimeError(f"raw consumer: {error.str()}")
        if record.partition() == partition and record.offset() == offset:
            return record
    raise RuntimeError(f"raw consumer: record {partition}/{offset} did not arrive within {timeout_s:g}s")


async def run_round_trip(settings: Settings, progress: Progress, bootstrap: str) -> AsyncIterator[Result]:
    from benchmarks.queue_embedded import GROUP, prism_round_trip, round_trip_result

    backend = {"plugin": "kafka", "bootstrap_servers": bootstrap, "topic_prefix": "prismbench."}
    config: dict[str, Any] = {
        "backends": {"kafka": backend},
        "namespaces": {NAMESPACE: {"abstraction": "queue", "backend": "kafka"}},
    }
    kafka_settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix="prismbench.")
    raw_topic = kafka_topic_name(kafka_settings, "kafka", NAMESPACE, "rt-raw")
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 0,
            "enable.idempotence": True,
            "acks": "all",
            "message.max.bytes": kafka_settings.record_limit,
            "delivery.timeout.ms": int(kafka_settings.delivery_timeout.total_seconds() * 1000),
            "allow.auto.create.topics": False,
        }
    )
    # One group name across runs, as Prism's group "g": each run starts where the last acked.
    raw_group = kafka_group_id(kafka_settings, NAMESPACE, "raw-rt")
    consumer = Consumer(_raw_consumer_config(kafka_settings, bootstrap, raw_group))
    turn = 0

    def produce_one() -> tuple[int, int]:
        nonlocal turn
        partition = turn % kafka_settings.partitions
        turn += 1
        delivered: list[tuple[int, int]] = []

        def report(error: KafkaError | None, record: Message) -> None:
            if error is not None:
                raise RuntimeError(f"raw producer: {error.str()}")
            delivered.append((record.partition() or 0, record.offset() or 0))

        producer.produce(raw_topic, value=PAYLOAD, partition=partition, on_delivery=report)
        if producer.flush(30.0) or not delivered:
            raise RuntimeError(f"raw producer: the message to {raw_topic} was not delivered")
        return delivered[0]

    def consume_and_commit(partition: int, offset: int) -> None:
        record = _poll_for(consumer, partition, offset, 30.0)
        if record.value() != PAYLOAD:
            raise RuntimeError("raw kafka round trip: wrong message")
        consumer.commit(offsets=[TopicPartition(raw_topic, partition, offset + 1)], asynchronous=False)

    async def raw_op() -> None:
        partition, offset = await asyncio.to_thread(produce_one)
        await asyncio.to_thread(consume_and_commit, partition, offset)

    try:
        async with prism.open_async(config) as db:
            queue = db.queue(NAMESPACE)
            await queue.publish("rt-raw", [prism.Message(b"", PAYLOAD)])  # creates the raw side's topic
            consumer.subscribe([raw_topic])
            async with queue.consumer("rt", GROUP) as prism_consumer:
                yield await round_trip_result(
                    "kafka",
                    lambda: prism_round_trip(queue, prism_consumer, "rt"),
                    raw_op,
                    "raw confluent-kafka (produce+flush, poll, commit)",
                    max(20, settings.small_ops // 10),
                    settings,
                    progress,
                    {"baseline_does": "produce+flush, poll until the record, synchronous commit"},
                )
    finally:
        await asyncio.to_thread(consumer.close)
        await asyncio.to_thread(producer.flush, 30.0)
