"""Large values: the core chunks values above the backend's ``max_item_bytes``;
readers get them back byte for byte and never see a partial or mixed value."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import prism
from prism import Item, KeyRange, Keys
from prism_conformance.handles import KeyValueHandle
from prism_conformance.keyvalue.base import SuiteBase
from prism_conformance.keyvalue.support import (
    Tokens,
    describe_bytes_difference,
    item_pages,
    keys_of,
    random_bytes,
    run_threads,
    wait_until,
)
from prism_conformance.marks import NotApplicable

#: Concurrency rounds: each replaces a multi-chunk value once.
REPLACEMENTS = 12


class ChunkingTests(SuiteBase):
    def _sizes(self, kv: KeyValueHandle) -> tuple[int, int]:
        """(max_item_bytes, a chunked size: about 2.5 rows' worth, with a ragged
        last chunk), or skip when the backend stores every allowed value whole."""
        item = self.backend_traits(kv).max_item_bytes
        largest = self.max_value_bytes(kv)
        if largest <= item:
            raise NotApplicable(
                f"the backend stores values up to {largest} bytes in one row "
                f"(max_item_bytes {item}); the core never chunks"
            )
        return item, min(2 * item + item // 2 + 7, largest)

    def _assert_value(self, kv: KeyValueHandle, record: str, key: bytes, expected: bytes) -> None:
        got = kv.get_items(record, Keys([key])).as_dict().get(key)
        assert got is not None, f"record {record!r}: the large value under {key!r} is missing"
        assert got == expected, f"record {record!r}, key {key!r}: {describe_bytes_difference(got, expected)}"

    def test_chunked_value_round_trips_byte_for_byte(self, kv: KeyValueHandle) -> None:
        item, size = self._sizes(kv)
        largest = self.max_value_bytes(kv)
        values = {
            b"large": random_bytes("large", size),
            b"at-row-limit": random_bytes("at", item),
            b"one-over": random_bytes("over", item + 1),
        }
        if 2 * item <= largest:
            values[b"two-rows-exactly"] = random_bytes("two", 2 * item)
        for key, value in values.items():
            kv.put_items("r", {key: value})
        for key, value in values.items():
            self._assert_value(kv, "r", key, value)
        everything = {i.key: i.value for p in item_pages(kv, "r", limit=1) for i in p.items}
        assert everything.keys() == values.keys()
        for key, value in values.items():
            assert everything[key] == value, (
                f"{key!r} read by paging: {describe_bytes_difference(everything[key], value)}"
            )
        ranged = kv.get_items("r", KeyRange(b"l", b"m"), limit=1).items
        assert [i.key for i in ranged] == [b"large"]
        assert ranged[0].value == values[b"large"]

    def test_replacing_chunked_values(self, kv: KeyValueHandle) -> None:
        item, size = self._sizes(kv)
        sequence = [
            random_bytes("a", size),
            random_bytes("b", item + 1),  # fewer chunks than before
            b"small now",
            random_bytes("c", size),  # chunked again
            b"",
            random_bytes("d", size),
        ]
        for step, value in enumerate(sequence):
            kv.put_items("r", {b"k": value, b"step": str(step).encode()})
            self._assert_value(kv, "r", b"k", value)

    def test_older_chunked_write_does_not_replace_a_newer_one(self, kv: KeyValueHandle) -> None:
        _, size = self._sizes(kv)
        tokens = Tokens()
        newer, older = random_bytes("newer", size), random_bytes("older", size)
        kv.put_items("r", {b"big": newer, b"small": b"newer"}, token=tokens.at(10))
        kv.put_items("r", {b"big": older, b"small": older}, token=tokens.at(5))
        self._assert_value(kv, "r", b"big", newer)
        self._assert_value(kv, "r", b"small", b"newer")
        kv.put_items("r", {b"big": b"older and small"}, token=tokens.at(6))
        self._assert_value(kv, "r", b"big", newer)
        kv.put_items("r", {b"big": older}, token=tokens.at(10))
        self._assert_value(kv, "r", b"big", newer)

    def test_deleting_a_chunked_value(self, kv: KeyValueHandle) -> None:
        _, size = self._sizes(kv)
        kv.put_items("r", {b"big": random_bytes("x", size), b"keep": b"v"})
        kv.delete_items("r", Keys([b"big"]))
        assert kv.get_items("r").as_dict() == {b"keep": b"v"}
        kv.put_items("r", {b"big": b"small again"})
        self._assert_value(kv, "r", b"big", b"small again")
        kv.put_items("r", {b"big": random_bytes("y", size)})
        kv.delete_items("r")
        assert list(kv.get_items("r").items) == []

    def test_chunked_values_count_their_full_size_in_pages(self, kv: KeyValueHandle) -> None:
        _, size = self._sizes(kv)
        kv.put_items("r", {b"a": b"x" * 9, b"big": random_bytes("big", size), b"c": b"y" * 9})
        pages = item_pages(kv, "r", page_size_bytes=size)
        assert [keys_of(page.items) for page in pages] == [[b"a"], [b"big"], [b"c"]], (
            "a chunked value counts its whole size (not its row's) against page_size_bytes"
        )

    def test_chunked_value_with_ttl_expires(self, kv: KeyValueHandle) -> None:
        _, size = self._sizes(kv)
        kept = random_bytes("kept", size)
        kv.put_items(
            "r", [Item(b"expiring", random_bytes("e", size), ttl=timedelta(seconds=1)), Item(b"kept", kept)]
        )
        wait_until(
            lambda: b"expiring" not in kv.get_items("r", Keys([b"expiring"])).as_dict(),
            what="a chunked value written with ttl=1s is still returned",
        )
        self._assert_value(kv, "r", b"kept", kept)
        kv.put_items("r", {b"expiring": b"written again"})
        self._assert_value(kv, "r", b"expiring", b"written again")

    def test_concurrent_reader_never_sees_a_partial_chunked_value(self, kv: KeyValueHandle) -> None:
        """A writer replaces a multi-chunk value again and again with distinct
        values of the same size (so a length check cannot catch a mix); readers
        must only ever see one whole value."""
        _, size = self._sizes(kv)
        values = [b"%08d" % i + random_bytes(f"gen-{i}", size - 8) for i in range(REPLACEMENTS + 1)]
        kv.put_items("r", {b"big": values[0]})
        done = threading.Event()
        bad: list[str] = []
        reads = {"whole": 0, "retry": 0}
        lock = threading.Lock()

        def writer() -> None:
            try:
                for value in values[1:]:
                    kv.put_items("r", {b"big": value})
            finally:
                done.set()

        def problem_with(got: bytes | None) -> str | None:
            if got is None:
                return "the value was missing while it was being replaced"
            header = got[:8]
            if header.isdigit() and int(header) <= REPLACEMENTS and got == values[int(header)]:
                return None
            closest = values[int(header)] if header.isdigit() and int(header) <= REPLACEMENTS else values[0]
            return (
                f"a read returned a value that was never written (it starts like generation "
                f"{header.decode('ascii', 'replace')!r}; {describe_bytes_difference(got, closest)})"
            )

        def reader(by_range: bool) -> None:
            predicate = KeyRange(b"big", b"bih") if by_range else Keys([b"big"])
            while time.monotonic() < deadline:
                if done.is_set() and reads["whole"] > 0:
                    return
                try:
                    got = kv.get_items("r", predicate).as_dict().get(b"big")
                except prism.BackendError:
                    # The core gives up on a value that changes under every re-read;
                    # an error is not a wrong value, so it is only counted.
                    with lock:
                        reads["retry"] += 1
                    continue
                with lock:
                    reads["whole"] += 1
                    problem = problem_with(got)
                    if problem is not None:
                        bad.append(problem)
                        return

        deadline = time.monotonic() + 120
        run_threads(
            [writer, lambda: reader(False), lambda: reader(True)],
            names=["writer", "keys-reader", "range-reader"],
        )
        assert not bad, f"{len(bad)} bad reads of {reads['whole']}; first: {bad[0]}"
        assert reads["whole"] > 0, f"every read of the value failed ({reads['retry']} BackendErrors)"
        self._assert_value(kv, "r", b"big", values[-1])
