"""What protects the datastores behind the gateway: load shedding per
namespace and a circuit breaker per backend.

Both live on the gateway's one event loop, so neither needs a lock: a check
and the update after it happen without an ``await`` in between.

**Load shedding.** Each namespace may have ``gateway.limits.max_concurrency``
calls in flight (or its ``namespace_concurrency`` override). A call beyond that
is refused at once with :class:`prism.Overloaded` (RESOURCE_EXHAUSTED) before it
touches anything, so the calls already admitted keep their latency instead of
queueing behind a burst, and one busy namespace cannot take every connection
to a datastore that others share. A Consume that waits for messages holds its
slot while it waits: it holds a datastore connection too.

**Circuit breaker.** One per configured backend, shared by every namespace on
it. It counts consecutive calls that failed because of the datastore (the
errors that map to UNAVAILABLE: :class:`prism.BackendError`, a driver's
connection error or timeout) and calls that ran out of their deadline (a
datastore that hangs is as down as one that refuses). At ``breaker.failures``
in a row it opens: calls to the backend fail fast with :class:`prism.BreakerOpen`
(UNAVAILABLE) instead of each waiting on a datastore that is not answering.
After ``breaker.open_for`` it is half open and lets exactly one call through
as a probe; the probe's success closes it and traffic resumes by itself, its
failure opens it for another ``open_for``. A call that fails for its own
reasons (a bad argument, a missing namespace) says nothing about the datastore
and leaves the count alone.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from prism.config import BreakerConfig, GatewayLimits
from prism.errors import BreakerOpen, Overloaded


class ConcurrencyLimiter:
    """Calls in flight per namespace, against ``gateway.limits``."""

    def __init__(self, limits: GatewayLimits) -> None:
        self._limits = limits
        self._in_flight: dict[str, int] = {}

    def acquire(self, namespace: str) -> None:
        """Count one more call on ``namespace``, or refuse it.

        :raises Overloaded: ``namespace`` is at its limit; nothing was counted.
        """
        limit = self._limits.concurrency_for(namespace)
        current = self._in_flight.get(namespace, 0)
        if current >= limit:
            name = (
                f"gateway.limits.namespace_concurrency.{namespace}"
                if namespace in self._limits.namespace_concurrency
                else "gateway.limits.max_concurrency"
            )
            raise Overloaded(namespace, limit=limit, limit_name=name)
        self._in_flight[namespace] = current + 1

    def release(self, namespace: str) -> None:
        remaining = self._in_flight.get(namespace, 0) - 1
        if remaining > 0:
            self._in_flight[namespace] = remaining
        else:
            self._in_flight.pop(namespace, None)

    def in_flight(self, namespace: str) -> int:
        return self._in_flight.get(namespace, 0)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(enum.Enum):
    """What a finished call says about its backend."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"
    """It failed for its own reasons, or was cancelled: no news of the backend."""


StateListener = Callable[[str, BreakerState], None]


class CircuitBreaker:
    """The breaker of one backend (see the module docstring)."""

    def __init__(
        self,
        backend: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateListener | None = None,
    ) -> None:
        self.backend = backend
        self._threshold = config.failures
        self._open_for = config.open_for.total_seconds()
        self._clock = clock
        self._on_change = on_change
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._last_cause = ""

    def admit(self, namespace: str) -> bool:
        """Let a call through, or refuse it fast.

        Returns whether the call is the half-open probe (its outcome decides
        the state; pass it back to :meth:`record`).

        :raises BreakerOpen: the breaker is open, or half open with its one
            probe already out.
        """
        if self.state is BreakerState.CLOSED:
            return False
        if self.state is BreakerState.OPEN:
            waited = self._clock() - self._opened_at
            if waited < self._open_for:
                raise self._refusal(namespace, self._open_for - waited)
            self._set(BreakerState.HALF_OPEN)
        if self._probing:
            # One probe at a time: the rest fail fast until it answers.
            raise self._refusal(namespace, 0.0)
        self._probing = True
        return True

    def record(self, outcome: Outcome, *, probe: bool, cause: str = "") -> None:
        """The outcome of a call :meth:`admit` let through."""
        if probe:
            self._probing = False
        if outcome is Outcome.SUCCESS:
            self.failures = 0
            if self.state is not BreakerState.CLOSED:
                self._set(BreakerState.CLOSED)
        elif outcome is Outcome.FAILURE:
            self.failures += 1
            self._last_cause = cause
            if self.state is BreakerState.HALF_OPEN or (
                self.state is BreakerState.CLOSED and self.failures >= self._threshold
            ):
                self._opened_at = self._clock()
                self._set(BreakerState.OPEN)

    def _refusal(self, namespace: str, retry_after_s: float) -> BreakerOpen:
        return BreakerOpen(
            self.backend,
            namespace=namespace,
            failures=self.failures,
            retry_after_s=max(0.0, retry_after_s),
            cause=self._last_cause or "an error",
        )

    def _set(self, state: BreakerState) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(self.backend, state)


class Breakers:
    """One :class:`CircuitBreaker` per backend name, made on first use."""

    def __init__(self, config: BreakerConfig, *, on_change: StateListener | None = None) -> None:
        self._config = config
        self._on_change = on_change
        self._by_backend: dict[str, CircuitBreaker] = {}

    def __call__(self, backend: str) -> CircuitBreaker:
        breaker = self._by_backend.get(backend)
        if breaker is None:
            breaker = self._by_backend[backend] = CircuitBreaker(
                backend, self._config, on_change=self._on_change
            )
            if self._on_change is not None:
                self._on_change(backend, breaker.state)
        return breaker

    def states(self) -> dict[str, BreakerState]:
        return {name: breaker.state for name, breaker in self._by_backend.items()}
