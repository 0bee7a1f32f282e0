"""The ``redis`` KeyValue backend: rows on a Redis server, decided by server-side scripts.

Data layout, for a backend with ``key_prefix`` P, namespace N and record id R
(R as UTF-8; every Redis key below is binary-safe):

* ``P:N:z:R``: a sorted set of the record's item keys, every member at score 0,
  so ``ZRANGEBYLEX`` returns them in ``memcmp`` order, which is the unsigned
  bytewise order the SPI asks for.
* ``P:N:h:R``: a hash of item key to the encoded row (see :func:`encode_row`).
* ``P:N:m:R``: a hash with the record's expiry bookkeeping: ``persist``, the
  number of rows without an expiry, and ``maxexp``, an upper bound (ms) of every
  expiry written since the record appeared.
* ``P:N:records``: a sorted set of the namespace's record ids at score 0;
  ``scan_records`` pages through it with ``ZRANGEBYLEX`` (never ``KEYS``/``SCAN``).
* ``P:N:c:<len>:R<len>:<key>:<chunk_set>``: a list holding one chunk set.

Last-write-wins is decided inside Redis: every write, remove and range read
is one Lua script (a script runs atomically), so a version is compared and the
row written with nothing in between, and all rows of one call become visible
together, which is what ``kv.atomic_mutate`` needs.

TTL: Redis 7.0 cannot expire hash fields, so rows are not expired one by one
by Redis, and ``kv.native_ttl`` is not declared: the core filters expired rows
out of every read (exact) and purges them. Redis still removes data by itself
where that is exact: a chunk set expires ``expiry_grace`` after its row, and a
record whose rows all carry an expiry expires as a whole ``expiry_grace`` after
the last of them (``PEXPIREAT`` on its three keys).
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from prism import capabilities
from prism.errors import BackendError
from prism.spi import KeyValueBackendType, KeyValueTraits, ReadQuery, StoredItem, Version
from prism.units import ByteSize
from prism_redis.connection import RedisServer, safe_address

_T = TypeVar("_T")

MiB = 1024 * 1024

#: Redis refuses strings above 512 MB (``proto-max-bulk-len``).
REDIS_MAX_STRING = 512 * MiB

#: Rows per ``HMGET`` inside the range-read script; Lua's ``unpack`` overflows
#: the C stack (about 8000 slots) on much longer lists.
_HMGET_BATCH = 1000

# -- row encoding -------------------------------------------------------------------
#
# A row is stored as one binary string whose head the Lua scripts parse:
#   2 bytes   length n of the version bytes (big-endian)
#   n bytes   version bytes: micros as 8 bytes big-endian with the sign bit
#             flipped, then the nonce in UTF-8. Comparing them bytewise is
#             comparing (micros, nonce), which is what Version's order is.
#   1 byte    flags: 1 tombstone, 2 has an expiry, 4 has chunks
# and a tail only Python reads:
#   8 bytes   expires_at_us (signed; 0 when there is none)
#   4 bytes   chunk_count
#   1 byte    length of chunk_set, then chunk_set (ASCII)
#   8 bytes   value_size
#   the rest  the value

_TOMBSTONE = 1
_EXPIRES = 2
_CHUNKED = 4
_SIZE = struct.Struct(">Q")
_BIAS = 1 << 63
#: The head's length and the version's micros.
_HEAD = struct.Struct(">HQ")
#: What follows the version: flags, expires_at_us, chunk_count, length of chunk_set.
_MIDDLE = struct.Struct(">BqIB")
_UNCHUNKED = {0: _MIDDLE.pack(0, 0, 0, 0), _TOMBSTONE: _MIDDLE.pack(_TOMBSTONE, 0, 0, 0)}


def version_bytes(version: Version) -> bytes:
    """``version`` as bytes whose bytewise order is the order of versions."""
    return _SIZE.pack(version.micros + _BIAS) + version.nonce.encode("utf-8")


def _version_head(version: Version) -> bytes:
    """The row's first bytes: the version's length, then the version."""
    ver = version_bytes(version)
    return struct.pack(">H", len(ver)) + ver


def encode_row(item: StoredItem, head: bytes | None = None) -> bytes:
    """``head``: ``_version_head(item.version)``, when the caller has it already
    (the rows of one write share their version)."""
    if head is None:
        head = _version_head(item.version)
    value_size = _SIZE.pack(item.value_size)
    if item.expires_at_us is None and not item.chunk_count and not item.chunk_set:
        middle = _UNCHUNKED[_TOMBSTONE if item.tombstone else 0]
        return b"".join((head, middle, value_size, item.value))
    flags = (
        (_TOMBSTONE if item.tombstone else 0)
        | (_EXPIRES if item.expires_at_us is not None else 0)
        | (_CHUNKED if item.chunk_count > 0 else 0)
    )
    chunk_set = item.chunk_set.encode("ascii")
    middle = _MIDDLE.pack(flags, item.expires_at_us or 0, item.chunk_count, len(chunk_set))
    return b"".join((head, middle, chunk_set, value_size, item.value))


def decode_row(key: bytes, raw: bytes) -> StoredItem:
    # key and raw are bytes (redis-py hands replies over as bytes): no copies.
    n, biased = _HEAD.unpack_from(raw)
    pos = 2 + n
    nonce = raw[10:pos].decode("utf-8")
    flags, expires, chunk_count, set_len = _MIDDLE.unpack_from(raw, pos)
    pos += _MIDDLE.size
    chunk_set = raw[pos : pos + set_len].decode("ascii") if set_len else ""
    pos += set_len
    (value_size,) = _SIZE.unpack_from(raw, pos)
    return StoredItem(
        key=key,
        value=raw[pos + _SIZE.size :],
        version=Version(biased - _BIAS, nonce),
        expires_at_us=expires if flags & _EXPIRES else None,
        tombstone=bool(flags & _TOMBSTONE),
        chunk_count=chunk_count,
        chunk_set=chunk_set,
        value_size=value_size,
    )


def _expiry_ms(expires_at_us: int | None) -> int | None:
    # Rounded up: Redis must never remove anything before the row's own expiry.
    return None if expires_at_us is None else -(-expires_at_us // 1000)


# -- server-side scripts ------------------------------------------------------------
#
# Lua's string comparison (<) uses strcoll, which depends on the server's locale
# and stops at NUL bytes, so versions are compared byte by byte here. Equality
# (==) of Lua strings is exact.

_LUA_COMMON = """
local function parse(row)
  local n = string.byte(row, 1) * 256 + string.byte(row, 2)
  return string.sub(row, 3, 2 + n), string.byte(row, 3 + n)
end

local function newer(a, b)
  if a == b then return false end
  local la, lb = #a, #b
  for i = 1, math.min(la, lb) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return la > lb
end

local function load_meta()
  local m = redis.call('HMGET', KEYS[3], 'persist', 'maxexp')
  return tonumber(m[1] or '0'), tonumber(m[2] or '0')
end

-- Expire the record's keys natively only when that is exact: every row has an
-- expiry, so once the latest one (plus the grace) has passed, nothing live is lost.
local function settle(persist, maxexp, grace)
  redis.call('HSET', KEYS[3], 'persist', string.format('%.0f', persist), 'maxexp', string.format('%.0f', maxexp))
  if persist <= 0 and maxexp > 0 then
    local at = string.format('%.0f', maxexp + grace)
    for k = 1, 3 do redis.call('PEXPIREAT', KEYS[k], at) end
  else
    for k = 1, 3 do redis.call('PERSIST', KEYS[k]) end
  end
end
"""

#: KEYS: item zset, row hash, meta hash, namespace record set.
#: ARGV: record id, grace ms, then per row: key, encoded row, expiry ms or "".
#: Returns key, old row pairs of the replaced rows that had chunks.
_WRITE = (
    _LUA_COMMON
    + """
local persist, maxexp = load_meta()
local replaced = {}
local wrote = false
for i = 3, #ARGV, 3 do
  local key, row, exp = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ver = parse(row)
  local old = redis.call('HGET', KEYS[2], key)
  local apply = true
  if old then
    local oldver, oldflags = parse(old)
    if newer(ver, oldver) then
      if bit.band(oldflags, 4) ~= 0 then
        replaced[#replaced + 1] = key
        replaced[#replaced + 1] = old
      end
      if bit.band(oldflags, 2) == 0 then persist = persist - 1 end
    else
      apply = false
    end
  else
    redis.call('ZADD', KEYS[1], 0, key)
  end
  if apply then
    redis.call('HSET', KEYS[2], key, row)
    if exp == '' then
      persist = persist + 1
    else
      local e = tonumber(exp)
      if e > maxexp then maxexp = e end
    end
    wrote = true
  end
end
if wrote then
  redis.call('ZADD', KEYS[4], 0, ARGV[1])
  settle(persist, maxexp, tonumber(ARGV[2]))
end
return replaced
"""
)

#: KEYS: as for writes. ARGV: record id, grace ms, then per row: key, version bytes.
_REMOVE = (
    _LUA_COMMON
    + """
local persist, maxexp = load_meta()
local changed = false
for i = 3, #ARGV, 2 do
  local key = ARGV[i]
  local old = redis.call('HGET', KEYS[2], key)
  if old then
    local ver, flags = parse(old)
    if ver == ARGV[i + 1] then
      redis.call('HDEL', KEYS[2], key)
      redis.call('ZREM', KEYS[1], key)
      if bit.band(flags, 2) == 0 then persist = persist - 1 end
      changed = true
    end
  end
end
if changed then
  if redis.call('HLEN', KEYS[2]) == 0 then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    redis.call('ZREM', KEYS[4], ARGV[1])
  else
    settle(persist, maxexp, tonumber(ARGV[2]))
  end
end
return 0
"""
)

#: KEYS: item zset, row hash. ARGV: lex min, lex max, limit.
#: One script, so the keys and their rows are one snapshot: a reader never sees
#: part of an atomic write.
_READ_RANGE = """
local keys = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for s = 1, #keys, BATCH do
  local batch = {}
  for i = s, math.min(s + BATCH - 1, #keys) do batch[#batch + 1] = keys[i] end
  local rows = redis.call('HMGET', KEYS[2], unpack(batch))
  for i, key in ipairs(batch) do
    if rows[i] then
      out[#out + 1] = key
      out[#out + 1] = rows[i]
    end
  end
end
return out
""".replace("BATCH", str(_HMGET_BATCH))

#: KEYS: namespace record set, the record's item zset. ARGV: record id.
#: Drops a record id whose keys Redis expired, unless it came back meanwhile.
_FORGET = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


# -- settings -----------------------------------------------------------------------


def _positive_duration(_: Any, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name}: expected a duration above zero, got {value}")


def _not_negative_duration(_: Any, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value < timedelta(0):
        raise ValueError(f"{attribute.name}: expected a duration of zero or more, got {value}")


def _redis_url(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    scheme = urlsplit(value).scheme
    if scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(
            f"{attribute.name}: expected a redis://, rediss:// or unix:// URL, got {safe_address(value)!r}"
        )


@attrs.frozen
class RedisSettings:
    """The ``redis`` backend's keys in ``prism.yaml``."""

    url: str = attrs.field(default="redis://127.0.0.1:6379/0", validator=_redis_url)
    """The server, as a redis-py URL (``redis://[user:password@]host:port/db``,
    ``rediss://`` for TLS, ``unix:///path?db=0``)."""
    key_prefix: str = attrs.field(default="prism", validator=attrs.validators.min_len(1))
    """Every Redis key this backend writes starts with ``<key_prefix>:``; two
    backends sharing a server must use different prefixes."""
    connect_timeout: timedelta = attrs.field(default=timedelta(seconds=5), validator=_positive_duration)
    """How long opening one connection may take, and how long a call waits for
    a free connection of the pool."""
    socket_timeout: timedelta = attrs.field(default=timedelta(seconds=5), validator=_positive_duration)
    """How long one command may wait for its reply."""
    max_connections: int = attrs.field(default=32, validator=attrs.validators.gt(0))
    """Connections in the pool; further concurrent calls wait for one."""
    retries: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    """Retries of a command that failed on a connection error or timeout.
    Safe: every write is idempotent by version."""
    expiry_grace: timedelta = attrs.field(default=timedelta(minutes=1), validator=_not_negative_duration)
    """Redis removes expired chunk sets and fully expired records this long
    after their expiry, so clock skew between Prism and Redis can never remove
    data Prism still considers live. The core hides expired rows exactly."""
    durable: bool = False
    """Set only when the server runs ``appendonly yes`` with ``appendfsync
    always``; the backend then declares ``durable`` and checks that at start."""
    max_item_bytes: ByteSize = attrs.field(
        default=ByteSize(MiB), validator=[attrs.validators.gt(ByteSize(0))]
    )
    """Values above this are chunked by the core."""
    max_value_bytes: ByteSize = attrs.field(
        default=ByteSize(64 * MiB), validator=attrs.validators.gt(ByteSize(0))
    )
    """The largest value, chunks included, a namespace on this backend may hold."""
    max_message_bytes: ByteSize = attrs.field(
        default=ByteSize(16 * MiB), validator=attrs.validators.gt(ByteSize(0))
    )
    """Queue: the largest message (key, payload and headers) a topic accepts. The
    default leaves room above a namespace's default limit of 1 MiB for the
    headers the core adds to a dead letter."""

    def __attrs_post_init__(self) -> None:
        if self.max_item_bytes > REDIS_MAX_STRING - 1024:
            raise ValueError(
                f"max_item_bytes ({self.max_item_bytes}) must leave room under Redis's 512 MB string limit"
            )
        if self.max_message_bytes > REDIS_MAX_STRING - 1024:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) must leave room under Redis's 512 MB "
                "string limit"
            )
        if self.max_value_bytes < self.max_item_bytes:
            raise ValueError(
                f"max_value_bytes ({self.max_value_bytes}) must be at least max_item_bytes "
                f"({self.max_item_bytes})"
            )


# -- the backend --------------------------------------------------------------------


class RedisKeyValue:
    """The KeyValue SPI on one Redis server, through redis-py's asyncio client
    (hiredis parses replies when it is installed, which the distribution requires)."""

    def __init__(self, name: str, settings: RedisSettings) -> None:
        self.name = name
        self.settings = settings
        self._server = RedisServer(name, settings)
        self.address = self._server.address
        self._grace_ms = str(settings.expiry_grace // timedelta(milliseconds=1))
        self._write_script: AsyncScript | None = None
        self._remove_script: AsyncScript | None = None
        self._read_script: AsyncScript | None = None
        self._forget_script: AsyncScript | None = None

    # -- plumbing ---------------------------------------------------------------------

    def _error(self, doing: str, exc: BaseException) -> BackendError:
        return self._server.error(doing, exc)

    async def _call(self, doing: str, call: Awaitable[_T]) -> _T:
        return await self._server.call(doing, call)

    def _redis(self) -> aioredis.Redis:
        return self._server.client

    def _script(self, script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise self._server.not_started()
        return script

    def _base(self, namespace: str) -> bytes:
        return f"{self.settings.key_prefix}:{namespace}:".encode()

    def _record_keys(self, namespace: str, record_id: str) -> list[bytes]:
        base = self._base(namespace)
        rid = record_id.encode("utf-8")
        return [base + b"z:" + rid, base + b"h:" + rid, base + b"m:" + rid, base + b"records"]

    def _chunk_key(self, namespace: str, record_id: str, key: bytes, chunk_set: str) -> bytes:
        # Lengths make the name unambiguous whatever bytes the id and key hold.
        rid = record_id.encode("utf-8")
        return b"%sc:%d:%s%d:%s:%s" % (
            self._base(namespace),
            len(rid),
            rid,
            len(key),
            bytes(key),
            chunk_set.encode("ascii"),
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        client = await self._server.open()
        self._write_script = client.register_script(_WRITE)
        self._remove_script = client.register_script(_REMOVE)
        self._read_script = client.register_script(_READ_RANGE)
        self._forget_script = client.register_script(_FORGET)

    async def close(self) -> None:
        # The scripts are bound to the client: drop them too, so a call after
        # close is refused instead of quietly opening a new connection.
        self._write_script = self._remove_script = self._read_script = self._forget_script = None
        await self._server.close()

    # -- the SPI -------------------------------------------------------------------------

    async def provision(self, namespace: str) -> None:
        # Redis keys need no creating; the namespace's keys appear with its first write.
        return None

    async def write(
        self, namespace: str, record_id: str, items: Sequence[StoredItem], *, atomic: bool
    ) -> list[StoredItem]:
        # One script call whatever ``atomic`` says: a script is atomic, and one
        # round trip is also the cheapest way to write a batch.
        if not items:
            return []
        script = self._script(self._write_script)
        args: list[bytes | str] = [record_id.encode("utf-8"), self._grace_ms]
        version: Version | None = None
        head = b""
        for item in items:
            if item.version is not version:
                # The rows of one write share one version: encode it once.
                version = item.version
                head = _version_head(version)
            expiry = _expiry_ms(item.expires_at_us)
            args += [item.key, encode_row(item, head), "" if expiry is None else str(expiry)]
        reply = await self._call(
            f"write to {namespace}/{record_id}",
            script(keys=self._record_keys(namespace, record_id), args=args),
        )
        return [decode_row(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]

    async def read(self, namespace: str, record_id: str, query: ReadQuery) -> list[StoredItem]:
        if query.limit <= 0:
            return []
        zset, rows, _, _ = self._record_keys(namespace, record_id)
        doing = f"read of {namespace}/{record_id}"
        if query.keys is not None:
            # One HMGET is one snapshot; bounds and order are applied here.
            keys = sorted({k for k in query.keys if query.matches(k)})
            if not keys:
                return []
            values: list[Any] = await self._call(doing, self._redis().hmget(rows, keys))
            found = [decode_row(k, v) for k, v in zip(keys, values, strict=True) if v is not None]
            return found[: query.limit]
        low = b"-"
        if query.start is not None:
            low = b"[" + bytes(query.start)
        if query.after is not None and (query.start is None or bytes(query.after) >= bytes(query.start)):
            low = b"(" + bytes(query.after)
        high = b"+" if query.end is None else b"(" + bytes(query.end)
        if query.end is not None and query.start is not None and bytes(query.start) >= bytes(query.end):
            return []
        script = self._script(self._read_script)
        reply = await self._call(doing, script(keys=[zset, rows], args=[low, high, query.limit]))
        return [decode_row(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]

    async def remove(self, namespace: str, record_id: str, rows: Sequence[tuple[bytes, Version]]) -> None:
        if not rows:
            return
        script = self._script(self._remove_script)
        args: list[bytes | str] = [record_id.encode("utf-8"), self._grace_ms]
        for key, version in rows:
            args += [bytes(key), version_bytes(version)]
        await self._call(
            f"remove from {namespace}/{record_id}",
            script(keys=self._record_keys(namespace, record_id), args=args),
        )

    async def scan_records(self, namespace: str, after: str | None, limit: int) -> list[str]:
        if limit <= 0:
            return []
        client = self._redis()
        forget = self._script(self._forget_script)
        records = self._base(namespace) + b"records"
        doing = f"scan of {namespace}"
        out: list[str] = []
        cursor = after
        while len(out) < limit:
            want = limit - len(out)
            low = b"-" if cursor is None else b"(" + cursor.encode("utf-8")
            ids: list[Any] = await self._call(
                doing, client.zrangebylex(records, low, b"+", start=0, num=want)
            )
            if not ids:
                break
            # A record whose keys Redis expired leaves its id behind; drop such
            # ids (atomically re-checked by the script) rather than list them.
            async with client.pipeline(transaction=False) as pipe:
                for raw in ids:
                    pipe.exists(self._record_keys(namespace, raw.decode("utf-8"))[0])
                exists = await self._call(doing, pipe.execute())
            for raw, present in zip(ids, exists, strict=True):
                record_id = raw.decode("utf-8")
                if present:
                    out.append(record_id)
                else:
                    zset = self._record_keys(namespace, record_id)[0]
                    gone = await self._call(doing, forget(keys=[records, zset], args=[raw]))
                    if not gone:
                        out.append(record_id)
            if len(ids) < want:
                break
            cursor = ids[-1].decode("utf-8")
        return out

    async def write_chunks(
        self,
        namespace: str,
        record_id: str,
        key: bytes,
        chunk_set: str,
        chunks: Sequence[bytes],
        expires_at_us: int | None,
    ) -> None:
        name = self._chunk_key(namespace, record_id, key, chunk_set)
        expiry = _expiry_ms(expires_at_us)
        # MULTI/EXEC: the set is replaced whole, so a reader never sees a mix of
        # two attempts, and a retry that writes fewer chunks leaves none behind.
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.delete(name)
            for chunk in chunks:
                pipe.rpush(name, bytes(chunk))
            if expiry is not None:
                pipe.pexpireat(name, expiry + self.settings.expiry_grace // timedelta(milliseconds=1))
            await self._call(f"write of chunks for {namespace}/{record_id}", pipe.execute())

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, chunk_set: str, count: int
    ) -> list[bytes]:
        if count <= 0:
            return []
        name = self._chunk_key(namespace, record_id, key, chunk_set)
        # A set lives in one list, written and deleted whole: LRANGE never sees a gap.
        chunks: list[Any] = await self._call(
            f"read of chunks for {namespace}/{record_id}", self._redis().lrange(name, 0, count - 1)
        )
        return [bytes(c) for c in chunks]

    async def delete_chunks(self, namespace: str, record_id: str, key: bytes, chunk_set: str) -> None:
        name = self._chunk_key(namespace, record_id, key, chunk_set)
        await self._call(f"delete of chunks for {namespace}/{record_id}", self._redis().delete(name))


def durability_note(settings: RedisSettings) -> str:
    """Why this backend is or is not durable, for plans that refuse it."""
    if settings.durable:
        return "durable: true, verified at start: appendonly yes with appendfsync always"
    return (
        "Redis acknowledges writes before they reach disk; run the server with appendonly yes and "
        "appendfsync always, then set durable: true on this backend"
    )


def _traits(settings: RedisSettings) -> KeyValueTraits:
    return KeyValueTraits(
        # Redis acknowledges a write before it reaches disk unless the server
        # runs AOF with appendfsync always, which `durable: true` asserts.
        durability="durable" if settings.durable else "ephemeral",
        # One server: every command sees every write acknowledged before it.
        consistency="strong",
        max_item_bytes=settings.max_item_bytes,
        max_value_bytes=settings.max_value_bytes,
        durability_note=durability_note(settings),
    )


KEYVALUE = KeyValueBackendType(
    settings_type=RedisSettings,
    create=RedisKeyValue,
    # No kv.native_ttl: Redis 7.0 cannot expire single hash fields, so rows are
    # not removed by Redis one by one; the core filters and purges them.
    capabilities=frozenset({capabilities.KV_ATOMIC_MUTATE, capabilities.KV_SCAN}),
    traits=_traits,
    description="KeyValue on a Redis server; last-write-wins and atomic batches in Lua scripts",
)
