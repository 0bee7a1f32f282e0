"""The ``redis`` Counter backend: a Redis integer per counter, and in ``exact``
mode a sorted set of the tokens it applied.

Key layout, for a backend with ``key_prefix`` P, namespace N and counter C (C
as UTF-8; every Redis key is binary-safe):

* ``P:N:ctr:{C}:v``: the value, a Redis string holding a signed 64-bit integer
  (missing means 0).
* ``P:N:ctr:{C}:t``: ``exact`` only: the tokens applied to the counter, members
  ``<generation_time_us>:<nonce>`` scored by their generation time (µs, exact
  as a double until the year 2255).

Both keys of a counter share the hash tag ``{C}``, so one script can touch both.

``best_effort``: an add is one ``INCRBY`` (exact 64-bit arithmetic in Redis,
which refuses to overflow: that error becomes :class:`CounterOverflow`), a
clear one ``DEL``. A retried add counts twice; that is the mode's price.

``exact``: each add and clear is one Lua script, so everything one operation
does to one counter is atomic and scripts on a counter are totally ordered:

1. drop tokens older than the *horizon* (now − ``counter.token_window`` −
   ``expiry_grace``, from Prism's clock; the grace covers skew between Prism
   processes);
2. a token already in the set: change nothing, return the current value
   (also when the replay races the first call: one of them runs first);
3. a token older than the horizon: refuse (its earlier use may be forgotten);
4. add: ``INCRBY`` the delta under ``redis.pcall``; on an overflow error
   restore the old value and record nothing; clear: ``DEL`` the value;
5. record the token and push the set's expiry to the token's generation time
   plus window and grace, so an idle counter's tokens disappear by themselves.

The new value is read with ``GET`` (a string): a Lua number is a double and
would round values above 2**53.

A clear is ordered against adds because both are scripts on the same key: each
add runs wholly before it (erased) or after it (kept). Clearing keeps the
token set, so replaying an add made before the clear still changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from prism import capabilities
from prism.config import CounterSettings, NamespaceConfig
from prism.errors import BackendError, InvalidArgument
from prism.models import now_micros
from prism.spi import (
    COUNTER_MAX,
    COUNTER_MIN,
    CounterBackendType,
    CounterOverflow,
    CounterToken,
    CounterTraits,
)
from prism_redis.connection import RedisServer, text
from prism_redis.keyvalue import RedisSettings, durability_note

_T = TypeVar("_T")

#: The overflow error of ``INCRBY`` ("increment or decrement would overflow").
_OVERFLOW = "would overflow"

# -- server-side scripts ------------------------------------------------------------

_LUA_COMMON = """
-- Steps 1 to 3 of the module docstring. Returns nil to go on, or a reply.
local function check_token()
  if ARGV[1] == '' then return nil end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
  if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    return {'replay', redis.call('GET', KEYS[1]) or '0'}
  end
  if tonumber(ARGV[2]) < tonumber(ARGV[3]) then return {'stale', ''} end
  return nil
end

-- Step 5.
local function record_token()
  if ARGV[1] == '' then return end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  if redis.call('PTTL', KEYS[2]) < 0 then
    redis.call('PEXPIREAT', KEYS[2], ARGV[4])
  else
    redis.call('PEXPIREAT', KEYS[2], ARGV[4], 'GT')
  end
end
"""

#: KEYS: value, tokens. ARGV: token member ('' for none), token time µs, horizon
#: µs, token set expiry ms, then the delta as one or two 64-bit parts.
#: Returns {'ok' | 'replay', value} or {'overflow' | 'stale', message}.
_ADD = (
    _LUA_COMMON
    + """
local seen = check_token()
if seen then return seen end
local old = redis.call('GET', KEYS[1])
for i = 5, #ARGV do
  local r = redis.pcall('INCRBY', KEYS[1], ARGV[i])
  if type(r) == 'table' and r.err then
    if old then redis.call('SET', KEYS[1], old) else redis.call('DEL', KEYS[1]) end
    return {'overflow', r.err}
  end
end
record_token()
return {'ok', redis.call('GET', KEYS[1]) or '0'}
"""
)

#: KEYS, ARGV: as for add, without the delta. Returns {'ok' | 'replay' | 'stale', ...}.
_CLEAR = (
    _LUA_COMMON
    + """
local seen = check_token()
if seen then return seen end
redis.call('DEL', KEYS[1])
record_token()
return {'ok', '0'}
"""
)


def delta_parts(delta: int) -> list[int]:
    """``delta`` as 64-bit increments (one, or up to three beyond 64 bits) of its
    sign, applied in order: the running value then moves one way only, so no
    prefix leaves the range unless the whole add does. Raises
    :class:`CounterOverflow` when no counter value could absorb ``delta``."""
    if abs(delta) > COUNTER_MAX - COUNTER_MIN:
        raise CounterOverflow(f"a delta of {delta} leaves the signed 64-bit range from any value")
    parts = [max(COUNTER_MIN, min(COUNTER_MAX, delta))]
    while sum(parts) != delta:
        rest = delta - sum(parts)
        parts.append(max(COUNTER_MIN, min(COUNTER_MAX, rest)))
    return parts


class RedisCounter:
    """The Counter SPI on one Redis server."""

    def __init__(self, name: str, settings: RedisSettings) -> None:
        self.name = name
        self.settings = settings
        self._server = RedisServer(name, settings)
        self.address = self._server.address
        self._grace_us = settings.expiry_grace // timedelta(microseconds=1)
        self._windows: dict[str, int] = {}
        self._scripts: dict[str, AsyncScript] = {}

    # -- plumbing ---------------------------------------------------------------------

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            raise self._server.not_started()
        return script

    def counter_keys(self, namespace: str, counter: str) -> list[bytes]:
        """The value and token-set keys of ``counter``."""
        base = f"{self.settings.key_prefix}:{namespace}:ctr:{{".encode() + counter.encode("utf-8")
        return [base + b"}:v", base + b"}:t"]

    async def _run(self, doing: str, call: Awaitable[_T]) -> _T:
        """Await ``call``; Redis's overflow refusal becomes :class:`CounterOverflow`,
        any other failure a ``BackendError`` naming the server."""
        try:
            return await call
        except ResponseError as exc:
            if _OVERFLOW in str(exc):
                raise CounterOverflow(f"{doing}: {exc}") from exc
            raise self._server.error(doing, exc) from exc
        except (TimeoutError, RedisError, OSError) as exc:
            raise self._server.error(doing, exc) from exc

    def _token_args(self, namespace: str, token: CounterToken | None) -> list[bytes | str | int]:
        if token is None:
            return ["", 0, 0, 0]
        window = self._windows.get(namespace, CounterSettings().token_window // timedelta(microseconds=1))
        horizon = now_micros() - window - self._grace_us
        expire_ms = -(-(token.generation_time_us + window + self._grace_us) // 1000)
        member = f"{token.generation_time_us}:{token.nonce}".encode()
        return [member, token.generation_time_us, horizon, expire_ms]

    def _settle(self, namespace: str, counter: str, reply: Any, doing: str) -> int:
        status, value = text(reply[0]), text(reply[1])
        if status in ("ok", "replay"):
            return int(value)
        if status == "overflow":
            if _OVERFLOW in value:
                raise CounterOverflow(f"{doing}: {value}")
            raise BackendError(f"redis backend {self.name!r} at {self.address}: {doing} failed: {value}")
        if status == "stale":
            window = self._windows.get(namespace)
            raise InvalidArgument(
                f"counter {counter!r} in namespace {namespace!r}: the idempotency token is older than "
                f"counter.token_window ({timedelta(microseconds=window or 0)}) plus the redis backend's "
                "expiry_grace, so a replay could no longer be recognised; retry with a new token",
                namespace=namespace,
                field="token",
            )
        raise BackendError(
            f"redis backend {self.name!r} at {self.address}: {doing}: unexpected reply {reply!r}"
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        client = await self._server.open()
        self._scripts = {"add": client.register_script(_ADD), "clear": client.register_script(_CLEAR)}

    async def close(self) -> None:
        self._scripts = {}
        await self._server.close()

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        # Keys appear with the first add; only the token window is kept.
        self._windows[namespace] = config.counter.token_window // timedelta(microseconds=1)

    # -- the SPI -------------------------------------------------------------------------

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        doing = f"add to counter {namespace}/{counter}"
        parts = delta_parts(delta)
        keys = self.counter_keys(namespace, counter)
        if token is None and len(parts) == 1:
            # best_effort: the native increment, exact on 64 bits in Redis.
            value = await self._run(doing, self._server.client.incrby(keys[0], delta))
            return int(value)
        args = [*self._token_args(namespace, token), *parts]
        reply = await self._run(doing, self._script("add")(keys=keys, args=args))
        return self._settle(namespace, counter, reply, doing)

    async def get(self, namespace: str, counter: str) -> int:
        doing = f"get of counter {namespace}/{counter}"
        value = await self._run(doing, self._server.client.get(self.counter_keys(namespace, counter)[0]))
        return 0 if value is None else int(value)

    async def clear(self, namespace: str, counter: str, token: CounterToken | None) -> None:
        doing = f"clear of counter {namespace}/{counter}"
        keys = self.counter_keys(namespace, counter)
        if token is None:
            await self._run(doing, self._server.client.delete(keys[0]))
            return
        args = self._token_args(namespace, token)
        reply = await self._run(doing, self._script("clear")(keys=keys, args=args))
        self._settle(namespace, counter, reply, doing)


def _traits(settings: RedisSettings) -> CounterTraits:
    return CounterTraits(
        # As for KeyValue: only AOF with appendfsync always makes an
        # acknowledged write survive a crash, which `durable: true` asserts.
        durability="durable" if settings.durable else "ephemeral",
        durability_note=durability_note(settings),
    )


COUNTER = CounterBackendType(
    settings_type=RedisSettings,
    create=RedisCounter,
    capabilities=frozenset({capabilities.COUNTER_BEST_EFFORT, capabilities.COUNTER_EXACT}),
    traits=_traits,
    description="Counter on Redis: INCRBY (best_effort), or a Lua script with a token set (exact)",
)
