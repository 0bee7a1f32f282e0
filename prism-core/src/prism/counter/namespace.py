"""Counter semantics, written once for every backend.

:class:`AsyncCounter` is what ``db.counter("ns")`` returns in async code. A
counter is a signed 64-bit integer, 0 until first added to. The namespace's
``counter.mode`` decides what a retry does:

* ``best_effort``: each add is one native atomic increment. A retried add (the
  client timed out, the gateway retried) may count twice. Tokens are ignored.
* ``exact``: each add and clear carries an idempotency token (one is made when
  none is given). The backend applies a token to a counter at most once, so a
  replayed add or clear never changes the count twice, also under concurrent
  adders. Tokens are remembered for ``counter.token_window``; a token older
  than that is refused, because its replay could no longer be recognised.
  Create one token per logical add and reuse it on every retry.

A clear is ordered against concurrent adds: each add counts either entirely
before it (and is erased) or entirely after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from prism.config import NamespaceConfig
from prism.errors import InvalidArgument, LimitExceeded
from prism.models import IdempotencyToken, now_micros
from prism.spi import COUNTER_MAX, COUNTER_MIN, CounterBackend, CounterOverflow, CounterToken, CounterTraits
from prism.units import format_duration, format_elapsed

_MICRO = timedelta(microseconds=1)


class AsyncCounter:
    """One Counter namespace, async. Obtain it with ``db.counter(name)``."""

    def __init__(
        self,
        name: str,
        config: NamespaceConfig,
        *,
        backend_name: str,
        backend: CounterBackend,
        capabilities: frozenset[str],
        traits: CounterTraits,
        ensure_ready: Callable[[], Awaitable[None]],
    ) -> None:
        self.name = name
        self.config = config
        self.settings = config.counter
        self.mode = config.counter.mode
        self.backend_name = backend_name
        self.capabilities = capabilities
        self.traits = traits
        self._backend = backend
        self._ensure_ready = ensure_ready

    def __repr__(self) -> str:
        return f"<AsyncCounter {self.name!r} ({self.mode}) on {self.backend_name!r}>"

    # -- validation -------------------------------------------------------------------

    def _check_name(self, counter: object) -> str:
        if not isinstance(counter, str) or not counter:
            raise InvalidArgument(
                f"counter must be a non-empty str, got {counter!r}", namespace=self.name, field="counter"
            )
        if "\x00" in counter:
            raise InvalidArgument(
                f"counter {counter[:40]!r} contains a NUL character", namespace=self.name, field="counter"
            )
        size = len(counter.encode("utf-8"))
        limit = self.settings.max_counter_name_bytes
        if size > limit:
            raise LimitExceeded(
                f"counter name {counter[:40]!r}... is {size} bytes, over the namespace limit of {limit} "
                "(counter.max_counter_name_bytes); use a shorter name",
                namespace=self.name,
                limit_name="counter.max_counter_name_bytes",
                limit=limit,
                actual=size,
                field="counter",
            )
        return counter

    def _token(self, token: IdempotencyToken | None) -> CounterToken | None:
        """The token the backend gets: None in best_effort mode; in exact mode
        the caller's (checked against the window) or a new one."""
        if self.mode != "exact":
            return None
        if token is None:
            token = IdempotencyToken.new()
        if not isinstance(token, IdempotencyToken):
            raise InvalidArgument(
                f"token must be a prism.IdempotencyToken, got {type(token).__name__}",
                namespace=self.name,
                field="token",
            )
        if not token.nonce:
            raise InvalidArgument("token nonce must be non-empty", namespace=self.name, field="token")
        now_us = now_micros()
        age_us = now_us - token.generation_time_us
        window = self.settings.token_window
        if age_us > window // _MICRO:
            raise InvalidArgument(
                f"token generated at {token.generation_time.isoformat()} is "
                f"{format_elapsed(timedelta(microseconds=age_us))} old, older than the namespace's "
                f"counter.token_window of {format_duration(window)}: a replay that old can no longer be "
                "recognised, so it is refused rather than maybe counted twice; use a new token for a new "
                "operation, and retry within the window",
                namespace=self.name,
                field="token",
            )
        skew = self.config.limits.max_token_skew
        if -age_us > skew // _MICRO:
            raise InvalidArgument(
                f"token generation time {token.generation_time.isoformat()} is "
                f"{format_elapsed(timedelta(microseconds=-age_us))} in the future, beyond the allowed skew "
                f"of {format_duration(skew)} (limits.max_token_skew); check the client's clock",
                namespace=self.name,
                field="token",
            )
        return CounterToken(token.generation_time_us, token.nonce)

    # -- operations -------------------------------------------------------------------

    async def add(self, counter: str, delta: int = 1, *, token: IdempotencyToken | None = None) -> int | None:
        """Add ``delta`` (may be negative) to ``counter`` and return the new
        value, or None where the backend cannot return it cheaply (the plugin's
        README says which). In ``exact`` mode a replayed ``token`` changes
        nothing and returns the current value.

        :raises LimitExceeded: the value would leave the signed 64-bit range;
            nothing changed.
        :raises InvalidArgument: a bad name or delta, or (exact) a token older
            than ``counter.token_window``.
        """
        counter = self._check_name(counter)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise InvalidArgument(
                f"delta must be an int, got {type(delta).__name__}", namespace=self.name, field="delta"
            )
        if not COUNTER_MIN <= delta <= COUNTER_MAX:
            raise LimitExceeded(
                f"delta {delta} is outside the signed 64-bit range counters hold",
                namespace=self.name,
                limit_name="counter value range",
                limit=COUNTER_MAX,
                actual=delta,
                field="delta",
            )
        backend_token = self._token(token)
        await self._ensure_ready()
        try:
            return await self._backend.add(self.name, counter, delta, backend_token)
        except CounterOverflow:
            raise LimitExceeded(
                f"adding {delta} to counter {counter!r} would take it outside the signed 64-bit range "
                f"[{COUNTER_MIN}, {COUNTER_MAX}]; nothing changed",
                namespace=self.name,
                limit_name="counter value range",
                limit=COUNTER_MAX if delta > 0 else COUNTER_MIN,
                actual=delta,
                field="delta",
            ) from None

    async def get(self, counter: str) -> int:
        """The counter's value; 0 if it was never added to or was cleared."""
        counter = self._check_name(counter)
        await self._ensure_ready()
        return await self._backend.get(self.name, counter)

    async def clear(self, counter: str, *, token: IdempotencyToken | None = None) -> None:
        """Set ``counter`` to 0. In ``exact`` mode a replayed ``token`` changes
        nothing, so adds made since the first clear are kept."""
        counter = self._check_name(counter)
        backend_token = self._token(token)
        await self._ensure_ready()
        await self._backend.clear(self.name, counter, backend_token)
