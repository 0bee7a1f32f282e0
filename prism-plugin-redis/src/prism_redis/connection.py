"""One configured Redis server, shared by the KeyValue and the Queue backends.

Both abstractions of the ``redis`` plugin are configured by one ``backends:``
entry, so they connect, name the server in errors and check its durability the
same way; this module is that one way. A backend object owns one
:class:`RedisServer` (the runtime creates separate KeyValue and Queue objects,
each with its own pool).

Blocking commands (``XREAD BLOCK``) get a pool of their own: a consumer that
waits for 20 seconds must not hold a connection that short commands need, and
its reply may legitimately take longer than ``socket_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError, ResponseError

from prism.errors import BackendError
from prism.log import get_logger

if TYPE_CHECKING:
    from prism_redis.keyvalue import RedisSettings

_T = TypeVar("_T")

_log = get_logger(__name__)


def text(value: object) -> str:
    """A reply value as text (replies are bytes: the clients never decode)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def safe_address(url: str) -> str:
    """``url`` without credentials, for messages and logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or 6379
    return f"{parts.scheme}://{host}:{port}{parts.path or ''}"


class RedisServer:
    """The pooled client of one configured server, with errors that name it."""

    def __init__(self, name: str, settings: RedisSettings) -> None:
        self.name = name
        self.settings = settings
        self.address = safe_address(settings.url)
        self._client: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None

    def error(self, doing: str, exc: BaseException) -> BackendError:
        cause = str(exc) or type(exc).__name__
        return BackendError(
            f"redis backend {self.name!r} at {self.address}: {doing} failed: {type(exc).__name__}: {cause}"
        )

    def not_started(self) -> BackendError:
        return BackendError(f"redis backend {self.name!r} at {self.address} is not started, or closed")

    async def call(self, doing: str, call: Awaitable[_T]) -> _T:
        """Await ``call``, turning a Redis or network failure into a ``BackendError``."""
        try:
            return await call
        except (TimeoutError, RedisError, OSError) as exc:
            raise self.error(doing, exc) from exc

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise self.not_started()
        return self._client

    @property
    def blocking_client(self) -> aioredis.Redis:
        """A client for blocking commands, on a pool of its own (see the module
        docstring). Its reads never time out by themselves: callers bound each
        blocking call with ``asyncio.timeout``, and a cancelled read drops its
        connection (redis-py disconnects on any error while reading), so a
        half-read reply never reaches the next user of the connection."""
        if self._client is None:
            raise self.not_started()
        if self._blocking is None:
            connect = self.settings.connect_timeout.total_seconds()
            # Not bounded by max_connections: a waiting consumer needs a
            # connection for as long as it waits, by nature, so the number of
            # waiting consumers is the bound (and Redis's maxclients).
            pool = aioredis.ConnectionPool.from_url(
                self.settings.url,
                socket_connect_timeout=connect,
                socket_timeout=None,
                # No retries: a blocking read that failed is simply given up;
                # the caller looks again with a non-blocking command.
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
            )
            self._blocking = aioredis.Redis(connection_pool=pool)
        return self._blocking

    async def open(self) -> aioredis.Redis:
        """Connect, check the server (eviction, and AOF when ``durable`` is set) and
        return the client. Raises ``BackendError`` naming the server on failure."""
        connect = self.settings.connect_timeout.total_seconds()
        pool = aioredis.BlockingConnectionPool.from_url(
            self.settings.url,
            max_connections=self.settings.max_connections,
            timeout=connect,
            socket_connect_timeout=connect,
            socket_timeout=self.settings.socket_timeout.total_seconds(),
            # Bounded: a dead server fails within (retries + 1) connect timeouts.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), self.settings.retries),
            decode_responses=False,
        )
        client = aioredis.Redis(connection_pool=pool)
        try:
            # Whatever the timeouts say, connecting must end: wait_for bounds it
            # even where the socket timeouts do not apply (TLS handshakes, DNS).
            bound = (connect + self.settings.socket_timeout.total_seconds()) * (self.settings.retries + 1) + 1
            await asyncio.wait_for(self.call("connecting (PING)", client.ping()), bound)
            await asyncio.wait_for(self._check_server(client), bound)
        except TimeoutError as exc:
            await client.aclose(close_connection_pool=True)
            raise self.error("connecting (PING)", exc) from exc
        except BaseException:
            await client.aclose(close_connection_pool=True)
            raise
        self._client = client
        return client

    async def _server_config(self, client: aioredis.Redis, pattern: str) -> dict[str, str] | None:
        """``CONFIG GET pattern``, or None where CONFIG is renamed or forbidden
        (often on managed servers)."""
        try:
            config = await client.config_get(pattern)
        except ResponseError as exc:
            _log.warning("redis_config_unreadable", backend=self.name, address=self.address, error=str(exc))
            return None
        except (TimeoutError, RedisError, OSError) as exc:
            raise self.error("reading the server configuration", exc) from exc
        return {text(k): text(v) for k, v in config.items()}

    async def _check_server(self, client: aioredis.Redis) -> None:
        memory = await self._server_config(client, "maxmemory*")
        if memory is not None and memory.get("maxmemory", "0") != "0":
            policy = memory.get("maxmemory-policy")
            if policy != "noeviction":
                # Evicting a record (or a tombstone, or a stream) loses
                # acknowledged writes; Prism cannot see it happen.
                _log.warning(
                    "redis_eviction_enabled",
                    backend=self.name,
                    address=self.address,
                    maxmemory_policy=policy,
                    advice="set maxmemory-policy noeviction on a server that holds Prism data",
                )
        if not self.settings.durable:
            return
        append = await self._server_config(client, "append*")
        if append is None:
            # The operator's word (durable: true) has to stand.
            return
        if append.get("appendonly") != "yes" or append.get("appendfsync") != "always":
            raise BackendError(
                f"redis backend {self.name!r} at {self.address}: durable is set, but the server runs "
                f"appendonly={append.get('appendonly')!r} appendfsync={append.get('appendfsync')!r}; "
                f"a write is durable only with appendonly yes and appendfsync always. Fix the server "
                f"configuration or remove `durable: true`."
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        blocking, self._blocking = self._blocking, None
        if blocking is not None:
            await blocking.aclose(close_connection_pool=True)
        if client is not None:
            await client.aclose(close_connection_pool=True)
