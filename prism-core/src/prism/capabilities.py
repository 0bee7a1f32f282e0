"""The documented capability names a backend may declare.

A capability a backend lacks is either emulated by the core (said below) or
refused with :class:`prism.errors.Unsupported`; it is never silently ignored.
The conformance suite checks both directions: a declared capability must pass
its tests, and an undeclared one must be refused.
"""

from __future__ import annotations

from typing import Final

KV_ATOMIC_MUTATE: Final = "kv.atomic_mutate"
"""``mutate_items`` applies its puts and deletes all at once. Not emulated: a
backend without it refuses ``mutate_items`` with ``Unsupported``."""

KV_SCAN: Final = "kv.scan"
"""``scan`` lists every record of a namespace. Not emulated: refused without it."""

KV_NATIVE_TTL: Final = "kv.native_ttl"
"""The datastore expires rows by itself. Without it, the core filters expired
items out of every read and purges them, so TTL works on every backend; the
capability only says who does the deleting."""

KEYVALUE: Final = frozenset({KV_ATOMIC_MUTATE, KV_SCAN, KV_NATIVE_TTL})

QUEUE_ORDERED_BY_KEY: Final = "queue.ordered_by_key"
"""Within one group, messages with the same non-empty key are delivered in
publish order, one at a time: while one is in flight, later ones wait. Not
emulated; a namespace that needs it is planned only onto backends declaring it."""

QUEUE_DELAY: Final = "queue.delay"
"""A message published with ``deliver_after`` is not delivered before then. Not
emulated: without it, publishing such a message is refused with ``Unsupported``."""

QUEUE: Final = frozenset({QUEUE_ORDERED_BY_KEY, QUEUE_DELAY})

TIMESERIES_NATIVE_RETENTION: Final = "timeseries.native_retention"
"""The datastore drops events past the namespace's retention by itself (a TTL).
Without it, the core filters old events out of every read and purges them; the
capability only says who does the deleting."""

TIMESERIES: Final = frozenset({TIMESERIES_NATIVE_RETENTION})

COUNTER_BEST_EFFORT: Final = "counter.best_effort"
"""The backend serves ``counter.mode: best_effort`` namespaces: one native atomic
increment per add; a retried add may count twice. Not emulated."""

COUNTER_EXACT: Final = "counter.exact"
"""The backend serves ``counter.mode: exact`` namespaces: adds and clears are
idempotent by token, also under concurrent adders and retries. Not emulated; a
namespace is planned only onto backends declaring its mode."""

COUNTER: Final = frozenset({COUNTER_BEST_EFFORT, COUNTER_EXACT})

ALL: Final = KEYVALUE | QUEUE | TIMESERIES | COUNTER

#: The capability names each abstraction may declare.
BY_ABSTRACTION: Final = {"keyvalue": KEYVALUE, "queue": QUEUE, "timeseries": TIMESERIES, "counter": COUNTER}

#: The capability a counter namespace's ``counter.mode`` needs.
COUNTER_MODE: Final = {"best_effort": COUNTER_BEST_EFFORT, "exact": COUNTER_EXACT}

DESCRIPTIONS: Final = {
    KV_ATOMIC_MUTATE: "mutate_items applies puts and deletes atomically",
    KV_SCAN: "scan lists every record of a namespace",
    KV_NATIVE_TTL: "the datastore expires items itself (otherwise the core filters and purges)",
    QUEUE_ORDERED_BY_KEY: "messages with the same key reach a group in publish order, one at a time",
    QUEUE_DELAY: "messages published with deliver_after are held back until then",
    TIMESERIES_NATIVE_RETENTION: "the datastore drops events past retention itself (otherwise the core filters and purges)",
    COUNTER_BEST_EFFORT: "counter.mode best_effort: native atomic increments; a retry may count twice",
    COUNTER_EXACT: "counter.mode exact: adds and clears are idempotent by token",
}
