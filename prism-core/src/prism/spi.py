"""The storage SPI: what a backend implements for each abstraction.

The core does every cross-cutting part once (validation and limits, chunking,
pagination and page tokens, TTL filtering, idempotency, default TTLs). A backend
only stores rows and answers the few questions below, atomically where the
docstrings say so. The conformance suite (``prism-conformance``) proves a backend
against these promises through the public API.

KeyValue rows
-------------
A KeyValue row is a :class:`StoredItem`. Besides key and value it carries:

* a *version*: ``(version_us, version_nonce)``, taken from the write's idempotency
  token. A backend keeps, per ``(namespace, record, key)``, only the row with the
  greatest version; writing a row whose version is equal to or older than the
  stored one changes nothing. This is last-write-wins, and it must be decided by
  the datastore atomically (a conditional write, a script, ``USING TIMESTAMP``),
  never by a read followed by a write.
* ``expires_at_us``: when the row expires. The core never returns an expired row,
  so a backend without native TTL may keep expired rows until the core purges
  them with :meth:`KeyValueBackend.remove`.
* ``tombstone``: a delete is stored as a tombstone row with the delete's version,
  so that an older write arriving late cannot resurrect the item. Tombstones
  expire like any row (the core gives them an expiry).
* ``chunk_count``/``chunk_set``: for a value above the backend's ``max_item_bytes``
  the core first writes the value's chunks under a fresh ``chunk_set`` id, then
  writes the row that points at them. Until that row wins, no reader can reach the
  chunks, so readers see the whole value at once or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from prism.config import NamespaceConfig

Durability = Literal["ephemeral", "durable"]
Consistency = Literal["eventual", "read_your_writes", "strong"]

#: Consistency levels from weakest to strongest; a backend meets every level up
#: to the one it declares.
CONSISTENCY_ORDER: tuple[Consistency, ...] = ("eventual", "read_your_writes", "strong")
DURABILITY_ORDER: tuple[Durability, ...] = ("ephemeral", "durable")


@attrs.frozen(order=True)
class Version:
    """A write's version: the idempotency token's time, then its nonce."""

    micros: int
    nonce: str


@attrs.frozen
class StoredItem:
    """One KeyValue row as a backend stores it. See the module docstring."""

    key: bytes
    value: bytes
    version: Version
    expires_at_us: int | None = None
    tombstone: bool = False
    chunk_count: int = 0
    chunk_set: str = ""
    value_size: int = 0
    """The size of the whole value; for a chunked row, the sum of its chunks."""

    def expired(self, now_us: int) -> bool:
        return self.expires_at_us is not None and self.expires_at_us <= now_us


@attrs.frozen
class ReadQuery:
    """Which rows of one record :meth:`KeyValueBackend.read` returns.

    Rows are returned in ascending key order (bytewise, unsigned), tombstones and
    expired rows included, at most ``limit`` of them, and only rows whose key is:

    * in ``keys``, when ``keys`` is not None;
    * ``>= start`` when ``start`` is not None, and ``< end`` when ``end`` is not None;
    * ``> after`` when ``after`` is not None (the pagination cursor).
    """

    limit: int
    keys: tuple[bytes, ...] | None = None
    start: bytes | None = None
    end: bytes | None = None
    after: bytes | None = None

    def matches(self, key: bytes) -> bool:
        """Whether ``key`` is selected; backends may use it to filter in memory."""
        if self.keys is not None and key not in self.keys:
            return False
        if self.start is not None and key < self.start:
            return False
        if self.end is not None and key >= self.end:
            return False
        return not (self.after is not None and key <= self.after)


@runtime_checkable
class KeyValueBackend(Protocol):
    """The KeyValue storage SPI. One instance serves every namespace planned onto
    one configured backend; ``namespace`` arguments are already validated names."""

    async def start(self) -> None:
        """Connect. Called once before any other method."""

    async def provision(self, namespace: str) -> None:
        """Create what ``namespace`` needs (tables, keyspaces). Idempotent; called
        before the namespace's first operation in each process."""

    async def write(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        """Store each row unless the stored row for its key has an equal or newer
        version. Each row's decision is atomic. With ``atomic=True`` (only asked of
        backends declaring ``kv.atomic_mutate``) all the rows are applied in one
        transaction: a reader sees all of them or none.

        Returns the previously stored rows that this call replaced and that had
        chunks (``chunk_count > 0``), so that the core can delete chunk sets no
        row points at any more. A backend that cannot tell atomically may read
        before it writes: a race then only leaves an unreferenced chunk set
        behind, never a wrong value."""

    async def read(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        """The rows ``query`` selects, in key order. See :class:`ReadQuery`."""

    async def remove(self, namespace: str, record_id: str, rows: Sequence[tuple[bytes, Version]]) -> None:
        """Physically delete each ``(key, version)`` row, only if the stored row
        still has exactly that version. The core purges expired rows this way."""

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` ids of records that have rows, in ascending order
        (by UTF-8 bytes), each ``> after`` when ``after`` is given. Only called on
        backends declaring ``kv.scan``."""

    async def write_chunks(
        self,
        namespace: str,
        record_id: str,
        key: bytes,
        chunk_set: str,
        chunks: Sequence[bytes],
        expires_at_us: int | None,
    ) -> None:
        """Store the chunks of one large value under ``chunk_set``, numbered from 0."""

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, chunk_set: str, count: int
    ) -> list[bytes]:
        """Chunks ``0..count-1`` of ``chunk_set`` in order. If some are gone, return
        only the unbroken run from chunk 0 (possibly none), never chunks with a gap;
        the core takes a short answer as a sign that the row changed."""

    async def delete_chunks(self, namespace: str, record_id: str, key: bytes, chunk_set: str) -> None:
        """Delete every chunk of ``chunk_set``. Deleting a missing set is not an error."""

    async def close(self) -> None:
        """Release connections. No other method is called afterwards."""


@attrs.frozen
class KeyValueTraits:
    """What one configured KeyValue backend offers; the planner matches namespace
    needs against it. A backend type computes it from its settings."""

    durability: Durability
    consistency: Consistency
    max_item_bytes: int
    """The largest value stored in one row. The core chunks larger values."""
    max_value_bytes: int
    """The largest value a namespace on this backend may hold, chunks included."""
    max_ttl: timedelta | None = None
    """The longest TTL the backend can keep, or None for no limit."""
    max_key_bytes: int | None = None
    """The longest item key or record id the backend can store, or None for no
    limit. A namespace's ``limits.max_key_bytes`` is capped by it, so an
    oversized key is refused up front with ``LimitExceeded``."""
    durability_note: str = ""
    """Why the backend has this durability, in a few words an operator can act on
    (e.g. what server setting would make it durable). A refused plan shows it."""


@attrs.frozen
class KeyValueBackendType:
    """A KeyValue backend as a plugin registers it.

    ``settings_type`` is an attrs class; the backend's settings in ``prism.yaml``
    are structured into it, and unknown keys are errors. ``create`` builds an
    unstarted backend from the configured name and the settings. ``traits`` tells
    the planner what a backend with those settings offers.
    """

    settings_type: type[Any]
    create: Callable[[str, Any], KeyValueBackend]
    capabilities: frozenset[str]
    traits: Callable[[Any], KeyValueTraits]
    description: str = ""


# -- Queue --------------------------------------------------------------------------
#
# Queue rows
# ----------
# A topic is an append-only log of :class:`StoredMessage`. A *group* reads the
# whole log on its own (fan-out); the consumers of one group share it. For each
# (topic, group, message) a backend keeps how often the message was delivered
# (the attempt count), whether it is acknowledged, and, while it is in flight,
# which consumer holds it and until when (its *lease*). A lease that ran out, or
# that its consumer released, makes the message deliverable again.
#
# The core does the rest once for every backend: validation and limits, moving a
# message to the dead-letter topic after ``max_attempts`` (see
# :class:`QueueBackend.receive`), ``nack(requeue=False)``, and capping ``wait``.
# This maps onto the datastores as follows:
#
# * Redis Streams: XADD (ids are stream ids), XREADGROUP with BLOCK for
#   ``receive``, XACK, XPENDING/XAUTOCLAIM for leases that ran out (the delivery
#   counter is the attempt), XCLAIM to release a consumer's entries.
# * Kafka: a group maps to a consumer group; ids encode partition and offset;
#   leases are kept by the consuming process and commits only advance over
#   contiguously acknowledged offsets.
# * SQLite: a messages table and a deliveries table keyed by (topic, group, id)
#   holding attempt, acked and lease columns, updated in one transaction.


@attrs.frozen
class OutgoingMessage:
    """A message as the core hands it to :meth:`QueueBackend.publish`."""

    key: bytes
    payload: bytes
    headers: tuple[tuple[str, bytes], ...]
    deliver_at_us: int | None = None
    """Not deliverable before this time (only with ``queue.delay``)."""


@attrs.frozen
class StoredMessage:
    """A published message as a backend returns it."""

    id: str
    key: bytes
    payload: bytes
    headers: tuple[tuple[str, bytes], ...]
    published_at_us: int
    deliver_at_us: int | None = None


@attrs.frozen
class Lease:
    """One delivery of one message to one consumer of a group.

    ``attempt`` counts every delivery of this message to this group, this one
    included, so the first delivery has attempt 1."""

    message: StoredMessage
    attempt: int


@attrs.frozen
class ReceiveRequest:
    """What :meth:`QueueBackend.receive` is asked for."""

    topic: str
    group: str
    consumer: str
    """Who holds the leases; :meth:`QueueBackend.release_consumer` frees them."""
    max_messages: int
    visibility_us: int
    """How long a lease lasts before the message is deliverable again."""
    wait_s: float
    """How long to block for the first deliverable message; 0 means do not block."""


@runtime_checkable
class QueueBackend(Protocol):
    """The Queue storage SPI. One instance serves every namespace planned onto one
    configured backend; ``namespace``, ``topic`` and ``group`` are already
    validated names. An id that was never delivered to a group is *unknown* to
    it; once delivered it stays known, so a backend may check ids and then act
    on them without a race."""

    async def start(self) -> None:
        """Connect. Called once before any other method."""

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        """Get ready for ``namespace``. Idempotent; called before the namespace's
        first operation in each process. Topics and groups are created on first
        use; a backend that sizes what it creates (Kafka partitions and
        replication) reads the namespace's needs and ``queue:`` block from
        ``config`` and keeps what it needs for later."""

    async def publish(self, namespace: str, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Append ``messages`` in order and return their ids, in the same order,
        only once they are durable at the backend's durability level. Ids are
        unique within the topic and never reused."""

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        """Lease up to ``max_messages`` deliverable messages to ``consumer``.

        A message is deliverable to a group when the group has not acknowledged
        it, no live lease holds it, and its ``deliver_at_us`` has passed. Each
        lease counts the attempt up. Messages come in publish order. With
        ``queue.ordered_by_key``: while a non-empty key has a live lease in the
        group, no later message with that key is leased (so one call returns at
        most one message per key). A group created by its first ``receive``
        starts at the beginning of the topic.

        Blocks up to ``wait_s`` until at least one message is deliverable, and
        must wake on publish (and on release) rather than poll at a fixed rate.
        The core moves leases whose attempt is above the namespace's
        ``max_attempts`` to the dead-letter topic and acknowledges them."""

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        """Acknowledge ``ids`` for ``group``: never deliver them to it again.
        Acknowledging twice is not an error. Returns the ids unknown to the
        group; if there are any, nothing is acknowledged."""

    async def release(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        """End the leases on ``ids`` so they are deliverable again now.
        Acknowledged ids are left alone. Returns the unknown ids; if there are
        any, nothing is released."""

    async def release_consumer(self, namespace: str, topic: str, group: str, consumer: str) -> None:
        """End every lease ``consumer`` holds in ``group`` (its consumer closed)."""

    async def lookup(
        self, namespace: str, topic: str, group: str, ids: Sequence[str]
    ) -> dict[str, StoredMessage | None]:
        """For each id known to ``group``: the message, or None if the group
        has acknowledged it. Unknown ids are left out. The core uses it to
        dead-letter on ``nack(requeue=False)``."""

    async def close(self) -> None:
        """Release connections. No other method is called afterwards."""


@attrs.frozen
class QueueTraits:
    """What one configured Queue backend offers; the planner matches needs against it."""

    durability: Durability
    max_message_bytes: int
    """The largest message (key, payload and headers) the backend can store."""
    durability_note: str = ""
    """Why the backend has this durability, in a few words an operator can act on
    (e.g. what server setting would make it durable). A refused plan shows it."""


@attrs.frozen
class QueueBackendType:
    """A Queue backend as a plugin registers it; see :class:`KeyValueBackendType`.

    A plugin that registers both abstractions under one name uses the same
    ``settings_type`` for both, since one ``backends:`` entry configures both."""

    settings_type: type[Any]
    create: Callable[[str, Any], QueueBackend]
    capabilities: frozenset[str]
    traits: Callable[[Any], QueueTraits]
    description: str = ""


# -- TimeSeries ---------------------------------------------------------------------
#
# TimeSeries rows
# ---------------
# A series is a set of :class:`StoredEvent` identified by ``(time_us, event_id)``
# and ordered by it: by time, then by id (so events at the same microsecond come
# back in a stable order). The core does every cross-cutting part once:
# validation and limits, the retention cut-off (it never asks for, and never
# returns, an event older than the namespace's retention), the future-skew
# check, pagination and signed page tokens, and purging old events on backends
# without native retention. Backends that partition a series by time (Cassandra,
# DynamoDB) read ``timeseries.bucket`` from the namespace's config at
# ``provision`` and keep it; a read may then span many buckets, which the
# backend walks in order until it has ``limit`` events.


@attrs.frozen
class StoredEvent:
    """One event as a backend stores it."""

    time_us: int
    event_id: str
    payload: bytes
    tags: tuple[tuple[str, str], ...]
    """Sorted by name."""
    expires_at_us: int
    """``time_us`` plus the namespace's retention: when the event may be dropped.
    A backend with ``timeseries.native_retention`` expires it natively then."""

    @property
    def position(self) -> tuple[int, str]:
        return (self.time_us, self.event_id)


@attrs.frozen
class EventQuery:
    """Which events of one series :meth:`TimeSeriesBackend.read` returns."""

    start_us: int
    """Inclusive."""
    end_us: int
    """Exclusive. ``start_us < end_us`` always holds."""
    descending: bool
    """False: by ``(time_us, event_id)`` ascending; True: descending."""
    limit: int
    """At most this many events."""
    after: tuple[int, str] | None = None
    """Resume strictly after this position in the read's order (a page token's
    cursor); None to start at the beginning of the range in that order."""

    def matches(self, position: tuple[int, str]) -> bool:
        """Whether an event at ``position`` belongs to this read (the reference
        semantics, for backends that filter in Python)."""
        time_us = position[0]
        if not self.start_us <= time_us < self.end_us:
            return False
        if self.after is None:
            return True
        return position < self.after if self.descending else position > self.after


@runtime_checkable
class TimeSeriesBackend(Protocol):
    """The TimeSeries storage SPI. One instance serves every namespace planned
    onto one configured backend; ``namespace`` and ``series`` are validated."""

    async def start(self) -> None:
        """Connect. Called once before any other method."""

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        """Get ready for ``namespace`` (tables, and for bucketed backends the
        ``timeseries.bucket`` to use). Idempotent; called before the namespace's
        first operation in each process. A backend that cannot serve the
        namespace as configured (e.g. its bucket changed after events were
        written) raises :class:`prism.errors.InvalidArgument` saying what to do."""

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        """Store ``events`` (at most one per position). An event whose position is
        already stored replaces it: the later write wins. ``write_us`` is the
        core's clock for this write, increasing within a process; a backend whose
        datastore orders writes by a timestamp (Cassandra ``USING TIMESTAMP``)
        uses it, so that of two writes of one position the later call wins.
        When this returns, every event is durable at the backend's durability
        level and visible to reads."""

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        """Up to ``query.limit`` events of ``series`` matching ``query``, in its
        order. Events past their ``expires_at_us`` may be included; the core
        filters them."""

    async def purge(self, namespace: str, before_us: int, series: str | None = None) -> None:
        """Delete events whose ``time_us`` is before ``before_us``: in ``series``,
        or in every series of the namespace when ``series`` is None. The core
        calls it for backends without ``timeseries.native_retention``; a backend
        with it may do nothing. A whole-namespace purge may be slow; it is
        called rarely."""

    async def close(self) -> None:
        """Release connections. No other method is called afterwards."""


@attrs.frozen
class TimeSeriesTraits:
    """What one configured TimeSeries backend offers."""

    durability: Durability
    max_event_bytes: int
    """The largest event (payload, tags and id together) the backend can store.
    A namespace's ``timeseries.max_payload_bytes`` is capped below it."""
    max_retention: timedelta | None = None
    """The longest retention the backend can keep, or None for no limit."""
    durability_note: str = ""


@attrs.frozen
class TimeSeriesBackendType:
    """A TimeSeries backend as a plugin registers it; see :class:`KeyValueBackendType`."""

    settings_type: type[Any]
    create: Callable[[str, Any], TimeSeriesBackend]
    capabilities: frozenset[str]
    traits: Callable[[Any], TimeSeriesTraits]
    description: str = ""


# -- Counter ------------------------------------------------------------------------
#
# A counter is a signed 64-bit integer, 0 until first added to. The core
# validates names, deltas and tokens and picks the mode from the namespace's
# ``counter.mode``; the backend does the arithmetic atomically.
#
# ``best_effort``: ``token`` is None. One native atomic increment per add; a
# retried add counts twice, and that is the documented price.
#
# ``exact``: every add and clear carries a :class:`CounterToken`. An operation
# whose token the backend already applied to that counter changes nothing, also
# when the replay races the first call. The core refuses tokens older than
# ``counter.token_window``. A token the core accepted just inside the window may
# reach the backend a little later, so a backend must remember a token for the
# window plus a margin for that delay and for clock skew between gateways
# (twice the window, or the window plus a minute) after its
# ``generation_time_us``, and may forget it afterwards. Anything a backend
# treats as final (a rollup) must be older than that.
# A clear is ordered against concurrent adds: each add either happened before
# it (and is erased) or after it (and is kept), never partly.


@attrs.frozen(order=True)
class CounterToken:
    """An exact-mode operation's identity: the idempotency token's generation
    time and nonce."""

    generation_time_us: int
    nonce: str


class CounterOverflow(Exception):
    """The add would take the counter outside the signed 64-bit range; nothing
    changed. Backends raise it; the core turns it into ``LimitExceeded``."""


#: The range a counter's value stays in.
COUNTER_MIN = -(2**63)
COUNTER_MAX = 2**63 - 1


@runtime_checkable
class CounterBackend(Protocol):
    """The Counter storage SPI; ``namespace`` and ``counter`` are validated."""

    async def start(self) -> None:
        """Connect. Called once before any other method."""

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        """Get ready for ``namespace``, in the mode of its ``counter.mode``.
        Idempotent; called before the namespace's first operation in each process."""

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        """Add ``delta`` atomically and return the new value, or None where the
        datastore cannot return it cheaply. With a token already applied to
        this counter, change nothing and return the current value (or None).

        :raises CounterOverflow: the value would leave the 64-bit range.
        """

    async def get(self, namespace: str, counter: str) -> int:
        """The counter's value: 0 if it was never added to or was cleared."""

    async def clear(self, namespace: str, counter: str, token: CounterToken | None) -> None:
        """Set the counter to 0. With a token already applied to this counter,
        change nothing (adds since the first clear are kept)."""

    async def close(self) -> None:
        """Release connections. No other method is called afterwards."""


@attrs.frozen
class CounterTraits:
    """What one configured Counter backend offers."""

    durability: Durability
    durability_note: str = ""


@attrs.frozen
class CounterBackendType:
    """A Counter backend as a plugin registers it; see :class:`KeyValueBackendType`.
    Its ``capabilities`` say which ``counter.mode`` values it serves."""

    settings_type: type[Any]
    create: Callable[[str, Any], CounterBackend]
    capabilities: frozenset[str]
    traits: Callable[[Any], CounterTraits]
    description: str = ""
