"""The ``kafka`` backend's settings, and the rules derived from them: topic
names, how many partitions a topic gets, and how large a record may be.

Kept apart from the backend so that the rules can be read (and tested) without
a broker.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import attrs

from prism.config import NamespaceConfig
from prism.errors import LimitExceeded
from prism.units import ByteSize

MiB = 1024 * 1024

#: Kafka refuses topic names longer than this.
KAFKA_TOPIC_NAME_LIMIT = 249

#: What a Kafka topic name may contain.
_KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]*")

#: Room a Kafka record needs beyond the key, payload and headers Prism counts:
#: the record batch header (61 bytes), per-record varints and per-header length
#: fields, and the five ``prism-dead-letter-*`` headers the core adds when it
#: moves a message to a dead-letter topic (topic and group names of up to 200
#: bytes each, the id, the reason and the attempt count: well under 1 KiB).
#: A message Prism accepted at exactly ``max_message_bytes`` must still fit,
#: after dead-lettering, into one record, so records may be this much larger.
RECORD_HEADROOM = 4096

#: The largest ``max_message_bytes`` allowed: librdkafka refuses requests above
#: ``receive.message.max.bytes`` (100 MB by default) anyway.
MAX_MESSAGE_BYTES_CEILING = 64 * MiB

#: Settings this backend sets itself; ``client_config`` may not override them,
#: because the delivery guarantees depend on them.
RESERVED_CLIENT_KEYS = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "message.max.bytes",
        "enable.partition.eof",
        "on_delivery",
        "error_cb",
        "logger",
    }
)


def _positive_duration(_: Any, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name}: expected a duration above zero, got {value}")


def _topic_prefix(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not _KAFKA_NAME.fullmatch(value):
        raise ValueError(
            f"{attribute.name}: {value!r} may hold only letters, digits, '.', '_' and '-', "
            "since it starts every Kafka topic and group name"
        )
    if len(value) > 100:
        raise ValueError(f"{attribute.name}: {value!r} is over 100 characters; Kafka topic names stop at 249")


def _client_config(_: Any, attribute: attrs.Attribute[Mapping[str, str]], value: Mapping[str, str]) -> None:
    reserved = sorted(RESERVED_CLIENT_KEYS & set(value))
    if reserved:
        raise ValueError(
            f"{attribute.name}: {', '.join(reserved)} are set by the kafka backend itself "
            "(its delivery guarantees depend on them); remove them"
        )


@attrs.frozen
class KafkaSettings:
    """The ``kafka`` backend's keys in ``prism.yaml``."""

    bootstrap_servers: str = attrs.field(default="127.0.0.1:9092", validator=attrs.validators.min_len(1))
    """Comma-separated ``host:port`` list of brokers to bootstrap from."""
    topic_prefix: str = attrs.field(default="prism.", validator=_topic_prefix)
    """Every Kafka topic and consumer group this backend uses is named
    ``<topic_prefix><namespace>.<topic>`` (groups: ``...<namespace>.<group>``);
    two Prism deployments sharing a cluster must use different prefixes."""
    partitions: int = attrs.field(default=3, validator=attrs.validators.gt(0))
    """The fewest partitions a new topic gets (see ``partition_write_rps``)."""
    partition_write_rps: int = attrs.field(default=1000, validator=attrs.validators.gt(0))
    """Messages per second one partition is planned for: a namespace needing
    ``write_rps`` gets ``max(partitions, ceil(write_rps / partition_write_rps))``."""
    replication_factor: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    """Copies of every partition. 1 suits a single test broker; use 3 in
    production, or a broker's loss loses data."""
    min_insync_replicas: int | None = attrs.field(default=None)
    """Copies that must have a message before it counts as published (topic
    ``min.insync.replicas``); None means ``min(2, replication_factor)``."""
    max_buffered_messages: int = attrs.field(default=10_000, validator=attrs.validators.gt(0))
    """Fetched, not yet committed messages one group may hold in this process;
    above it the group's partitions are paused until acks make room."""
    max_message_bytes: ByteSize = attrs.field(
        default=ByteSize(MiB),
        validator=[
            attrs.validators.gt(ByteSize(0)),
            attrs.validators.le(ByteSize(MAX_MESSAGE_BYTES_CEILING)),
        ],
    )
    """The largest message (key, payload, header names and values). Topics are
    created with ``max.message.bytes`` and the producer configured with
    ``message.max.bytes`` of this plus ``RECORD_HEADROOM``."""
    connect_timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive_duration)
    """How long start() waits for the brokers, and admin calls for an answer."""
    delivery_timeout: timedelta = attrs.field(default=timedelta(seconds=30), validator=_positive_duration)
    """How long a publish may take before it fails (``delivery.timeout.ms``)."""
    session_timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive_duration)
    """How long the group coordinator waits for a silent process before moving
    its partitions to other members (``session.timeout.ms``; the broker allows
    6s to 30s by default). Heartbeats go every tenth of it."""
    catch_up_timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive_duration)
    """How long a consume waits, even with ``wait=0``, for its group to join and
    fetch up to the end of the log as it was when the consume began, so that a
    message published before a consume is seen by it."""
    client_config: Mapping[str, str] = attrs.field(factory=dict, validator=_client_config)
    """Extra librdkafka properties passed to every client, for security
    (``security.protocol``, ``sasl.mechanism``, ``sasl.username``, ``ssl.ca.location``...)."""

    def __attrs_post_init__(self) -> None:
        isr = self.min_insync_replicas
        if isr is not None and not 1 <= isr <= self.replication_factor:
            raise ValueError(
                f"min_insync_replicas ({isr}) must be between 1 and replication_factor "
                f"({self.replication_factor})"
            )

    @property
    def effective_min_insync_replicas(self) -> int:
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return min(2, self.replication_factor)

    @property
    def record_limit(self) -> int:
        """The producer's ``message.max.bytes`` and each topic's ``max.message.bytes``."""
        return int(self.max_message_bytes) + RECORD_HEADROOM


def partitions_for(settings: KafkaSettings, config: NamespaceConfig | None) -> int:
    """How many partitions a new topic of a namespace gets: enough for the
    namespace's declared ``write_rps`` at ``partition_write_rps`` each, and never
    fewer than ``partitions``."""
    write_rps = config.needs.write_rps if config is not None else None
    if not write_rps:
        return settings.partitions
    return max(settings.partitions, math.ceil(write_rps / settings.partition_write_rps))


def _escape_topic(topic: str) -> str:
    """``topic`` without any ``_``: ``-`` becomes ``--`` and ``_`` becomes ``-u``.

    Kafka refuses a topic whose name equals an existing one's once ``.`` and
    ``_`` are taken as the same character (``orders.v2`` and ``orders_v2``
    collide: their metric names would). Prism topics may use both, so the
    Kafka names never contain ``_``; ``-`` is the escape, so the mapping is
    one to one and readable for the usual names."""
    return topic.replace("-", "--").replace("_", "-u")


def kafka_topic_name(settings: KafkaSettings, backend: str, namespace: str, topic: str) -> str:
    """``<topic_prefix><namespace>.<topic>`` with ``_`` spelled ``-`` in the
    namespace (which holds no ``-``) and ``-u`` in the topic (see
    :func:`_escape_topic`); refused when longer than Kafka allows."""
    name = f"{settings.topic_prefix}{namespace.replace('_', '-')}.{_escape_topic(topic)}"
    if len(name) > KAFKA_TOPIC_NAME_LIMIT:
        raise LimitExceeded(
            f"topic {topic!r} becomes Kafka topic {name[:60]!r}... of {len(name)} characters on backend "
            f"{backend!r}, over Kafka's limit of {KAFKA_TOPIC_NAME_LIMIT}; use a shorter topic name "
            "(dead-letter topics add the dead-letter suffix; '_' and '-' count twice), a shorter "
            "namespace, or a shorter topic_prefix",
            namespace=namespace,
            limit_name="kafka_topic_name",
            limit=KAFKA_TOPIC_NAME_LIMIT,
            actual=len(name),
            field="topic",
        )
    return name


def kafka_group_id(settings: KafkaSettings, namespace: str, group: str) -> str:
    """The Kafka consumer group of a Prism group: ``<topic_prefix><namespace>.<group>``."""
    return f"{settings.topic_prefix}{namespace}.{group}"
