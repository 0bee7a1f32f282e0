"""Small helpers the KeyValue suite tests share: walking every page,
deterministic data and readable diffs (polling and threads come from
:mod:`prism_conformance.support`)."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from prism import IdempotencyToken, Item, ItemsPage, RecordsPage
from prism.models import Predicate

# Shared with the other suites; re-exported so the KeyValue tests import them from here.
from prism_conformance.handles import KeyValueHandle
from prism_conformance.support import (
    POLL_DEADLINE,
    POLL_INTERVAL,
    THREAD_DEADLINE,
    ThreadOutcome,
    run_threads,
    wait_until,
)

__all__ = [
    "MAX_PAGES",
    "POLL_DEADLINE",
    "POLL_INTERVAL",
    "THREAD_DEADLINE",
    "ThreadOutcome",
    "Tokens",
    "all_items",
    "describe_bytes_difference",
    "item_pages",
    "keys_of",
    "now",
    "pairs",
    "random_bytes",
    "record_pages",
    "run_threads",
    "scanned_ids",
    "utf8_order",
    "wait_until",
]

#: Guards against a page token that never ends a listing.
MAX_PAGES = 5_000


def now() -> datetime:
    return datetime.now(UTC)


def pairs(items: Iterable[Item]) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs, the shape most assertions compare."""
    return [(item.key, item.value) for item in items]


def keys_of(items: Iterable[Item]) -> list[bytes]:
    return [item.key for item in items]


def item_pages(
    kv: KeyValueHandle,
    record_id: str,
    predicate: Predicate | None = None,
    *,
    limit: int | None = None,
    page_size_bytes: int | None = None,
    page_token: str | None = None,
) -> list[ItemsPage]:
    """Every page of one listing (from ``page_token`` on, if given), following
    ``next_page_token`` to the end."""
    pages: list[ItemsPage] = []
    token = page_token
    while True:
        if len(pages) >= MAX_PAGES:
            raise AssertionError(f"record {record_id!r}: more than {MAX_PAGES} pages; the listing never ends")
        pages.append(
            kv.get_items(record_id, predicate, limit=limit, page_size_bytes=page_size_bytes, page_token=token)
        )
        token = pages[-1].next_page_token
        if token is None:
            return pages


def all_items(
    kv: KeyValueHandle,
    record_id: str,
    predicate: Predicate | None = None,
    *,
    limit: int | None = None,
    page_size_bytes: int | None = None,
) -> list[Item]:
    """Every item of one listing, across all its pages."""
    return [
        item
        for page in item_pages(kv, record_id, predicate, limit=limit, page_size_bytes=page_size_bytes)
        for item in page.items
    ]


def record_pages(
    kv: KeyValueHandle, *, limit: int | None = None, page_token: str | None = None
) -> list[RecordsPage]:
    """Every page of a scan (from ``page_token`` on, if given)."""
    pages: list[RecordsPage] = []
    token = page_token
    while True:
        if len(pages) >= MAX_PAGES:
            raise AssertionError(
                f"namespace {kv.name!r}: more than {MAX_PAGES} scan pages; the scan never ends"
            )
        pages.append(kv.scan(limit=limit, page_token=token))
        token = pages[-1].next_page_token
        if token is None:
            return pages


def scanned_ids(kv: KeyValueHandle, *, limit: int | None = None) -> list[str]:
    return [record_id for page in record_pages(kv, limit=limit) for record_id in page.record_ids]


def utf8_order(record_ids: Iterable[str]) -> list[str]:
    """Record ids in the order a scan lists them: by their UTF-8 bytes."""
    return sorted(record_ids, key=lambda r: r.encode("utf-8"))


class Tokens:
    """Idempotency tokens at chosen times, an hour in the past (so no token is
    ever refused for being in the future), with readable nonces."""

    def __init__(self) -> None:
        self.base_us = time.time_ns() // 1000 - 3_600_000_000

    def at(self, seconds: float, nonce: str = "n") -> IdempotencyToken:
        return IdempotencyToken(self.base_us + round(seconds * 1_000_000), nonce)


def random_bytes(seed: str, size: int) -> bytes:
    """Deterministic bytes with no period, so chunks swapped or shifted in a
    value never compare equal to the original."""
    return random.Random(seed).randbytes(size)


def describe_bytes_difference(got: bytes, expected: bytes) -> str:
    """A short, readable account of how two large values differ."""
    if got == expected:
        return "equal"
    if len(got) != len(expected):
        return f"got {len(got)} bytes, expected {len(expected)} bytes"
    first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
    return (
        f"same length ({len(got)} bytes) but they differ from offset {first}; "
        f"sha256 got {hashlib.sha256(got).hexdigest()[:16]}, expected {hashlib.sha256(expected).hexdigest()[:16]}"
    )
