"""The core's fast paths (put_items on a dict or list, reads without
converters, server versions) behave exactly as the general path does."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import prism
from prism.keyvalue.namespace import _clock
from prism.models import Item, trusted_item

CONFIG: dict[str, Any] = {
    "backends": {"mem": {"plugin": "memory", "max_item_bytes": 1000, "max_value_bytes": 4000}},
    "namespaces": {
        "kv": {"abstraction": "keyvalue", "limits": {"max_items_per_call": 5, "max_key_bytes": 16}},
    },
}


def _error(call: Any) -> tuple[type[BaseException], str] | None:
    try:
        call()
    except Exception as exc:
        return type(exc), str(exc)
    return None


def _general(items: Any) -> Iterator[Any]:
    """The same input through the general path (an iterator is never taken by
    the fast path)."""
    if isinstance(items, dict):
        raise AssertionError("pass the entries of a dict as Items")
    yield from items


BAD_LISTS: list[list[Any]] = [
    [Item(b"", b"v")],
    [Item(b"k" * 17, b"v")],
    [Item(b"k", b"v" * 4001)],
    [Item(b"a", b"1"), Item(b"a", b"2")],
    [Item(b"a", b"1", ttl=timedelta(0))],
    [Item(b"a", b"1", ttl=timedelta(0)), "not an item"],
    [Item(b"a", b"1", ttl=timedelta(0)), Item(b"", b"2")],
    [Item(str(i), b"v") for i in range(6)],
    [Item(b"", b"v")] + [Item(str(i), b"v") for i in range(6)],
]


@pytest.mark.parametrize("items", BAD_LISTS)
def test_a_list_fails_as_the_general_path_does(items: list[Any]) -> None:
    with prism.open(CONFIG) as db:
        kv = db.keyvalue("kv")
        fast = _error(lambda: kv.put_items("r", items))
        general = _error(lambda: kv.put_items("r", _general(items)))
        assert fast is not None
        assert fast == general
        assert kv.get_items("r").items == [], "a refused request writes nothing"


BAD_DICTS: list[dict[Any, Any]] = [
    {b"": b"v"},
    {b"k" * 17: b"v"},
    {b"k": b"v" * 4001},
    {b"k": 5},
    {b"a": b"1", b"k" * 17: b"v", b"z": 7},
    {str(i).encode(): b"v" for i in range(6)},
    {**{str(i).encode(): b"v" for i in range(6)}, b"": b"v"},
]


@pytest.mark.parametrize("items", BAD_DICTS)
def test_a_dict_fails_as_the_general_path_does(items: dict[Any, Any]) -> None:
    with prism.open(CONFIG) as db:
        kv = db.keyvalue("kv")
        fast = _error(lambda: kv.put_items("r", items))

        class Wrapped(dict[Any, Any]):
            """Not exactly a dict, so the general path takes it."""

        general = _error(lambda: kv.put_items("r", Wrapped(items)))
        assert fast is not None
        assert fast == general


def test_mixed_inputs_are_stored_as_bytes() -> None:
    with prism.open(CONFIG) as db:
        kv = db.keyvalue("kv")
        mixed: Any = {b"a": b"1", "b": "2", b"c": bytearray(b"3"), b"d": memoryview(b"4")}
        kv.put_items("r", mixed)
        kv.put_items("r", [Item(b"e", b"5", ttl=timedelta(hours=1)), prism.Put(b"f", b"6")])  # type: ignore[list-item]
        kv.put_items("r", (Item(b"g", b"big" * 1000),))  # chunked: above max_item_bytes
        page = kv.get_items("r")
        assert [(i.key, i.value) for i in page.items] == [
            (b"a", b"1"),
            (b"b", b"2"),
            (b"c", b"3"),
            (b"d", b"4"),
            (b"e", b"5"),
            (b"f", b"6"),
            (b"g", b"big" * 1000),
        ]
        assert all(type(i) is Item and type(i.key) is bytes and type(i.value) is bytes for i in page.items)
        assert page.items[4].expires_at is not None
        assert all(i.expires_at is None for i in page.items if i.key != b"e")


def test_trusted_item_equals_the_constructed_one() -> None:
    made = trusted_item(b"k", b"v", timedelta(seconds=1), None)
    assert made == Item(b"k", b"v", ttl=timedelta(seconds=1))
    assert hash(made) == hash(Item(b"k", b"v", ttl=timedelta(seconds=1)))
    with pytest.raises(AttributeError):
        made.key = b"x"  # type: ignore[misc]


def test_server_versions_are_unique_across_threads() -> None:
    versions: list[Any] = []

    def take() -> None:
        versions.extend(_clock.next_version() for _ in range(5000))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(versions)) == len(versions) == 20000
    assert all(v.nonce.startswith("~server-") for v in versions)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_its_own_server_nonce() -> None:
    parent = _clock.next_version().nonce
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, _clock.next_version().nonce.encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child.startswith("~server-")
    assert child != parent


def test_plain_inputs_take_the_fast_path() -> None:
    with prism.open(CONFIG) as db:
        kv = db._async._runtime.keyvalue("kv")
        assert kv._valid_items({b"a": b"1", b"b": b"2"}) == [(b"a", b"1", None), (b"b", b"2", None)]
        hour = timedelta(hours=1)
        assert kv._valid_items([Item(b"a", b"1", ttl=hour)]) == [(b"a", b"1", hour)]
        assert kv._valid_items({"a": b"1"}) is None, "str keys take the general path"
        assert kv._valid_items(iter([Item(b"a", b"1")])) is None, "an iterator is never consumed"
