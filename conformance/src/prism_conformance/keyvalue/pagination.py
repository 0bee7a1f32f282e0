"""Pagination bounded in count and in bytes, and the page tokens that carry it."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

import prism
from prism import AllItems, Item, ItemsPage, KeyRange, Keys, capabilities
from prism.models import Predicate
from prism_conformance.handles import KeyValueHandle
from prism_conformance.keyvalue.base import SuiteBase
from prism_conformance.keyvalue.support import item_pages, keys_of, pairs
from prism_conformance.marks import NotApplicable

#: Record sizes and page limits the count-pagination property is checked on.
RECORD_SIZES = (0, 1, 2, 5, 17, 40)
PAGE_LIMITS = (1, 2, 3, 7, 64)
KiB = 1024
MiB = 1024 * KiB


def _random_keys(rng: random.Random, count: int) -> list[bytes]:
    """Distinct keys of 1 to 6 bytes, biased toward 0x00 and 0xFF."""
    alphabet = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, *range(0x20, 0x7F)]
    keys: set[bytes] = set()
    while len(keys) < count:
        keys.add(bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
    return sorted(keys)


def _check_count_pages(
    pages: Sequence[ItemsPage], expected: list[tuple[bytes, bytes]], limit: int, what: str
) -> None:
    got = [pair for page in pages for pair in pairs(page.items)]
    assert got == expected, (
        f"{what}: pages with limit={limit} did not return every item exactly once in key order "
        f"({len(got)} items returned, {len(expected)} expected; "
        f"missing {sorted(set(expected) - set(got))[:5]!r}, "
        f"repeated {sorted({p for p in got if got.count(p) > 1})[:5]!r})"
    )
    for number, page in enumerate(pages):
        assert len(page.items) <= limit, (
            f"{what}: page {number} holds {len(page.items)} items, over limit={limit}"
        )
        if page.next_page_token is not None:
            assert len(page.items) == limit, (
                f"{what}: page {number} holds {len(page.items)} items but is not the last; "
                f"a page is short only at the end"
            )
    assert len(pages) == max(1, math.ceil(len(expected) / limit)), (
        f"{what}: {len(pages)} pages for {len(expected)} items at limit={limit}; the last full page "
        "must not hand out a token to an empty page"
    )


class PaginationTests(SuiteBase):
    def test_pagination_by_count_returns_every_item_once_in_order(self, kv: KeyValueHandle) -> None:
        rng = random.Random(20240611)
        for size in RECORD_SIZES:
            record = f"size-{size}"
            keys = _random_keys(rng, size)
            shuffled = keys[:]
            rng.shuffle(shuffled)
            if shuffled:
                kv.put_items(record, [Item(k, b"value-of-" + k) for k in shuffled])
            everything = [(k, b"value-of-" + k) for k in keys]
            # A range cutting through the middle and a key list with absent keys.
            low, high = (keys[size // 4], keys[3 * size // 4]) if size >= 4 else (b"\x00", b"\xff\xff")
            wanted = set(rng.sample(keys, size // 2)) | {b"\x00absent", b"\xffabsent"}
            predicates: list[tuple[Predicate, list[tuple[bytes, bytes]]]] = [
                (AllItems(), everything),
                (KeyRange(low, high), [(k, v) for k, v in everything if low <= k < high]),
                (Keys(wanted), [(k, v) for k, v in everything if k in wanted]),
            ]
            for limit in PAGE_LIMITS:
                for predicate, expected in predicates:
                    pages = item_pages(kv, record, predicate, limit=limit)
                    _check_count_pages(pages, expected, limit, f"record of {size} items, {predicate!r}")

    def test_page_ends_exactly_at_the_byte_limit(self, kv: KeyValueHandle) -> None:
        # Six items of exactly 100 bytes each (4-byte key + 96-byte value).
        items = [Item(f"k{i:03d}".encode(), bytes([65 + i]) * 96) for i in range(6)]
        kv.put_items("r", items)
        expected = pairs(items)
        for page_size, per_page in ((300, 3), (299, 2), (301, 3), (100, 1), (199, 1), (600, 6), (10_000, 6)):
            pages = item_pages(kv, "r", page_size_bytes=page_size)
            sizes = [len(page.items) for page in pages]
            want = [per_page] * (6 // per_page) + ([6 % per_page] if 6 % per_page else [])
            assert sizes == want, (
                f"page_size_bytes={page_size} with items of 100 bytes (key + value): pages held {sizes} items, "
                f"expected {want}; a page may be filled exactly to the byte limit and never over it"
            )
            assert [pair for page in pages for pair in pairs(page.items)] == expected

    def test_item_larger_than_a_page_comes_alone(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {b"a": b"x" * 9, b"big": b"B" * 500, b"c": b"y" * 9})
        pages = item_pages(kv, "r", page_size_bytes=100)
        assert [keys_of(page.items) for page in pages] == [[b"a"], [b"big"], [b"c"]], (
            "an item larger than the page size must come alone on its own page"
        )
        kv.put_items("big-first", {b"a": b"A" * 300, b"b": b"b"})
        pages = item_pages(kv, "big-first", page_size_bytes=100)
        assert [keys_of(page.items) for page in pages] == [[b"a"], [b"b"]]

    def test_count_and_byte_bounds_apply_together(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {f"k{i}".encode(): b"v" * 48 for i in range(10)})  # 50 bytes each
        assert [len(p.items) for p in item_pages(kv, "r", limit=3, page_size_bytes=1000)] == [3, 3, 3, 1]
        assert [len(p.items) for p in item_pages(kv, "r", limit=5, page_size_bytes=100)] == [2, 2, 2, 2, 2]

    def test_default_page_is_bounded_at_two_mib(self, kv: KeyValueHandle) -> None:
        if self.max_value_bytes(kv) < 512 * KiB:
            raise NotApplicable("the backend holds values below 512 KiB, needed to fill a 2 MiB page")
        # Five items of exactly 512 KiB (1-byte key): four fill the default 2 MiB page exactly.
        kv.put_items("r", {bytes([65 + i]): bytes([i]) * (512 * KiB - 1) for i in range(5)})
        pages = item_pages(kv, "r")
        assert [len(page.items) for page in pages] == [4, 1], (
            "with no page_size_bytes a page holds at most 2 MiB of keys and values"
        )

    def test_namespace_page_size_sets_the_default(self) -> None:
        kv = self.open_namespace(limits={"page_size_bytes": 300})
        kv.put_items("r", {f"k{i:03d}".encode(): b"v" * 96 for i in range(7)})
        assert [len(page.items) for page in item_pages(kv, "r")] == [3, 3, 1]

    def test_page_requests_over_the_limits_are_refused(self) -> None:
        kv = self.open_namespace(limits={"max_page_items": 10, "max_page_size_bytes": 1000})
        kv.put_items("r", {b"k": b"v"})
        with pytest.raises(prism.LimitExceeded) as too_many:
            kv.get_items("r", limit=11)
        assert too_many.value.namespace == kv.name
        assert too_many.value.limit_name == "max_page_items"
        with pytest.raises(prism.LimitExceeded) as too_big:
            kv.get_items("r", page_size_bytes=1001)
        assert too_big.value.namespace == kv.name
        assert too_big.value.limit_name == "max_page_size_bytes"
        for limit in (0, -1):
            with pytest.raises(prism.InvalidArgument):
                kv.get_items("r", limit=limit)
        with pytest.raises(prism.InvalidArgument):
            kv.get_items("r", page_size_bytes=0)
        assert len(kv.get_items("r", limit=10, page_size_bytes=1000).items) == 1

    def test_page_token_can_be_replayed(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {f"k{i}".encode(): b"v" for i in range(6)})
        first = kv.get_items("r", limit=2)
        assert first.next_page_token is not None
        again = kv.get_items("r", limit=2, page_token=first.next_page_token)
        once_more = kv.get_items("r", limit=2, page_token=first.next_page_token)
        assert pairs(again.items) == pairs(once_more.items) == [(b"k2", b"v"), (b"k3", b"v")], (
            "a page token is a cursor: reading the same page twice (a client retry) gives the same items"
        )

    def test_pagination_continues_after_writes_between_pages(self, kv: KeyValueHandle) -> None:
        letters = [bytes([c]) for c in b"acegikmoqs"]
        kv.put_items("r", {k: b"old" for k in letters})
        first = kv.get_items("r", limit=3)
        assert keys_of(first.items) == [b"a", b"c", b"e"]
        assert first.next_page_token is not None
        # Before the cursor, after it, and an item of the next page deleted.
        kv.put_items("r", {b"b": b"new", b"h": b"new", b"z": b"new"})
        kv.delete_items("r", Keys([b"i"]))
        rest = [
            key
            for page in item_pages(kv, "r", limit=3, page_token=first.next_page_token)
            for key in keys_of(page.items)
        ]
        assert rest == [b"g", b"h", b"k", b"m", b"o", b"q", b"s", b"z"], (
            "after the cursor, later pages show the record as it is when they are read: new keys after "
            "the cursor appear, deleted ones do not, and nothing before the cursor repeats"
        )

    def test_page_token_is_refused_in_another_namespace(self) -> None:
        first, second = self.open_namespaces(2)
        for kv in (first, second):
            kv.put_items("r", {f"k{i}".encode(): b"v" for i in range(5)})
        token = first.get_items("r", limit=2).next_page_token
        assert token is not None
        with pytest.raises(prism.InvalidPageToken) as refused:
            second.get_items("r", limit=2, page_token=token)
        assert refused.value.namespace == second.name

    def test_page_token_is_refused_for_another_record(self, kv: KeyValueHandle) -> None:
        for record in ("r1", "r2"):
            kv.put_items(record, {f"k{i}".encode(): b"v" for i in range(5)})
        token = kv.get_items("r1", limit=2).next_page_token
        assert token is not None
        with pytest.raises(prism.InvalidPageToken):
            kv.get_items("r2", limit=2, page_token=token)

    def test_page_token_is_refused_for_another_predicate(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {f"k{i}".encode(): b"v" for i in range(8)})
        issued_for: list[Predicate] = [AllItems(), KeyRange(b"k0", b"k7"), Keys([b"k1", b"k2", b"k3", b"k4"])]
        presented_with: list[Predicate] = [
            AllItems(),
            KeyRange(),
            KeyRange(b"k0", b"k6"),
            KeyRange(b"k1", b"k7"),
            KeyRange(b"k0", b"k7"),
            Keys([b"k1", b"k2", b"k3"]),
            Keys([b"k1", b"k2", b"k3", b"k4"]),
        ]
        for original in issued_for:
            token = kv.get_items("r", original, limit=1).next_page_token
            assert token is not None
            for other in presented_with:
                if other == original:
                    continue
                with pytest.raises(prism.InvalidPageToken):
                    kv.get_items("r", other, limit=1, page_token=token)
            assert len(kv.get_items("r", original, limit=1, page_token=token).items) == 1

    def test_tampered_page_token_is_refused(self, kv: KeyValueHandle) -> None:
        kv.put_items("r", {f"k{i}".encode(): b"v" for i in range(5)})
        token = kv.get_items("r", limit=2).next_page_token
        assert token is not None
        body, _, mac = token.partition(".")

        def flip(text: str, at: int) -> str:
            replacement = "A" if text[at] != "A" else "B"
            return text[:at] + replacement + text[at + 1 :]

        tampered = [
            flip(body, len(body) // 2) + "." + mac,
            body + "." + flip(mac, len(mac) // 2),
            body + "." + mac[:-4],
            body[:-4] + "." + mac,
            body + "." + mac + "AAAA",
            body,
            "",
            "not a page token",
            "é.é",
            mac + "." + body,
        ]
        for bad in tampered:
            with pytest.raises(prism.InvalidPageToken):
                kv.get_items("r", limit=2, page_token=bad)
        if capabilities.KV_SCAN in kv.capabilities:
            with pytest.raises(prism.InvalidPageToken):
                kv.scan(page_token=token)
