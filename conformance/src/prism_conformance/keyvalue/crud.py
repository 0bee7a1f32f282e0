"""Writing and reading items: the data model, key order, empty and binary data,
and isolation between records, namespaces and tests."""

from __future__ import annotations

import random

from prism import Item, KeyRange, Keys, capabilities
from prism_conformance.handles import KeyValueHandle
from prism_conformance.keyvalue.base import SuiteBase
from prism_conformance.keyvalue.support import all_items, keys_of, pairs, scanned_ids

#: Written by one test and looked for by the next: it must never be found.
LEAK_PROBE_RECORD = "prism-conformance-leak-probe"

#: Keys that expose any order but unsigned bytewise: a NUL prefix, a key that is
#: a prefix of another, the sign bit, and 0xFF.
EDGE_KEYS = (
    b"\x00",
    b"\x00\x00",
    b"\x00\x01",
    b"\x00\xff",
    b"\x01",
    b"\x7f",
    b"\x80",
    b"a",
    b"a\x00",
    b"ab",
    b"\xfe\xff",
    b"\xff",
    b"\xff\x00",
    b"\xff\xff",
)


class CrudTests(SuiteBase):
    def test_fresh_namespace_is_empty(self, kv: KeyValueHandle) -> None:
        page = kv.get_items("any-record")
        assert list(page.items) == [], f"a fresh namespace returned items: {page.items!r}"
        assert page.next_page_token is None
        if capabilities.KV_SCAN in kv.capabilities:
            assert scanned_ids(kv) == [], "a scan of a fresh namespace listed records"

    def test_put_then_get_returns_items_in_key_order(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {b"b": b"2", b"c": b"3", b"a": b"1"})
        page = kv.get_items("r")
        assert pairs(page.items) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
        assert page.next_page_token is None, "a listing that fits one page must not hand out a page token"
        assert all(item.expires_at is None for item in page.items), (
            "items written without a TTL got an expiry"
        )

    def test_put_overwrites_items_and_keeps_the_others(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {b"a": b"1", b"b": b"2"})
        kv.put_items("r", {b"b": b"two", b"c": b"3"})
        assert pairs(all_items(kv, "r")) == [(b"a", b"1"), (b"b", b"two"), (b"c", b"3")]

    def test_get_of_a_missing_record_is_empty(self, kv: KeyValueHandle) -> None:
        kv.put_items("present", {b"k": b"v"})
        for predicate in (None, Keys([b"k"]), KeyRange(b"a", b"z")):
            page = kv.get_items("absent", predicate)
            assert list(page.items) == [], predicate
            assert page.next_page_token is None, predicate

    def test_empty_value_is_stored_and_differs_from_a_missing_item(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {b"empty": b"", b"full": b"x"})
        assert pairs(kv.get_items("r").items) == [(b"empty", b""), (b"full", b"x")]
        assert pairs(kv.get_items("r", Keys([b"empty", b"absent"])).items) == [(b"empty", b"")]
        assert pairs(kv.get_items("r", KeyRange(b"e", b"f")).items) == [(b"empty", b"")]
        kv.put_items("r", {b"full": b"", b"empty": b"now set"})
        assert pairs(kv.get_items("r").items) == [(b"empty", b"now set"), (b"full", b"")]

    def test_binary_keys_sort_bytewise_unsigned(self, kv: KeyValueHandle) -> None:
        shuffled = list(EDGE_KEYS)
        random.Random(1).shuffle(shuffled)
        # One record written in one call, another key by key: both orders must hold.
        kv.put_items("together", [Item(key, b"v:" + key) for key in shuffled])
        for key in shuffled:
            kv.put_items("one-by-one", [Item(key, b"v:" + key)])
        expected = sorted(EDGE_KEYS)
        assert (
            expected.index(b"\x00")
            < expected.index(b"\x00\x00")
            < expected.index(b"\x01")
            < expected.index(b"\xff")
        )
        for record in ("together", "one-by-one"):
            got = kv.get_items(record).items
            assert keys_of(got) == expected, (
                f"{record}: keys not in unsigned bytewise order: {keys_of(got)!r}"
            )
            assert all(item.value == b"v:" + item.key for item in got), f"{record}: values mixed up"
            one_at_a_time = all_items(kv, record, limit=1)
            assert keys_of(one_at_a_time) == expected, (
                f"{record}: paging one item at a time changed the order"
            )

    def test_binary_values_round_trip(self, kv: KeyValueHandle) -> None:
        values = {
            b"every-byte": bytes(range(256)),
            b"nuls": b"\x00" * 64,
            b"ffs": b"\xff" * 64,
            b"not-utf8": b"\xc3\x28\xa0\xa1\xe2\x28\xa1",
            b"trailing-nul": b"value\x00",
        }
        kv.put_items("r", values)
        assert dict(pairs(kv.get_items("r").items)) == values

    def test_str_keys_and_values_are_stored_as_utf8(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {"ключ": "значение", "k": "v"})
        assert pairs(kv.get_items("r").items) == [(b"k", b"v"), ("ключ".encode(), "значение".encode())]

    def test_records_are_independent(self, kv: KeyValueHandle) -> None:
        # Ids that are prefixes of one another, as a naive key layout would confuse.
        records = ["user:1", "user:10", "user:1:", "user", "user:1\t", "User:1", "USER:1"]
        for record in records:
            kv.put_items(record, {b"k": record.encode(), b"only-" + record.encode(): b"x"})
        for record in records:
            assert pairs(kv.get_items(record).items) == sorted(
                [(b"k", record.encode()), (b"only-" + record.encode(), b"x")]
            ), record
        kv.delete_items("user:1")
        assert list(kv.get_items("user:1").items) == []
        for record in records[1:]:
            assert kv.get_items(record, Keys([b"k"])).as_dict() == {b"k": record.encode()}, record

    def test_record_ids_may_be_any_unicode_text(self, kv: KeyValueHandle) -> None:
        records = [
            "ü",
            "日本語",
            "with space",
            "slash/and:colon",
            "emoji-🙂",
            "quote'\"",
            "semi;--",
            "Ω" * 50,
        ]
        for record in records:
            kv.put_items(record, {b"id": record.encode()})
        for record in records:
            assert kv.get_items(record).as_dict() == {b"id": record.encode()}, record

    def test_namespaces_are_isolated(self) -> None:
        first, second = self.open_namespaces(2)
        first.put_items("shared-id", {b"k": b"first"})
        assert list(second.get_items("shared-id").items) == [], (
            "a write to one namespace is visible in another"
        )
        second.put_items("shared-id", {b"k": b"second"})
        assert first.get_items("shared-id").as_dict() == {b"k": b"first"}
        assert second.get_items("shared-id").as_dict() == {b"k": b"second"}
        first.delete_items("shared-id")
        assert second.get_items("shared-id").as_dict() == {b"k": b"second"}, (
            "a delete reached another namespace"
        )
        if capabilities.KV_SCAN in first.capabilities:
            first.put_items("only-in-first", {b"k": b"v"})
            assert scanned_ids(second) == ["shared-id"], "a scan listed another namespace's records"

    def test_isolation_1_writes_a_probe(self, kv: KeyValueHandle) -> None:
        """Writes a record the next test must not see (they run in this order)."""
        kv.put_items(LEAK_PROBE_RECORD, {b"probe": b"written by an earlier test"})
        assert kv.get_items(LEAK_PROBE_RECORD).as_dict() == {b"probe": b"written by an earlier test"}

    def test_isolation_2_the_probe_is_gone(self, kv: KeyValueHandle) -> None:
        """Runs after the probe was written: a fresh namespace must not show it."""
        assert list(kv.get_items(LEAK_PROBE_RECORD).items) == [], (
            "data leaked from an earlier test's namespace"
        )
        if capabilities.KV_SCAN in kv.capabilities:
            assert scanned_ids(kv) == [], "a fresh namespace's scan lists records of an earlier test"
