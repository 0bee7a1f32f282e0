"""One group's reader in this process: a Kafka consumer on its own thread, and
the in-memory leases that Prism consumers of the group share.

Why a thread: a Kafka consumer object is not safe for concurrent use, and its
poll blocks. So one thread owns the consumer (polls, commits, pauses, resumes,
closes it) and hands fetched records to the event loop with
``call_soon_threadsafe``. Everything else (leases, attempts, acks) lives on the
event loop, where no method awaits between reading and changing state, exactly
as in the ``memory`` backend; the two sides share only a few counters and the
pending commits, under one lock.

Within the process, the Prism consumers of a group share the fetched records
through leases, as :mod:`prism.backends.memory_queue` does. Across processes,
Kafka's partition assignment splits the work: each process sees only the
records of the partitions assigned to it.

Commits move only over the contiguous acknowledged prefix of each partition
(acks beyond a gap, and the delivery counts of messages in flight, ride along
in the commit metadata, see :mod:`prism_kafka.offsets`), so a crash never
skips an unacknowledged message. The thread commits synchronously and tells
the event loop when each commit is done: an ack returns, and a consume hands
out its deliveries, only once Kafka holds what they changed, so an acked
message never returns and attempts keep counting after a crash. When a
partition is revoked, what is contiguously acked is committed first and the
partition's in-memory state is dropped: its unacknowledged messages go to the
new owner (at least once).

Latency of the thread's loop: each turn sends the queued commits, then waits
in ``poll`` for the first record and drains what else is buffered without
waiting (``consume`` with a zero timeout), so a fetched record is handed over
as soon as it arrives. The event loop cannot interrupt that wait (the consumer
is the thread's alone, and the client has no wake-up call), so a commit queued
meanwhile goes out when the wait ends. How long the thread waits is chosen per
turn: right after it handed over records or sent commits, more commits are
likely to follow at once (a consume commits the delivery counts of what it
takes, an ack the offsets), so for ``_HURRY_S`` after that it waits only
``_POLL_BUSY_S`` per turn; when commits are still queued it does not wait at
all; otherwise (idle) it waits ``_POLL_S``, so an idle reader wakes up only a
few dozen times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from prism.log import get_logger
from prism.models import now_micros
from prism.spi import Lease, ReceiveRequest, StoredMessage
from prism_kafka.offsets import decode_progress, encode_progress, message_id

_log = get_logger(__name__)

#: How long one ``poll`` of an idle reader thread blocks when no record
#: arrives. It returns at once when a record does; the bound sets how soon an
#: idle thread notices commits to send (an ack waits for its commit) and a
#: request to stop. A poll only waits on librdkafka's local queue (fetching
#: runs on librdkafka's own threads), so a short bound costs no broker requests.
_POLL_S = 0.02

#: The bound instead while the thread is in a hurry (see ``_HURRY_S``): a commit
#: queued during the wait goes out within this, at the price of a wake-up per
#: turn (1-2% of a core, measured) for as long as the hurry lasts.
_POLL_BUSY_S = 0.001

#: How long after handing over records or sending commits the thread stays in
#: a hurry: a consume commits the delivery counts as soon as the records reach
#: it, and an ack soon after. Under steady traffic the hurry never ends; an
#: idle reader is back to ``_POLL_S`` this long after its last record or commit.
_HURRY_S = 0.5

#: How long the thread waits before sending a failed commit again.
_COMMIT_RETRY_S = 0.5

#: Records taken from the consumer per call.
_FETCH_BATCH = 500


@attrs.define
class _Lease:
    consumer: str
    expires_at_us: int


@attrs.define
class _Entry:
    offset: int
    message: StoredMessage
    attempts: int = 0
    acked: bool = False
    lease: _Lease | None = None


@attrs.define
class _Commit:
    """A commit to send for one partition, and the acks waiting for it."""

    offset: int
    metadata: str
    waiters: list[asyncio.Future[None]] = attrs.Factory(list)


@attrs.define
class _Partition:
    floor: int | None
    """Every offset below is acknowledged (committed or about to be); None until
    known (the first fetched record sets it then)."""
    fetched_end: int
    """The next offset the consumer will hand over."""
    target_end: int
    """The end of the log when the partition was assigned: until the consumer
    fetched that far, an empty answer may be wrong (see ``caught_up``)."""
    acked_ahead: set[int] = attrs.Factory(set)
    """Offsets acked out of order by an earlier owner (from commit metadata)
    that have not been fetched yet."""
    attempts_ahead: dict[int, int] = attrs.Factory(dict)
    """Delivery counts an earlier owner recorded (commit metadata) for
    offsets not fetched yet."""
    entries: dict[int, _Entry] = attrs.Factory(dict)
    """Fetched records not yet committed, in offset order."""
    delivered_high: int = -1


class Located:
    """Where an id stands for this reader (see :meth:`GroupReader.locate`)."""

    ACKED = "acked"
    """Acknowledged already, or in a partition this process gave up (a no-op)."""


class GroupReader:
    """The reader of one (namespace, topic, group) in this process."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        kafka_topic: str,
        consumer_config: dict[str, Any],
        max_buffered: int,
        published_high: dict[int, int],
        describe: str,
        operation_timeout_s: float,
    ) -> None:
        self.kafka_topic = kafka_topic
        self.describe = describe
        self._loop = loop
        self._config = dict(consumer_config)
        self._max_buffered = max_buffered
        self._published_high = published_high
        self._timeout_s = operation_timeout_s
        # Event-loop side.
        self.partitions: dict[int, _Partition] = {}
        self.forgotten: dict[int, int] = {}
        """Partitions given up: the highest offset this process delivered in each."""
        self.assigned_once = False
        self.failure: str | None = None
        self._changed: asyncio.Event | None = None
        # Shared with the thread, under the lock.
        self._lock = threading.Lock()
        self._owned: set[int] = set()
        self._pending_commits: dict[int, _Commit] = {}
        self._buffered = 0
        self._paused = False
        self._stop = threading.Event()
        self._retry_at = 0.0
        """Thread only: no commit is sent before this (monotonic) time after a failure."""
        self._hurry_until = 0.0
        """Thread only: until this (monotonic) time, poll with ``_POLL_BUSY_S``."""
        self._thread = threading.Thread(target=self._run, name=f"prism-kafka {describe}", daemon=True)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    async def close(self) -> None:
        """Stop the thread: it commits what is contiguously acked and closes the
        consumer, which leaves the group so its partitions move at once."""
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        with self._lock:
            left, self._pending_commits = self._pending_commits, {}
        for commit in left.values():
            _settle_all(commit.waiters, "the reader closed before the commit was sent")
        self._wake()

    # -- the thread -----------------------------------------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed; nobody is listening
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        try:
            consumer = Consumer(self._config)
        except KafkaException as exc:
            self._post(self._fail, f"creating the consumer failed: {exc}")
            return
        try:
            consumer.subscribe(
                [self.kafka_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            while not self._stop.is_set():
                self._send_commits(consumer)
                self._flow_control(consumer)
                self._fetch(consumer, self._poll_timeout())
            self._send_commits(consumer)
        except Exception as exc:  # the thread must report, never die silently
            _log.error("kafka reader failed", reader=self.describe, error=str(exc))
            self._post(self._fail, f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                consumer.close()

    def _poll_timeout(self) -> float:
        """How long this turn may wait for a record (see the module docstring)."""
        now = time.monotonic()
        with self._lock:
            pending = bool(self._pending_commits)
        if pending and now >= self._retry_at:
            return 0.0
        return _POLL_BUSY_S if now < self._hurry_until else _POLL_S

    def _fetch(self, consumer: Consumer, timeout: float) -> None:
        """Wait up to ``timeout`` for the first record (or event), then take
        what else the consumer holds already, without waiting for more."""
        first = consumer.poll(timeout)
        if first is None:
            return
        batch = [first, *consumer.consume(num_messages=_FETCH_BATCH - 1, timeout=0)]
        records: list[tuple[int, int, StoredMessage]] = []
        ends: dict[int, int] = {}
        for record in batch:
            error = record.error()
            partition, offset = record.partition(), record.offset()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF and partition is not None and offset is not None:
                    ends[partition] = offset
                elif error.fatal():
                    raise KafkaException(error)
                else:
                    _log.warning("kafka consumer error", reader=self.describe, error=error.str())
                continue
            if partition is None or offset is None:
                continue
            records.append((partition, offset, _stored(record, partition, offset)))
        if records or ends:
            with self._lock:
                self._buffered += len(records)
            self._post(self._on_records, records, ends)
            if records:
                # A consume waiting for these commits their delivery counts next.
                self._hurry_until = time.monotonic() + _HURRY_S

    def _flow_control(self, consumer: Consumer) -> None:
        """Pause every assigned partition while the group holds too many
        uncommitted records in memory; resume once acks freed half."""
        with self._lock:
            over = self._buffered >= self._max_buffered
            resume = self._paused and self._buffered <= self._max_buffered // 2
            if over:
                self._paused = True
            elif resume:
                self._paused = False
        if over:
            consumer.pause(consumer.assignment())
        elif resume:
            consumer.resume(consumer.assignment())

    def _send_commits(self, consumer: Consumer) -> None:
        """Commit what the event loop queued, synchronously, and tell the acks
        waiting for it. A failed commit stays queued (merged with any newer one)
        and is sent again on the next turn; its waiters learn of the failure."""
        if time.monotonic() < self._retry_at and not self._stop.is_set():
            return
        with self._lock:
            commits, self._pending_commits = self._pending_commits, {}
        if not commits:
            return
        offsets = [TopicPartition(self.kafka_topic, p, c.offset, c.metadata) for p, c in commits.items()]
        failed: dict[int, str] = {}
        try:
            for tp in consumer.commit(offsets=offsets, asynchronous=False):
                if tp.error is not None:
                    failed[tp.partition] = str(tp.error)
        except KafkaException as exc:
            failed = dict.fromkeys(commits, str(exc))
        if len(failed) < len(commits):
            # A consume that waited for this commit returns now, and its ack follows.
            self._hurry_until = time.monotonic() + _HURRY_S
        for partition, commit in commits.items():
            error = failed.get(partition)
            self._post(_settle_all, commit.waiters, error)
            if error is None:
                continue
            _log.warning("kafka commit failed; retrying", reader=self.describe, error=error)
            self._retry_at = time.monotonic() + _COMMIT_RETRY_S
            with self._lock:
                if partition in self._owned and partition not in self._pending_commits:
                    self._pending_commits[partition] = _Commit(commit.offset, commit.metadata)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Learn, for each new partition, where the group stands (committed
        offset and metadata) and where the log ends, before any record of it
        reaches the event loop."""
        infos: list[tuple[int, int | None, int, set[int], dict[int, int]]] = []
        committed: dict[int, TopicPartition] = {}
        if partitions:
            try:
                for tp in consumer.committed(partitions, timeout=self._timeout_s):
                    committed[tp.partition] = tp
            except KafkaException as exc:
                _log.warning("kafka committed offsets unavailable", reader=self.describe, error=str(exc))
        for tp in partitions:
            high = 0
            low: int | None = None
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.kafka_topic, tp.partition), timeout=self._timeout_s, cached=False
                )
            except KafkaException as exc:
                _log.warning("kafka watermarks unavailable", reader=self.describe, error=str(exc))
            known = committed.get(tp.partition)
            start: int | None = low
            acked: set[int] = set()
            attempts: dict[int, int] = {}
            if known is not None and known.offset >= 0:
                start = known.offset
                acked, attempts = decode_progress(known.offset, known.metadata)
            infos.append((tp.partition, start, high, acked, attempts))
        with self._lock:
            self._owned.update(tp.partition for tp in partitions)
        self._post(self._on_assigned, infos)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        with self._lock:
            self._owned -= gone
            commits = {p: self._pending_commits.pop(p) for p in gone if p in self._pending_commits}
        error: str | None = None
        if commits:
            offsets = [TopicPartition(self.kafka_topic, p, c.offset, c.metadata) for p, c in commits.items()]
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                error = str(exc)
                _log.warning("kafka commit on revoke failed", reader=self.describe, error=error)
        for commit in commits.values():
            self._post(_settle_all, commit.waiters, error)
        self._post(self._on_revoked, gone)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member owns them already: committing now could move its offsets back.
        gone = {tp.partition for tp in partitions}
        with self._lock:
            self._owned -= gone
            dropped = [self._pending_commits.pop(p) for p in gone if p in self._pending_commits]
        for commit in dropped:
            # The acks stand in this process's memory only; the new owner delivers them again.
            self._post(_settle_all, commit.waiters, None)
        self._post(self._on_revoked, gone)

    # -- event-loop side: what the thread posts --------------------------------------

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self._wake()

    def _on_assigned(self, infos: list[tuple[int, int | None, int, set[int], dict[int, int]]]) -> None:
        for partition, start, high, acked, attempts in infos:
            self.forgotten.pop(partition, None)
            self.partitions[partition] = _Partition(
                floor=start,
                fetched_end=start or 0,
                target_end=high,
                acked_ahead=acked,
                attempts_ahead=attempts,
            )
        self.assigned_once = True
        self._wake()

    def _on_records(self, records: list[tuple[int, int, StoredMessage]], ends: dict[int, int]) -> None:
        dropped = 0
        touched: set[int] = set()
        for partition, offset, message in records:
            state = self.partitions.get(partition)
            if state is None or offset < state.fetched_end or offset in state.entries:
                # Revoked meanwhile, or fetched under an earlier assignment of
                # the partition and already handed over (or committed) since.
                dropped += 1
                continue
            if state.floor is None:
                state.floor = offset
            # Delivered before by an earlier owner: attempts count on from there.
            entry = _Entry(offset, message, attempts=state.attempts_ahead.pop(offset, 0))
            if offset in state.acked_ahead:
                # Acked by an earlier owner: known, never delivered again.
                state.acked_ahead.discard(offset)
                entry.acked = True
                touched.add(partition)
            state.entries[offset] = entry
            state.fetched_end = max(state.fetched_end, offset + 1)
        for partition, end in ends.items():
            state = self.partitions.get(partition)
            if state is not None:
                state.fetched_end = max(state.fetched_end, end)
        if dropped:
            with self._lock:
                self._buffered -= dropped
        for partition in touched:
            self._advance(partition)
        self._wake()

    def _on_revoked(self, gone: set[int]) -> None:
        dropped = 0
        for partition in gone:
            state = self.partitions.pop(partition, None)
            if state is None:
                continue
            dropped += len(state.entries)
            self.forgotten[partition] = max(self.forgotten.get(partition, -1), state.delivered_high)
        with self._lock:
            self._buffered -= dropped
        self._wake()

    # -- event-loop side: what the backend calls --------------------------------------

    def caught_up(self) -> bool:
        """Whether every assigned partition is fetched up to the end of the log
        as it stood at assignment and as this process published it. Until then
        an empty answer might miss a message that is already there."""
        if self.failure is not None:
            return True
        if not self.assigned_once:
            return False
        with self._lock:
            if self._paused:
                return True
        for partition, state in self.partitions.items():
            target = max(state.target_end, self._published_high.get(partition, 0))
            if state.fetched_end < target:
                return False
        return True

    def _ordered(self) -> Iterator[_Entry]:
        """Unacked records of every partition, oldest first: partitions are
        merged by publish time, and each keeps its offset order."""
        streams = [(e for e in state.entries.values() if not e.acked) for state in self.partitions.values()]
        return heapq.merge(*streams, key=lambda e: e.message.published_at_us)

    def claim(self, request: ReceiveRequest, now: int) -> tuple[list[Lease], int | None]:
        """Lease what is deliverable now; also say when the next lease runs out.
        The same rules as the memory backend's ``_claim``. The new delivery
        counts are queued for commit (see :meth:`receive`)."""
        out: list[Lease] = []
        busy_keys: set[bytes] = set()
        next_due: int | None = None
        for entry in self._ordered():
            message = entry.message
            lease = entry.lease
            if lease is not None and lease.expires_at_us > now:
                next_due = lease.expires_at_us if next_due is None else min(next_due, lease.expires_at_us)
                if message.key:
                    busy_keys.add(message.key)
                continue
            if message.key and message.key in busy_keys:
                continue
            if len(out) >= request.max_messages:
                break
            entry.attempts += 1
            entry.lease = _Lease(request.consumer, now + request.visibility_us)
            if message.key:
                busy_keys.add(message.key)
            state = self.partitions[_partition_of(message)]
            state.delivered_high = max(state.delivered_high, entry.offset)
            out.append(Lease(message, entry.attempts))
        return out, next_due

    def record_attempts(self, leases: Sequence[Lease]) -> list[asyncio.Future[None]]:
        """Queue commits carrying the delivery counts of ``leases``' partitions;
        the futures complete once Kafka holds them."""
        touched = {_partition_of(lease.message) for lease in leases}
        waiting = [self._advance(partition, wait=True) for partition in touched]
        return [future for future in waiting if future is not None]

    async def receive(self, request: ReceiveRequest, catch_up_s: float) -> list[Lease]:
        """Block up to ``wait_s`` for a deliverable message, woken by fetched
        records, acks and releases, otherwise only when a lease runs out. While
        the reader has not caught up (see :meth:`caught_up`), keep waiting up to
        ``catch_up_s`` even past ``wait_s``."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + request.wait_s
        catch_up_deadline = start + max(request.wait_s, catch_up_s)
        while True:
            if self.failure is not None:
                raise RuntimeError(self.failure)
            now = now_micros()
            leases, next_due = self.claim(request, now)
            if leases:
                # Attempts survive a crash only once committed: wait for that,
                # but a failed commit only weakens the count, so never fail here.
                waiting = self.record_attempts(leases)
                try:
                    await asyncio.wait_for(asyncio.gather(*waiting), self._timeout_s)
                except (TimeoutError, RuntimeError) as exc:
                    _log.warning("kafka attempts not committed", reader=self.describe, error=str(exc))
                return leases
            t = loop.time()
            caught_up = self.caught_up()
            end = deadline if caught_up else catch_up_deadline
            if t >= end:
                return []
            timeout = end - t
            if next_due is not None:
                timeout = min(timeout, max(0.0, (next_due - now) / 1_000_000))
            if self._changed is None:
                self._changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def locate(self, partition: int, offset: int) -> _Entry | str | None:
        """The in-memory entry of a delivered record; ``Located.ACKED`` for an
        offset this reader knows is acknowledged, or that lies in a partition
        this process gave up after delivering it; None when this reader cannot
        tell (the caller then asks the group's committed offsets)."""
        state = self.partitions.get(partition)
        if state is not None:
            entry = state.entries.get(offset)
            if entry is not None:
                return entry if entry.attempts > 0 or entry.acked else None
            if (state.floor is not None and offset < state.floor) or offset in state.acked_ahead:
                return Located.ACKED
            return None
        if offset <= self.forgotten.get(partition, -1):
            return Located.ACKED
        return None

    def ack(self, entries: Sequence[_Entry]) -> list[asyncio.Future[None]]:
        """Mark ``entries`` acked; returns futures that complete once Kafka has
        the commits recording them (an error message as the result's exception
        when a commit failed)."""
        touched: set[int] = set()
        for entry in entries:
            entry.acked = True
            entry.lease = None
            touched.add(_partition_of(entry.message))
        waiting = [self._advance(partition, wait=True) for partition in touched]
        # An ack frees a key, so a message waiting behind it may now be deliverable.
        self._wake()
        return [future for future in waiting if future is not None]

    def release(self, entries: Sequence[_Entry]) -> None:
        for entry in entries:
            entry.lease = None
        self._wake()

    def release_consumer(self, consumer: str) -> None:
        for state in self.partitions.values():
            for entry in state.entries.values():
                if entry.lease is not None and entry.lease.consumer == consumer:
                    entry.lease = None
        self._wake()

    def _advance(self, partition: int, *, wait: bool = False) -> asyncio.Future[None] | None:
        """Drop the acked prefix of a partition from memory and queue a commit
        of the offset after it, with the acks beyond the gap as metadata."""
        state = self.partitions.get(partition)
        if state is None or state.floor is None:
            return None
        popped = 0
        for offset in list(state.entries):
            if not state.entries[offset].acked:
                break
            del state.entries[offset]
            state.floor = offset + 1
            popped += 1
        floor = state.floor
        state.acked_ahead = {o for o in state.acked_ahead if o >= floor}
        ahead = [o for o, e in state.entries.items() if e.acked]
        attempts = {o: n for o, n in state.attempts_ahead.items() if o >= floor}
        attempts.update((o, e.attempts) for o, e in state.entries.items() if not e.acked and e.attempts)
        metadata = encode_progress(floor, [*ahead, *state.acked_ahead], attempts)
        future: asyncio.Future[None] | None = self._loop.create_future() if wait else None
        with self._lock:
            self._buffered -= popped
            if partition not in self._owned:
                # Revoked meanwhile: the new owner delivers these again.
                return None
            # A newer commit covers every ack an older one did: it takes over their waiters.
            previous = self._pending_commits.get(partition)
            waiters = previous.waiters if previous is not None else []
            if future is not None:
                waiters.append(future)
            self._pending_commits[partition] = _Commit(floor, metadata, waiters)
        return future


def _settle_all(waiters: list[asyncio.Future[None]], error: str | None) -> None:
    for future in waiters:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(RuntimeError(f"committing to Kafka failed: {error}"))


def _partition_of(message: StoredMessage) -> int:
    return int(message.id.partition("-")[0])


def _stored(record: Message, partition: int, offset: int) -> StoredMessage:
    raw = record.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = tuple((name, _header_bytes(value)) for name, value in pairs)
    _, timestamp_ms = record.timestamp()
    return StoredMessage(
        id=message_id(partition, offset),
        key=record.key() or b"",
        payload=record.value() or b"",
        headers=headers,
        published_at_us=max(timestamp_ms, 0) * 1000,
    )


def _header_bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode("utf-8") if isinstance(value, str) else value
