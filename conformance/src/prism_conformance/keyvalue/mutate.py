"""``mutate_items``: puts and deletes on one record, applied atomically.
Tests of the ``kv.atomic_mutate`` capability."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

import prism
from prism import Delete, Item, Put, capabilities
from prism_conformance.handles import KeyValueHandle
from prism_conformance.keyvalue.base import SuiteBase
from prism_conformance.keyvalue.support import (
    Tokens,
    describe_bytes_difference,
    now,
    random_bytes,
    run_threads,
)
from prism_conformance.marks import requires_capability

#: Mutations the writer applies while readers watch.
MUTATIONS = 300


class MutateTests(SuiteBase):
    @requires_capability(capabilities.KV_ATOMIC_MUTATE)
    def test_mutate_applies_puts_and_deletes(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {b"a": b"1", b"b": b"2", b"c": b"3"})
        kv.mutate_items("r", [Put(b"a", b"one"), Delete(b"b"), Put(b"d", b"4"), Delete(b"missing")])
        assert kv.get_items("r").as_dict() == {b"a": b"one", b"c": b"3", b"d": b"4"}
        kv.mutate_items("r", [])
        assert kv.get_items("r").as_dict() == {b"a": b"one", b"c": b"3", b"d": b"4"}, (
            "an empty mutation changed data"
        )
        kv.mutate_items("new-record", [Put(b"x", b""), Put("y", "why")])
        assert kv.get_items("new-record").as_dict() == {b"x": b"", b"y": b"why"}

    @requires_capability(capabilities.KV_ATOMIC_MUTATE)
    def test_mutate_is_atomic_for_concurrent_readers(self, kv: KeyValueHandle) -> None:
        """Even rounds put a, b, c; odd rounds put a, b and delete c. A reader
        must see all of one round: a == b, and c present with a's value exactly
        on even rounds."""
        kv.mutate_items("r", [Put(b"a", b"0000"), Put(b"b", b"0000"), Put(b"c", b"0000")])
        done = threading.Event()
        torn: list[dict[bytes, bytes]] = []
        reads = [0]

        def writer() -> None:
            try:
                for i in range(1, MUTATIONS + 1):
                    value = b"%04d" % i
                    third: Put | Delete = Put(b"c", value) if i % 2 == 0 else Delete(b"c")
                    kv.mutate_items("r", [Put(b"a", value), Put(b"b", value), third])
            finally:
                done.set()

        def reader() -> None:
            give_up = time.monotonic() + 120
            while time.monotonic() < give_up and not torn:
                finished = done.is_set()
                seen = kv.get_items("r").as_dict()
                reads[0] += 1
                a, b, c = seen.get(b"a"), seen.get(b"b"), seen.get(b"c")
                even = a is not None and int(a) % 2 == 0
                if a is None or a != b or (c != a if even else c is not None):
                    torn.append(seen)
                if finished:
                    return

        run_threads([writer, reader, reader])
        assert not torn, f"a reader saw part of a mutation: {torn[0]!r} (after {reads[0]} reads)"
        assert kv.get_items("r").as_dict() == {
            b"a": b"%04d" % MUTATIONS,
            b"b": b"%04d" % MUTATIONS,
            b"c": b"%04d" % MUTATIONS,
        }

    @requires_capability(capabilities.KV_ATOMIC_MUTATE)
    def test_mutate_follows_tokens_per_item(self, kv: KeyValueHandle) -> None:
        tokens = Tokens()
        kv.put_items("r", {b"newer": b"kept", b"gone": b"x"}, token=tokens.at(10))
        kv.put_items("r", {b"older": b"before"}, token=tokens.at(1))
        kv.mutate_items(
            "r",
            [Put(b"newer", b"lost"), Put(b"older", b"after"), Delete(b"gone"), Put(b"fresh", b"added")],
            token=tokens.at(5),
        )
        assert kv.get_items("r").as_dict() == {
            b"newer": b"kept",
            b"older": b"after",
            b"gone": b"x",
            b"fresh": b"added",
        }, "a mutation with an older token must lose on items with newer writes and land on the rest"
        kv.mutate_items("r", [Put(b"newer", b"won"), Delete(b"gone")], token=tokens.at(20))
        kv.mutate_items("r", [Put(b"newer", b"replayed"), Put(b"gone", b"back")], token=tokens.at(20))
        assert kv.get_items("r").as_dict() == {b"newer": b"won", b"older": b"after", b"fresh": b"added"}, (
            "a replayed mutation (same token) must change nothing, and must not resurrect what it deleted"
        )

    @requires_capability(capabilities.KV_ATOMIC_MUTATE)
    def test_mutate_puts_carry_their_ttl(self, kv: KeyValueHandle) -> None:
        before = now()
        kv.mutate_items("r", [Put(b"short", b"v", ttl=timedelta(hours=1)), Put(b"forever", b"v")])
        items = {item.key: item for item in kv.get_items("r").items}
        assert items[b"forever"].expires_at is None
        expires_at = items[b"short"].expires_at
        assert expires_at is not None, "a Put with a TTL inside mutate_items reported no expiry"
        assert before + timedelta(minutes=59) < expires_at < now() + timedelta(hours=1, seconds=1)

    @requires_capability(capabilities.KV_ATOMIC_MUTATE)
    def test_mutate_with_a_chunked_value(self, kv: KeyValueHandle) -> None:
        item_bytes = self.backend_traits(kv).max_item_bytes
        size = min(2 * item_bytes + 3, self.max_value_bytes(kv))
        large = random_bytes("mutate", size)
        kv.put_items("r", [Item(b"old", b"x")])
        kv.mutate_items("r", [Put(b"large", large), Delete(b"old")])
        got = kv.get_items("r").as_dict()
        assert set(got) == {b"large"}
        assert got[b"large"] == large, describe_bytes_difference(got[b"large"], large)

    @requires_capability(capabilities.KV_ATOMIC_MUTATE)
    def test_malformed_mutation_changes_nothing(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {b"a": b"1"})
        malformed: list[list[Put | Delete]] = [
            [Put(b"a", b"2"), Delete(b"a")],
            [Put(b"b", b"2"), Put(b"b", b"3")],
            [Put(b"b", b"2"), Put(b"", b"3")],
        ]
        for mutations in malformed:
            with pytest.raises(prism.InvalidArgument):
                kv.mutate_items("r", mutations)
        assert kv.get_items("r").as_dict() == {b"a": b"1"}, "a refused mutation changed data"
