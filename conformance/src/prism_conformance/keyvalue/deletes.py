"""Deleting items: all of a record, by keys, by range; and writing again after."""

from __future__ import annotations

import pytest

import prism
from prism import AllItems, KeyRange, Keys, capabilities
from prism_conformance.handles import KeyValueHandle
from prism_conformance.keyvalue.base import SuiteBase
from prism_conformance.keyvalue.support import all_items, item_pages, keys_of, scanned_ids

LETTERS = [bytes([c]) for c in b"abcdef"]


class DeleteTests(SuiteBase):
    def test_delete_without_a_predicate_removes_the_whole_record(self, kv: KeyValueHandle) -> None:
        kv.put_items("doomed", {k: k for k in LETTERS})
        kv.put_items("neighbour", {b"a": b"stays"})
        kv.delete_items("doomed")
        assert list(kv.get_items("doomed").items) == []
        assert kv.get_items("neighbour").as_dict() == {b"a": b"stays"}
        if capabilities.KV_SCAN in kv.capabilities:
            assert scanned_ids(kv) == ["neighbour"], (
                "a record with every item deleted is still listed by scan"
            )
        kv.put_items("again", {k: k for k in LETTERS})
        kv.delete_items("again", AllItems())
        assert list(kv.get_items("again").items) == []

    def test_delete_by_keys_ignores_missing_keys(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {k: k for k in LETTERS})
        kv.delete_items("r", Keys([b"b", b"zz", b"d", b"\x00"]))
        assert keys_of(kv.get_items("r").items) == [b"a", b"c", b"e", b"f"]

    def test_delete_by_range_removes_start_and_keeps_end(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {k: k for k in LETTERS})
        kv.delete_items("r", KeyRange(b"b", b"e"))
        assert keys_of(kv.get_items("r").items) == [b"a", b"e", b"f"], "[b, e) deletes b, c, d and keeps e"
        kv.delete_items("r", KeyRange(start=b"f"))
        assert keys_of(kv.get_items("r").items) == [b"a", b"e"]
        kv.delete_items("r", KeyRange(end=b"e"))
        assert keys_of(kv.get_items("r").items) == [b"e"]
        kv.delete_items("r", KeyRange(b"e", b"e"))
        assert keys_of(kv.get_items("r").items) == [b"e"], "an empty range deletes nothing"

    def test_delete_by_range_with_binary_edge_keys(self, kv: KeyValueHandle) -> None:
        edges = [b"\x00", b"\x00\x00", b"\x01", b"\xff", b"\xff\xff"]
        kv.put_items("r", {k: b"v" for k in edges})
        kv.delete_items("r", KeyRange(b"\x00\x00", b"\xff"))
        assert keys_of(kv.get_items("r").items) == [b"\x00", b"\xff", b"\xff\xff"]

    def test_delete_by_range_across_many_items(self, kv: KeyValueHandle) -> None:
        keys = [f"{i:05d}".encode() for i in range(600)]
        kv.put_items("r", {k: b"v" for k in keys})
        kv.delete_items("r", KeyRange(b"00100", b"00550"))
        expected = keys[:100] + keys[550:]
        assert keys_of(all_items(kv, "r", limit=64)) == expected, (
            "a range delete over hundreds of items left some behind or took too many"
        )

    def test_delete_then_put_brings_the_item_back(self, kv: KeyValueHandle) -> None:
        for round_number in range(3):
            value = f"round {round_number}".encode()
            kv.put_items("r", {b"k": value, b"other": value})
            assert kv.get_items("r").as_dict() == {b"k": value, b"other": value}
            kv.delete_items("r", Keys([b"k"]))
            assert kv.get_items("r").as_dict() == {b"other": value}
            kv.delete_items("r")
            assert list(kv.get_items("r").items) == []

    def test_delete_of_something_missing_is_a_no_op(self, kv: KeyValueHandle) -> None:
        kv.delete_items("never-written")
        kv.delete_items("never-written", Keys([b"a"]))
        kv.delete_items("never-written", KeyRange(b"a", b"z"))
        assert list(kv.get_items("never-written").items) == []
        kv.put_items("r", {b"a": b"1"})
        kv.delete_items("r", Keys([b"b"]))
        kv.delete_items("r", KeyRange(b"b", b"z"))
        assert kv.get_items("r").as_dict() == {b"a": b"1"}

    def test_deleted_items_vanish_from_pages(self, kv: KeyValueHandle) -> None:
        keys = [f"k{i:02d}".encode() for i in range(20)]
        kv.put_items("r", {k: b"v" for k in keys})
        kv.delete_items("r", Keys(keys[::2]))
        pages = item_pages(kv, "r", limit=3)
        assert [keys_of(page.items) for page in pages] == [keys[1::2][i : i + 3] for i in range(0, 10, 3)], (
            "pages must skip deleted items and still be full"
        )

    def test_delete_by_keys_validates_the_keys(self) -> None:
        kv = self.open_namespace(limits={"max_key_bytes": 16, "max_items_per_call": 5})
        kv.put_items("r", {b"k": b"v"})
        with pytest.raises(prism.LimitExceeded) as too_long:
            kv.delete_items("r", Keys([b"k", b"x" * 17]))
        assert too_long.value.namespace == kv.name
        assert too_long.value.limit_name == "max_key_bytes"
        with pytest.raises(prism.InvalidArgument):
            kv.delete_items("r", Keys([b"k", b""]))
        with pytest.raises(prism.LimitExceeded) as too_many:
            kv.delete_items("r", Keys([b"k", b"a", b"b", b"c", b"d", b"e"]))
        assert too_many.value.limit_name == "max_items_per_call"
        assert kv.get_items("r").as_dict() == {b"k": b"v"}, "a refused delete removed items"
