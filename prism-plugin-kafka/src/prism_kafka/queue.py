"""The ``kafka`` Queue backend: topics on Apache Kafka, groups as Kafka
consumer groups, leases kept by the consuming process.

Publishing: one idempotent producer (``enable.idempotence``, ``acks=all``) per
backend. ``publish`` returns only after every message's delivery report
succeeded, so a returned id names a record the in-sync replicas hold. A
background thread serves the producer's delivery reports (``poll``) and hands
each to the event loop with ``call_soon_threadsafe``. A message with a key is
produced with that Kafka key, so every message of one key lands in one
partition, in order: that is where ``queue.ordered_by_key`` comes from. The
messages without a key of one publish call all go to one partition, picked in
turn per call, so one call's messages keep their order and calls still spread
over the partitions.

Consuming: see :mod:`prism_kafka.reader`.

Topics, including the core's dead-letter topics, are created on first use with
the namespace's sizing (:func:`prism_kafka.settings.partitions_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from prism import capabilities
from prism.config import NamespaceConfig
from prism.errors import BackendError
from prism.log import get_logger
from prism.spi import Lease, OutgoingMessage, QueueBackendType, QueueTraits, ReceiveRequest, StoredMessage
from prism_kafka.offsets import decode_progress, message_id, parse_message_id
from prism_kafka.reader import GroupReader, Located, _Entry
from prism_kafka.settings import KafkaSettings, kafka_group_id, kafka_topic_name, partitions_for

_log = get_logger(__name__)

#: librdkafka's own log lines (connection retries, coordinator moves). The
#: driver needs a stdlib logger; the ``prism`` application renders stdlib
#: records like its own, and a library never configures logging itself.
LIBRDKAFKA_LOGGER = logging.getLogger("prism_kafka.librdkafka")

#: How long the producer thread blocks in one ``poll`` when no report is due.
_PRODUCER_POLL_S = 0.2


class KafkaQueue:
    def __init__(self, name: str, settings: KafkaSettings) -> None:
        self.name = name
        self.settings = settings
        self._configs: dict[str, NamespaceConfig] = {}
        self._topics: dict[str, int] = {}
        """Kafka topics known to exist, with their partition counts."""
        self._topic_locks: dict[str, asyncio.Lock] = {}
        self._readers: dict[tuple[str, str, str], GroupReader] = {}
        self._published_high: dict[str, dict[int, int]] = {}
        """Per Kafka topic and partition: one past the last offset this process published."""
        self._next_partition: dict[str, int] = {}
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._timeout_s = settings.connect_timeout.total_seconds()

    def __repr__(self) -> str:
        return f"<KafkaQueue {self.name!r} at {self.settings.bootstrap_servers}>"

    # -- plumbing ---------------------------------------------------------------------

    def _where(self) -> str:
        return f"kafka backend {self.name!r} at {self.settings.bootstrap_servers}"

    def _error(self, doing: str, cause: object) -> BackendError:
        return BackendError(f"{self._where()}: {doing} failed: {cause}")

    def _client_config(self) -> dict[str, Any]:
        config: dict[str, Any] = dict(self.settings.client_config)
        config["bootstrap.servers"] = self.settings.bootstrap_servers
        config.setdefault("client.id", f"prism-{self.name}")
        return config

    def _started(self) -> tuple[Producer, AdminClient]:
        if self._producer is None or self._admin is None:
            raise BackendError(f"{self._where()} is not started, or closed")
        return self._producer, self._admin

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and check within ``connect_timeout`` that a broker answers,
        so that a wrong address fails here and not at the first publish."""
        admin = AdminClient(self._client_config())
        try:
            metadata = await asyncio.to_thread(admin.list_topics, timeout=self._timeout_s)
        except KafkaException as exc:
            raise BackendError(
                f"{self._where()}: no broker answered within {self._timeout_s:g}s ({exc}); check that "
                "Kafka runs and that bootstrap_servers (and client_config for TLS/SASL) are right"
            ) from exc
        if not metadata.brokers:
            raise BackendError(f"{self._where()}: the cluster lists no brokers; check bootstrap_servers")
        producer_config = {
            # publish() waits for the delivery reports of what it sent, so
            # lingering only adds latency: librdkafka's default of 5 ms was most
            # of a publish's time (benchmarks/README.md). Publishes made while a
            # produce request is in flight still batch. client_config may set it.
            "linger.ms": 0,
            **self._client_config(),
        }
        producer_config.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "message.max.bytes": self.settings.record_limit,
                "delivery.timeout.ms": int(self.settings.delivery_timeout.total_seconds() * 1000),
                "allow.auto.create.topics": False,
                "logger": LIBRDKAFKA_LOGGER,
            }
        )
        self._admin = admin
        self._producer = Producer(producer_config)
        self._stop.clear()
        self._poller = threading.Thread(
            target=self._serve_reports, args=(self._producer,), name=f"prism-kafka {self.name} producer"
        )
        self._poller.daemon = True
        self._poller.start()

    def _serve_reports(self, producer: Producer) -> None:
        """The producer's delivery reports run their callbacks here."""
        while not self._stop.is_set():
            producer.poll(_PRODUCER_POLL_S)

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        """Remember the namespace's needs: its topics are sized from them when
        first used."""
        self._configs[namespace] = config

    async def close(self) -> None:
        """Stop the readers (each commits what is contiguously acked and leaves
        its group), deliver what the producer still holds, stop the threads."""
        readers, self._readers = list(self._readers.values()), {}
        await asyncio.gather(*(reader.close() for reader in readers), return_exceptions=True)
        producer = self._producer
        if producer is not None:
            await asyncio.to_thread(producer.flush, self.settings.delivery_timeout.total_seconds())
        self._stop.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join)
        self._producer = None
        self._admin = None
        self._poller = None

    # -- topics -------------------------------------------------------------------------

    async def _ensure_topic(self, namespace: str, topic: str) -> tuple[str, int]:
        """The Kafka topic for ``topic``, created if needed; with its partition count."""
        name = kafka_topic_name(self.settings, self.name, namespace, topic)
        count = self._topics.get(name)
        if count is not None:
            return name, count
        lock = self._topic_locks.setdefault(name, asyncio.Lock())
        async with lock:
            count = self._topics.get(name)
            if count is None:
                wanted = partitions_for(self.settings, self._configs.get(namespace))
                count = await asyncio.to_thread(self._create_topic, namespace, topic, name, wanted)
                self._topics[name] = count
        return name, count

    def _create_topic(self, namespace: str, topic: str, name: str, partitions: int) -> int:
        """Create ``name`` (an existing topic is fine) and wait until the
        metadata shows it with a leader for every partition."""
        _, admin = self._started()
        doing = f"creating Kafka topic {name!r} for namespace {namespace!r}, topic {topic!r}"
        new = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=self.settings.replication_factor,
            config={
                "min.insync.replicas": str(self.settings.effective_min_insync_replicas),
                "max.message.bytes": str(self.settings.record_limit),
            },
        )
        futures = admin.create_topics(
            [new], operation_timeout=self._timeout_s, request_timeout=self._timeout_s
        )
        try:
            futures[name].result(timeout=self._timeout_s * 2)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                hint = (
                    f" (replication_factor {self.settings.replication_factor} needs that many brokers)"
                    if isinstance(error, KafkaError) and error.code() == KafkaError.INVALID_REPLICATION_FACTOR
                    else ""
                )
                raise self._error(doing, f"{exc}{hint}") from exc
        except TimeoutError as exc:
            raise self._error(doing, f"no answer within {self._timeout_s * 2:g}s") from exc
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                metadata = admin.list_topics(topic=name, timeout=self._timeout_s)
                found = metadata.topics.get(name)
                if (
                    found is not None
                    and found.error is None
                    and found.partitions
                    and all(p.leader >= 0 for p in found.partitions.values())
                ):
                    return len(found.partitions)
            except KafkaException as exc:
                _log.warning("kafka metadata unavailable", topic=name, error=str(exc))
            if time.monotonic() >= deadline:
                raise self._error(
                    doing, f"the topic had no leader for every partition after {self._timeout_s:g}s"
                )
            # This runs on a worker thread, never the event loop: a short pause
            # between metadata requests while the controller elects leaders.
            time.sleep(0.05)

    # -- publish ------------------------------------------------------------------------

    async def publish(self, namespace: str, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        if not messages:
            return []
        producer, _ = self._started()
        name, partitions = await self._ensure_topic(namespace, topic)
        loop = asyncio.get_running_loop()
        turn = self._next_partition.get(name, 0)
        self._next_partition[name] = turn + 1
        unkeyed_partition = turn % partitions
        now_ms = time.time_ns() // 1_000_000
        batch = _PublishBatch(loop, len(messages), partial(self._failure, namespace, topic))
        for index, message in enumerate(messages):
            report = partial(batch.report, index)
            while True:
                try:
                    if message.key:
                        producer.produce(
                            name,
                            value=message.payload,
                            key=message.key,
                            headers=list(message.headers),
                            timestamp=now_ms,
                            on_delivery=report,
                        )
                    else:
                        producer.produce(
                            name,
                            value=message.payload,
                            partition=unkeyed_partition,
                            headers=list(message.headers),
                            timestamp=now_ms,
                            on_delivery=report,
                        )
                    break
                except BufferError:
                    # The producer's local queue is full: let it drain a while.
                    await asyncio.to_thread(producer.flush, 1.0)
                except KafkaException as exc:
                    # Reports of the messages produced so far still arrive; nobody waits for them.
                    batch.future.cancel()
                    raise self._error(
                        f"publishing to Kafka topic {name!r} (namespace {namespace!r}, topic {topic!r})", exc
                    ) from exc
        results = await batch.future
        ids: list[str] = []
        high = self._published_high.setdefault(name, {})
        failure: BaseException | None = None
        for result in results:
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            partition, offset = result
            high[partition] = max(high.get(partition, 0), offset + 1)
            ids.append(message_id(partition, offset))
        if failure is not None:
            raise failure
        return ids

    def _failure(self, namespace: str, topic: str, error: KafkaError, record: Message) -> BackendError:
        return self._error(
            f"publishing to Kafka topic {record.topic()!r} (namespace {namespace!r}, topic {topic!r})",
            f"{error.str()}{'' if error.retriable() else ' (not retriable)'}",
        )

    # -- consume ------------------------------------------------------------------------

    async def _reader(self, namespace: str, topic: str, group: str) -> GroupReader:
        key = (namespace, topic, group)
        reader = self._readers.get(key)
        if reader is not None:
            return reader
        name, _ = await self._ensure_topic(namespace, topic)
        reader = self._readers.get(key)  # another call may have made it meanwhile
        if reader is not None:
            return reader
        session_ms = int(self.settings.session_timeout.total_seconds() * 1000)
        config = self._client_config()
        config.update(
            {
                "group.id": kafka_group_id(self.settings, namespace, group),
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "allow.auto.create.topics": False,
                "isolation.level": "read_committed",
                "logger": LIBRDKAFKA_LOGGER,
            }
        )
        config.setdefault("partition.assignment.strategy", "cooperative-sticky")
        config.setdefault("session.timeout.ms", session_ms)
        config.setdefault("heartbeat.interval.ms", max(100, session_ms // 10))
        reader = GroupReader(
            loop=asyncio.get_running_loop(),
            kafka_topic=name,
            consumer_config=config,
            max_buffered=self.settings.max_buffered_messages,
            published_high=self._published_high.setdefault(name, {}),
            describe=f"namespace {namespace!r}, topic {topic!r}, group {group!r}",
            operation_timeout_s=self._timeout_s,
        )
        self._readers[key] = reader
        reader.start()
        return reader

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        self._started()
        reader = await self._reader(namespace, request.topic, request.group)
        try:
            return await reader.receive(request, self.settings.catch_up_timeout.total_seconds())
        except RuntimeError as exc:
            # The reader's thread stopped: drop it, so that the next consume starts a new one.
            key = (namespace, request.topic, request.group)
            if self._readers.get(key) is reader:
                del self._readers[key]
            await reader.close()
            raise self._error(
                f"consuming {reader.describe} (Kafka topic {reader.kafka_topic!r})", exc
            ) from exc

    async def _classify(
        self, namespace: str, topic: str, group: str, ids: Sequence[str]
    ) -> tuple[dict[str, _Entry], set[str], list[str]]:
        """Split ids into those this process holds in memory, those known to be
        acknowledged (or given up with their partition), and unknown ones.

        An id is known to a group if this process delivered it, or its offset is
        below the group's committed offset (or acked beyond it, per the commit
        metadata): that is, someone acknowledged it already."""
        live: dict[str, _Entry] = {}
        done: set[str] = set()
        unknown: list[str] = []
        ask: dict[str, tuple[int, int]] = {}
        reader = self._readers.get((namespace, topic, group))
        for value in ids:
            parsed = parse_message_id(value)
            if parsed is None:
                unknown.append(value)
                continue
            found = reader.locate(*parsed) if reader is not None else None
            if isinstance(found, _Entry):
                live[value] = found
            elif found == Located.ACKED:
                done.add(value)
            else:
                ask[value] = parsed
        if ask:
            committed = await self._committed(namespace, topic, group, {p for p, _ in ask.values()})
            for value, (partition, offset) in ask.items():
                floor, acked = committed.get(partition, (-1, set()))
                if offset < floor or offset in acked:
                    done.add(value)
                else:
                    unknown.append(value)
        return live, done, unknown

    async def _committed(
        self, namespace: str, topic: str, group: str, partitions: set[int]
    ) -> dict[int, tuple[int, set[int]]]:
        """The group's committed offset and out-of-order acks per partition, asked of the broker."""
        _, admin = self._started()
        name = kafka_topic_name(self.settings, self.name, namespace, topic)
        group_id = kafka_group_id(self.settings, namespace, group)
        request = [
            ConsumerGroupTopicPartitions(group_id, [TopicPartition(name, p) for p in sorted(partitions)])
        ]
        futures = admin.list_consumer_group_offsets(request, request_timeout=self._timeout_s)
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(futures[group_id]), self._timeout_s * 2)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() in (
                KafkaError.GROUP_ID_NOT_FOUND,
                KafkaError.UNKNOWN_TOPIC_OR_PART,
            ):
                return {}
            raise self._error(f"reading the committed offsets of Kafka group {group_id!r}", exc) from exc
        except TimeoutError as exc:
            raise self._error(
                f"reading the committed offsets of Kafka group {group_id!r}", "timed out"
            ) from exc
        out: dict[int, tuple[int, set[int]]] = {}
        for tp in answer.topic_partitions or []:
            if tp.error is None and tp.offset >= 0:
                out[tp.partition] = (tp.offset, decode_progress(tp.offset, tp.metadata)[0])
        return out

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        live, _, unknown = await self._classify(namespace, topic, group, ids)
        if unknown:
            return unknown
        reader = self._readers.get((namespace, topic, group))
        if reader is None or not live:
            return []
        # An ack returns once Kafka holds the commit recording it, so an
        # acknowledged message is never delivered again, even after a crash.
        waiting = reader.ack(list(live.values()))
        doing = f"committing acks of {reader.describe} (Kafka topic {reader.kafka_topic!r})"
        try:
            await asyncio.wait_for(asyncio.gather(*waiting), self._timeout_s * 2)
        except TimeoutError as exc:
            raise self._error(doing, f"no answer within {self._timeout_s * 2:g}s; ack again") from exc
        except RuntimeError as exc:
            raise self._error(doing, f"{exc}; ack again") from exc
        return []

    async def release(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        live, _, unknown = await self._classify(namespace, topic, group, ids)
        if unknown:
            return unknown
        reader = self._readers.get((namespace, topic, group))
        if reader is not None:
            reader.release([entry for entry in live.values() if not entry.acked])
        return []

    async def release_consumer(self, namespace: str, topic: str, group: str, consumer: str) -> None:
        reader = self._readers.get((namespace, topic, group))
        if reader is not None:
            reader.release_consumer(consumer)

    async def lookup(
        self, namespace: str, topic: str, group: str, ids: Sequence[str]
    ) -> dict[str, StoredMessage | None]:
        live, done, _ = await self._classify(namespace, topic, group, ids)
        out: dict[str, StoredMessage | None] = {value: None for value in done}
        for value, entry in live.items():
            out[value] = None if entry.acked else entry.message
        return out


class _PublishBatch:
    """The delivery reports of one publish call, gathered on the producer's
    thread(s) and handed to the event loop once, when the last one arrives:
    one future and one cross-thread wake-up per call, not per message."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        count: int,
        failure: Callable[[KafkaError, Message], BackendError],
    ) -> None:
        self.loop = loop
        self.future: asyncio.Future[list[tuple[int, int] | BackendError]] = loop.create_future()
        self._results: list[tuple[int, int] | BackendError] = [_NO_REPORT] * count
        self._left = count
        self._failure = failure
        # Reports come from whichever thread polls the producer: its own
        # thread, or a flush when the local queue is full.
        self._lock = threading.Lock()

    def report(self, index: int, error: KafkaError | None, record: Message) -> None:
        """A delivery report (on a producer thread)."""
        partition, offset = record.partition(), record.offset()
        if error is None and (partition is None or offset is None):
            error = KafkaError(KafkaError._FAIL, "the delivery report lacks partition or offset")
        outcome = self._failure(error, record) if error is not None else (partition or 0, offset or 0)
        with self._lock:
            self._results[index] = outcome
            self._left -= 1
            last = self._left == 0
        if last:
            with contextlib.suppress(RuntimeError):  # the loop is gone; nobody waits for this publish
                self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if not self.future.done():
            self.future.set_result(self._results)


#: A placeholder until a message's report arrives (never returned: the batch
#: settles only when every report is in).
_NO_REPORT: tuple[int, int] = (-1, -1)


def _traits(settings: KafkaSettings) -> QueueTraits:
    """Durable: a publish returns after every in-sync replica has the message
    (``acks=all`` with idempotence). Messages up to ``max_message_bytes``;
    records may be ``RECORD_HEADROOM`` larger, for framing and dead-letter headers."""
    return QueueTraits(durability="durable", max_message_bytes=int(settings.max_message_bytes))


QUEUE = QueueBackendType(
    settings_type=KafkaSettings,
    create=KafkaQueue,
    # Not queue.delay: Kafka cannot hold one message back without holding back
    # its whole partition.
    capabilities=frozenset({capabilities.QUEUE_ORDERED_BY_KEY}),
    traits=_traits,
    description="Queue on Apache Kafka: consumer groups, at-least-once, durable with acks=all",
)
