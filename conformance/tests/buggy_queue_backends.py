"""Planted Queue bugs: variants of the reference ``memory`` Queue backend, each
wrong in one way a real backend could plausibly be, to prove the Queue suite
notices.

Every variant builds on :class:`YieldingMemoryQueue`, which is correct but
yields to the event loop (and to other threads) around each call, as a
networked datastore does, so requests of several consumers interleave.

Each variant becomes a plugin module (a ``prism_register_queue`` hookimpl)
registered with ``load_plugins(extra={name: module})``.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import attrs
from buggy_backends import pause

from prism import capabilities
from prism.backends import memory
from prism.backends.memory import MemorySettings
from prism.backends.memory_queue import MemoryQueue, _Group, _Lease, _Topic
from prism.plugins import hookimpl
from prism.plugins.manager import PluginSet, load_plugins
from prism.plugins.registry import BackendRegistry
from prism.spi import Lease, OutgoingMessage, QueueBackendType, ReceiveRequest, StoredMessage

ALL_QUEUE_CAPABILITIES = frozenset({capabilities.QUEUE_ORDERED_BY_KEY, capabilities.QUEUE_DELAY})


class YieldingMemoryQueue(MemoryQueue):
    """The memory Queue backend, correct, with a yield around every call."""

    async def publish(self, namespace: str, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        await pause()
        ids = await MemoryQueue.publish(self, namespace, topic, messages)
        await pause()
        return ids

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        await pause()
        leases = await MemoryQueue.receive(self, namespace, request)
        await pause()
        return leases

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        await pause()
        unknown = await MemoryQueue.ack(self, namespace, topic, group, ids)
        await pause()
        return unknown

    async def release(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        await pause()
        unknown = await MemoryQueue.release(self, namespace, topic, group, ids)
        await pause()
        return unknown

    async def release_consumer(self, namespace: str, topic: str, group: str, consumer: str) -> None:
        await pause()
        await MemoryQueue.release_consumer(self, namespace, topic, group, consumer)
        await pause()

    async def lookup(
        self, namespace: str, topic: str, group: str, ids: Sequence[str]
    ) -> dict[str, StoredMessage | None]:
        await pause()
        found = await MemoryQueue.lookup(self, namespace, topic, group, ids)
        await pause()
        return found

    def group_state(self, namespace: str, topic: str, group: str) -> tuple[_Topic, _Group]:
        state = self._topic(namespace, topic)
        return state, state.groups.setdefault(group, _Group())


# -- attempts and leases ---------------------------------------------------------------


class AttemptNotCounted(YieldingMemoryQueue):
    """Every delivery says attempt 1 (so nothing is ever dead-lettered either)."""

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        return [Lease(lease.message, 1) for lease in await super().receive(namespace, request)]


class LeaseNeverExpires(YieldingMemoryQueue):
    """Ignores the visibility timeout: an unacked delivery never comes back by itself."""

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        forever = attrs.evolve(request, visibility_us=10**15)
        return await super().receive(namespace, forever)


class LeaseHidesOnlyFromItsConsumer(YieldingMemoryQueue):
    """A lease hides a message from the consumer holding it only: competing
    consumers of one group get the same message at the same time."""

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        _, group = self.group_state(namespace, request.topic, request.group)
        others = {seq: lease for seq, lease in group.leases.items() if lease.consumer != request.consumer}
        for seq in others:
            del group.leases[seq]
        try:
            return await super().receive(namespace, request)
        finally:
            for seq, lease in others.items():
                group.leases.setdefault(seq, lease)


class MaxMessagesIgnored(YieldingMemoryQueue):
    """Returns every deliverable message, however many were asked for."""

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        return await super().receive(namespace, attrs.evolve(request, max_messages=100_000))


class LaterGroupsStartAtTheEnd(YieldingMemoryQueue):
    """Only a topic's first group starts at the beginning; a group created
    later starts after the messages already published (as a stream whose
    consumer groups are created at the current end)."""

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        state = self._topic(namespace, request.topic)
        if request.group not in state.groups and state.groups:
            state.groups[request.group] = _Group(low=len(state.messages))
        return await super().receive(namespace, request)


# -- acks, releases and consumers ---------------------------------------------------------


class AckIgnoresUnknownIds(YieldingMemoryQueue):
    """Acknowledges the known ids of a call and says nothing about the others."""

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        state, g = self.group_state(namespace, topic, group)
        unknown = set(self._unknown(state, g, ids))
        await super().ack(namespace, topic, group, [i for i in ids if i not in unknown])
        return []


class AckPartialOnUnknownIds(YieldingMemoryQueue):
    """Reports unknown ids, but only after acknowledging the known ones."""

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        state, g = self.group_state(namespace, topic, group)
        unknown = self._unknown(state, g, ids)
        await super().ack(namespace, topic, group, [i for i in ids if i not in unknown])
        return unknown


class AckAcksTheNextMessageToo(YieldingMemoryQueue):
    """Off by one in a range ack: acknowledging a message also acknowledges the next one."""

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        unknown = await super().ack(namespace, topic, group, ids)
        if not unknown:
            state, g = self.group_state(namespace, topic, group)
            for message_id in ids:
                following = state.seq_of[message_id] + 1
                if following in g.attempts:
                    g.acked.add(following)
                    g.leases.pop(following, None)
        return unknown


class AckLeavesTheLease(YieldingMemoryQueue):
    """An ack is recorded nowhere: the message stays leased and comes back
    when the lease runs out."""

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        state, g = self.group_state(namespace, topic, group)
        return self._unknown(state, g, ids)


class ReleaseIgnoresUnknownIds(YieldingMemoryQueue):
    """Releases the known ids of a call and says nothing about the others."""

    async def release(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        state, g = self.group_state(namespace, topic, group)
        unknown = set(self._unknown(state, g, ids))
        await super().release(namespace, topic, group, [i for i in ids if i not in unknown])
        return []


class ReleaseUnacks(YieldingMemoryQueue):
    """Releasing an acknowledged message makes it deliverable again."""

    async def release(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        unknown = await super().release(namespace, topic, group, ids)
        if not unknown:
            state, g = self.group_state(namespace, topic, group)
            for message_id in ids:
                g.acked.discard(state.seq_of[message_id])
            g.low = 0
        return unknown


class LookupIgnoresAcks(YieldingMemoryQueue):
    """``lookup`` returns acknowledged messages as pending: nack(requeue=False)
    of an acked message dead-letters it."""

    async def lookup(
        self, namespace: str, topic: str, group: str, ids: Sequence[str]
    ) -> dict[str, StoredMessage | None]:
        state, _ = self.group_state(namespace, topic, group)
        found = await super().lookup(namespace, topic, group, ids)
        return {i: state.messages[state.seq_of[i]] for i in found}


class ReleaseConsumerDoesNothing(YieldingMemoryQueue):
    """A closed consumer's deliveries come back only after the visibility timeout."""

    async def release_consumer(self, namespace: str, topic: str, group: str, consumer: str) -> None:
        await pause()


class ReleaseConsumerReleasesTheGroup(YieldingMemoryQueue):
    """Closing one consumer gives back every lease of its group, also the
    other consumers'."""

    async def release_consumer(self, namespace: str, topic: str, group: str, consumer: str) -> None:
        await pause()
        state = self._topic(namespace, topic)
        g = state.groups.get(group)
        if g is not None:
            g.leases.clear()
        self._wake(state)


# -- publish and storage ---------------------------------------------------------------------


class LastChunkOfBatchLost(YieldingMemoryQueue):
    """Writes a large batch in chunks of 64 and loses the last, partial chunk,
    yet returns an id for every message."""

    async def publish(self, namespace: str, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        if len(messages) <= 64:
            return await super().publish(namespace, topic, messages)
        kept = len(messages) // 64 * 64
        ids = await super().publish(namespace, topic, messages[:kept])
        first_lost = 10**11 + len(self._topic(namespace, topic).messages)
        return [*ids, *(f"{first_lost + i:012d}" for i in range(len(messages) - kept))]


class DelayIgnored(YieldingMemoryQueue):
    """Declares queue.delay but delivers delayed messages at once."""

    async def publish(self, namespace: str, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        undelayed = [attrs.evolve(m, deliver_at_us=None) for m in messages]
        return await super().publish(namespace, topic, undelayed)


class HeaderNamesLowercased(YieldingMemoryQueue):
    """Lowercases header names, as an HTTP-minded layer would."""

    async def publish(self, namespace: str, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        lowered = [attrs.evolve(m, headers=tuple((k.lower(), v) for k, v in m.headers)) for m in messages]
        return await super().publish(namespace, topic, lowered)


class TrailingNulsStripped(YieldingMemoryQueue):
    """Strips trailing NUL bytes from payloads, as a C-string layer would."""

    async def publish(self, namespace: str, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        stripped = [attrs.evolve(m, payload=m.payload.rstrip(b"\x00")) for m in messages]
        return await super().publish(namespace, topic, stripped)


class PublishTimeInMilliseconds(YieldingMemoryQueue):
    """Stores the publish time in milliseconds where microseconds are expected."""

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        leases = await super().receive(namespace, request)
        return [
            Lease(
                attrs.evolve(lease.message, published_at_us=lease.message.published_at_us // 1000),
                lease.attempt,
            )
            for lease in leases
        ]


class TopicsCaseInsensitive(YieldingMemoryQueue):
    """Topic names compare case-insensitively, as a case-folding store would."""

    def _topic(self, namespace: str, topic: str) -> _Topic:
        return super()._topic(namespace, topic.lower())


class GroupsShareProgress(YieldingMemoryQueue):
    """Every group of a topic shares one state: no fan-out."""

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        return await super().receive(namespace, attrs.evolve(request, group="shared"))

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        return await super().ack(namespace, topic, "shared", ids)

    async def release(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        return await super().release(namespace, topic, "shared", ids)

    async def release_consumer(self, namespace: str, topic: str, group: str, consumer: str) -> None:
        await super().release_consumer(namespace, topic, "shared", consumer)

    async def lookup(
        self, namespace: str, topic: str, group: str, ids: Sequence[str]
    ) -> dict[str, StoredMessage | None]:
        return await super().lookup(namespace, topic, "shared", ids)


class SharedNamespaces(YieldingMemoryQueue):
    """Every namespace lands in the same place: no isolation."""

    def _topic(self, namespace: str, topic: str) -> _Topic:
        return super()._topic("shared", topic)


# -- order -------------------------------------------------------------------------------------


class _ClaimVariant(YieldingMemoryQueue):
    """Claims with :meth:`order` and :meth:`key_is_busy` instead of the
    reference rules, everything else unchanged."""

    def order(self, low: int, high: int) -> range:
        return range(low, high)

    def key_is_busy(self, key: bytes, busy_keys: set[bytes]) -> bool:
        return bool(key) and key in busy_keys

    def _claim(
        self, state: _Topic, group: _Group, request: ReceiveRequest, now: int
    ) -> tuple[list[Lease], int | None]:
        out: list[Lease] = []
        busy_keys: set[bytes] = set()
        next_due: int | None = None
        while group.low < len(state.messages) and group.low in group.acked:
            group.low += 1
        # Keys in flight are known before the scan, so the scan order alone decides.
        for seq, held in group.leases.items():
            if held.expires_at_us > now and seq not in group.acked and state.messages[seq].key:
                busy_keys.add(state.messages[seq].key)
        for seq in self.order(group.low, len(state.messages)):
            if seq in group.acked:
                continue
            message = state.messages[seq]
            lease = group.leases.get(seq)
            if lease is not None and lease.expires_at_us > now:
                next_due = lease.expires_at_us if next_due is None else min(next_due, lease.expires_at_us)
                continue
            if message.deliver_at_us is not None and message.deliver_at_us > now:
                next_due = message.deliver_at_us if next_due is None else min(next_due, message.deliver_at_us)
                continue
            if self.key_is_busy(message.key, busy_keys):
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


class KeyOrderIgnored(_ClaimVariant):
    """Declares queue.ordered_by_key but hands out later messages of a key
    while an earlier one is in flight."""

    def key_is_busy(self, key: bytes, busy_keys: set[bytes]) -> bool:
        return False


class NewestFirst(_ClaimVariant):
    """Declares queue.ordered_by_key but scans the log newest first, so a
    key's messages arrive in reverse."""

    def order(self, low: int, high: int) -> range:
        return range(high - 1, low - 1, -1)


class ClaimVariantControl(_ClaimVariant):
    """The claim rewrite with the reference rules: must pass (guards the rewrite)."""


#: name -> (backend class, declared capabilities, the suite tests expected to catch it).
#: At least one of the expected tests must fail, and no variant may pass the suite.
PLANTED_QUEUE_BUGS: dict[str, tuple[type[YieldingMemoryQueue], frozenset[str], tuple[str, ...]]] = {
    "attempt_not_counted": (
        AttemptNotCounted,
        ALL_QUEUE_CAPABILITIES,
        ("test_attempt_counts_up_on_every_redelivery", "test_visibility_timeouts_and_nacks_count_alike"),
    ),
    "lease_never_expires": (
        LeaseNeverExpires,
        ALL_QUEUE_CAPABILITIES,
        ("test_unacked_delivery_comes_back_after_the_visibility_timeout",),
    ),
    "lease_hides_only_from_its_consumer": (
        LeaseHidesOnlyFromItsConsumer,
        ALL_QUEUE_CAPABILITIES,
        (
            "test_competing_consumers_never_hold_the_same_message",
            "test_a_redelivery_can_go_to_another_consumer",
        ),
    ),
    "max_messages_ignored": (
        MaxMessagesIgnored,
        ALL_QUEUE_CAPABILITIES,
        ("test_acking_an_unknown_id_is_refused_and_acks_nothing",),
    ),
    "later_groups_start_at_the_end": (
        LaterGroupsStartAtTheEnd,
        ALL_QUEUE_CAPABILITIES,
        ("test_a_new_group_starts_at_the_beginning_of_the_topic", "test_every_group_gets_every_message"),
    ),
    "ack_ignores_unknown_ids": (
        AckIgnoresUnknownIds,
        ALL_QUEUE_CAPABILITIES,
        ("test_acking_an_unknown_id_is_refused_and_acks_nothing",),
    ),
    "ack_partial_on_unknown_ids": (
        AckPartialOnUnknownIds,
        ALL_QUEUE_CAPABILITIES,
        ("test_acking_an_unknown_id_is_refused_and_acks_nothing",),
    ),
    "ack_acks_the_next_message_too": (
        AckAcksTheNextMessageToo,
        ALL_QUEUE_CAPABILITIES,
        ("test_ack_acknowledges_only_the_ids_given",),
    ),
    "ack_leaves_the_lease": (
        AckLeavesTheLease,
        ALL_QUEUE_CAPABILITIES,
        ("test_ack_is_idempotent_and_sticks",),
    ),
    "release_ignores_unknown_ids": (
        ReleaseIgnoresUnknownIds,
        ALL_QUEUE_CAPABILITIES,
        ("test_nacking_an_unknown_id_is_refused_and_changes_nothing",),
    ),
    "release_unacks": (
        ReleaseUnacks,
        ALL_QUEUE_CAPABILITIES,
        ("test_nack_gives_back_at_once_and_leaves_acked_messages_alone",),
    ),
    "lookup_ignores_acks": (
        LookupIgnoresAcks,
        ALL_QUEUE_CAPABILITIES,
        ("test_nack_gives_back_at_once_and_leaves_acked_messages_alone",),
    ),
    "release_consumer_does_nothing": (
        ReleaseConsumerDoesNothing,
        ALL_QUEUE_CAPABILITIES,
        ("test_closing_a_consumer_gives_back_its_unacked_deliveries_at_once",),
    ),
    "release_consumer_releases_the_group": (
        ReleaseConsumerReleasesTheGroup,
        ALL_QUEUE_CAPABILITIES,
        ("test_closing_one_consumer_leaves_the_others_deliveries_alone",),
    ),
    "last_chunk_of_batch_lost": (
        LastChunkOfBatchLost,
        ALL_QUEUE_CAPABILITIES,
        ("test_a_batch_of_max_batch_round_trips_and_one_more_is_refused",),
    ),
    "delay_ignored": (
        DelayIgnored,
        ALL_QUEUE_CAPABILITIES,
        ("test_deliver_after_holds_a_message_back_for_every_group",),
    ),
    "header_names_lowercased": (
        HeaderNamesLowercased,
        ALL_QUEUE_CAPABILITIES,
        ("test_key_payload_and_headers_round_trip_byte_exact",),
    ),
    "trailing_nuls_stripped": (
        TrailingNulsStripped,
        ALL_QUEUE_CAPABILITIES,
        ("test_key_payload_and_headers_round_trip_byte_exact",),
    ),
    "publish_time_in_milliseconds": (
        PublishTimeInMilliseconds,
        ALL_QUEUE_CAPABILITIES,
        ("test_publish_then_consume_round_trips",),
    ),
    "topics_case_insensitive": (
        TopicsCaseInsensitive,
        ALL_QUEUE_CAPABILITIES,
        ("test_topics_are_independent",),
    ),
    "groups_share_progress": (
        GroupsShareProgress,
        ALL_QUEUE_CAPABILITIES,
        ("test_every_group_gets_every_message",),
    ),
    "shared_namespaces": (
        SharedNamespaces,
        ALL_QUEUE_CAPABILITIES,
        ("test_namespaces_are_isolated", "test_isolation_2_the_probe_is_gone"),
    ),
    "key_order_ignored": (
        KeyOrderIgnored,
        ALL_QUEUE_CAPABILITIES,
        (
            "test_same_key_arrives_in_publish_order_one_at_a_time",
            "test_key_order_holds_for_competing_consumers_on_several_threads",
        ),
    ),
    "newest_first": (
        NewestFirst,
        ALL_QUEUE_CAPABILITIES,
        (
            "test_same_key_arrives_in_publish_order_one_at_a_time",
            "test_key_order_holds_for_competing_consumers_on_several_threads",
        ),
    ),
}

#: Correct variants: they must pass the suite (tests of undeclared
#: capabilities reported as not applicable, their refusal verified).
QUEUE_CONTROLS: dict[str, tuple[type[YieldingMemoryQueue], frozenset[str]]] = {
    "yielding_memory_queue": (YieldingMemoryQueue, ALL_QUEUE_CAPABILITIES),
    "claim_rewrite": (ClaimVariantControl, ALL_QUEUE_CAPABILITIES),
    "no_optional_queue_capabilities": (YieldingMemoryQueue, frozenset()),
}


def variant(name: str) -> tuple[type[YieldingMemoryQueue], frozenset[str]]:
    if name in PLANTED_QUEUE_BUGS:
        backend_class, declared, _ = PLANTED_QUEUE_BUGS[name]
        return backend_class, declared
    return QUEUE_CONTROLS[name]


def plugin_module(name: str) -> types.ModuleType:
    """A plugin module registering the Queue variant ``name`` under that name."""
    backend_class, declared = variant(name)
    backend_type = QueueBackendType(
        settings_type=MemorySettings,
        create=backend_class,
        capabilities=declared,
        traits=memory.QUEUE.traits,
        description=f"planted bug: {backend_class.__doc__}",
    )

    @hookimpl
    def prism_register_queue(registry: BackendRegistry) -> None:
        registry.add_queue(name, backend_type)

    module = types.ModuleType(f"prism_conformance_planted_queue_{name}")
    module.prism_register_queue = prism_register_queue  # type: ignore[attr-defined]
    return module


def plugin_set(name: str) -> PluginSet:
    return load_plugins(extra={name: plugin_module(name)})
