"""Limits and validation: every refusal names the namespace and the limit, and
a refused call writes nothing."""

from __future__ import annotations

from typing import Any

import pytest

import prism
from prism import Delete, Item, Keys, Put, capabilities
from prism_conformance.handles import KeyValueHandle
from prism_conformance.keyvalue.base import SuiteBase
from prism_conformance.marks import NotApplicable

#: Never allocate more than this to prove a backend-wide value limit.
LARGEST_PROBE = 64 * 1024 * 1024


def _assert_names_the_limit(
    exc: prism.LimitExceeded, kv: KeyValueHandle, limit_name: str, limit: int
) -> None:
    assert exc.namespace == kv.name, (
        f"LimitExceeded must name the namespace {kv.name!r}, got {exc.namespace!r}"
    )
    assert kv.name in str(exc), f"the message must name the namespace: {exc}"
    assert exc.limit_name == limit_name, (
        f"expected the limit {limit_name!r} to be named, got {exc.limit_name!r}"
    )
    assert exc.limit == limit
    assert limit_name in str(exc), f"the message must name the limit {limit_name!r}: {exc}"


class LimitTests(SuiteBase):
    def test_oversized_key_is_refused(self) -> None:
        kv = self.open_namespace(limits={"max_key_bytes": 16})
        kv.put_items("r", {b"k" * 16: b"at the limit"})
        with pytest.raises(prism.LimitExceeded) as refused:
            kv.put_items("r", {b"ok": b"v", b"k" * 17: b"over"})
        _assert_names_the_limit(refused.value, kv, "max_key_bytes", 16)
        assert refused.value.actual == 17
        with pytest.raises(prism.LimitExceeded) as long_id:
            kv.put_items("r" * 17, {b"k": b"v"})
        _assert_names_the_limit(long_id.value, kv, "max_key_bytes", 16)
        if capabilities.KV_ATOMIC_MUTATE in kv.capabilities:
            for mutation in (Put(b"k" * 17, b"v"), Delete(b"k" * 17)):
                with pytest.raises(prism.LimitExceeded) as in_mutation:
                    kv.mutate_items("r", [Put(b"ok", b"v"), mutation])
                _assert_names_the_limit(in_mutation.value, kv, "max_key_bytes", 16)
        assert kv.get_items("r").as_dict() == {b"k" * 16: b"at the limit"}, "a refused call wrote items"

    def test_oversized_value_is_refused(self) -> None:
        kv = self.open_namespace(limits={"max_value_bytes": 1000})
        kv.put_items("r", {b"at": b"v" * 1000})
        with pytest.raises(prism.LimitExceeded) as refused:
            kv.put_items("r", {b"ok": b"v", b"over": b"v" * 1001})
        _assert_names_the_limit(refused.value, kv, "max_value_bytes", 1000)
        assert refused.value.actual == 1001
        if capabilities.KV_ATOMIC_MUTATE in kv.capabilities:
            with pytest.raises(prism.LimitExceeded):
                kv.mutate_items("r", [Put(b"ok", b"v"), Put(b"over", b"v" * 1001)])
        assert kv.get_items("r").as_dict() == {b"at": b"v" * 1000}, "a refused call wrote items"

    def test_value_over_the_backend_limit_is_refused(self, kv: KeyValueHandle) -> None:
        largest = self.max_value_bytes(kv)
        if largest >= LARGEST_PROBE:
            raise NotApplicable(f"the namespace accepts values up to {largest} bytes; too large to probe")
        with pytest.raises(prism.LimitExceeded) as refused:
            kv.put_items("r", {b"k": bytes(largest + 1)})
        _assert_names_the_limit(refused.value, kv, "max_value_bytes", largest)

    def test_too_many_items_in_one_call_are_refused(self) -> None:
        kv = self.open_namespace(limits={"max_items_per_call": 5})
        kv.put_items("r", {f"k{i}".encode(): b"v" for i in range(5)})
        calls: list[tuple[str, Any]] = [
            ("put_items", lambda: kv.put_items("r", {f"n{i}".encode(): b"v" for i in range(6)})),
            ("get_items", lambda: kv.get_items("r", Keys([f"k{i}".encode() for i in range(6)]))),
            ("delete_items", lambda: kv.delete_items("r", Keys([f"k{i}".encode() for i in range(6)]))),
        ]
        if capabilities.KV_ATOMIC_MUTATE in kv.capabilities:
            calls.append(
                ("mutate_items", lambda: kv.mutate_items("r", [Put(f"n{i}", b"v") for i in range(6)]))
            )
        for name, call in calls:
            with pytest.raises(prism.LimitExceeded) as refused:
                call()
            _assert_names_the_limit(refused.value, kv, "max_items_per_call", 5)
            assert refused.value.actual == 6, name
        assert sorted(kv.get_items("r").as_dict()) == [f"k{i}".encode() for i in range(5)], (
            "a refused call changed data"
        )

    def test_unknown_namespace_is_refused(self) -> None:
        opened = self.open_prism(1)
        with pytest.raises(prism.NamespaceNotFound) as refused:
            opened.db.keyvalue("no_such_namespace")
        assert refused.value.namespace == "no_such_namespace"
        assert "no_such_namespace" in str(refused.value)

    def test_malformed_requests_are_refused(self, kv: KeyValueHandle) -> None:
        # Deliberately wrong types, as an untyped caller could send them.
        bytes_id: Any = b"bytes-id"
        text_predicate: Any = "everything"
        text_token: Any = "token"
        malformed: list[tuple[str, Any]] = [
            ("empty record id", lambda: kv.put_items("", {b"k": b"v"})),
            ("record id not text", lambda: kv.put_items(bytes_id, {b"k": b"v"})),
            ("empty key", lambda: kv.put_items("r", {b"": b"v"})),
            ("a key twice in one call", lambda: kv.put_items("r", [Item(b"k", b"1"), Item(b"k", b"2")])),
            ("not a predicate", lambda: kv.get_items("r", text_predicate)),
            ("not a token", lambda: kv.put_items("r", {b"k": b"v"}, token=text_token)),
        ]
        for what, call in malformed:
            with pytest.raises(prism.InvalidArgument):
                call()
            assert list(kv.get_items("r").items) == [], f"{what}: a refused call wrote items"
