"""The ``sqlite`` Queue backend: durable topics, groups and leases in one local file.

It shares the database file (and :class:`~prism_sqlite.connection.SqliteConnection`,
one worker thread and one connection per backend object) with the KeyValue
backend, in four tables of its own, created on first use:

* ``queue_messages``: the log, one row per ``(namespace, topic, seq)``. ``seq``
  counts from 0 per topic; the message id is ``seq`` zero-padded to 16 digits,
  so ids sort in publish order, as stream ids do.
* ``queue_groups``: one row per ``(namespace, topic, group)`` holding ``low``,
  the low-water mark: every message below it is acknowledged by the group, so
  ``receive`` starts its scan there instead of at the start of the topic.
* ``queue_deliveries``: one row per message delivered to a group, at or above
  ``low``: the attempt count, whether it is acknowledged, and the lease (the
  consumer and the time it runs out). Rows fall below ``low`` only once
  acknowledged and are then deleted: an id below ``low`` is known and
  acknowledged, so nothing is lost by forgetting the row.

Every call that changes state runs in one ``BEGIN IMMEDIATE`` transaction, which
takes the file's write lock up front. Checking ids, choosing messages and
writing leases therefore happen atomically even when several processes share
the file: two consumers never hold one message at once, and a process killed
mid-call leaves its transaction rolled back, never half applied. Leases and
delays use the wall clock (microseconds since the epoch), the one clock that
processes on one host share.

Waiting. ``receive`` blocks like the memory reference: in this process it
sleeps on an :class:`asyncio.Event` that publish, ack, release and
release_consumer set, and otherwise only until the next lease runs out or
delayed message falls due. SQLite cannot notify other processes, so while it
waits it also polls ``PRAGMA data_version``, which changes exactly when another
connection committed to the file. The check is one cheap read on the worker
thread; it starts 5 ms after a look found nothing and backs off by doubling to
at most 250 ms, so a message published by another process is seen within
about 250 ms of a long wait, and an idle consumer costs a handful of reads per
second. A look that finds nothing writes nothing, so idle consumers in several
processes do not wake one another.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import struct
from collections.abc import Iterable, Sequence

import attrs

from prism import capabilities
from prism.config import NamespaceConfig
from prism.errors import BackendError
from prism.models import now_micros
from prism.spi import Lease, OutgoingMessage, QueueBackendType, QueueTraits, ReceiveRequest, StoredMessage
from prism_sqlite.connection import SqliteConnection, SqliteSettings, is_memory_path

#: Digits of a message id: zero-padded so that ids sort in publish order.
ID_DIGITS = 16
_ID = re.compile(rf"[0-9]{{{ID_DIGITS}}}")

#: Builds before SQLite 3.32 allow only 999 bound parameters per statement.
_IDS_PER_STATEMENT = 500

#: Cross-process change checks while waiting: the first one this long after a
#: look found nothing, then twice as long each time, up to the maximum.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.25

_SCHEMA = (
    # A rowid table on purpose: payloads may be megabytes, and SQLite advises
    # against WITHOUT ROWID for rows that large.
    "CREATE TABLE IF NOT EXISTS queue_messages ("
    " namespace TEXT NOT NULL,"
    " topic TEXT NOT NULL,"
    " seq INTEGER NOT NULL,"
    " key BLOB NOT NULL,"
    " payload BLOB NOT NULL,"
    " headers BLOB NOT NULL,"
    " published_at_us INTEGER NOT NULL,"
    " deliver_at_us INTEGER,"
    " PRIMARY KEY (namespace, topic, seq)"
    ")",
    "CREATE TABLE IF NOT EXISTS queue_groups ("
    " namespace TEXT NOT NULL,"
    " topic TEXT NOT NULL,"
    " grp TEXT NOT NULL,"
    " low INTEGER NOT NULL,"
    " PRIMARY KEY (namespace, topic, grp)"
    ") WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS queue_deliveries ("
    " namespace TEXT NOT NULL,"
    " topic TEXT NOT NULL,"
    " grp TEXT NOT NULL,"
    " seq INTEGER NOT NULL,"
    " attempt INTEGER NOT NULL,"
    " acked INTEGER NOT NULL,"
    " consumer TEXT,"
    " lease_until_us INTEGER,"
    " PRIMARY KEY (namespace, topic, grp, seq)"
    ") WITHOUT ROWID",
    # release_consumer finds a consumer's leases without reading the group's rows.
    "CREATE INDEX IF NOT EXISTS queue_deliveries_by_consumer"
    " ON queue_deliveries (namespace, topic, grp, consumer) WHERE consumer IS NOT NULL",
)

_GROUP = "namespace = ? AND topic = ? AND grp = ?"

# Metadata only: payloads are read for the chosen messages alone.
_SCAN = (
    "SELECT m.seq, m.key, m.deliver_at_us, d.attempt, d.acked, d.lease_until_us"
    " FROM queue_messages AS m LEFT JOIN queue_deliveries AS d"
    " ON d.namespace = m.namespace AND d.topic = m.topic AND d.grp = ? AND d.seq = m.seq"
    " WHERE m.namespace = ? AND m.topic = ? AND m.seq >= ?"
    " ORDER BY m.seq"
)

_LEASE = (
    "INSERT INTO queue_deliveries (namespace, topic, grp, seq, attempt, acked, consumer, lease_until_us)"
    " VALUES (?, ?, ?, ?, ?, 0, ?, ?)"
    " ON CONFLICT (namespace, topic, grp, seq) DO UPDATE SET"
    " attempt = excluded.attempt, consumer = excluded.consumer, lease_until_us = excluded.lease_until_us"
)

_MESSAGE_COLUMNS = "seq, key, payload, headers, published_at_us, deliver_at_us"


def format_id(seq: int) -> str:
    """The id of the message at ``seq`` in its topic."""
    return f"{seq:0{ID_DIGITS}d}"


def parse_id(message_id: str) -> int | None:
    """The sequence number an id stands for, or None if it is not one of ours."""
    if not _ID.fullmatch(message_id):
        return None
    return int(message_id)


def _pack_headers(headers: Sequence[tuple[str, bytes]]) -> bytes:
    """Headers as one BLOB: a count, then length-prefixed names and values.
    Binary rather than JSON because values are arbitrary bytes."""
    parts = [struct.pack(">I", len(headers))]
    for name, value in headers:
        encoded = name.encode("utf-8")
        parts += [struct.pack(">II", len(encoded), len(value)), encoded, bytes(value)]
    return b"".join(parts)


def _unpack_headers(blob: bytes) -> tuple[tuple[str, bytes], ...]:
    view = memoryview(blob)
    (count,) = struct.unpack_from(">I", view, 0)
    at = 4
    out: list[tuple[str, bytes]] = []
    for _ in range(count):
        name_len, value_len = struct.unpack_from(">II", view, at)
        at += 8
        name = bytes(view[at : at + name_len]).decode("utf-8")
        at += name_len
        out.append((name, bytes(view[at : at + value_len])))
        at += value_len
    return tuple(out)


def _batches(values: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(values), _IDS_PER_STATEMENT):
        yield values[i : i + _IDS_PER_STATEMENT]


@attrs.define
class _Known:
    """What a group knows about some ids, read inside the call's transaction."""

    low: int
    seqs: dict[str, int]
    """Known id -> sequence number."""
    acked: set[int]
    unknown: list[str]


class SqliteQueue(SqliteConnection):
    """The Queue SPI on one SQLite database file, on its own connection (see
    :class:`~prism_sqlite.connection.SqliteConnection` for the threading)."""

    def __init__(self, name: str, settings: SqliteSettings) -> None:
        super().__init__(name, settings)
        self._schema_ready = False
        # Per (namespace, topic): set, and dropped, whenever messages may have
        # become deliverable; the next waiter makes a new one.
        self._changes: dict[tuple[str, str], asyncio.Event] = {}

    # -- waking waiters in this process ---------------------------------------------------

    def _changed(self, namespace: str, topic: str) -> asyncio.Event:
        """The event the next change of ``topic`` sets. Taken before looking, so
        a change made while the look runs on the worker thread is not missed."""
        return self._changes.setdefault((namespace, topic), asyncio.Event())

    def _wake(self, namespace: str, topic: str) -> None:
        changed = self._changes.pop((namespace, topic), None)
        if changed is not None:
            changed.set()

    # -- lifecycle ---------------------------------------------------------------------

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        # The tables hold every namespace, so there is nothing per namespace to
        # create. CREATE ... IF NOT EXISTS under the write lock makes concurrent
        # first use by several processes safe: the second one finds the tables.
        if self._schema_ready:
            return

        def create(conn: sqlite3.Connection) -> None:
            for statement in _SCHEMA:
                conn.execute(statement)

        await self._write(create)
        self._schema_ready = True

    async def close(self) -> None:
        for namespace, topic in list(self._changes):
            self._wake(namespace, topic)
        await super().close()

    # -- the SPI -------------------------------------------------------------------------

    async def publish(self, namespace: str, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        if not messages:
            return []
        rows = [(bytes(m.key), bytes(m.payload), _pack_headers(m.headers), m.deliver_at_us) for m in messages]

        def append(conn: sqlite3.Connection) -> list[str]:
            # Under the write lock, so no other process can take the same numbers.
            (last,) = conn.execute(
                "SELECT max(seq) FROM queue_messages WHERE namespace = ? AND topic = ?", (namespace, topic)
            ).fetchone()
            first = 0 if last is None else int(last) + 1
            now = now_micros()
            conn.executemany(
                "INSERT INTO queue_messages"
                " (namespace, topic, seq, key, payload, headers, published_at_us, deliver_at_us)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(namespace, topic, first + i, *row[:3], now, row[3]) for i, row in enumerate(rows)],
            )
            return [format_id(first + i) for i in range(len(rows))]

        ids = await self._write(append)
        self._wake(namespace, topic)
        return ids

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_s
        while True:
            changed = self._changed(namespace, request.topic)
            leases, next_due, version = await self._write(lambda conn: self._claim(conn, namespace, request))
            if leases or deadline - loop.time() <= 0:
                return leases
            due_at = None if next_due is None else loop.time() + max(0, next_due - now_micros()) / 1e6
            await self._wait(changed, version, min(deadline, due_at) if due_at is not None else deadline)
            if self._executor is None:  # closed while waiting
                return []

    async def _wait(self, changed: asyncio.Event, version: int, until: float) -> None:
        """Return at ``until``, when this process changes the topic, or when
        another connection commits to the file, whichever comes first."""
        loop = asyncio.get_running_loop()
        pause = POLL_FIRST_S
        while True:
            remaining = until - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, pause))
                return
            if self._executor is None or await self._call(_data_version) != version:
                return
            pause = min(pause * 2, POLL_MAX_S)

    def _claim(
        self, conn: sqlite3.Connection, namespace: str, request: ReceiveRequest
    ) -> tuple[list[Lease], int | None, int]:
        """Lease what is deliverable now, exactly as the memory reference
        chooses; also say when the next thing falls due, and the file's data
        version as this transaction saw it."""
        # Inside BEGIN IMMEDIATE: no other connection commits until ours does,
        # so any later change by another process moves the version off this one.
        version = _data_version(conn)
        now = now_micros()
        topic, group = request.topic, request.group
        # A group created by its first receive starts at the beginning of the
        # topic. DO NOTHING writes nothing when the group exists, so an empty
        # look commits nothing and wakes nobody in other processes.
        conn.execute(
            "INSERT INTO queue_groups (namespace, topic, grp, low) VALUES (?, ?, ?, 0)"
            " ON CONFLICT (namespace, topic, grp) DO NOTHING",
            (namespace, topic, group),
        )
        (low,) = conn.execute(
            f"SELECT low FROM queue_groups WHERE {_GROUP}", (namespace, topic, group)
        ).fetchone()
        chosen: list[tuple[int, int]] = []
        busy_keys: set[bytes] = set()
        next_due: int | None = None
        cursor = conn.execute(_SCAN, (group, namespace, topic, low))
        try:
            for seq, raw_key, deliver_at_us, attempt, acked, lease_until_us in cursor:
                if acked:
                    continue
                key = bytes(raw_key)
                if lease_until_us is not None and lease_until_us > now:
                    next_due = lease_until_us if next_due is None else min(next_due, lease_until_us)
                    if key:
                        busy_keys.add(key)
                    continue
                if deliver_at_us is not None and deliver_at_us > now:
                    # A delayed message joins its key's order only once it is due.
                    next_due = deliver_at_us if next_due is None else min(next_due, deliver_at_us)
                    continue
                if key and key in busy_keys:
                    continue
                if len(chosen) >= request.max_messages:
                    break
                chosen.append((seq, (attempt or 0) + 1))
                if key:
                    busy_keys.add(key)
        finally:
            cursor.close()
        if not chosen:
            return [], next_due, version
        lease_until = now + request.visibility_us
        conn.executemany(
            _LEASE,
            [
                (namespace, topic, group, seq, attempt, request.consumer, lease_until)
                for seq, attempt in chosen
            ],
        )
        messages = self._messages(conn, namespace, topic, [seq for seq, _ in chosen])
        return [Lease(messages[seq], attempt) for seq, attempt in chosen], None, version

    @staticmethod
    def _messages(
        conn: sqlite3.Connection, namespace: str, topic: str, seqs: Sequence[int]
    ) -> dict[int, StoredMessage]:
        out: dict[int, StoredMessage] = {}
        for batch in _batches(sorted(set(seqs))):
            marks = ", ".join("?" * len(batch))
            for seq, key, payload, headers, published_at_us, deliver_at_us in conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM queue_messages"
                f" WHERE namespace = ? AND topic = ? AND seq IN ({marks})",
                (namespace, topic, *batch),
            ):
                out[seq] = StoredMessage(
                    format_id(seq),
                    bytes(key),
                    bytes(payload),
                    _unpack_headers(bytes(headers)),
                    published_at_us,
                    deliver_at_us,
                )
        return out

    @staticmethod
    def _known(
        conn: sqlite3.Connection, namespace: str, topic: str, group: str, ids: Sequence[str]
    ) -> _Known:
        """Which ids the group knows (delivered to it at least once) and which of
        those it acknowledged. Below the low-water mark every id is both."""
        row = conn.execute(
            f"SELECT low FROM queue_groups WHERE {_GROUP}", (namespace, topic, group)
        ).fetchone()
        if row is None:
            return _Known(0, {}, set(), list(ids))
        low = int(row[0])
        parsed = {message_id: parse_id(message_id) for message_id in ids}
        above = sorted({seq for seq in parsed.values() if seq is not None and seq >= low})
        delivered: dict[int, bool] = {}
        for batch in _batches(above):
            marks = ", ".join("?" * len(batch))
            for seq, acked in conn.execute(
                f"SELECT seq, acked FROM queue_deliveries WHERE {_GROUP} AND seq IN ({marks})",
                (namespace, topic, group, *batch),
            ):
                delivered[seq] = bool(acked)
        known = _Known(low, {}, set(), [])
        for message_id, seq in parsed.items():
            if seq is None or (seq >= low and seq not in delivered):
                known.unknown.append(message_id)
                continue
            known.seqs[message_id] = seq
            if seq < low or delivered[seq]:
                known.acked.add(seq)
        return known

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        def acknowledge(conn: sqlite3.Connection) -> list[str]:
            known = self._known(conn, namespace, topic, group, ids)
            if known.unknown:
                return known.unknown
            pending = sorted(set(known.seqs.values()) - known.acked)
            conn.executemany(
                "UPDATE queue_deliveries SET acked = 1, consumer = NULL, lease_until_us = NULL"
                f" WHERE {_GROUP} AND seq = ?",
                [(namespace, topic, group, seq) for seq in pending],
            )
            if pending and pending[0] == known.low:
                self._advance(conn, namespace, topic, group, known.low)
            return []

        unknown = await self._write(acknowledge)
        if not unknown:
            # An ack frees a key, so a message waiting behind it may now be deliverable.
            self._wake(namespace, topic)
        return unknown

    @staticmethod
    def _advance(conn: sqlite3.Connection, namespace: str, topic: str, group: str, low: int) -> None:
        """Move the low-water mark over the acknowledged prefix and forget the
        rows it passed: below the mark, known and acknowledged is implied."""
        new_low = low
        cursor = conn.execute(
            f"SELECT seq FROM queue_deliveries WHERE {_GROUP} AND seq >= ? AND acked = 1 ORDER BY seq",
            (namespace, topic, group, low),
        )
        try:
            for (seq,) in cursor:
                if seq != new_low:
                    break
                new_low += 1
        finally:
            cursor.close()
        if new_low == low:
            return
        conn.execute(
            f"DELETE FROM queue_deliveries WHERE {_GROUP} AND seq < ?", (namespace, topic, group, new_low)
        )
        conn.execute(f"UPDATE queue_groups SET low = ? WHERE {_GROUP}", (new_low, namespace, topic, group))

    async def release(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        def end_leases(conn: sqlite3.Connection) -> list[str]:
            known = self._known(conn, namespace, topic, group, ids)
            if known.unknown:
                return known.unknown
            conn.executemany(
                "UPDATE queue_deliveries SET consumer = NULL, lease_until_us = NULL"
                f" WHERE {_GROUP} AND seq = ? AND acked = 0",
                [(namespace, topic, group, seq) for seq in sorted(set(known.seqs.values()) - known.acked)],
            )
            return []

        unknown = await self._write(end_leases)
        if not unknown:
            self._wake(namespace, topic)
        return unknown

    async def release_consumer(self, namespace: str, topic: str, group: str, consumer: str) -> None:
        def end_leases(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE queue_deliveries SET consumer = NULL, lease_until_us = NULL"
                f" WHERE {_GROUP} AND consumer = ?",
                (namespace, topic, group, consumer),
            )

        await self._write(end_leases)
        self._wake(namespace, topic)

    async def lookup(
        self, namespace: str, topic: str, group: str, ids: Sequence[str]
    ) -> dict[str, StoredMessage | None]:
        def find(conn: sqlite3.Connection) -> dict[str, StoredMessage | None]:
            known = self._known(conn, namespace, topic, group, ids)
            pending = [seq for seq in known.seqs.values() if seq not in known.acked]
            messages = self._messages(conn, namespace, topic, pending)
            return {
                message_id: None if seq in known.acked else messages[seq]
                for message_id, seq in known.seqs.items()
            }

        # A read of several statements sees one snapshot only inside a
        # transaction; a deferred one takes no write lock.
        return await self._call(find, begin="BEGIN")


def _data_version(conn: sqlite3.Connection) -> int:
    """Changes exactly when another connection committed to the file since this
    connection last asked (this connection's own commits leave it alone)."""
    row = conn.execute("PRAGMA data_version").fetchone()
    if row is None:  # pragma: no cover - SQLite always answers
        raise BackendError("sqlite backend: PRAGMA data_version returned nothing")
    return int(row[0])


def _traits(settings: SqliteSettings) -> QueueTraits:
    return QueueTraits(
        durability="ephemeral" if is_memory_path(settings.path) else "durable",
        max_message_bytes=settings.max_message_bytes,
    )


QUEUE = QueueBackendType(
    settings_type=SqliteSettings,
    create=SqliteQueue,
    capabilities=frozenset({capabilities.QUEUE_ORDERED_BY_KEY, capabilities.QUEUE_DELAY}),
    traits=_traits,
    description="durable Queue in one local SQLite file (WAL): leases in transactions, safe across processes",
)
