"""Idempotency tokens: last write wins per item, by token; replays change
nothing; deletes are writes too."""

from __future__ import annotations

import functools
import random
import threading
import time
from datetime import timedelta

import pytest

import prism
from prism import AllItems, IdempotencyToken, Item, KeyRange, Keys
from prism_conformance.handles import KeyValueHandle
from prism_conformance.keyvalue.base import SuiteBase
from prism_conformance.keyvalue.support import Tokens, run_threads


class TokenTests(SuiteBase):
    def test_newer_token_wins(self, kv: KeyValueHandle) -> None:
        tokens = Tokens()
        kv.put_items("r", {b"k": b"first"}, token=tokens.at(1))
        kv.put_items("r", {b"k": b"second"}, token=tokens.at(2))
        assert kv.get_items("r").as_dict() == {b"k": b"second"}

    def test_older_token_never_overwrites_a_newer_write(self, kv: KeyValueHandle) -> None:
        tokens = Tokens()
        kv.put_items("r", {b"k": b"newer"}, token=tokens.at(10))
        kv.put_items("r", [Item(b"k", b"older", ttl=timedelta(hours=1))], token=tokens.at(5))
        (item,) = kv.get_items("r").items
        assert item.value == b"newer", "a write with an older token overwrote a newer one"
        assert item.expires_at is None, "a write with an older token changed the newer write's expiry"

    def test_replaying_the_same_token_changes_nothing(self, kv: KeyValueHandle) -> None:
        tokens = Tokens()
        original = tokens.at(1, "retry-me")
        kv.put_items("r", {b"k": b"v1"}, token=original)
        kv.put_items("r", {b"k": b"v1"}, token=original)
        assert kv.get_items("r").as_dict() == {b"k": b"v1"}
        # A replay carries the write's version: an equal version must not replace anything.
        kv.put_items("r", {b"k": b"changed on replay"}, token=original)
        assert kv.get_items("r").as_dict() == {b"k": b"v1"}, (
            "a replayed token (equal version) overwrote the item"
        )
        kv.put_items("r", {b"k": b"v2"}, token=tokens.at(2))
        kv.put_items("r", {b"k": b"v1"}, token=original)
        assert kv.get_items("r").as_dict() == {b"k": b"v2"}, (
            "a late replay of an older write undid a newer one"
        )

    def test_last_write_wins_per_item_not_per_record(self, kv: KeyValueHandle) -> None:
        tokens = Tokens()
        kv.put_items("r", {b"a": b"new-a", b"b": b"new-b"}, token=tokens.at(20))
        kv.put_items("r", {b"a": b"old-a", b"c": b"old-c"}, token=tokens.at(10))
        assert kv.get_items("r").as_dict() == {b"a": b"new-a", b"b": b"new-b", b"c": b"old-c"}, (
            "an older write must lose only on the items that have a newer write, and land on the others"
        )
        kv.put_items("r", {b"b": b"newest-b"}, token=tokens.at(30))
        assert kv.get_items("r").as_dict() == {b"a": b"new-a", b"b": b"newest-b", b"c": b"old-c"}

    def test_equal_times_are_ordered_by_nonce(self, kv: KeyValueHandle) -> None:
        tokens = Tokens()
        low, high = tokens.at(5, "nonce-a"), tokens.at(5, "nonce-b")
        kv.put_items("r", {b"high-first": b"high"}, token=high)
        kv.put_items("r", {b"high-first": b"low"}, token=low)
        kv.put_items("r", {b"low-first": b"low"}, token=low)
        kv.put_items("r", {b"low-first": b"high"}, token=high)
        assert kv.get_items("r").as_dict() == {b"high-first": b"high", b"low-first": b"high"}, (
            "tokens are ordered by (generation time, nonce): at equal times the greater nonce wins"
        )

    def test_delete_with_an_older_token_does_not_remove_a_newer_put(self, kv: KeyValueHandle) -> None:
        tokens = Tokens()
        kv.put_items("r", {b"a": b"1", b"b": b"2", b"c": b"3"}, token=tokens.at(10))
        kv.delete_items("r", Keys([b"a"]), token=tokens.at(5))
        kv.delete_items("r", KeyRange(b"b", b"c"), token=tokens.at(5))
        kv.delete_items("r", AllItems(), token=tokens.at(5))
        assert kv.get_items("r").as_dict() == {b"a": b"1", b"b": b"2", b"c": b"3"}, (
            "a delete with an older token removed a newer write"
        )

    def test_put_with_an_older_token_does_not_resurrect_a_deleted_item(self, kv: KeyValueHandle) -> None:
        tokens = Tokens()
        kv.put_items("r", {b"a": b"1", b"b": b"2", b"c": b"3"}, token=tokens.at(1))
        kv.delete_items("r", Keys([b"a"]), token=tokens.at(10))
        kv.delete_items("r", KeyRange(b"b", b"c"), token=tokens.at(10))
        kv.delete_items("r", AllItems(), token=tokens.at(10))
        assert list(kv.get_items("r").items) == []
        kv.put_items("r", {b"a": b"late", b"b": b"late", b"c": b"late"}, token=tokens.at(5))
        kv.put_items("r", {b"a": b"1", b"b": b"2", b"c": b"3"}, token=tokens.at(1))
        assert list(kv.get_items("r").items) == [], "a write older than a delete brought the item back"
        kv.put_items("r", {b"a": b"after"}, token=tokens.at(11))
        assert kv.get_items("r").as_dict() == {b"a": b"after"}, "a write newer than the delete must land"

    def test_write_without_a_token_uses_the_server_time(self, kv: KeyValueHandle) -> None:
        hour_ago = IdempotencyToken(time.time_ns() // 1000 - 3_600_000_000, "past")
        soon = IdempotencyToken(time.time_ns() // 1000 + 300_000_000, "future")
        kv.put_items("r", {b"past": b"tokened"}, token=hour_ago)
        kv.put_items("r", {b"future": b"tokened"}, token=soon)
        kv.put_items("r", {b"past": b"untokened", b"future": b"untokened"})
        assert kv.get_items("r").as_dict() == {b"past": b"untokened", b"future": b"tokened"}, (
            "a write without a token is versioned at the server's current time"
        )

    def test_untokened_writes_keep_their_order(self, kv: KeyValueHandle) -> None:
        for i in range(50):
            kv.put_items("r", {b"k": str(i).encode()})
        assert kv.get_items("r").as_dict() == {b"k": b"49"}, (
            "quick successive writes without a token lost their order"
        )
        kv.delete_items("r")
        kv.put_items("r", {b"k": b"back"})
        assert kv.get_items("r").as_dict() == {b"k": b"back"}

    def test_invalid_tokens_are_refused(self, kv: KeyValueHandle) -> None:
        far_future = IdempotencyToken(time.time_ns() // 1000 + 86_400_000_000, "tomorrow")
        with pytest.raises(prism.InvalidArgument):
            kv.put_items("r", {b"k": b"v"}, token=far_future)
        for nonce in ("", "~reserved"):
            with pytest.raises(prism.InvalidArgument):
                kv.put_items("r", {b"k": b"v"}, token=IdempotencyToken(time.time_ns() // 1000, nonce))
        assert list(kv.get_items("r").items) == [], "a refused write left items behind"

    def test_concurrent_writers_leave_the_highest_token(self, kv: KeyValueHandle) -> None:
        """Last-write-wins must be decided atomically by the datastore: in each
        round, writers race on the same keys with tokens in random order, and
        the newest token's value must be what remains."""
        tokens = Tokens()
        keys = [b"a", b"b", b"c", b"d"]
        writers, rounds = 6, 30
        rng = random.Random(3)
        # plan[round][writer]: the token and value that writer uses in that round.
        plan = []
        for round_number in range(rounds):
            offsets = list(range(writers))
            rng.shuffle(offsets)
            plan.append(
                [
                    (tokens.at(round_number + o / 1000, f"w{o}"), f"round-{round_number}-writer-{o}".encode())
                    for o in offsets
                ]
            )
        start_together = threading.Barrier(writers)

        def writer(number: int) -> None:
            for round_number in range(rounds):
                token, value = plan[round_number][number]
                start_together.wait(timeout=60)
                kv.put_items(f"round-{round_number}", {k: value for k in keys}, token=token)

        run_threads([functools.partial(writer, n) for n in range(writers)])
        lost = []
        for round_number in range(rounds):
            newest = max(plan[round_number])[1]
            got = kv.get_items(f"round-{round_number}").as_dict()
            if got != {k: newest for k in keys}:
                lost.append(f"round {round_number}: expected {newest!r} everywhere, got {got!r}")
        assert not lost, (
            f"after concurrent tokened writes an older token's value survived in {len(lost)} of {rounds} rounds "
            f"(first: {lost[0]}); the version check and the write must be one atomic step in the datastore"
        )
