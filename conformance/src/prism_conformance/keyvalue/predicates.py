"""Predicates: all items, a list of keys, and key ranges ``[start, end)``."""

from __future__ import annotations

import pytest

import prism
from prism import KeyRange, Keys
from prism_conformance.handles import KeyValueHandle
from prism_conformance.keyvalue.base import SuiteBase
from prism_conformance.keyvalue.support import all_items, keys_of

LETTERS = [bytes([c]) for c in b"abcdef"]
EDGES = [b"\x00", b"\x00\x00", b"\x01", b"\xff", b"\xff\xff"]


class PredicateTests(SuiteBase):
    def test_keys_predicate_returns_existing_keys_in_key_order(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {k: k.upper() for k in LETTERS})
        got = kv.get_items("r", Keys([b"d", b"zz", b"b", b"a", b"b", b"\x00"]))
        assert keys_of(got.items) == [b"a", b"b", b"d"], "Keys must return only existing keys, in key order"
        assert [item.value for item in got.items] == [b"A", b"B", b"D"]
        assert got.next_page_token is None

    def test_keys_predicate_with_only_missing_keys_is_empty(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {b"a": b"1"})
        assert list(kv.get_items("r", Keys([b"b", b"aa", b"\x00a"])).items) == []
        assert list(kv.get_items("r", Keys([])).items) == []

    def test_range_includes_start_and_excludes_end(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {k: k for k in LETTERS})
        assert keys_of(kv.get_items("r", KeyRange(b"b", b"e")).items) == [b"b", b"c", b"d"]
        assert keys_of(kv.get_items("r", KeyRange(b"a", b"b")).items) == [b"a"], "start must be included"
        assert keys_of(kv.get_items("r", KeyRange(b"e", b"f")).items) == [b"e"], "end must be excluded"

    def test_range_bounds_between_keys(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {b"aa": b"1", b"bb": b"2", b"cc": b"3"})
        assert keys_of(kv.get_items("r", KeyRange(b"ab", b"cb")).items) == [b"bb"]
        assert keys_of(kv.get_items("r", KeyRange(b"a", b"bb")).items) == [b"aa"]
        assert keys_of(kv.get_items("r", KeyRange(b"bb\x00", b"zz")).items) == [b"cc"]

    def test_open_ended_ranges(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {k: k for k in LETTERS})
        assert keys_of(kv.get_items("r", KeyRange(start=b"d")).items) == [b"d", b"e", b"f"]
        assert keys_of(kv.get_items("r", KeyRange(end=b"c")).items) == [b"a", b"b"]
        assert keys_of(kv.get_items("r", KeyRange()).items) == LETTERS

    def test_empty_range_selects_nothing(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {k: k for k in LETTERS})
        assert list(kv.get_items("r", KeyRange(b"c", b"c")).items) == [], "[c, c) is empty"
        assert list(kv.get_items("r", KeyRange(b"g", None)).items) == []
        assert list(kv.get_items("r", KeyRange(None, b"a")).items) == []

    def test_range_with_binary_edge_keys(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {k: b"v" for k in EDGES})

        def selected(start: bytes | None, end: bytes | None) -> list[bytes]:
            return keys_of(all_items(kv, "r", KeyRange(start, end)))

        assert selected(b"\x00", b"\x01") == [b"\x00", b"\x00\x00"]
        assert selected(b"\x00\x00", b"\xff") == [b"\x00\x00", b"\x01"]
        assert selected(b"\xff", None) == [b"\xff", b"\xff\xff"]
        assert selected(None, b"\x00\x00") == [b"\x00"]
        assert selected(None, b"\x00") == []
        assert selected(b"\x00\x00\x00", b"\x01\x00") == [b"\x01"]
        assert selected(b"\xff\xff", None) == [b"\xff\xff"]
        assert selected(None, None) == EDGES

    def test_range_start_after_end_is_invalid(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {b"a": b"1"})
        with pytest.raises(prism.InvalidArgument):
            kv.get_items("r", KeyRange(b"b", b"a"))
