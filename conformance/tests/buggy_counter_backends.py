"""Planted Counter bugs: variants of the reference ``memory`` Counter backend,
each wrong in one way a real backend could plausibly be, to prove the Counter
suite notices.

Every variant builds on :class:`YieldingMemoryCounter`, which is correct but
yields to the event loop (and to other threads) around each call, as a
networked datastore does, so concurrent adds, replays and clears interleave.

Each variant becomes a plugin module (a ``prism_register_counter`` hookimpl)
registered with ``load_plugins(extra={name: module})``.
"""

from __future__ import annotations

import asyncio
import types

from buggy_backends import pause

from prism import capabilities
from prism.backends import memory
from prism.backends.memory import MemorySettings
from prism.backends.memory_counter import MemoryCounter, _Tokens, checked_sum
from prism.config import NamespaceConfig
from prism.plugins import hookimpl
from prism.plugins.manager import PluginSet, load_plugins
from prism.plugins.registry import BackendRegistry
from prism.spi import COUNTER_MAX, COUNTER_MIN, CounterBackendType, CounterOverflow, CounterToken

BOTH_MODES = frozenset({capabilities.COUNTER_BEST_EFFORT, capabilities.COUNTER_EXACT})


class YieldingMemoryCounter(MemoryCounter):
    """The memory Counter backend, correct, with a yield around every call."""

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        await pause()
        value = await MemoryCounter.add(self, namespace, counter, delta, token)
        await pause()
        return value

    async def get(self, namespace: str, counter: str) -> int:
        await pause()
        value = await MemoryCounter.get(self, namespace, counter)
        await pause()
        return value

    async def clear(self, namespace: str, counter: str, token: CounterToken | None) -> None:
        await pause()
        await MemoryCounter.clear(self, namespace, counter, token)
        await pause()

    def value(self, namespace: str, counter: str) -> int:
        return self._values.get((namespace, counter), 0)


# -- idempotency -----------------------------------------------------------------------


class AddNotIdempotent(YieldingMemoryCounter):
    """Exact mode applies every add, replays too: the token is never checked."""

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        return await super().add(namespace, counter, delta, None)


class ClearNotIdempotent(YieldingMemoryCounter):
    """Exact mode applies every clear, replays too: a replayed clear erases later adds."""

    async def clear(self, namespace: str, counter: str, token: CounterToken | None) -> None:
        await super().clear(namespace, counter, None)


class TokensForgottenEarly(YieldingMemoryCounter):
    """Remembers tokens for a quarter of ``counter.token_window`` (a TTL set in the wrong unit)."""

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        await super().provision(namespace, config)
        self._keep_us[namespace] = int(config.counter.token_window.total_seconds() * 1_000_000) // 4


class TokensPerNamespace(YieldingMemoryCounter):
    """Keeps applied tokens per namespace, not per counter: a token used on one
    counter is taken as a replay on every other."""

    def _tokens_of(self, namespace: str, counter: str) -> _Tokens:
        return super()._tokens_of(namespace, "")


class ReplayRace(YieldingMemoryCounter):
    """Checks the token, then applies the add in a second step: a replay racing
    the first call passes the check too (check-then-act without a transaction)."""

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        if token is None:
            return await super().add(namespace, counter, delta, token)
        await pause()
        if token in self._tokens_of(namespace, counter).applied:
            return self.value(namespace, counter)
        await pause()
        total = checked_sum(namespace, counter, self.value(namespace, counter), delta)
        self._tokens_of(namespace, counter).remember(token)
        self._store((namespace, counter), total)
        await pause()
        return total


# -- arithmetic ------------------------------------------------------------------------


class LostUpdates(YieldingMemoryCounter):
    """Adds read the value, then write the sum back: concurrent adds overwrite each other."""

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        await pause()
        current = self.value(namespace, counter)
        if token is not None:
            tokens = self._tokens_of(namespace, counter)
            if token in tokens.applied:
                return current
            tokens.remember(token)
        await pause()
        total = checked_sum(namespace, counter, current, delta)
        self._store((namespace, counter), total)
        return total


class OverflowWraps(YieldingMemoryCounter):
    """Wraps around at the 64-bit bounds, as a native int64 increment does."""

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        try:
            return await super().add(namespace, counter, delta, token)
        except CounterOverflow:
            total = (self.value(namespace, counter) + delta - COUNTER_MIN) % 2**64 + COUNTER_MIN
            self._store((namespace, counter), total)
            return total


class OverflowSaturates(YieldingMemoryCounter):
    """Caps the value at the 64-bit bounds instead of refusing the add."""

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        try:
            return await super().add(namespace, counter, delta, token)
        except CounterOverflow:
            total = max(COUNTER_MIN, min(COUNTER_MAX, self.value(namespace, counter) + delta))
            self._store((namespace, counter), total)
            return total


class FloorsAtZero(YieldingMemoryCounter):
    """Never goes below 0 (an unsigned counter type)."""

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        value = await super().add(namespace, counter, delta, token)
        if value is not None and value < 0:
            self._store((namespace, counter), 0)
            return 0
        return value


class AddReturnsOldValue(YieldingMemoryCounter):
    """Returns the value before the add (a GETSET-style call), not after it."""

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        before = self.value(namespace, counter)
        value = await super().add(namespace, counter, delta, token)
        return before if value is not None else None


class ClearAppliedLate(YieldingMemoryCounter):
    """Returns from a clear before it is applied (a fire-and-forget delete):
    adds made right after it are erased."""

    def __init__(self, name: str, settings: object) -> None:
        super().__init__(name, settings)
        self._pending: set[asyncio.Task[None]] = set()

    async def clear(self, namespace: str, counter: str, token: CounterToken | None) -> None:
        async def later() -> None:
            for _ in range(20):
                await asyncio.sleep(0)
            await MemoryCounter.clear(self, namespace, counter, token)

        task = asyncio.get_running_loop().create_task(later())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


class CountersCaseInsensitive(YieldingMemoryCounter):
    """Folds counter names to lower case (a case-insensitive collation)."""

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        return await super().add(namespace, counter.lower(), delta, token)

    async def get(self, namespace: str, counter: str) -> int:
        return await super().get(namespace, counter.lower())

    async def clear(self, namespace: str, counter: str, token: CounterToken | None) -> None:
        await super().clear(namespace, counter.lower(), token)


#: Name -> (backend class, declared capabilities, suite tests meant to catch it).
PLANTED_COUNTER_BUGS: dict[str, tuple[type[YieldingMemoryCounter], frozenset[str], tuple[str, ...]]] = {
    "add_not_idempotent": (AddNotIdempotent, BOTH_MODES, ("test_a_replayed_add_counts_once",)),
    "clear_not_idempotent": (ClearNotIdempotent, BOTH_MODES, ("test_a_replayed_clear_clears_once",)),
    "tokens_forgotten_early": (
        TokensForgottenEarly,
        BOTH_MODES,
        ("test_a_token_is_remembered_for_the_whole_window",),
    ),
    "tokens_per_namespace": (TokensPerNamespace, BOTH_MODES, ("test_a_replayed_add_counts_once",)),
    "replay_race": (ReplayRace, BOTH_MODES, ("test_a_replay_racing_the_first_call_counts_once",)),
    "lost_updates": (
        LostUpdates,
        BOTH_MODES,
        (
            "test_concurrent_adds_from_threads_sum_exactly",
            "test_concurrent_adds_on_one_event_loop_sum_exactly",
            "test_best_effort_concurrent_increments_are_atomic",
        ),
    ),
    "overflow_wraps": (OverflowWraps, BOTH_MODES, ("test_overflow_is_refused_and_changes_nothing",)),
    "overflow_saturates": (OverflowSaturates, BOTH_MODES, ("test_overflow_is_refused_and_changes_nothing",)),
    "floors_at_zero": (FloorsAtZero, BOTH_MODES, ("test_negative_deltas",)),
    "add_returns_old_value": (AddReturnsOldValue, BOTH_MODES, ("test_add_returns_the_new_value_or_none",)),
    "clear_applied_late": (
        ClearAppliedLate,
        BOTH_MODES,
        ("test_a_clear_racing_adds_is_ordered_against_each_of_them",),
    ),
    "counters_case_insensitive": (
        CountersCaseInsensitive,
        BOTH_MODES,
        ("test_counters_and_namespaces_are_isolated",),
    ),
}

#: Correct variants: they must pass the suite (tests of an undeclared mode
#: reported as not applicable, the planner's refusal verified).
COUNTER_CONTROLS: dict[str, tuple[type[YieldingMemoryCounter], frozenset[str]]] = {
    "yielding_memory_counter": (YieldingMemoryCounter, BOTH_MODES),
    "exact_only": (YieldingMemoryCounter, frozenset({capabilities.COUNTER_EXACT})),
    "best_effort_only": (YieldingMemoryCounter, frozenset({capabilities.COUNTER_BEST_EFFORT})),
}


def variant(name: str) -> tuple[type[YieldingMemoryCounter], frozenset[str]]:
    if name in PLANTED_COUNTER_BUGS:
        backend_class, declared, _ = PLANTED_COUNTER_BUGS[name]
        return backend_class, declared
    return COUNTER_CONTROLS[name]


def plugin_module(name: str) -> types.ModuleType:
    """A plugin module registering the Counter variant ``name`` under that name."""
    backend_class, declared = variant(name)
    backend_type = CounterBackendType(
        settings_type=MemorySettings,
        create=backend_class,
        capabilities=declared,
        traits=memory.COUNTER.traits,
        description=f"planted bug: {backend_class.__doc__}",
    )

    @hookimpl
    def prism_register_counter(registry: BackendRegistry) -> None:
        registry.add_counter(name, backend_type)

    module = types.ModuleType(f"prism_conformance_planted_counter_{name}")
    module.prism_register_counter = prism_register_counter  # type: ignore[attr-defined]
    return module


def plugin_set(name: str) -> PluginSet:
    return load_plugins(extra={name: plugin_module(name)})
