"""The ``cassandra`` Counter backend: both modes.

``best_effort``: a Cassandra counter table with epochs
----------------------------------------------------------
::

    prism_counter_values ((namespace, counter), epoch) -> value counter
        CLUSTERING ORDER BY (epoch DESC)

The counter's current value is the ``value`` of its greatest epoch (one
``LIMIT 1`` read). ``add`` reads that row and increments it
(``UPDATE ... SET value = value + ?``), one native atomic increment. ``clear``
cannot set a Cassandra counter to 0, so it opens a new, greater epoch whose row
it creates with ``value + 0`` and then deletes the older epochs. Every add lands
whole in one epoch, so racing a clear it is either before it (its epoch was
replaced) or after it, never partly. See ``README.md`` for the argument and for
overflow (Cassandra counters wrap silently; adds are checked against the value
read just before, which races with concurrent adds).

``exact``: an event log with rollup
-----------------------------------
::

    prism_counter_log ((namespace, counter), token_time_us, nonce) -> kind, delta
        rollup blob STATIC

One row per operation at its token's position; a replay writes the same row
again, an upsert, so nothing counts twice and no Paxos is needed. The value is
the left fold, in position order, of the rows (an add adds, a clear resets to
0) after the rollup: ``rollup`` holds the fold of every row up to a cut-off
position. Rows whose token is older than two token windows can no longer be
written for the first time (the core refuses tokens older than one window), so
they are final; a rollup folds them into ``rollup`` and range-deletes them in
one single-partition batch. The full argument (readers racing rollups, rollups
racing each other) is in ``README.md``.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence

import attrs
from cassandra.query import BatchStatement, BatchType

from prism import capabilities
from prism.config import NamespaceConfig
from prism.errors import BackendError
from prism.spi import (
    COUNTER_MAX,
    COUNTER_MIN,
    CounterBackendType,
    CounterOverflow,
    CounterToken,
    CounterTraits,
)
from prism_cassandra.keyvalue import CassandraSettings, _decode_nonce, encode_nonce, now_micros
from prism_cassandra.timeseries import CassandraStore, micros

_log = logging.getLogger(__name__)

VALUES_TABLE = "prism_counter_values"
LOG_TABLE = "prism_counter_log"

KIND_ADD = 0
KIND_CLEAR = 1

#: How many token windows back a row must lie to be final: one window is what
#: the core allows, the second is slack for clock skew between processes and for
#: the time between the core's check and the write landing.
FINAL_AFTER_WINDOWS = 2

#: A read rolls up once at least this many final rows follow the rollup.
ROLLUP_MIN_ROWS = 16

_SIGN = 2**63
_CUT = struct.Struct(">Q")
_VALUE = struct.Struct(">q")


def check_range(namespace: str, counter: str, value: int, delta: int) -> None:
    total = value + delta
    if not COUNTER_MIN <= total <= COUNTER_MAX:
        raise CounterOverflow(
            f"counter {counter!r} in namespace {namespace!r}: adding {delta} to {value} would leave the "
            f"signed 64-bit range [{COUNTER_MIN}, {COUNTER_MAX}]"
        )


def encode_rollup(cut: tuple[int, str], value: int) -> bytes:
    """The rollup cell. Its bytes order as the cut position does, so that two
    rollups written at the same ``USING TIMESTAMP`` (the cut's time) resolve to
    the one with the later cut, as a whole: Cassandra breaks timestamp ties by
    the greater cell value."""
    return _CUT.pack(cut[0] + _SIGN) + encode_nonce(cut[1]) + _VALUE.pack(value)


def decode_rollup(cell: bytes) -> tuple[tuple[int, str], int]:
    (time_us,) = _CUT.unpack_from(cell, 0)
    nonce, at = _decode_nonce(cell[_CUT.size :])
    (value,) = _VALUE.unpack_from(cell, _CUT.size + at)
    return (time_us - _SIGN, nonce), value


@attrs.frozen
class Entry:
    position: tuple[int, str]
    kind: int
    delta: int


@attrs.frozen
class LogState:
    """One read of a counter's log partition."""

    cut: tuple[int, str] | None
    rollup_value: int
    entries: tuple[Entry, ...]
    """The rows after ``cut``, in position order."""

    @property
    def value(self) -> int:
        return fold(self.rollup_value, self.entries)

    def has(self, position: tuple[int, str]) -> bool:
        if self.cut is not None and position <= self.cut:
            return True
        return any(e.position == position for e in self.entries)

    def with_entry(self, entry: Entry) -> LogState:
        entries = sorted((*self.entries, entry), key=lambda e: e.position)
        return attrs.evolve(self, entries=tuple(entries))


def fold(value: int, entries: Sequence[Entry]) -> int:
    """Apply ``entries`` in order: an add adds its delta, a clear resets to 0."""
    for entry in entries:
        value = 0 if entry.kind == KIND_CLEAR else value + entry.delta
    return value


class CassandraCounter(CassandraStore):
    """The Counter SPI on one Cassandra cluster, in each namespace's mode."""

    def __init__(self, name: str, settings: CassandraSettings) -> None:
        super().__init__(name, settings)
        self._mode: dict[str, str] = {}
        self._window_us: dict[str, int] = {}
        self.rollup_min_rows = ROLLUP_MIN_ROWS
        values, log = self._table(VALUES_TABLE), self._table(LOG_TABLE)
        where = "WHERE namespace = ? AND counter = ?"
        self._latest = f"SELECT epoch, value FROM {values} {where} LIMIT 1"
        self._increment = f"UPDATE {values} SET value = value + ? {where} AND epoch = ?"
        self._drop_epochs = f"DELETE FROM {values} {where} AND epoch < ?"
        self._log_read = f"SELECT rollup, token_time_us, nonce, kind, delta FROM {log} {where}"
        self._log_write = f"INSERT INTO {log} (namespace, counter, token_time_us, nonce, kind, delta) VALUES (?, ?, ?, ?, ?, ?)"
        self._rollup_write = f"UPDATE {log} USING TIMESTAMP ? SET rollup = ? {where}"
        self._rollup_delete = (
            f"DELETE FROM {log} USING TIMESTAMP ? {where} AND (token_time_us, nonce) <= (?, ?)"
        )

    def _schema(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self._table(VALUES_TABLE)} ("
            " namespace text, counter text, epoch bigint, value counter,"
            " PRIMARY KEY ((namespace, counter), epoch)"
            ") WITH CLUSTERING ORDER BY (epoch DESC)",
            f"CREATE TABLE IF NOT EXISTS {self._table(LOG_TABLE)} ("
            " namespace text, counter text, token_time_us bigint, nonce text, kind tinyint, delta bigint,"
            " rollup blob STATIC,"
            " PRIMARY KEY ((namespace, counter), token_time_us, nonce)"
            ") WITH CLUSTERING ORDER BY (token_time_us ASC, nonce ASC)",
        ]

    async def provision(self, namespace: str, config: NamespaceConfig) -> None:
        self._check_namespace(namespace)
        await self._ensure_schema()
        statements = (
            (self._latest, self._increment, self._drop_epochs)
            if config.counter.mode == "best_effort"
            else (self._log_read, self._log_write, self._rollup_write, self._rollup_delete)
        )
        for cql in statements:
            await self._conn._prepare(cql)
        self._window_us[namespace] = micros(config.counter.token_window)
        self._mode[namespace] = config.counter.mode

    def _mode_of(self, namespace: str) -> str:
        mode = self._mode.get(namespace)
        if mode is None:
            raise BackendError(f"cassandra backend {self.name!r}: namespace {namespace!r} is not provisioned")
        return mode

    def _exact(self, namespace: str, token: CounterToken | None) -> CounterToken | None:
        if self._mode_of(namespace) != "exact":
            return None
        if token is None:
            raise BackendError(
                f"cassandra backend {self.name!r}: namespace {namespace!r} is in exact mode, "
                "but the operation carries no token"
            )
        return token

    # -- the SPI -------------------------------------------------------------------------

    async def add(self, namespace: str, counter: str, delta: int, token: CounterToken | None) -> int | None:
        exact = self._exact(namespace, token)
        if exact is None:
            epoch, value = await self._latest_epoch(namespace, counter)
            check_range(namespace, counter, value, delta)
            await self._run(self._increment, (delta, namespace, counter, epoch), "adding to a counter")
            return None
        await self._log(namespace, counter, Entry((exact.generation_time_us, exact.nonce), KIND_ADD, delta))
        return None

    async def get(self, namespace: str, counter: str) -> int:
        if self._mode_of(namespace) != "exact":
            return (await self._latest_epoch(namespace, counter))[1]
        state = await self._read_log(namespace, counter)
        await self._maybe_roll_up(namespace, counter, state)
        value = state.value
        if not COUNTER_MIN <= value <= COUNTER_MAX:
            raise BackendError(
                f"counter {counter!r} in namespace {namespace!r}: concurrent adds took the value to {value}, "
                "outside the signed 64-bit range; clear it"
            )
        return value

    async def clear(self, namespace: str, counter: str, token: CounterToken | None) -> None:
        exact = self._exact(namespace, token)
        if exact is None:
            epoch, _ = await self._latest_epoch(namespace, counter)
            fresh = max(now_micros(), epoch + 1)
            await self._run(self._increment, (0, namespace, counter, fresh), "opening a counter epoch")
            await self._run(self._drop_epochs, (namespace, counter, fresh), "dropping old counter epochs")
            return
        await self._log(namespace, counter, Entry((exact.generation_time_us, exact.nonce), KIND_CLEAR, 0))

    # -- best effort ---------------------------------------------------------------------

    async def _latest_epoch(self, namespace: str, counter: str) -> tuple[int, int]:
        rows = await self._run(self._latest, (namespace, counter), "reading a counter")
        if not rows:
            return 0, 0
        epoch, value = rows[0]
        return int(epoch), int(value or 0)

    # -- exact ---------------------------------------------------------------------------

    async def _read_log(self, namespace: str, counter: str) -> LogState:
        rows = await self._run(self._log_read, (namespace, counter), "reading a counter's log")
        cut: tuple[int, str] | None = None
        rollup_value = 0
        if rows and rows[0][0] is not None:
            cut, rollup_value = decode_rollup(bytes(rows[0][0]))
        entries = tuple(
            Entry((int(t), str(n)), int(kind), int(delta or 0))
            for _, t, n, kind, delta in rows
            if t is not None and (cut is None or (int(t), str(n)) > cut)
        )
        return LogState(cut, rollup_value, entries)

    async def _log(self, namespace: str, counter: str, entry: Entry) -> None:
        state = await self._read_log(namespace, counter)
        if state.has(entry.position):
            # A replay: the row is there (or already rolled up). Writing it
            # again would change nothing either; skipping saves the write.
            return
        if entry.kind == KIND_ADD:
            # The value with this row in its place (a clear after it erases it).
            after = state.with_entry(entry).value
            if not COUNTER_MIN <= after <= COUNTER_MAX:
                raise CounterOverflow(
                    f"counter {counter!r} in namespace {namespace!r}: adding {entry.delta} would take it to "
                    f"{after}, outside the signed 64-bit range [{COUNTER_MIN}, {COUNTER_MAX}]"
                )
        time_us, nonce = entry.position
        await self._run(
            self._log_write,
            (namespace, counter, time_us, nonce, entry.kind, entry.delta),
            "writing a counter operation",
        )
        await self._maybe_roll_up(namespace, counter, state)

    async def _maybe_roll_up(self, namespace: str, counter: str, state: LogState) -> None:
        """Fold the final rows of ``state`` into the rollup, if there are enough."""
        final_before = now_micros() - FINAL_AFTER_WINDOWS * self._window_us[namespace]
        final = [e for e in state.entries if e.position[0] < final_before]
        if len(final) < max(1, self.rollup_min_rows):
            return
        try:
            await self.roll_up(namespace, counter, state, final)
        except BackendError as exc:
            # The operation itself succeeded; the next read rolls up again.
            _log.warning(
                "counter %r in namespace %r: rollup failed, retried later: %s", counter, namespace, exc
            )

    async def roll_up(self, namespace: str, counter: str, state: LogState, final: Sequence[Entry]) -> None:
        """Write the fold of ``final`` (the first rows after ``state.cut``) as the
        rollup and delete those rows, in one single-partition batch (one
        mutation: atomic and isolated on each replica)."""
        cut = final[-1].position
        value = fold(state.rollup_value, final)
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        batch.add(
            await self._bind(self._rollup_write, (cut[0], encode_rollup(cut, value), namespace, counter))
        )
        batch.add(await self._bind(self._rollup_delete, (now_micros(), namespace, counter, cut[0], cut[1])))
        await self._execute(batch, "rolling up a counter")


def _traits(settings: CassandraSettings) -> CounterTraits:
    return CounterTraits(
        durability="durable",
        durability_note="clear and the exact mode's token checks need a quorum (or single-replica) "
        "consistency level to order against adds made elsewhere",
    )


COUNTER = CounterBackendType(
    settings_type=CassandraSettings,
    create=CassandraCounter,
    capabilities=frozenset({capabilities.COUNTER_BEST_EFFORT, capabilities.COUNTER_EXACT}),
    traits=_traits,
    description="Apache Cassandra: counter columns with epochs (best_effort); "
    "an event log with rollup (exact)",
)
