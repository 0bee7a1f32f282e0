"""Time to live: per item and per namespace. Every backend must honour it,
whether the datastore expires items natively (``kv.native_ttl``) or the core
filters and purges them, so these are core tests."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta

import pytest

import prism
from prism import Item, KeyRange, Keys, capabilities
from prism_conformance.handles import KeyValueHandle
from prism_conformance.keyvalue.base import SuiteBase
from prism_conformance.keyvalue.support import (
    all_items,
    keys_of,
    now,
    run_threads,
    scanned_ids,
    wait_until,
)
from prism_conformance.marks import requires_capability

#: Short enough to keep the suite fast, long enough to read an item back before
#: it expires on any sane backend.
TTL = timedelta(seconds=1)
#: How far a reported expiry may stray from write time + TTL: room for a
#: datastore that keeps milliseconds rather than microseconds.
EXPIRY_TOLERANCE = timedelta(milliseconds=10)


def _assert_expiry_near(item: Item, written_from: datetime, written_to: datetime, ttl: timedelta) -> None:
    assert item.expires_at is not None, f"item {item.key!r} was written with a TTL but reports no expires_at"
    low = written_from + ttl - EXPIRY_TOLERANCE
    high = written_to + ttl + EXPIRY_TOLERANCE
    assert low <= item.expires_at <= high, (
        f"item {item.key!r}: expires_at {item.expires_at.isoformat()} is not write time + {ttl} "
        f"(between {low.isoformat()} and {high.isoformat()})"
    )


class TtlTests(SuiteBase):
    def test_item_ttl_expires_and_reports_expires_at(self, kv: KeyValueHandle) -> None:
        started = time.monotonic()
        before = now()
        kv.put_items("r", [Item(b"short", b"gone soon", ttl=TTL), Item(b"forever", b"stays")])
        after = now()
        page = kv.get_items("r")
        if time.monotonic() - started < TTL.total_seconds() / 2:
            assert keys_of(page.items) == [b"forever", b"short"], (
                "an item with a TTL must be readable before it expires"
            )
        by_key = {item.key: item for item in page.items}
        assert by_key[b"forever"].expires_at is None, "an item without a TTL must report no expiry"
        if b"short" in by_key:
            _assert_expiry_near(by_key[b"short"], before, after, TTL)
            expires_at = by_key[b"short"].expires_at
        else:
            expires_at = after + TTL

        # When a read that began before expiry last saw the item, and when a read
        # that ended first saw it gone: expiry must fall between the two.
        last_seen_before_read = now()
        first_gone_after_read = now()

        def expired() -> bool:
            nonlocal last_seen_before_read, first_gone_after_read
            read_started = now()
            if b"short" in kv.get_items("r").as_dict():
                last_seen_before_read = read_started
                return False
            first_gone_after_read = now()
            return True

        wait_until(expired, what="an item written with ttl=1s is still returned")
        assert expires_at is not None
        assert last_seen_before_read < expires_at + EXPIRY_TOLERANCE, (
            f"a read begun at {last_seen_before_read.isoformat()} still returned an item that expired at "
            f"{expires_at.isoformat()}"
        )
        assert first_gone_after_read >= expires_at - EXPIRY_TOLERANCE, (
            f"the item vanished by {first_gone_after_read.isoformat()}, before its expires_at {expires_at.isoformat()}"
        )
        for predicate in (Keys([b"short", b"forever"]), KeyRange(b"s", b"t"), KeyRange()):
            assert b"short" not in kv.get_items("r", predicate).as_dict(), (
                f"expired item returned for {predicate!r}"
            )
        assert keys_of(all_items(kv, "r", limit=1)) == [b"forever"], "an expired item came back in pagination"
        assert kv.get_items("r").as_dict() == {b"forever": b"stays"}, "an item without a TTL expired"

    def test_namespace_default_ttl_applies_to_items_without_one(self) -> None:
        kv = self.open_namespace(needs={"ttl": "1s"})
        before = now()
        kv.put_items(
            "r", [Item(b"default", b"namespace ttl"), Item(b"own", b"item ttl", ttl=timedelta(hours=1))]
        )
        after = now()
        by_key = {item.key: item for item in kv.get_items("r").items}
        if b"default" in by_key:
            _assert_expiry_near(by_key[b"default"], before, after, TTL)
        _assert_expiry_near(by_key[b"own"], before, after, timedelta(hours=1))
        wait_until(
            lambda: b"default" not in kv.get_items("r").as_dict(),
            what="an item written without a TTL in a namespace with needs.ttl=1s is still returned",
        )
        assert kv.get_items("r").as_dict() == {b"own": b"item ttl"}, (
            "an item's own TTL must override the default"
        )

    def test_rewriting_an_item_replaces_its_expiry(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", [Item(b"was-short", b"1", ttl=TTL), Item(b"was-forever", b"1")])
        kv.put_items(
            "r", [Item(b"was-short", b"2"), Item(b"was-forever", b"2", ttl=TTL), Item(b"clock", b"", ttl=TTL)]
        )
        by_key = {item.key: item for item in kv.get_items("r").items}
        assert by_key[b"was-short"].expires_at is None, "a rewrite without a TTL must clear the old expiry"
        wait_until(
            lambda: b"clock" not in kv.get_items("r").as_dict(),
            what="an item written with ttl=1s is still returned",
        )
        wait_until(
            lambda: b"was-forever" not in kv.get_items("r").as_dict(),
            what="an item rewritten with ttl=1s is still returned",
        )
        assert kv.get_items("r").as_dict() == {b"was-short": b"2"}

    def test_expired_item_can_be_written_again(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", [Item(b"k", b"first", ttl=timedelta(milliseconds=50))])
        wait_until(
            lambda: not kv.get_items("r").items, what="an item written with ttl=50ms is still returned"
        )
        kv.put_items("r", {b"k": b"second"})
        assert kv.get_items("r").as_dict() == {b"k": b"second"}

    def test_purging_expired_items_never_removes_newer_writes(self, kv: KeyValueHandle) -> None:
        """A reader that finds expired items (and so may purge them) races a
        writer that rewrites the same keys: no rewrite may be lost to the purge.

        The reader walks a large record in batches while the writer rewrites it
        in small pieces, in random order, so writes land between a batch's read
        and its purge. The items must expire unread (any read may purge them):
        the test watches the clock pass their reported expiry, not the store."""
        keys = [f"k{i:04d}".encode() for i in range(1000)]
        records = [f"round-{n}" for n in range(6)]
        short = timedelta(milliseconds=300)
        for record in records:
            kv.put_items(record, [Item(k, b"expiring", ttl=short) for k in keys])
        reported = [item.expires_at for item in kv.get_items(records[-1], Keys([keys[0]])).items]
        latest = reported[0] if reported and reported[0] is not None else now() + short
        wait_until(lambda: now() > latest + EXPIRY_TOLERANCE, what="the clock to pass the items' expiry")
        rng = random.Random(5)
        for record in records:
            pieces = [keys[i : i + 25] for i in range(0, len(keys), 25)]
            rng.shuffle(pieces)

            def read(record: str = record) -> None:
                kv.get_items(record)

            def rewrite(record: str = record, pieces: list[list[bytes]] = pieces) -> None:
                for piece in pieces:
                    kv.put_items(record, {k: b"fresh" for k in piece})

            run_threads([read, rewrite])
            got = all_items(kv, record)
            assert [item.value for item in got] == [b"fresh"] * len(keys), (
                f"{record}: {len(keys) - len(got)} of {len(keys)} fresh writes were lost while expired rows of "
                "the same keys were purged; a purge must only remove the exact expired version it read"
            )

    def test_ttl_must_be_positive(self, kv: KeyValueHandle) -> None:
        for ttl in (timedelta(0), timedelta(seconds=-1)):
            with pytest.raises(prism.InvalidArgument):
                kv.put_items("r", [Item(b"k", b"v", ttl=ttl)])
        assert list(kv.get_items("r").items) == []

    @requires_capability(capabilities.KV_SCAN)
    def test_records_whose_items_all_expired_vanish_from_scan(self, kv: KeyValueHandle) -> None:
        # "mixed" is written first so its expiring item is due before the
        # "expiring" record's: once that record has vanished from the scan,
        # "mixed" must have lost `a` too, however slow the backend's writes.
        kv.put_items("mixed", [Item(b"a", b"1", ttl=TTL), Item(b"b", b"2")])
        kv.put_items("expiring", [Item(b"a", b"1", ttl=TTL), Item(b"b", b"2", ttl=TTL)])
        kv.put_items("kept", {b"a": b"1"})
        wait_until(
            lambda: scanned_ids(kv) == ["kept", "mixed"],
            what="a record whose items all expired is still listed by scan (or a live record vanished)",
        )
        assert kv.get_items("mixed").as_dict() == {b"b": b"2"}
