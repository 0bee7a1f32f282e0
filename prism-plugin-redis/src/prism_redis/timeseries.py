"""The ``redis`` TimeSeries backend: one sorted set and one hash per series.

Key layout, for a backend with ``key_prefix`` P, namespace N and series S (S as
UTF-8; every Redis key is binary-safe):

* ``P:N:ts:{S}:z``: a sorted set of the series' *positions*, every member at
  score 0, so ``ZRANGE ... BYLEX`` (and ``BYLEX REV``) returns them in
  ``memcmp`` order. A position is encoded as 8 bytes big-endian of
  ``time_us + 2**63`` (so negative times sort first) followed by the event id in
  UTF-8: bytewise order is ``(time_us, event_id)`` order, because UTF-8 byte
  order is code point order, which is how Python compares strings.
* ``P:N:ts:{S}:h``: a hash of position to the encoded event (see
  :func:`encode_event`).
* ``P:N:ts-series``: a set of the namespace's series names, which a
  whole-namespace purge walks with ``SSCAN`` (never ``KEYS``/``SCAN``).

The two keys of a series share the hash tag ``{S}``, so a script touching both
stays in one slot. The series set is only touched outside the scripts.

* ``write``: one script per call (``ZADD`` + ``HSET`` per event), so a batch is
  visible whole, and a position written again keeps one member whose event is
  the later write's. The script also moves the series' keys' expiry
  (``PEXPIREAT``) to the latest ``expires_at_us`` plus ``expiry_grace``, so a
  series whose events all passed retention disappears by itself.
* ``read``: one script (``ZRANGE BYLEX [REV] LIMIT`` then ``HMGET``), one
  snapshot, O(log n + page) in either order from any cursor.
* ``purge``: a script deletes up to a batch of positions before the cut-off
  (``ZRANGE BYLEX`` from ``-``, ``HDEL``, ``ZREM``) and is called until it
  finds fewer, so the server is never blocked by one long script.

Retention is not native (Redis 7.0 cannot expire single sorted set members), so
``timeseries.native_retention`` is not declared: the core filters and purges.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from redis.commands.core import AsyncScript

from prism.config import NamespaceConfig
from prism.spi import EventQuery, StoredEvent, TimeSeriesBackendType, TimeSeriesTraits
from prism_redis.connection import RedisServer, text
from prism_redis.keyvalue import RedisSettings, durability_note

_T = TypeVar("_T")

_BIAS = 1 << 63
_TIME = struct.Struct(">Q")
_HEAD = struct.Struct(">qI")
_LEN = struct.Struct(">I")

#: Positions deleted per purge script call.
PURGE_BATCH = 1000

#: Series names per ``SSCAN`` step of a whole-namespace purge.
_SCAN_COUNT = 200

#: Fields per ``HMGET`` inside the read script (Lua's ``unpack`` overflows the C
#: stack far above this).
_HMGET_BATCH = 1000


def time_bytes(time_us: int) -> bytes:
    """``time_us`` as 8 bytes whose bytewise order is numeric order."""
    return _TIME.pack(time_us + _BIAS)


def position_member(time_us: int, event_id: str) -> bytes:
    """The sorted-set member of ``(time_us, event_id)``; see the module docstring."""
    return time_bytes(time_us) + event_id.encode("utf-8")


def decode_position(member: bytes) -> tuple[int, str]:
    (biased,) = _TIME.unpack_from(member)
    return biased - _BIAS, bytes(member[8:]).decode("utf-8")


def encode_event(event: StoredEvent) -> bytes:
    """An event's hash value: expiry (8 bytes, signed), tag count (4), each tag
    as length-prefixed name and value (4-byte lengths), then the payload."""
    parts = [_HEAD.pack(event.expires_at_us, len(event.tags))]
    for name, value in event.tags:
        n, v = name.encode("utf-8"), value.encode("utf-8")
        parts += [_LEN.pack(len(n)), n, _LEN.pack(len(v)), v]
    parts.append(bytes(event.payload))
    return b"".join(parts)


def decode_event(member: bytes, raw: bytes) -> StoredEvent:
    time_us, event_id = decode_position(member)
    expires_at_us, count = _HEAD.unpack_from(raw)
    pos = _HEAD.size
    tags: list[tuple[str, str]] = []
    for _ in range(count):
        (n,) = _LEN.unpack_from(raw, pos)
        name = bytes(raw[pos + 4 : pos + 4 + n]).decode("utf-8")
        pos += 4 + n
        (v,) = _LEN.unpack_from(raw, pos)
        value = bytes(raw[pos + 4 : pos + 4 + v]).decode("utf-8")
        pos += 4 + v
        tags.append((name, value))
    return StoredEvent(
        time_us=time_us,
        event_id=event_id,
        payload=bytes(raw[pos:]),
        tags=tuple(tags),
        expires_at_us=expires_at_us,
    )


# -- server-side scripts ------------------------------------------------------------

#: KEYS: positions zset, events hash. ARGV: expiry ms (latest event expiry plus
#: grace), then member, event pairs. Returns 1 when the series was created.
_WRITE = """
local created = redis.call('EXISTS', KEYS[1]) == 0 and 1 or 0
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 0, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
for k = 1, 2 do
  if redis.call('PTTL', KEYS[k]) < 0 then
    redis.call('PEXPIREAT', KEYS[k], ARGV[1])
  else
    redis.call('PEXPIREAT', KEYS[k], ARGV[1], 'GT')
  end
end
return created
"""

#: KEYS: positions zset, events hash. ARGV: lex bound, lex bound, limit, '1' for
#: descending (then the first bound is the high one). Returns member, event pairs.
_READ = """
local members
if ARGV[4] == '1' then
  members = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'BYLEX', 'REV', 'LIMIT', 0, ARGV[3])
else
  members = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'BYLEX', 'LIMIT', 0, ARGV[3])
end
local out = {}
for s = 1, #members, BATCH do
  local batch = {}
  for i = s, math.min(s + BATCH - 1, #members) do batch[#batch + 1] = members[i] end
  local events = redis.call('HMGET', KEYS[2], unpack(batch))
  for i, m in ipairs(batch) do
    if events[i] then
      out[#out + 1] = m
      out[#out + 1] = events[i]
    end
  end
end
return out
""".replace("BATCH", str(_HMGET_BATCH))

#: KEYS: positions zset, events hash. ARGV: exclusive lex upper bound, batch.
#: Returns {deleted, 1 when the series is now empty}.
_PURGE = """
local members = redis.call('ZRANGE', KEYS[1], '-', ARGV[1], 'BYLEX', 'LIMIT', 0, ARGV[2])
if #members > 0 then
  redis.call('ZREM', KEYS[1], unpack(members))
  redis.call('HDEL', KEYS[2], unpack(members))
end
local empty = redis.call('EXISTS', KEYS[1]) == 0 and 1 or 0
if empty == 1 then redis.call('DEL', KEYS[2]) end
return {#members, empty}
"""


class RedisTimeSeries:
    """The TimeSeries SPI on one Redis server."""

    def __init__(self, name: str, settings: RedisSettings) -> None:
        self.name = name
        self.settings = settings
        self._server = RedisServer(name, settings)
        self.address = self._server.address
        self._grace_ms = settings.expiry_grace // timedelta(milliseconds=1)
        self._scripts: dict[str, AsyncScript] = {}

    # -- plumbing ---------------------------------------------------------------------

    async def _call(self, doing: str, call: Awaitable[_T]) -> _T:
        return await self._server.call(doing, call)

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            raise self._server.not_started()
        return script

    def _series_set(self, namespace: str) -> bytes:
        return f"{self.settings.key_prefix}:{namespace}:ts-series".encode()

    def series_keys(self, namespace: str, series: str) -> list[bytes]:
        """The positions zset and events hash of ``series``."""
        base = f"{self.settings.key_prefix}:{namespace}:ts:{{".encode() + series.encode("utf-8")
        return [base + b"}:z", base + b"}:h"]

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        client = await self._server.open()
        self._scripts = {
            "write": client.register_script(_WRITE),
            "read": client.register_script(_READ),
            "purge": client.register_script(_PURGE),
        }

    async def close(self) -> None:
        # Scripts are bound to the client: a call after close is refused.
        self._scripts = {}
        await self._server.close()

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        # Keys appear with the first write; no bucket: one sorted set per series
        # reads any range in O(log n + page) whatever its length.
        return None

    # -- the SPI -------------------------------------------------------------------------

    async def write(self, namespace: str, series: str, events: Sequence[StoredEvent], write_us: int) -> None:
        # ``write_us`` is not needed: Redis runs scripts one at a time in arrival
        # order, so of two writes of one position the later call wins.
        if not events:
            return
        script = self._script("write")
        latest_ms = -(-max(e.expires_at_us for e in events) // 1000)
        args: list[bytes | int] = [latest_ms + self._grace_ms]
        for event in events:
            args += [position_member(event.time_us, event.event_id), encode_event(event)]
        doing = f"write to {namespace}/{series}"
        created = await self._call(doing, script(keys=self.series_keys(namespace, series), args=args))
        if created:
            # After the script: a purge that emptied the series and dropped its
            # name can then not drop it after this write (see _forget).
            await self._call(doing, self._server.client.sadd(self._series_set(namespace), series.encode()))

    async def read(self, namespace: str, series: str, query: EventQuery) -> list[StoredEvent]:
        if query.limit <= 0 or query.start_us >= query.end_us:
            return []
        low = b"[" + time_bytes(query.start_us)
        high = b"(" + time_bytes(query.end_us)
        if query.after is not None:
            after = position_member(*query.after)
            if query.descending:
                if query.after < (query.end_us, ""):
                    high = b"(" + after
            elif query.after >= (query.start_us, ""):
                low = b"(" + after
        first, second = (high, low) if query.descending else (low, high)
        reply: list[Any] = await self._call(
            f"read of {namespace}/{series}",
            self._script("read")(
                keys=self.series_keys(namespace, series),
                args=[first, second, query.limit, "1" if query.descending else "0"],
            ),
        )
        return [decode_event(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]

    async def purge(self, namespace: str, before_us: int, series: str | None = None) -> None:
        if series is not None:
            if await self._purge_series(namespace, series, before_us):
                await self._forget(namespace, series)
            return
        client = self._server.client
        names = self._series_set(namespace)
        cursor: int = 0
        while True:
            cursor, found = await self._call(
                f"purge of {namespace}: listing series",
                client.sscan(names, cursor, count=_SCAN_COUNT),
            )
            for raw in found:
                name = text(raw)
                if await self._purge_series(namespace, name, before_us):
                    await self._forget(namespace, name)
            if int(cursor) == 0:
                return

    async def _purge_series(self, namespace: str, series: str, before_us: int) -> bool:
        """Delete the events of ``series`` before ``before_us``, a batch per script
        call; True when the series is empty afterwards."""
        script = self._script("purge")
        keys = self.series_keys(namespace, series)
        bound = b"(" + time_bytes(before_us)
        while True:
            deleted, empty = await self._call(
                f"purge of {namespace}/{series}", script(keys=keys, args=[bound, PURGE_BATCH])
            )
            if empty:
                return True
            if int(deleted) < PURGE_BATCH:
                return False

    async def _forget(self, namespace: str, series: str) -> None:
        """Drop an empty series from the namespace's set. A write that recreated
        it meanwhile adds its name again after its script, and this checks again
        after removing, so the name is never lost while the series has events."""
        client = self._server.client
        names = self._series_set(namespace)
        raw = series.encode("utf-8")
        doing = f"purge of {namespace}/{series}"
        await self._call(doing, client.srem(names, raw))
        if await self._call(doing, client.exists(self.series_keys(namespace, series)[0])):
            await self._call(doing, client.sadd(names, raw))


def _traits(settings: RedisSettings) -> TimeSeriesTraits:
    return TimeSeriesTraits(
        # As for KeyValue: only AOF with appendfsync always makes an
        # acknowledged write survive a crash, which `durable: true` asserts.
        durability="durable" if settings.durable else "ephemeral",
        # One event is one hash value; the same bound as one KeyValue row.
        max_event_bytes=settings.max_item_bytes,
        durability_note=durability_note(settings),
    )


TIMESERIES = TimeSeriesBackendType(
    settings_type=RedisSettings,
    create=RedisTimeSeries,
    # No timeseries.native_retention: Redis 7.0 cannot expire single members;
    # the core filters old events and purges them (a series whose events all
    # passed retention is expired by Redis as a whole).
    capabilities=frozenset(),
    traits=_traits,
    description="TimeSeries on Redis: a lexicographic sorted set and a hash per series, Lua scripts",
)
