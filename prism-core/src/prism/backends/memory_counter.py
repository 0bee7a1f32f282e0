"""The ``memory`` Counter backend: the reference implementation of both counter
modes. Registered by the ``memory`` plugin (:mod:`prism.backends.memory`).

Counters live in the process and are lost when it exits. No method awaits, so
on one event loop every call is atomic: a clear and an add never interleave,
and a replay racing its first call finds the token already there.

``exact`` mode remembers, per counter, the tokens it applied, and forgets a
token once its generation time is more than twice the namespace's
``counter.token_window`` ago (read at :meth:`MemoryCounter.provision`). The core
refuses tokens older than one window, so every token it can still accept is
remembered, with a window of slack for the time between the core's check and
the backend call; and memory stays bounded by the tokens of two windows.
"""

from __future__ import annotations

import heapq
from datetime import timedelta

import attrs

from prism.config import CounterSettings, NamespaceConfig
from prism.models import now_micros
from prism.spi import COUNTER_MAX, COUNTER_MIN, CounterOverflow, CounterToken

#: How many token windows a token is kept for after its generation time.
KEEP_WINDOWS = 2

#: Every this many exact-mode operations, tokens of every counter are swept, so
#: counters no longer used do not keep theirs forever.
SWEEP_EVERY = 1024


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def checked_sum(namespace: str, counter: str, value: int, delta: int) -> int:
    """``value + delta``, or :class:`CounterOverflow` if it leaves the 64-bit range."""
    total = value + delta
    if not COUNTER_MIN <= total <= COUNTER_MAX:
        raise CounterOverflow(
            f"counter {counter!r} in namespace {namespace!r}: adding {delta} to {value} would leave the "
            f"signed 64-bit range [{COUNTER_MIN}, {COUNTER_MAX}]"
        )
    return total


@attrs.define
class _Tokens:
    applied: set[CounterToken] = attrs.Factory(set)
    by_age: list[CounterToken] = attrs.Factory(list)
    """The same tokens as a min-heap; CounterToken orders by generation time first."""

    def forget_before(self, cutoff_us: int) -> None:
        while self.by_age and self.by_age[0].generation_time_us < cutoff_us:
            self.applied.discard(heapq.heappop(self.by_age))

    def remember(self, token: CounterToken) -> None:
        self.applied.add(token)
        heapq.heappush(self.by_age, token)


class MemoryCounter:
    def __init__(self, name: str, settings: object) -> None:
        self.name = name
        self.settings = settings
        self._values: dict[tuple[str, str], int] = {}
        self._tokens: dict[tuple[str, str], _Tokens] = {}
        self._keep_us: dict[str, int] = {}
        self._ops = 0

    async def start(self) -> None:
        return None

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        self._keep_us[namespace] = KEEP_WINDOWS * _micros(config.counter.token_window)

    def _tokens_of(self, namespace: str, counter: str) -> _Tokens:
        """This counter's remembered tokens, after forgetting those that fell
        out of the window; now and then every counter's are swept too."""
        now = now_micros()
        self._ops += 1
        if self._ops % SWEEP_EVERY == 0:
            self._sweep(now)
        tokens = self._tokens.setdefault((namespace, counter), _Tokens())
        tokens.forget_before(now - self._keep(namespace))
        return tokens

    def _keep(self, namespace: str) -> int:
        keep = self._keep_us.get(namespace)
        return keep if keep is not None else KEEP_WINDOWS * _micros(CounterSettings().token_window)

    def _sweep(self, now: int) -> None:
        for key in list(self._tokens):
            tokens = self._tokens[key]
            tokens.forget_before(now - self._keep(key[0]))
            if not tokens.applied:
                del self._tokens[key]

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        key = (namespace, counter)
        current = self._values.get(key, 0)
        tokens = None if token is None else self._tokens_of(namespace, counter)
        if tokens is not None and token in tokens.applied:
            return current
        # Checked before the token is remembered: an overflowing add changes nothing.
        total = checked_sum(namespace, counter, current, delta)
        if tokens is not None and token is not None:
            tokens.remember(token)
        self._store(key, total)
        return total

    async def get(self, namespace: str, counter: str) -> int:
        return self._values.get((namespace, counter), 0)

    async def clear(self, namespace: str, counter: str, token: CounterToken | None) -> None:
        if token is not None:
            tokens = self._tokens_of(namespace, counter)
            if token in tokens.applied:
                return
            tokens.remember(token)
        self._store((namespace, counter), 0)

    def _store(self, key: tuple[str, str], value: int) -> None:
        if value:
            self._values[key] = value
        else:
            self._values.pop(key, None)

    async def close(self) -> None:
        self._values.clear()
        self._tokens.clear()
