"""The ``memory`` Queue backend: the reference implementation of every Queue
capability. Registered by the ``memory`` plugin (:mod:`prism.backends.memory`).

Messages live in the process and are lost when it exits. No method awaits
between reading and changing state, so on one event loop every call is atomic.
Waiting consumers sleep on an :class:`asyncio.Event` that publish and release
set, and otherwise only until the next lease runs out or delayed message falls
due, so an idle wait costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import attrs

from prism.config import NamespaceConfig
from prism.models import now_micros
from prism.spi import Lease, OutgoingMessage, ReceiveRequest, StoredMessage


@attrs.define
class _Lease:
    consumer: str
    expires_at_us: int


@attrs.define
class _Group:
    attempts: dict[int, int] = attrs.Factory(dict)
    """Deliveries per message sequence number; a key here means known to the group."""
    acked: set[int] = attrs.Factory(set)
    leases: dict[int, _Lease] = attrs.Factory(dict)
    low: int = 0
    """Every message before this sequence number is acknowledged: scans start here."""


@attrs.define
class _Topic:
    messages: list[StoredMessage] = attrs.Factory(list)
    seq_of: dict[str, int] = attrs.Factory(dict)
    groups: dict[str, _Group] = attrs.Factory(dict)
    changed: asyncio.Event | None = None
    """Set (and replaced) whenever messages may have become deliverable."""


class MemoryQueue:
    def __init__(self, name: str, settings: object) -> None:
        self.name = name
        self.settings = settings
        self._topics: dict[tuple[str, str], _Topic] = {}

    async def start(self) -> None:
        return None

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        return None

    def _topic(self, namespace: str, topic: str) -> _Topic:
        return self._topics.setdefault((namespace, topic), _Topic())

    @staticmethod
    def _wake(state: _Topic) -> None:
        if state.changed is not None:
            state.changed.set()
            state.changed = None

    async def publish(self, namespace: str, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        state = self._topic(namespace, topic)
        now = now_micros()
        ids: list[str] = []
        for message in messages:
            seq = len(state.messages)
            # Zero-padded so ids sort in publish order, as stream ids do.
            message_id = f"{seq:012d}"
            state.messages.append(
                StoredMessage(
                    message_id, message.key, message.payload, message.headers, now, message.deliver_at_us
                )
            )
            state.seq_of[message_id] = seq
            ids.append(message_id)
        self._wake(state)
        return ids

    def _claim(
        self, state: _Topic, group: _Group, request: ReceiveRequest, now: int
    ) -> tuple[list[Lease], int | None]:
        """Lease what is deliverable now; also say when the next thing falls due."""
        out: list[Lease] = []
        busy_keys: set[bytes] = set()
        next_due: int | None = None
        while group.low < len(state.messages) and group.low in group.acked:
            group.low += 1
        for seq in range(group.low, len(state.messages)):
            if seq in group.acked:
                continue
            message = state.messages[seq]
            lease = group.leases.get(seq)
            if lease is not None and lease.expires_at_us > now:
                next_due = lease.expires_at_us if next_due is None else min(next_due, lease.expires_at_us)
                if message.key:
                    busy_keys.add(message.key)
                continue
            if message.deliver_at_us is not None and message.deliver_at_us > now:
                # A delayed message joins its key's order only once it is due.
                due = message.deliver_at_us
                next_due = due if next_due is None else min(next_due, due)
                continue
            if message.key and message.key in busy_keys:
                continue
            if len(out) >= request.max_messages:
                break
            attempt = group.attempts.get(seq, 0) + 1
            group.attempts[seq] = attempt
            group.leases[seq] = _Lease(request.consumer, now + request.visibility_us)
            if message.key:
                busy_keys.add(message.key)
            out.append(Lease(message, attempt))
        return out, next_due

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        state = self._topic(namespace, request.topic)
        group = state.groups.setdefault(request.group, _Group())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_s
        while True:
            now = now_micros()
            leases, next_due = self._claim(state, group, request, now)
            remaining = deadline - loop.time()
            if leases or remaining <= 0:
                return leases
            timeout = remaining
            if next_due is not None:
                timeout = min(timeout, max(0.0, (next_due - now) / 1_000_000))
            if state.changed is None:
                state.changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.changed.wait(), timeout)

    def _unknown(self, state: _Topic, group: _Group, ids: Sequence[str]) -> list[str]:
        return [i for i in ids if i not in state.seq_of or state.seq_of[i] not in group.attempts]

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        state = self._topic(namespace, topic)
        g = state.groups.setdefault(group, _Group())
        unknown = self._unknown(state, g, ids)
        if unknown:
            return unknown
        for message_id in ids:
            seq = state.seq_of[message_id]
            g.acked.add(seq)
            g.leases.pop(seq, None)
        # An ack frees a key, so a message waiting behind it may now be deliverable.
        self._wake(state)
        return []

    async def release(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        state = self._topic(namespace, topic)
        g = state.groups.setdefault(group, _Group())
        unknown = self._unknown(state, g, ids)
        if unknown:
            return unknown
        for message_id in ids:
            g.leases.pop(state.seq_of[message_id], None)
        self._wake(state)
        return []

    async def release_consumer(self, namespace: str, topic: str, group: str, consumer: str) -> None:
        state = self._topic(namespace, topic)
        g = state.groups.get(group)
        if g is None:
            return
        for seq in [s for s, lease in g.leases.items() if lease.consumer == consumer]:
            del g.leases[seq]
        self._wake(state)

    async def lookup(
        self, namespace: str, topic: str, group: str, ids: Sequence[str]
    ) -> dict[str, StoredMessage | None]:
        state = self._topic(namespace, topic)
        g = state.groups.setdefault(group, _Group())
        out: dict[str, StoredMessage | None] = {}
        for message_id in ids:
            seq = state.seq_of.get(message_id)
            if seq is None or seq not in g.attempts:
                continue
            out[message_id] = None if seq in g.acked else state.messages[seq]
        return out

    async def close(self) -> None:
        for state in self._topics.values():
            self._wake(state)
        self._topics.clear()
