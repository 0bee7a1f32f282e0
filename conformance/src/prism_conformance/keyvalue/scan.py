"""``scan``: every record of a namespace, in order, across pages. Tests of the
``kv.scan`` capability."""

from __future__ import annotations

import math

import pytest

import prism
from prism import Item, Keys, capabilities
from prism_conformance.handles import KeyValueHandle
from prism_conformance.keyvalue.base import SuiteBase
from prism_conformance.keyvalue.support import record_pages, scanned_ids, utf8_order
from prism_conformance.marks import requires_capability

RECORD_IDS = [
    *(f"user:{i}" for i in range(20)),
    "a",
    "a b",
    "a\tb",
    "Z",
    "zz",
    "ü",
    "日本",
    "🙂",
    "~tilde",
    "é",
]


class ScanTests(SuiteBase):
    @requires_capability(capabilities.KV_SCAN)
    def test_scan_of_an_empty_namespace_is_empty(self, kv: KeyValueHandle) -> None:
        page = kv.scan()
        assert list(page.record_ids) == []
        assert page.next_page_token is None

    @requires_capability(capabilities.KV_SCAN)
    def test_scan_lists_every_record_once_in_order_across_pages(self, kv: KeyValueHandle) -> None:
        for record in RECORD_IDS:
            kv.put_items(record, {b"k": record.encode()})
        expected = utf8_order(RECORD_IDS)
        for limit in (1, 3, len(expected) - 1, len(expected), len(expected) + 1, None):
            pages = record_pages(kv, limit=limit)
            got = [record for page in pages for record in page.record_ids]
            assert got == expected, (
                f"scan with limit={limit} did not list every record exactly once in UTF-8 order: "
                f"missing {sorted(set(expected) - set(got))!r}, repeated {sorted({r for r in got if got.count(r) > 1})!r}"
            )
            if limit is not None:
                for number, page in enumerate(pages):
                    assert len(page.record_ids) <= limit
                    if page.next_page_token is not None:
                        assert len(page.record_ids) == limit, f"scan page {number} is short but not the last"
                assert len(pages) == math.ceil(len(expected) / limit)

    @requires_capability(capabilities.KV_SCAN)
    def test_scan_skips_records_whose_items_are_all_deleted(self, kv: KeyValueHandle) -> None:
        for record in ("a", "b", "c", "d", "e"):
            kv.put_items(record, {b"k1": b"v", b"k2": b"v"})
        kv.delete_items("b")
        kv.delete_items("d", Keys([b"k1", b"k2"]))
        kv.delete_items("e", Keys([b"k1"]))
        assert scanned_ids(kv, limit=1) == ["a", "c", "e"]
        assert scanned_ids(kv) == ["a", "c", "e"]
        kv.put_items("b", [Item(b"k", b"back")])
        assert scanned_ids(kv, limit=2) == ["a", "b", "c", "e"]

    @requires_capability(capabilities.KV_SCAN)
    def test_scan_continues_after_writes_between_pages(self, kv: KeyValueHandle) -> None:
        for record in ("b", "d", "f", "h"):
            kv.put_items(record, {b"k": b"v"})
        first = kv.scan(limit=2)
        assert list(first.record_ids) == ["b", "d"]
        assert first.next_page_token is not None
        kv.put_items("a", {b"k": b"v"})
        kv.put_items("g", {b"k": b"v"})
        kv.delete_items("f")
        rest = [
            record
            for page in record_pages(kv, limit=2, page_token=first.next_page_token)
            for record in page.record_ids
        ]
        assert rest == ["g", "h"]

    @requires_capability(capabilities.KV_SCAN)
    def test_scan_page_token_is_refused_elsewhere(self) -> None:
        first, second = self.open_namespaces(2)
        for kv in (first, second):
            for record in ("a", "b", "c"):
                kv.put_items(record, {b"k": b"v"})
        token = first.scan(limit=1).next_page_token
        assert token is not None
        with pytest.raises(prism.InvalidPageToken) as refused:
            second.scan(limit=1, page_token=token)
        assert refused.value.namespace == second.name
        with pytest.raises(prism.InvalidPageToken):
            first.get_items("a", limit=1, page_token=token)
        body, _, mac = token.partition(".")
        middle = len(body) // 2
        tampered = body[:middle] + ("A" if body[middle] != "A" else "B") + body[middle + 1 :] + "." + mac
        for bad in (tampered, body + "." + mac[:-2], "", "garbage"):
            with pytest.raises(prism.InvalidPageToken):
                first.scan(limit=1, page_token=bad)
        assert list(first.scan(limit=1, page_token=token).record_ids) == ["b"]

    @requires_capability(capabilities.KV_SCAN)
    def test_scan_default_page_respects_the_namespace_page_limit(self) -> None:
        kv = self.open_namespace(limits={"max_page_items": 5})
        records = [f"r{i}" for i in range(7)]
        for record in records:
            kv.put_items(record, {b"k": b"v"})
        page = kv.scan()
        assert len(page.record_ids) <= 5, "a scan without a limit returned more than limits.max_page_items"
        assert scanned_ids(kv) == records
