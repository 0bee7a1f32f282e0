"""Queue publish on Kafka, embedded: ``prism.open_async`` against raw
confluent-kafka with the producer settings the ``kafka`` plugin uses
(``enable.idempotence``, ``acks=all``, the same ``message.max.bytes`` and
``delivery.timeout.ms``), producing to the very topic Prism created, to the
partition Prism picks, and waiting like Prism until every message's delivery
is confirmed. The raw side waits the idiomatic way, ``flush()`` on a worker
thread; Prism waits on delivery-report futures served by its poll thread.

``ops_per_s`` counts messages; latencies are per publish call.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from confluent_kafka import Producer

import prism
from benchmarks.harness import Progress, Result, Settings, Target, closed_loop, interleaved
from benchmarks.stats import Sample
from prism_kafka.settings import KafkaSettings, kafka_topic_name

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
