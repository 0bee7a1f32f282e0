"""The ``sqlite`` Counter backend: durable 64-bit counters in one local file, in
both modes (``counter.best_effort`` and ``counter.exact``).

It shares the database file (and :class:`~prism_sqlite.connection.SqliteConnection`,
one worker thread and one connection per backend object) with the other
``sqlite`` backends, in two tables of its own, created on first use:

* ``counter_values``: one row per ``(namespace, counter)`` holding the value. A
  missing row is 0; a clear deletes the row.
* ``counter_tokens``: in ``exact`` mode, one row per token applied to a counter,
  keyed by ``(namespace, counter, generation_time_us, nonce)``, so the tokens of
  one counter are ordered by age inside the key. An index on ``(namespace,
  generation_time_us)`` serves the namespace-wide sweep.

Every add and clear is one ``BEGIN IMMEDIATE`` transaction, which takes the
file's write lock up front, so operations on one counter are serialised across
every process using the file. That is the whole atomicity argument:

* ``best_effort`` add: one upsert ``value = value + ?``, whose ``WHERE`` refuses
  a sum that would leave the 64-bit range (SQLite would otherwise turn the
  integer into a float); no row updated means overflow, and nothing changed.
* ``exact`` add and clear: insert the token with ``ON CONFLICT DO NOTHING``. If
  it was already there, the operation is a replay: change nothing (an add
  returns the current value). Otherwise apply it in the same transaction; an
  overflow raises, and the rollback removes the token too, so a corrected
  retry is not mistaken for a replay.
* A clear and an add never interleave: each add's transaction commits before
  or after the clear's, so it is either erased or kept, never partly.

Tokens are forgotten once their generation time is more than twice the
namespace's ``counter.token_window`` ago: the counter's own old tokens in each
exact-mode transaction (a range delete on the key's prefix), and the whole
namespace's at most once per window per process, so counters no longer used do
not keep theirs forever. The core refuses tokens older than one window, so
every token it still accepts is remembered, with one window of slack for the
time between the core's check and the transaction.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta

from prism import capabilities
from prism.config import CounterSettings, NamespaceConfig
from prism.models import now_micros
from prism.spi import (
    COUNTER_MAX,
    COUNTER_MIN,
    CounterBackendType,
    CounterOverflow,
    CounterToken,
    CounterTraits,
)
from prism_sqlite.connection import SqliteConnection, SqliteSettings, is_memory_path

#: How many token windows a token is kept for after its generation time.
KEEP_WINDOWS = 2

#: ``RETURNING`` arrived in SQLite 3.35; older builds read the value back.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS counter_values ("
    " namespace TEXT NOT NULL,"
    " counter TEXT NOT NULL,"
    " value INTEGER NOT NULL,"
    " PRIMARY KEY (namespace, counter)"
    ") WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS counter_tokens ("
    " namespace TEXT NOT NULL,"
    " counter TEXT NOT NULL,"
    " generation_time_us INTEGER NOT NULL,"
    " nonce TEXT NOT NULL,"
    " PRIMARY KEY (namespace, counter, generation_time_us, nonce)"
    ") WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS counter_tokens_by_time ON counter_tokens (namespace, generation_time_us)",
)

# The WHERE bounds the stored value so that value + delta stays in range; the
# bounds are computed in Python from delta (see _bounds).
_ADD = (
    "INSERT INTO counter_values (namespace, counter, value) VALUES (?, ?, ?)"
    " ON CONFLICT (namespace, counter) DO UPDATE SET value = value + excluded.value"
    " WHERE counter_values.value BETWEEN ? AND ?"
)
_ADD_RETURNING = _ADD + " RETURNING value"
_GET = "SELECT value FROM counter_values WHERE namespace = ? AND counter = ?"
_CLEAR = "DELETE FROM counter_values WHERE namespace = ? AND counter = ?"
_REMEMBER = (
    "INSERT INTO counter_tokens (namespace, counter, generation_time_us, nonce) VALUES (?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_FORGET_COUNTER = "DELETE FROM counter_tokens WHERE namespace = ? AND counter = ? AND generation_time_us < ?"
_FORGET_NAMESPACE = "DELETE FROM counter_tokens WHERE namespace = ? AND generation_time_us < ?"


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _overflow(namespace: str, counter: str, value: int, delta: int) -> CounterOverflow:
    return CounterOverflow(
        f"counter {counter!r} in namespace {namespace!r}: adding {delta} to {value} would leave the "
        f"signed 64-bit range [{COUNTER_MIN}, {COUNTER_MAX}]"
    )


def _bounds(delta: int) -> tuple[int, int]:
    """The stored values to which ``delta`` can be added without leaving the range."""
    return max(COUNTER_MIN, COUNTER_MIN - delta), min(COUNTER_MAX, COUNTER_MAX - delta)


def _current(conn: sqlite3.Connection, namespace: str, counter: str) -> int:
    row = conn.execute(_GET, (namespace, counter)).fetchone()
    return 0 if row is None else int(row[0])


class SqliteCounter(SqliteConnection):
    """The Counter SPI on one SQLite database file, on its own connection (see
    :class:`~prism_sqlite.connection.SqliteConnection` for the threading)."""

    def __init__(self, name: str, settings: SqliteSettings) -> None:
        super().__init__(name, settings)
        self._schema_ready = False
        self._keep_us: dict[str, int] = {}
        self._swept_at: dict[str, float] = {}
        """Namespace -> monotonic time of this process's last namespace-wide sweep."""
        self.returning = HAS_RETURNING

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        self._keep_us[namespace] = KEEP_WINDOWS * _micros(config.counter.token_window)
        if self._schema_ready:
            return

        def create(conn: sqlite3.Connection) -> None:
            for statement in _SCHEMA:
                conn.execute(statement)

        await self._write(create)
        self._schema_ready = True

    def _keep(self, namespace: str) -> int:
        keep = self._keep_us.get(namespace)
        return keep if keep is not None else KEEP_WINDOWS * _micros(CounterSettings().token_window)

    def _sweep_due(self, namespace: str) -> bool:
        """Whether this call should also sweep the namespace's old tokens: at most
        once per token window (half of what is kept) per process."""
        now = time.monotonic()
        last = self._swept_at.get(namespace)
        if last is not None and now - last < self._keep(namespace) / KEEP_WINDOWS / 1e6:
            return False
        self._swept_at[namespace] = now
        return True

    # -- inside the transaction ------------------------------------------------------------

    def _apply_add(self, conn: sqlite3.Connection, namespace: str, counter: str, delta: int) -> int:
        lo, hi = _bounds(delta)
        params = (namespace, counter, delta, lo, hi)
        if self.returning:
            # fetchall: the statement must run to its end before the commit.
            rows = conn.execute(_ADD_RETURNING, params).fetchall()
            if not rows:
                raise _overflow(namespace, counter, _current(conn, namespace, counter), delta)
            return int(rows[0][0])
        if conn.execute(_ADD, params).rowcount == 0:
            raise _overflow(namespace, counter, _current(conn, namespace, counter), delta)
        return _current(conn, namespace, counter)

    def _first_use(
        self, conn: sqlite3.Connection, namespace: str, counter: str, token: CounterToken, sweep: bool
    ) -> bool:
        """Forget old tokens, then remember ``token``; False if it was already there."""
        cutoff = now_micros() - self._keep(namespace)
        if sweep:
            conn.execute(_FORGET_NAMESPACE, (namespace, cutoff))
        else:
            conn.execute(_FORGET_COUNTER, (namespace, counter, cutoff))
        params = (namespace, counter, token.generation_time_us, token.nonce)
        return conn.execute(_REMEMBER, params).rowcount > 0

    # -- the SPI -------------------------------------------------------------------------

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        if not COUNTER_MIN <= delta <= COUNTER_MAX:
            raise _overflow(namespace, counter, 0, delta)
        sweep = token is not None and self._sweep_due(namespace)

        def add(conn: sqlite3.Connection) -> int:
            if token is not None and not self._first_use(conn, namespace, counter, token, sweep):
                return _current(conn, namespace, counter)
            # An overflow raises here and rolls back the token with everything else.
            return self._apply_add(conn, namespace, counter, delta)

        return await self._write(add)

    async def get(self, namespace: str, counter: str) -> int:
        return await self._call(lambda conn: _current(conn, namespace, counter))

    async def clear(self, namespace: str, counter: str, token: CounterToken | None) -> None:
        sweep = token is not None and self._sweep_due(namespace)

        def clear(conn: sqlite3.Connection) -> None:
            if token is not None and not self._first_use(conn, namespace, counter, token, sweep):
                return
            conn.execute(_CLEAR, (namespace, counter))

        await self._write(clear)


def _traits(settings: SqliteSettings) -> CounterTraits:
    memory = is_memory_path(settings.path)
    return CounterTraits(
        durability="ephemeral" if memory else "durable",
        durability_note=(
            "path is ':memory:', so the data is lost when the process exits; give a file path"
            if memory
            else ""
        ),
    )


COUNTER = CounterBackendType(
    settings_type=SqliteSettings,
    create=SqliteCounter,
    capabilities=frozenset({capabilities.COUNTER_BEST_EFFORT, capabilities.COUNTER_EXACT}),
    traits=_traits,
    description="durable counters in one local SQLite file (WAL), exact or best effort, safe across processes",
)
