"""The ``redis`` Queue backend: topics as Redis Streams, groups as consumer groups.

Key layout, for a backend with ``key_prefix`` P, namespace N and topic T (topic
names are letters, digits, ``.``, ``_`` and ``-``, so the keys are unambiguous):

* ``P:N:stream:T``: the topic, a stream. ``publish`` is ``XADD`` (in one
  ``MULTI``/``EXEC`` per batch), so message ids are stream ids and sort in
  publish order. Each entry holds the fields ``k`` (key), ``p`` (payload), ``t``
  (publish time, µs) and ``h:<name>`` per header.
* ``P:N:wake:T``: a short stream (``MAXLEN ~ 16``) that only wakes waiting
  consumers: every release adds an entry to it.

A Prism group is a Redis consumer group on the topic's stream, created by its
first ``receive`` at id 0 (the start of the topic), and a Prism consumer is a
Redis consumer of that group. A lease is an entry of the group's pending
entries list (PEL): its consumer is the holder, its idle time says when the
lease runs out (idle >= visibility) and its delivery counter is the attempt.

* ``receive``: one script reclaims expired leases with ``XAUTOCLAIM`` (which
  counts the delivery up) and reads new entries with ``XREADGROUP ... >``, so
  each call is atomic and returns messages in publish order (every reclaimed
  entry is older than every new one). When nothing is deliverable it blocks
  with ``XREAD BLOCK`` on the topic's stream and its wake stream, from the last
  ids the script saw, so whatever was published or released in between wakes
  it at once; the block is capped at the time until the earliest lease runs
  out (from the PEL's idle times). Nothing polls at a fixed rate.
* ``ack``: ``XACK``. ``release``: ``XCLAIM`` to the neutral consumer
  ``prism-released`` with ``TIME 0`` (so the entry is idle for ages, hence
  expired and reclaimable at once) and ``RETRYCOUNT`` = its current count (so
  the release itself does not count as a delivery). ``release_consumer``: the
  same for every entry in that consumer's PEL, then ``XGROUP DELCONSUMER``.
* An id is known to a group when it is pending, or when it is in the stream
  and not after the group's ``last-delivered-id`` (delivered and acked).
  ``ack`` and ``release`` check every id and act in one script, and change
  nothing when any id is unknown.

Neither ``queue.ordered_by_key`` nor ``queue.delay`` is declared: a consumer
group hands entries to competing consumers in stream order with no notion of a
key, and a stream cannot hide an entry until a time. The core refuses both.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript

from prism.config import NamespaceConfig
from prism.errors import BackendError
from prism.models import now_micros
from prism.spi import Lease, OutgoingMessage, QueueBackendType, QueueTraits, ReceiveRequest, StoredMessage
from prism_redis.connection import RedisServer
from prism_redis.keyvalue import RedisSettings, durability_note

#: The consumer that holds released entries until someone reclaims them. Prism's
#: own consumer names start with ``anonymous-`` or ``consumer-``.
RELEASED_CONSUMER = "prism-released"

#: Entries kept in a wake stream; it only has to hold the latest one.
_WAKE_MAXLEN = 16

#: ids per ``XACK`` inside a script (Lua's ``unpack`` overflows far above this).
_ID_BATCH = 500

#: How many PEL entries a waiting receive inspects for the earliest lease expiry.
#: Beyond this it waits at most ``_UNKNOWN_DUE_MS`` before looking again.
_PEL_SCAN_LIMIT = 10_000
_UNKNOWN_DUE_MS = 1000

_FIELD_KEY = b"k"
_FIELD_PAYLOAD = b"p"
_FIELD_TIME = b"t"
_HEADER = b"h:"

#: A stream id as Redis prints it; other spellings ("01-1", "5") are never ids
#: this backend returned, so they are unknown rather than parsed leniently.
_STREAM_ID = re.compile(r"(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})")
_U64 = (1 << 64) - 1


def _canonical(message_id: str) -> bool:
    match = _STREAM_ID.fullmatch(message_id)
    return match is not None and int(match[1]) <= _U64 and int(match[2]) <= _U64


# -- server-side scripts ------------------------------------------------------------

_LUA_COMMON = """
-- Compare two canonical stream ids ("ms-seq", decimal, no leading zeros) without
-- Lua numbers (doubles lose 64-bit precision) or '<' on strings (strcoll).
local function cmp_part(x, y)
  if #x ~= #y then return #x < #y and -1 or 1 end
  for i = 1, #x do
    local p, q = string.byte(x, i), string.byte(y, i)
    if p ~= q then return p < q and -1 or 1 end
  end
  return 0
end

local function id_le(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  local c = cmp_part(am, bm)
  if c == 0 then c = cmp_part(as, bs) end
  return c <= 0
end

-- The group's last-delivered-id, or nil when the stream or the group is missing.
local function last_delivered(key, group)
  if redis.call('EXISTS', key) == 0 then return nil end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == group then return last end
  end
  return nil
end

-- The delivery counter of a pending id, or nil when it is not pending.
local function pending_count(key, group, id)
  local p = redis.call('XPENDING', key, group, id, id, 1)
  if #p == 0 then return nil end
  return p[1][4]
end

-- Delivered to the group: pending, or in the stream at or before last-delivered-id.
local function known(key, group, last, id)
  if pending_count(key, group, id) then return true end
  if not id_le(id, last) then return false end
  return #redis.call('XRANGE', key, id, id) > 0
end

-- ARGV[first..] that are unknown to the group (all of them if it does not exist).
local function unknown_ids(key, group, first)
  local last = last_delivered(key, group)
  local out = {}
  for i = first, #ARGV do
    if not last or not known(key, group, last, ARGV[i]) then out[#out + 1] = ARGV[i] end
  end
  return out
end

-- Make a pending entry deliverable now, keeping its delivery counter.
local function release_one(key, group, neutral, id, count)
  redis.call('XCLAIM', key, group, neutral, 0, id, 'TIME', 0, 'RETRYCOUNT', count, 'JUSTID')
end

local function wake(key)
  redis.call('XADD', key, 'MAXLEN', '~', WAKE_MAXLEN, '*', 'r', '1')
end
""".replace("WAKE_MAXLEN", str(_WAKE_MAXLEN))

#: KEYS: stream, wake stream. ARGV: group, consumer, visibility ms, max messages,
#: whether to report what a blocking wait needs ("1"/"0").
#: Returns {leases, last stream id, last wake id, ms until the earliest lease
#: runs out or -1}; each lease is {id, delivery count, fields}.
_RECEIVE = (
    _LUA_COMMON
    + """
local key, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local vis, want = tonumber(ARGV[3]), tonumber(ARGV[4])
-- A new group starts at the beginning of the topic. Checked first rather than
-- ignoring BUSYGROUP: every error reply would count in the server's errorstats.
if not last_delivered(key, group) then
  redis.call('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')
end
local out = {}
-- Expired leases first: they are older than anything never delivered. XPENDING
-- with IDLE finds the first one, so XAUTOCLAIM does not walk the live leases
-- before it on every call.
local first = redis.call('XPENDING', key, group, 'IDLE', vis, '-', '+', 1)
local cursor = '0-0'
if #first > 0 then cursor = first[1][1] end
while #first > 0 and #out < want do
  local r = redis.call('XAUTOCLAIM', key, group, consumer, vis, cursor, 'COUNT', want - #out)
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    if type(e) == 'table' then
      out[#out + 1] = {e[1], pending_count(key, group, e[1]), e[2]}
    end
  end
  if cursor == '0-0' then break end
end
if #out < want then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want - #out, 'STREAMS', key, '>')
  if r then
    for _, e in ipairs(r[1][2]) do out[#out + 1] = {e[1], 1, e[2]} end
  end
end
if #out > 0 or ARGV[5] ~= '1' then return {out, '', '', -1} end
local function last_id(k)
  local r = redis.call('XREVRANGE', k, '+', '-', 'COUNT', 1)
  if #r == 0 then return '0-0' end
  return r[1][1]
end
-- Every live lease has idle < vis (XAUTOCLAIM took the others): the one with
-- the largest idle runs out first.
local maxidle, start, scanned, complete = -1, '-', 0, true
while true do
  local page = redis.call('XPENDING', key, group, start, '+', 1000)
  for _, e in ipairs(page) do
    if e[3] > maxidle then maxidle = e[3] end
  end
  scanned = scanned + #page
  if #page < 1000 then break end
  if scanned >= SCAN_LIMIT then complete = false break end
  start = '(' .. page[#page][1]
end
local due = -1
if maxidle >= 0 then due = math.max(1, vis - maxidle) end
if not complete and (due < 0 or due > UNKNOWN_DUE) then due = UNKNOWN_DUE end
return {out, last_id(key), last_id(KEYS[2]), due}
""".replace("SCAN_LIMIT", str(_PEL_SCAN_LIMIT)).replace("UNKNOWN_DUE", str(_UNKNOWN_DUE_MS))
)

#: KEYS: stream. ARGV: group, apply ("1"/"0"), ids... Returns the unknown ids;
#: acknowledges every id only when there are none (and apply is "1").
_ACK = (
    _LUA_COMMON
    + """
local unknown = unknown_ids(KEYS[1], ARGV[1], 3)
if #unknown > 0 or ARGV[2] ~= '1' then return unknown end
for s = 3, #ARGV, BATCH do
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, s, math.min(s + BATCH - 1, #ARGV)))
end
return {}
""".replace("BATCH", str(_ID_BATCH))
)

#: KEYS: stream, wake stream. ARGV: group, neutral consumer, apply, ids...
#: Returns the unknown ids; releases every pending id only when there are none.
_RELEASE = (
    _LUA_COMMON
    + """
local unknown = unknown_ids(KEYS[1], ARGV[1], 4)
if #unknown > 0 or ARGV[3] ~= '1' then return unknown end
local released = 0
for i = 4, #ARGV do
  local count = pending_count(KEYS[1], ARGV[1], ARGV[i])
  if count then
    release_one(KEYS[1], ARGV[1], ARGV[2], ARGV[i], count)
    released = released + 1
  end
end
if released > 0 then wake(KEYS[2]) end
return {}
"""
)

#: KEYS: stream, wake stream. ARGV: group, consumer, neutral consumer.
#: Releases everything the consumer holds, then deletes the consumer.
_RELEASE_CONSUMER = (
    _LUA_COMMON
    + """
if not last_delivered(KEYS[1], ARGV[1]) then return 0 end
local released = 0
while true do
  local page = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000, ARGV[2])
  if #page == 0 then break end
  for _, e in ipairs(page) do
    release_one(KEYS[1], ARGV[1], ARGV[3], e[1], e[4])
    released = released + 1
  end
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
if released > 0 then wake(KEYS[2]) end
return released
"""
)

#: KEYS: stream. ARGV: group, ids... Returns per id {state, fields}: state 0
#: unknown, 1 acknowledged, 2 pending (with the entry's fields).
_LOOKUP = (
    _LUA_COMMON
    + """
local last = last_delivered(KEYS[1], ARGV[1])
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if not last then
    out[#out + 1] = {0, {}}
  elseif pending_count(KEYS[1], ARGV[1], id) then
    local e = redis.call('XRANGE', KEYS[1], id, id)
    if #e > 0 then out[#out + 1] = {2, e[1][2]} else out[#out + 1] = {1, {}} end
  elseif known(KEYS[1], ARGV[1], last, id) then
    out[#out + 1] = {1, {}}
  else
    out[#out + 1] = {0, {}}
  end
end
return out
"""
)


# -- encoding -----------------------------------------------------------------------


def _entry_fields(message: OutgoingMessage, published_at_us: int) -> dict[bytes, bytes]:
    fields: dict[bytes, bytes] = {
        _FIELD_KEY: bytes(message.key),
        _FIELD_PAYLOAD: bytes(message.payload),
        _FIELD_TIME: str(published_at_us).encode(),
    }
    for name, value in message.headers:
        fields[_HEADER + name.encode("utf-8")] = bytes(value)
    return fields


def _decode_message(message_id: str, raw: Sequence[Any]) -> StoredMessage:
    key = payload = b""
    published = 0
    headers: list[tuple[str, bytes]] = []
    for i in range(0, len(raw), 2):
        field, value = bytes(raw[i]), bytes(raw[i + 1])
        if field == _FIELD_KEY:
            key = value
        elif field == _FIELD_PAYLOAD:
            payload = value
        elif field == _FIELD_TIME:
            published = int(value)
        elif field.startswith(_HEADER):
            headers.append((field[len(_HEADER) :].decode("utf-8"), value))
    return StoredMessage(message_id, key, payload, tuple(sorted(headers)), published)


def _text_id(raw: bytes | str) -> str:
    return raw.decode("ascii") if isinstance(raw, bytes) else raw


# -- the backend --------------------------------------------------------------------


class RedisQueue:
    """The Queue SPI on one Redis server (see the module docstring for the mapping)."""

    def __init__(self, name: str, settings: RedisSettings) -> None:
        self.name = name
        self.settings = settings
        self._server = RedisServer(name, settings)
        self.address = self._server.address
        self._scripts: dict[str, AsyncScript] = {}

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            raise self._server.not_started()
        return script

    def _keys(self, namespace: str, topic: str) -> tuple[bytes, bytes]:
        base = f"{self.settings.key_prefix}:{namespace}:"
        return f"{base}stream:{topic}".encode(), f"{base}wake:{topic}".encode()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        client = await self._server.open()
        sources = {
            "receive": _RECEIVE,
            "ack": _ACK,
            "release": _RELEASE,
            "release_consumer": _RELEASE_CONSUMER,
            "lookup": _LOOKUP,
        }
        self._scripts = {name: client.register_script(source) for name, source in sources.items()}

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        # Streams and groups are created on first use (XADD, XGROUP CREATE MKSTREAM).
        return None

    async def close(self) -> None:
        # Scripts are bound to the client; dropping them makes later calls fail
        # clearly instead of reconnecting.
        self._scripts = {}
        await self._server.close()

    # -- the SPI -------------------------------------------------------------------------

    async def publish(self, namespace: str, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        if not messages:
            return []
        stream, _ = self._keys(namespace, topic)
        now = now_micros()
        # MULTI/EXEC: one round trip, and the batch is appended without other
        # publishers' entries in between.
        async with self._server.client.pipeline(transaction=True) as pipe:
            for message in messages:
                pipe.xadd(stream, _entry_fields(message, now))  # type: ignore[arg-type]
            ids: list[Any] = await self._server.call(f"publish to {namespace}/{topic}", pipe.execute())
        return [_text_id(i) for i in ids]

    async def receive(self, namespace: str, request: ReceiveRequest) -> list[Lease]:
        stream, wake = self._keys(namespace, request.topic)
        script = self._script("receive")
        visibility_ms = -(-request.visibility_us // 1000)
        doing = f"receive from {namespace}/{request.topic} for group {request.group!r}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_s
        while True:
            may_wait = deadline - loop.time() > 0
            args: list[str | int] = [
                request.group,
                request.consumer,
                visibility_ms,
                request.max_messages,
                int(may_wait),
            ]
            reply: list[Any] = await self._server.call(doing, script(keys=[stream, wake], args=args))
            raw_leases, stream_last, wake_last, due_ms = reply
            if raw_leases:
                return [
                    Lease(_decode_message(_text_id(raw_id), fields), int(count))
                    for raw_id, count, fields in raw_leases
                ]
            remaining = deadline - loop.time()
            if remaining <= 0 or not may_wait:
                return []
            timeout = remaining if due_ms < 0 else min(remaining, due_ms / 1000)
            await self._wait_for_change(doing, {stream: stream_last, wake: wake_last}, timeout)

    async def _wait_for_change(self, doing: str, streams: dict[bytes, bytes], seconds: float) -> None:
        """Block until a stream in ``streams`` grows past the given id, or ``seconds`` pass.

        What it returns does not matter: the caller looks again with the script.
        A cancelled wait drops its connection (see ``RedisServer.blocking_client``)."""
        block_ms = max(1, math.ceil(seconds * 1000))
        bound = block_ms / 1000 + self.settings.socket_timeout.total_seconds()
        client = self._server.blocking_client
        try:
            async with asyncio.timeout(bound):
                await self._server.call(doing, client.xread(streams, block=block_ms))  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise BackendError(
                f"redis backend {self.name!r} at {self.address}: {doing}: no answer to XREAD BLOCK "
                f"{block_ms} within {bound:.1f}s (the block plus socket_timeout); the server is "
                "overloaded or unreachable. Check the server, then consume again"
            ) from exc

    async def _check_ids(
        self, name: str, namespace: str, topic: str, group: str, ids: Sequence[str], extra: Sequence[str] = ()
    ) -> list[str]:
        """Run an id-checking script; returns the unknown ids. Ids that are not
        canonical stream ids are unknown without asking Redis, and then the
        script only checks the others (apply = 0), so nothing changes."""
        stream, wake = self._keys(namespace, topic)
        bad = {i for i in ids if not _canonical(i)}
        good = [i for i in ids if i not in bad]
        keys = [stream] if name == "ack" else [stream, wake]
        args: list[str] = [group, *extra, "0" if bad else "1", *good]
        unknown: list[Any] = await self._server.call(
            f"{name} on {namespace}/{topic} for group {group!r}", self._script(name)(keys=keys, args=args)
        )
        found = {_text_id(i) for i in unknown}
        return [i for i in ids if i in found or i in bad]

    async def ack(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        return await self._check_ids("ack", namespace, topic, group, ids)

    async def release(self, namespace: str, topic: str, group: str, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        return await self._check_ids("release", namespace, topic, group, ids, extra=[RELEASED_CONSUMER])

    async def release_consumer(self, namespace: str, topic: str, group: str, consumer: str) -> None:
        stream, wake = self._keys(namespace, topic)
        await self._server.call(
            f"release of consumer {consumer!r} on {namespace}/{topic} for group {group!r}",
            self._script("release_consumer")(keys=[stream, wake], args=[group, consumer, RELEASED_CONSUMER]),
        )

    async def lookup(
        self, namespace: str, topic: str, group: str, ids: Sequence[str]
    ) -> dict[str, StoredMessage | None]:
        good = [i for i in ids if _canonical(i)]
        if not good:
            return {}
        stream, _ = self._keys(namespace, topic)
        reply: list[Any] = await self._server.call(
            f"lookup on {namespace}/{topic} for group {group!r}",
            self._script("lookup")(keys=[stream], args=[group, *good]),
        )
        out: dict[str, StoredMessage | None] = {}
        for message_id, (state, fields) in zip(good, reply, strict=True):
            if state == 2:
                out[message_id] = _decode_message(message_id, fields)
            elif state == 1:
                out[message_id] = None
        return out


def _traits(settings: RedisSettings) -> QueueTraits:
    return QueueTraits(
        # As for KeyValue: only AOF with appendfsync always makes an
        # acknowledged XADD survive a crash, which `durable: true` asserts
        # and the start-up check verifies.
        durability="durable" if settings.durable else "ephemeral",
        max_message_bytes=settings.max_message_bytes,
        durability_note=durability_note(settings),
    )


QUEUE = QueueBackendType(
    settings_type=RedisSettings,
    create=RedisQueue,
    # Neither queue.ordered_by_key nor queue.delay: see the module docstring.
    capabilities=frozenset(),
    traits=_traits,
    description="Queue on Redis Streams; groups are consumer groups, leases are pending entries",
)
