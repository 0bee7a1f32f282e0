"""KeyValue semantics, written once for every backend.

:class:`AsyncKeyValue` is what ``db.keyvalue("ns")`` returns in async code. It
validates requests against the namespace's limits, turns idempotency tokens into
row versions, applies default TTLs, hides expired rows and tombstones and purges
them, chunks large values and reassembles them, and pages results with signed
tokens. The backend underneath only stores rows (see :mod:`prism.spi`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeAlias

import attrs

from prism import capabilities
from prism.config import NamespaceConfig
from prism.errors import BackendError, InvalidArgument, LimitExceeded, Unsupported
from prism.models import (
    AllItems,
    Delete,
    IdempotencyToken,
    Item,
    ItemsInput,
    ItemsPage,
    KeyRange,
    Keys,
    Mutation,
    Predicate,
    Put,
    RecordsPage,
    micros_to_datetime,
    now_micros,
    trusted_item,
)
from prism.pagetokens import PageTokenSigner
from prism.spi import KeyValueBackend, KeyValueTraits, ReadQuery, StoredItem, Version
from prism.units import format_duration, format_size

#: How many rows the core asks a backend for at once when it has to walk a
#: record (deletes by range, skipping dead rows).
_BATCH = 256
#: How often a reader re-reads a chunked row whose chunks changed under it.
_CHUNK_READ_ATTEMPTS = 16
_DEFAULT_SCAN_PAGE = 100
#: The first read of a page; later reads of the same page double it.
_FIRST_PAGE_BATCH = 128


class _Clock:
    """Server-side versions for writes without a token: the current time, made
    strictly increasing within the process so two quick writes keep their order.

    The nonce tells processes apart: it is random per process (drawn again in
    a forked child), and within a process no two versions share a time, so
    every version is unique and two writers never tie. The lock keeps the
    times unique across threads (each sync handle runs its own event loop).
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()
        self._nonce = ""
        self.reseed()

    def reseed(self) -> None:
        # Also a fresh lock: a fork may have copied the lock held by another thread.
        self._lock = threading.Lock()
        self._nonce = "~server-" + os.urandom(6).hex()

    def next_version(self) -> Version:
        with self._lock:
            now = now_micros()
            if now <= self._last:
                now = self._last + 1
            self._last = now
        return Version(now, self._nonce)


_clock = _Clock()
os.register_at_fork(after_in_child=_clock.reseed)

#: A write's item before its row: key, value, ttl.
_PendingPut: TypeAlias = tuple[bytes, bytes, timedelta | None]


def _encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def _decode_key(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode("ascii"))


def _predicate_binding(record_id: str, predicate: Predicate) -> bytes:
    """A canonical encoding of (record, predicate) for page-token binding."""
    parts: list[bytes] = [record_id.encode("utf-8")]
    if isinstance(predicate, AllItems):
        parts.append(b"all")
    elif isinstance(predicate, Keys):
        parts.append(b"keys")
        parts += list(predicate.keys)
    else:
        parts.append(b"range")
        for bound in (predicate.start, predicate.end):
            parts.append(b"-" if bound is None else b"+" + bound)
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


class AsyncKeyValue:
    """One KeyValue namespace, async. Obtain it with ``db.keyvalue(name)``."""

    def __init__(
        self,
        name: str,
        config: NamespaceConfig,
        *,
        backend_name: str,
        backend: KeyValueBackend,
        capabilities: frozenset[str],
        traits: KeyValueTraits,
        signer: PageTokenSigner,
        max_value_bytes: int,
        ensure_ready: Any,
    ) -> None:
        self.name = name
        self.config = config
        self.backend_name = backend_name
        self.capabilities = capabilities
        self.traits = traits
        self.max_value_bytes = max_value_bytes
        self._backend = backend
        self._signer = signer
        self._ensure_ready = ensure_ready
        self._limits = config.limits
        self.max_key_bytes = min(
            config.limits.max_key_bytes, traits.max_key_bytes or config.limits.max_key_bytes
        )
        self._key_limit_source = (
            "limits.max_key_bytes"
            if self.max_key_bytes == config.limits.max_key_bytes
            else f"the most backend {backend_name!r} can store"
        )

    def __repr__(self) -> str:
        return f"<AsyncKeyValue {self.name!r} on {self.backend_name!r}>"

    # -- validation -----------------------------------------------------------------

    def _check_record_id(self, record_id: object) -> str:
        if not isinstance(record_id, str):
            raise InvalidArgument(
                f"record id must be a string, got {type(record_id).__name__}", namespace=self.name, field="id"
            )
        if not record_id:
            raise InvalidArgument("record id must not be empty", namespace=self.name, field="id")
        # An ASCII id is as many bytes as characters; isascii() reads a flag.
        size = len(record_id) if record_id.isascii() else len(record_id.encode("utf-8"))
        limit = self.max_key_bytes
        if size > limit:
            raise LimitExceeded(
                f"record id {record_id[:40]!r}... is {size} bytes, over the namespace limit of {limit} bytes "
                f"({self._key_limit_source}); use a shorter id",
                namespace=self.name,
                limit_name="max_key_bytes",
                limit=limit,
                actual=size,
                field="id",
            )
        return record_id

    def _check_key(self, key: bytes, record_id: str) -> None:
        if not key:
            raise InvalidArgument(
                f"record {record_id!r}: item keys must not be empty", namespace=self.name, field="key"
            )
        limit = self.max_key_bytes
        if len(key) > limit:
            raise LimitExceeded(
                f"record {record_id!r}: key {key[:32]!r}... is {len(key)} bytes, over the namespace limit of "
                f"{limit} bytes ({self._key_limit_source}); use a shorter key",
                namespace=self.name,
                limit_name="max_key_bytes",
                limit=limit,
                actual=len(key),
                field="key",
            )

    def _check_value(self, key: bytes, value: bytes, record_id: str) -> None:
        limit = self.max_value_bytes
        if len(value) > limit:
            raise LimitExceeded(
                f"record {record_id!r}, key {key[:64]!r}: value is {format_size(len(value))} "
                f"({len(value)} bytes), over the namespace limit of {format_size(limit)} "
                f"(limits.max_value_bytes, backend {self.backend_name!r}); split the value across keys "
                f"or raise the limit",
                namespace=self.name,
                limit_name="max_value_bytes",
                limit=limit,
                actual=len(value),
                field="value",
            )

    def _check_count(self, count: int, what: str) -> None:
        limit = self._limits.max_items_per_call
        if count > limit:
            raise LimitExceeded(
                f"{count} {what} in one call, over the namespace limit of {limit} "
                f"(limits.max_items_per_call); split the call into batches of at most {limit}",
                namespace=self.name,
                limit_name="max_items_per_call",
                limit=limit,
                actual=count,
                field="items",
            )

    def _check_ttl(self, ttl: timedelta | None, key: bytes) -> None:
        if ttl is None:
            return
        if not isinstance(ttl, timedelta):
            raise InvalidArgument(
                f"key {key!r}: ttl must be a timedelta, got {ttl!r}", namespace=self.name, field="ttl"
            )
        if ttl <= timedelta(0):
            raise InvalidArgument(
                f"key {key!r}: ttl must be positive, got {ttl}", namespace=self.name, field="ttl"
            )
        if self.traits.max_ttl is not None and ttl > self.traits.max_ttl:
            raise InvalidArgument(
                f"key {key!r}: ttl {format_duration(ttl)} is longer than backend {self.backend_name!r} keeps "
                f"({format_duration(self.traits.max_ttl)})",
                namespace=self.name,
                field="ttl",
            )

    def _version(self, token: IdempotencyToken | None) -> Version:
        if token is None:
            return _clock.next_version()
        if not isinstance(token, IdempotencyToken):
            raise InvalidArgument(
                f"token must be a prism.IdempotencyToken, got {type(token).__name__}",
                namespace=self.name,
                field="token",
            )
        if not token.nonce or token.nonce.startswith("~"):
            raise InvalidArgument(
                "token nonce must be non-empty and must not start with '~' (reserved for server versions)",
                namespace=self.name,
                field="token",
            )
        skew = self._limits.max_token_skew
        ahead = token.generation_time_us - now_micros()
        if ahead > skew // timedelta(microseconds=1):
            raise InvalidArgument(
                f"token generation time {token.generation_time.isoformat()} is "
                f"{format_duration(timedelta(microseconds=ahead))} in the future, beyond the allowed skew of "
                f"{format_duration(skew)} (limits.max_token_skew); check the client's clock",
                namespace=self.name,
                field="token",
            )
        return Version(token.generation_time_us, token.nonce)

    def _expiry(self, ttl: timedelta | None, now_us: int) -> int | None:
        effective = ttl if ttl is not None else self.config.needs.ttl
        if effective is None:
            return None
        return now_us + effective // timedelta(microseconds=1)

    def _require(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise Unsupported(capability, namespace=self.name, backend=self.backend_name)

    def _check_predicate(self, predicate: object) -> Predicate:
        if not isinstance(predicate, AllItems | Keys | KeyRange):
            raise InvalidArgument(
                f"predicate must be prism.AllItems(), prism.Keys([...]) or prism.KeyRange(start, end), "
                f"got {predicate!r}",
                namespace=self.name,
                field="predicate",
            )
        if isinstance(predicate, Keys):
            self._check_count(len(predicate.keys), "keys")
        if (
            isinstance(predicate, KeyRange)
            and predicate.start is not None
            and predicate.end is not None
            and predicate.start > predicate.end
        ):
            raise InvalidArgument(
                f"key range start {predicate.start!r} is after its end {predicate.end!r}",
                namespace=self.name,
                field="predicate",
            )
        return predicate

    # -- writing --------------------------------------------------------------------

    def _normalise_items(self, record_id: str, items: ItemsInput) -> list[_PendingPut]:
        pending = self._valid_items(items)
        if pending is not None:
            return pending
        # The general path: any input, and the first problem reported.
        pending = []
        if isinstance(items, Mapping):
            for key, value in items.items():
                item = Item(key, value)
                pending.append((item.key, item.value, None))
        else:
            for entry in items:
                if not isinstance(entry, Item | Put):
                    raise InvalidArgument(
                        f"record {record_id!r}: expected prism.Item values, got {type(entry).__name__}",
                        namespace=self.name,
                        field="items",
                    )
                pending.append((entry.key, entry.value, entry.ttl))
        self._check_count(len(pending), "items")
        seen: set[bytes] = set()
        for key, value, ttl in pending:
            self._check_key(key, record_id)
            if key in seen:
                raise InvalidArgument(
                    f"record {record_id!r}: key {key!r} appears twice in one call; send each key once",
                    namespace=self.name,
                    field="items",
                )
            seen.add(key)
            self._check_value(key, value, record_id)
            self._check_ttl(ttl, key)
        return pending

    def _valid_items(self, items: ItemsInput) -> list[_PendingPut] | None:
        """The fast path of :meth:`_normalise_items`: a dict of ``bytes`` to
        ``bytes``, or a list or tuple of :class:`Item`/:class:`Put`, taken as
        they are when every check passes. None when anything is off (another
        input type, or any check failing): the general path then runs from the
        start, so errors and their order are exactly its own. Never consumes
        an iterator (only dicts, lists and tuples are read)."""
        max_key = self.max_key_bytes
        max_value = self.max_value_bytes
        limit = self._limits.max_items_per_call
        pending: list[_PendingPut] = []
        append = pending.append
        if type(items) is dict:
            if len(items) > limit:
                return None
            # A dict's keys are distinct, and distinct bytes stay distinct.
            for key, value in items.items():
                if type(key) is not bytes or type(value) is not bytes:
                    return None
                if not key or len(key) > max_key or len(value) > max_value:
                    return None
                append((key, value, None))
            return pending
        if type(items) is not list and type(items) is not tuple:
            return None
        if len(items) > limit:
            return None
        seen: set[bytes] = set()
        for entry in items:
            kind = type(entry)
            if kind is not Item and kind is not Put:
                return None
            # The attrs converters made key and value bytes already.
            key, value, ttl = entry.key, entry.value, entry.ttl
            if not key or len(key) > max_key or len(value) > max_value or key in seen:
                return None
            if ttl is not None and not self._ttl_ok(ttl):
                return None
            seen.add(key)
            append((key, value, ttl))
        return pending

    def _ttl_ok(self, ttl: object) -> bool:
        return (
            isinstance(ttl, timedelta)
            and ttl > timedelta(0)
            and (self.traits.max_ttl is None or ttl <= self.traits.max_ttl)
        )

    async def _rows_for_puts(
        self, record_id: str, puts: Sequence[_PendingPut], version: Version, now_us: int
    ) -> tuple[list[StoredItem], list[StoredItem]]:
        """Rows to write, and the chunked ones among them (whose chunks are
        written here, before their rows, so they become visible together)."""
        rows: list[StoredItem] = []
        chunked: list[StoredItem] = []
        limit = self.traits.max_item_bytes
        default_expires = self._expiry(None, now_us)
        for key, value, ttl in puts:
            expires = default_expires if ttl is None else self._expiry(ttl, now_us)
            size = len(value)
            if size <= limit:
                rows.append(StoredItem(key, value, version, expires, value_size=size))
                continue
            chunk_set = os.urandom(12).hex()
            chunks = [value[i : i + limit] for i in range(0, size, limit)]
            await self._backend.write_chunks(self.name, record_id, key, chunk_set, chunks, expires)
            row = StoredItem(
                key,
                b"",
                version,
                expires,
                chunk_count=len(chunks),
                chunk_set=chunk_set,
                value_size=size,
            )
            rows.append(row)
            chunked.append(row)
        return rows, chunked

    async def _write(
        self, record_id: str, rows: list[StoredItem], chunked: list[StoredItem], *, atomic: bool
    ) -> None:
        try:
            replaced = await self._backend.write(self.name, record_id, rows, atomic=atomic)
        except BaseException:
            # The write may have committed before it failed (a timeout, a
            # cancellation): only chunks that no row points at may go.
            await asyncio.shield(self._drop_unreferenced_chunks(record_id, chunked, best_effort=True))
            raise
        for old in replaced:
            await self._backend.delete_chunks(self.name, record_id, old.key, old.chunk_set)
        # A chunked row that lost to a newer write leaves its chunks unreferenced.
        await self._drop_unreferenced_chunks(record_id, chunked, best_effort=False)

    async def _drop_unreferenced_chunks(
        self, record_id: str, chunked: list[StoredItem], *, best_effort: bool
    ) -> None:
        if not chunked:
            return
        try:
            current = await self._backend.read(
                self.name,
                record_id,
                ReadQuery(limit=len(chunked), keys=tuple(sorted(r.key for r in chunked))),
            )
            live_sets = {(r.key, r.chunk_set) for r in current}
            for row in chunked:
                if (row.key, row.chunk_set) not in live_sets:
                    await self._backend.delete_chunks(self.name, record_id, row.key, row.chunk_set)
        except Exception:
            if not best_effort:
                raise
            # The datastore is failing already; an unreferenced chunk set is
            # harmless, a deleted referenced one would lose the value.

    async def put_items(
        self,
        record_id: str,
        items: ItemsInput,
        *,
        token: IdempotencyToken | None = None,
    ) -> None:
        """Write items into a record; last write wins per item, by token.

        ``items`` is a sequence of :class:`prism.Item` (each with an optional
        TTL) or a mapping of key to value. Reuse ``token`` when retrying: a replay
        changes nothing, and an older token never overwrites a newer write.
        """
        record_id = self._check_record_id(record_id)
        puts = self._normalise_items(record_id, items)
        version = self._version(token)
        await self._ensure_ready()
        if not puts:
            return
        rows, chunked = await self._rows_for_puts(record_id, puts, version, now_micros())
        await self._write(record_id, rows, chunked, atomic=False)

    def _tombstone(self, key: bytes, version: Version, now_us: int) -> StoredItem:
        expires = now_us + self._limits.tombstone_ttl // timedelta(microseconds=1)
        return StoredItem(key, b"", version, expires, tombstone=True)

    async def delete_items(
        self,
        record_id: str,
        predicate: Predicate | None = None,
        *,
        token: IdempotencyToken | None = None,
    ) -> None:
        """Delete the items the predicate selects (all items by default).

        A delete is a write: with a token, an older write arriving later cannot
        bring the item back (for ``limits.tombstone_ttl``).
        """
        record_id = self._check_record_id(record_id)
        predicate = self._check_predicate(AllItems() if predicate is None else predicate)
        version = self._version(token)
        await self._ensure_ready()
        now_us = now_micros()
        if isinstance(predicate, Keys):
            for key in predicate.keys:
                self._check_key(key, record_id)
            rows = [self._tombstone(k, version, now_us) for k in predicate.keys]
            if rows:
                await self._write(record_id, rows, [], atomic=False)
            return
        start = predicate.start if isinstance(predicate, KeyRange) else None
        end = predicate.end if isinstance(predicate, KeyRange) else None
        after: bytes | None = None
        while True:
            batch = await self._backend.read(
                self.name, record_id, ReadQuery(limit=_BATCH, start=start, end=end, after=after)
            )
            live = [r for r in batch if not r.tombstone]
            if live:
                await self._write(
                    record_id, [self._tombstone(r.key, version, now_us) for r in live], [], atomic=False
                )
            if len(batch) < _BATCH:
                return
            after = batch[-1].key

    async def mutate_items(
        self,
        record_id: str,
        mutations: Sequence[Mutation],
        *,
        token: IdempotencyToken | None = None,
    ) -> None:
        """Apply puts and deletes to one record atomically: a reader sees all of
        them or none. Needs the ``kv.atomic_mutate`` capability."""
        self._require(capabilities.KV_ATOMIC_MUTATE)
        record_id = self._check_record_id(record_id)
        self._check_count(len(mutations), "mutations")
        seen: set[bytes] = set()
        puts: list[_PendingPut] = []
        deletes: list[bytes] = []
        for mutation in mutations:
            if not isinstance(mutation, Put | Delete):
                raise InvalidArgument(
                    f"record {record_id!r}: mutations are prism.Put or prism.Delete, got {type(mutation).__name__}",
                    namespace=self.name,
                    field="mutations",
                )
            self._check_key(mutation.key, record_id)
            if mutation.key in seen:
                raise InvalidArgument(
                    f"record {record_id!r}: key {mutation.key!r} appears twice in one mutation; send each key once",
                    namespace=self.name,
                    field="mutations",
                )
            seen.add(mutation.key)
            if isinstance(mutation, Put):
                self._check_value(mutation.key, mutation.value, record_id)
                self._check_ttl(mutation.ttl, mutation.key)
                puts.append((mutation.key, mutation.value, mutation.ttl))
            else:
                deletes.append(mutation.key)
        version = self._version(token)
        await self._ensure_ready()
        if not mutations:
            return
        now_us = now_micros()
        rows, chunked = await self._rows_for_puts(record_id, puts, version, now_us)
        rows += [self._tombstone(k, version, now_us) for k in deletes]
        rows.sort(key=lambda r: r.key)
        await self._write(record_id, rows, chunked, atomic=True)

    # -- reading --------------------------------------------------------------------

    async def _purge(self, record_id: str, dead: Sequence[StoredItem]) -> None:
        """Delete expired rows the datastore did not expire by itself."""
        if not dead or capabilities.KV_NATIVE_TTL in self.capabilities:
            return
        await self._backend.remove(self.name, record_id, [(r.key, r.version) for r in dead])
        for row in dead:
            if row.chunk_count:
                await self._backend.delete_chunks(self.name, record_id, row.key, row.chunk_set)

    async def _value_of(self, record_id: str, row: StoredItem) -> StoredItem | None:
        """The row with its whole value, re-read if its chunks changed under us;
        None if the item is gone by now."""
        for _ in range(_CHUNK_READ_ATTEMPTS):
            if not row.chunk_count:
                return row
            chunks = await self._backend.read_chunks(
                self.name, record_id, row.key, row.chunk_set, row.chunk_count
            )
            value = b"".join(chunks)
            if len(chunks) == row.chunk_count and len(value) == row.value_size:
                return attrs.evolve(row, value=value)
            fresh = await self._backend.read(self.name, record_id, ReadQuery(limit=1, keys=(row.key,)))
            if not fresh or fresh[0].tombstone or fresh[0].expired(now_micros()):
                return None
            row = fresh[0]
        raise BackendError(
            f"namespace {self.name!r}, record {record_id!r}, key {row.key!r}: the value kept changing while "
            f"it was read ({_CHUNK_READ_ATTEMPTS} attempts); retry the read"
        )

    def _page_limits(self, limit: int | None, page_size_bytes: int | None) -> tuple[int, int]:
        max_items = self._limits.max_page_items
        if limit is None:
            count = max_items
        elif not isinstance(limit, int) or limit <= 0:
            raise InvalidArgument(
                f"limit must be a positive integer, got {limit!r}", namespace=self.name, field="limit"
            )
        elif limit > max_items:
            raise LimitExceeded(
                f"limit {limit} is over the namespace's page limit of {max_items} items (limits.max_page_items); "
                f"ask for at most {max_items} and follow next_page_token",
                namespace=self.name,
                limit_name="max_page_items",
                limit=max_items,
                actual=limit,
                field="limit",
            )
        else:
            count = limit
        max_bytes: int = self._limits.max_page_size_bytes
        size: int
        if page_size_bytes is None:
            size = min(self._limits.page_size_bytes, max_bytes)
        elif not isinstance(page_size_bytes, int) or page_size_bytes <= 0:
            raise InvalidArgument(
                f"page_size_bytes must be a positive integer, got {page_size_bytes!r}",
                namespace=self.name,
                field="page_size_bytes",
            )
        elif page_size_bytes > max_bytes:
            raise LimitExceeded(
                f"page_size_bytes {page_size_bytes} is over the namespace limit of {format_size(max_bytes)} "
                f"(limits.max_page_size_bytes)",
                namespace=self.name,
                limit_name="max_page_size_bytes",
                limit=max_bytes,
                actual=page_size_bytes,
                field="page_size_bytes",
            )
        else:
            size = page_size_bytes
        return count, size

    async def get_items(
        self,
        record_id: str,
        predicate: Predicate | None = None,
        *,
        limit: int | None = None,
        page_size_bytes: int | None = None,
        page_token: str | None = None,
    ) -> ItemsPage:
        """Read the items the predicate selects (all by default), in key order.

        A page holds at most ``limit`` items and ``page_size_bytes`` bytes of keys
        and values, except that an item larger than a page comes alone on its own
        page. Pass ``next_page_token`` back, with the same record and predicate, for
        the next page.
        """
        record_id = self._check_record_id(record_id)
        predicate = self._check_predicate(AllItems() if predicate is None else predicate)
        max_count, max_bytes = self._page_limits(limit, page_size_bytes)
        # The page-token binding only when a token is opened or issued.
        binding: bytes | None = None
        after: bytes | None = None
        if page_token is not None:
            binding = _predicate_binding(record_id, predicate)
            cursor = self._signer.open(page_token, self.name, "items", binding)
            after = _decode_key(cursor["after"])
        await self._ensure_ready()

        keys = predicate.keys if isinstance(predicate, Keys) else None
        start = predicate.start if isinstance(predicate, KeyRange) else None
        end = predicate.end if isinstance(predicate, KeyRange) else None
        items: list[Item] = []
        used = 0
        batch = _FIRST_PAGE_BATCH
        while True:
            # One row more than the page can take, to know whether another page
            # exists; but start small and grow, because rows may be large and
            # the byte bound may fill the page long before the count does.
            want = min(max_count - len(items) + 1, batch)
            batch = min(batch * 2, _BATCH * 4)
            rows = await self._backend.read(
                self.name, record_id, ReadQuery(limit=want, keys=keys, start=start, end=end, after=after)
            )
            self._check_progress(rows, after, want)
            now_us = now_micros()
            dead: list[StoredItem] = []
            full = False
            for row in rows:
                expires_at_us = row.expires_at_us
                expired = expires_at_us is not None and expires_at_us <= now_us
                if expired or row.tombstone:
                    if expired:
                        dead.append(row)
                    after = row.key
                    continue
                size = len(row.key) + (row.value_size if row.chunk_count else len(row.value))
                if len(items) >= max_count or (items and used + size > max_bytes):
                    full = True
                    break
                after = row.key
                if row.chunk_count:
                    # Only chunked rows need another read (and an await).
                    loaded = await self._value_of(record_id, row)
                    if loaded is None:
                        continue
                    row = loaded
                    expires_at_us = row.expires_at_us
                # The backend's key and value are bytes already (the SPI's promise).
                items.append(
                    trusted_item(
                        row.key,
                        row.value,
                        None,
                        None if expires_at_us is None else micros_to_datetime(expires_at_us),
                    )
                )
                used += len(row.key) + len(row.value)
            await self._purge(record_id, dead)
            if full:
                if binding is None:
                    binding = _predicate_binding(record_id, predicate)
                token = self._signer.issue(self.name, "items", binding, {"after": _encode_key(after or b"")})
                return ItemsPage(items, token)
            if len(rows) < want:
                return ItemsPage(items, None)

    def _check_progress(self, rows: Sequence[StoredItem], after: bytes | None, limit: int) -> None:
        """Refuse rows out of order or behind the cursor: paging on them would
        repeat items or never end."""
        previous = after
        for row in rows:
            if previous is not None and row.key <= previous:
                raise BackendError(
                    f"namespace {self.name!r}: backend {self.backend_name!r} returned key {row.key!r} "
                    f"at or before {previous!r}; rows must come in ascending key order after the cursor"
                )
            previous = row.key
        if len(rows) > limit:
            raise BackendError(
                f"namespace {self.name!r}: backend {self.backend_name!r} returned {len(rows)} rows "
                f"when asked for at most {limit}"
            )

    async def scan(self, *, limit: int | None = None, page_token: str | None = None) -> RecordsPage:
        """List the ids of records that hold at least one live item, in order.
        Needs the ``kv.scan`` capability."""
        self._require(capabilities.KV_SCAN)
        default = min(_DEFAULT_SCAN_PAGE, self._limits.max_page_items)
        count, _ = self._page_limits(limit if limit is not None else default, None)
        after: str | None = None
        if page_token is not None:
            after = self._signer.open(page_token, self.name, "scan", b"")["after"]
        await self._ensure_ready()
        ids: list[str] = []
        while True:
            candidates = await self._backend.scan_records(self.name, after, _BATCH)
            for record_id in candidates:
                if len(ids) == count:
                    # A record remains after a full page: hand out a token.
                    return RecordsPage(ids, self._signer.issue(self.name, "scan", b"", {"after": after}))
                if await self._has_live_item(record_id):
                    ids.append(record_id)
                after = record_id
            if len(candidates) < _BATCH:
                return RecordsPage(ids, None)

    async def _has_live_item(self, record_id: str) -> bool:
        after: bytes | None = None
        while True:
            rows = await self._backend.read(self.name, record_id, ReadQuery(limit=_BATCH, after=after))
            now_us = now_micros()
            dead = [r for r in rows if r.expired(now_us)]
            await self._purge(record_id, dead)
            if any(not r.tombstone and not r.expired(now_us) for r in rows):
                return True
            if len(rows) < _BATCH:
                return False
            after = rows[-1].key
