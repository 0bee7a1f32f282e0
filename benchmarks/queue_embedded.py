"""Queue on sqlite and redis, embedded: ``prism.open_async`` against the raw
driver doing the storage work of the plugin's queue backend (see
:mod:`benchmarks.raw_queue` for exactly what each raw side sends).

* Publish: ``publish`` of 100 x 100 B and of 1 x 100 B, one call in flight;
  ``ops_per_s`` counts messages, latencies are per publish call.
* Publish-to-ack: one message published, received by a consumer of a group
  (``AsyncConsumer.consume(max_messages=1)``) and acknowledged, one after the
  other in one task; the latency runs from the start of the publish to the
  end of the ack, ``ops_per_s`` counts round trips. Each side has its own
  topic and group, so neither consumes the other's messages.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import prism
from benchmarks.harness import Progress, Result, Settings, closed_loop, interleaved
from benchmarks.raw_queue import RawRedisQueue, RawSqliteQueue
from benchmarks.stats import Sample

NAMESPACE = "bench_q"
PAYLOAD = bytes(i % 251 for i in range(100))
GROUP = "g"
#: The namespace's default visibility timeout (30 s), also used by the raw sqlite lease.
VISIBILITY_US = 30_000_000


def per_message(sample: Sample, batch: int) -> Sample:
    return Sample(sample.ops_per_s * batch, sample.p50_ms, sample.p90_ms, sample.p99_ms)


def _config(backend: dict[str, Any]) -> dict[str, Any]:
    return {
        "backends": {"b": backend},
        "namespaces": {NAMESPACE: {"abstraction": "queue", "backend": "b"}},
    }


async def _publish_cases(
    backend: str,
    queue: prism.AsyncQueue,
    raw_publish: Callable[[list[bytes]], Awaitable[object]],
    baseline_name: str,
    settings: Settings,
    progress: Progress,
) -> AsyncIterator[Result]:
    one = [prism.Message(b"", PAYLOAD)]
    batch = one * 100
    # Sub-millisecond calls: more of them than KeyValue makes, so a repetition
    # lasts long enough to average over WAL checkpoints and thread wake-ups.
    for size, calls, messages in ((100, settings.batch_ops * 3, batch), (1, settings.small_ops * 5, one)):
        payloads = [PAYLOAD] * size
        for _ in range(5):
            await queue.publish("publish", messages)
            await raw_publish(payloads)
        label = f"queue.publish {size}x100B"
        progress.say(f"{label} on {backend}, embedded: {calls} calls x {settings.repetitions} reps")

        async def prism_side(messages: list[prism.Message] = messages, calls: int = calls) -> Sample:
            return await closed_loop(lambda i: queue.publish("publish", messages), calls)

        async def raw_side(payloads: list[bytes] = payloads, calls: int = calls) -> Sample:
            return await closed_loop(lambda i: raw_publish(payloads), calls)

        p, b = await interleaved(settings.repetitions, prism_side, raw_side, progress, label)
        yield Result(
            label,
            "queue",
            backend,
            "embedded",
            per_message(p, size),
            baseline_name,
            per_message(b, size),
            None,
            {"ops": "messages/s; latency per publish call", "calls_per_rep": calls},
        )


async def prism_round_trip(queue: prism.AsyncQueue, consumer: prism.AsyncConsumer, topic: str) -> None:
    """Publish one message, consume it with ``consumer``, ack it."""
    await queue.publish(topic, [prism.Message(b"", PAYLOAD)])
    deliveries = await consumer.consume(max_messages=1, wait=5)
    if len(deliveries) != 1 or deliveries[0].payload != PAYLOAD:
        raise RuntimeError(f"round trip on {topic}: expected the message just published, got {deliveries}")
    await consumer.ack(deliveries)


async def round_trip_result(
    backend: str,
    prism_op: Callable[[], Awaitable[object]],
    raw_op: Callable[[], Awaitable[object]],
    baseline_name: str,
    calls: int,
    settings: Settings,
    progress: Progress,
    notes: dict[str, Any],
) -> Result:
    for _ in range(5):
        await prism_op()
        await raw_op()
    label = "queue.publish-to-ack 1x100B"
    progress.say(f"{label} on {backend}, embedded: {calls} round trips x {settings.repetitions} reps")
    p, b = await interleaved(
        settings.repetitions,
        lambda: closed_loop(lambda i: prism_op(), calls),
        lambda: closed_loop(lambda i: raw_op(), calls),
        progress,
        label,
    )
    return Result(
        label,
        "queue",
        backend,
        "embedded",
        p,
        baseline_name,
        b,
        None,
        {"ops": "round trips/s; latency from publish start to ack done", "calls_per_rep": calls, **notes},
    )


# -- sqlite ----------------------------------------------------------------------------


def _sqlite_backend(settings: Settings) -> dict[str, Any]:
    # synchronous NORMAL on both sides, as for KeyValue (see README).
    return {"plugin": "sqlite", "path": str(settings.work_dir / "queue.db"), "synchronous": "normal"}


async def run_publish_sqlite(settings: Settings, progress: Progress) -> AsyncIterator[Result]:
    async with prism.open_async(_config(_sqlite_backend(settings))) as db:
        queue = db.queue(NAMESPACE)
        await queue.publish("publish", [prism.Message(b"", PAYLOAD)])  # creates the tables
        raw = RawSqliteQueue(str(settings.work_dir / "queue.db"), NAMESPACE, synchronous="NORMAL")
        await raw.start()
        try:
            async for result in _publish_cases(
                "sqlite",
                queue,
                lambda payloads: raw.publish("publish-raw", payloads),
                "raw sqlite3 (the plugin's SQL)",
                settings,
                progress,
            ):
                yield result
        finally:
            await raw.close()


async def run_round_trip_sqlite(settings: Settings, progress: Progress) -> AsyncIterator[Result]:
    async with prism.open_async(_config(_sqlite_backend(settings))) as db:
        queue = db.queue(NAMESPACE)
        await queue.publish("rt-setup", [prism.Message(b"", PAYLOAD)])  # creates the tables
        raw = RawSqliteQueue(str(settings.work_dir / "queue.db"), NAMESPACE, synchronous="NORMAL")
        await raw.start()
        consumer_id = "raw-" + os.urandom(4).hex()

        async def raw_op() -> None:
            await raw.publish("rt-raw", [PAYLOAD])
            seq, payload = await raw.receive_one("rt-raw", GROUP, consumer_id, VISIBILITY_US)
            if payload != PAYLOAD:
                raise RuntimeError("raw sqlite round trip: wrong message")
            await raw.ack("rt-raw", GROUP, seq)

        try:
            async with queue.consumer("rt", GROUP) as consumer:
                yield await round_trip_result(
                    "sqlite",
                    lambda: prism_round_trip(queue, consumer, "rt"),
                    raw_op,
                    "raw sqlite3 (the plugin's SQL)",
                    settings.small_ops * 2,
                    settings,
                    progress,
                    {"baseline_does": "publish, receive (claim) and ack transactions with the plugin's SQL"},
                )
        finally:
            await raw.close()


# -- redis -----------------------------------------------------------------------------


async def run_publish_redis(settings: Settings, progress: Progress, url: str) -> AsyncIterator[Result]:
    prefix = f"prismbenchq{os.getpid()}"
    raw = RawRedisQueue(url, prefix, NAMESPACE)
    try:
        async with prism.open_async(_config({"plugin": "redis", "url": url, "key_prefix": prefix})) as db:
            async for result in _publish_cases(
                "redis",
                db.queue(NAMESPACE),
                lambda payloads: raw.publish("publish-raw", payloads),
                "raw redis-py asyncio (XADD in MULTI/EXEC)",
                settings,
                progress,
            ):
                yield result
    finally:
        await _drop_streams(raw, prefix)
        await raw.close()


async def run_round_trip_redis(settings: Settings, progress: Progress, url: str) -> AsyncIterator[Result]:
    prefix = f"prismbenchq{os.getpid()}"
    raw = RawRedisQueue(url, prefix, NAMESPACE)
    consumer_id = "raw-" + os.urandom(4).hex()

    async def raw_op() -> None:
        await raw.publish("rt-raw", [PAYLOAD])
        message_id, payload = await raw.receive_one("rt-raw", GROUP, consumer_id)
        if payload != PAYLOAD:
            raise RuntimeError("raw redis round trip: wrong message")
        await raw.ack("rt-raw", GROUP, message_id)

    try:
        await raw.create_group("rt-raw", GROUP)
        async with prism.open_async(_config({"plugin": "redis", "url": url, "key_prefix": prefix})) as db:
            queue = db.queue(NAMESPACE)
            async with queue.consumer("rt", GROUP) as consumer:
                yield await round_trip_result(
                    "redis",
                    lambda: prism_round_trip(queue, consumer, "rt"),
                    raw_op,
                    "raw redis-py asyncio (XADD, XREADGROUP, XACK)",
                    settings.small_ops * 2,
                    settings,
                    progress,
                    {"baseline_does": "XADD in MULTI/EXEC, XREADGROUP COUNT 1 >, XACK"},
                )
    finally:
        await _drop_streams(raw, prefix)
        await raw.close()


async def _drop_streams(raw: RawRedisQueue, prefix: str) -> None:
    names = [name async for name in raw.client.scan_iter(match=f"{prefix}:*".encode(), count=1000)]
    if names:
        await raw.client.unlink(*names)
