"""The connection every ``sqlite`` backend object uses, and the plugin's settings.

The KeyValue backend (:mod:`prism_sqlite.keyvalue`) and the Queue backend
(:mod:`prism_sqlite.queue`) share one ``backends:`` entry, so one settings class,
and one way of talking to SQLite: :class:`SqliteConnection`. Each backend object
owns one worker thread holding one connection to the database file; an operation
is one Python function shipped to that thread, run inside ``BEGIN IMMEDIATE``
when it changes anything, and retried while another process holds the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs

from prism.errors import BackendError
from prism.log import get_logger
from prism.units import ByteSize

_T = TypeVar("_T")

MiB = 1024 * 1024
MEMORY_PATH = ":memory:"

#: UPSERT arrived in SQLite 3.24 and row values in 3.15; the LWW write needs both.
MIN_SQLITE_VERSION = (3, 24, 0)

_log = get_logger(__name__)


def is_memory_path(path: Path) -> bool:
    """Whether ``path`` asks for a database in memory (one per connection)."""
    return str(path) == MEMORY_PATH


def _a_file(_: Any, attribute: attrs.Attribute[Path], value: Path) -> None:
    # Path("") is Path("."): a folder, never a database file.
    if str(value) in {"", "."}:
        raise ValueError(
            f"{attribute.name}: expected a file path, or {MEMORY_PATH!r} for a database in memory"
        )


def _not_negative(_: Any, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value < timedelta(0):
        raise ValueError(f"{attribute.name}: expected a duration of zero or more, got {value}")


@attrs.frozen
class SqliteSettings:
    """The ``sqlite`` backend's keys in ``prism.yaml``."""

    path: Path = attrs.field(default=Path("prism-data/prism.db"), converter=Path, validator=_a_file)
    """The database file; missing folders are created. A ``Path`` so that the
    runtime resolves a relative path against the folder of ``prism.yaml``; one
    still relative at start (the backend used on its own) is resolved against
    the working directory. ``:memory:`` keeps the data in the process."""
    synchronous: Literal["full", "normal"] = "full"
    """``full`` syncs the WAL on every commit, so a commit survives power loss;
    ``normal`` survives a crash of the process but may lose the last commits on
    power loss, and is faster."""
    busy_timeout: timedelta = attrs.field(default=timedelta(seconds=5), validator=_not_negative)
    """How long one call waits for other connections' write locks before it
    fails with ``BackendError``."""
    max_item_bytes: ByteSize = attrs.field(default=ByteSize(MiB), validator=attrs.validators.gt(ByteSize(0)))
    """Values above this are chunked by the core."""
    max_value_bytes: ByteSize = attrs.field(
        default=ByteSize(256 * MiB), validator=attrs.validators.gt(ByteSize(0))
    )
    """The largest value, chunks included, a namespace on this backend may hold."""
    max_message_bytes: ByteSize = attrs.field(
        default=ByteSize(16 * MiB), validator=attrs.validators.gt(ByteSize(0))
    )
    """The largest Queue message (key, payload and headers). Well above the core's
    default namespace limit of 1 MiB, so the headers the core adds when it moves
    a message to a dead-letter topic always fit."""

    def __attrs_post_init__(self) -> None:
        if self.max_value_bytes < self.max_item_bytes:
            raise ValueError(
                f"max_value_bytes ({self.max_value_bytes}) must be at least max_item_bytes "
                f"({self.max_item_bytes})"
            )


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        # The low byte is the primary code; SQLITE_BUSY_SNAPSHOT and
        # SQLITE_BUSY_RECOVERY are extended codes of SQLITE_BUSY.
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc)
    return "locked" in message or "busy" in message


def resolve_path(path: Path) -> str:
    """The absolute database path for ``path``, relative to the working directory."""
    if is_memory_path(path):
        return MEMORY_PATH
    return str((Path.cwd() / path.expanduser()).absolute())


class SqliteConnection:
    """One backend object's connection to the database file.

    Threading: sqlite3 blocks, so each backend owns exactly one worker thread
    that creates and alone uses the connection. Every SPI call ships one whole
    Python function (all of its statements and the commit) to that thread with a
    single ``run_in_executor``: one thread hop per operation, where aiosqlite
    hops once per statement and per fetch. One thread also serialises this
    process's calls on the connection, which SQLite needs anyway, since a
    connection runs one transaction at a time.
    """

    def __init__(self, name: str, settings: SqliteSettings) -> None:
        self.name = name
        self.settings = settings
        self.path = str(settings.path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the worker thread only

    # -- plumbing ---------------------------------------------------------------------

    def _error(self, exc: BaseException) -> BackendError:
        hint = ""
        if "no such table" in str(exc):
            hint = " (the namespace was not provisioned on this database)"
        return BackendError(f"sqlite backend {self.name!r} at {self.path}: {exc}{hint}")

    def _run(self, fn: Callable[[sqlite3.Connection], _T], begin: str | None) -> _T:
        """Run ``fn`` on the worker thread, inside ``begin`` when given, retrying
        while another connection holds the lock.

        ``busy_timeout`` makes SQLite itself wait for most locks, but some busy
        cases return at once without waiting (a WAL snapshot gone stale, recovery
        by another process), so the whole attempt is retried until the deadline.
        """
        conn = self._conn
        if conn is None:
            raise BackendError(f"sqlite backend {self.name!r} is not started")
        deadline = time.monotonic() + self.settings.busy_timeout.total_seconds()
        pause = 0.001
        attempts = 0
        while True:
            attempts += 1
            try:
                if begin is None:
                    return fn(conn)
                return self._transaction(conn, fn, begin)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise self._error(exc) from exc
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError(
                        f"sqlite backend {self.name!r}: {self.path} stayed locked by another connection "
                        f"for longer than busy_timeout ({self.settings.busy_timeout}, {attempts} attempts): "
                        f"{exc}. Another process may hold a long write transaction; retry, or raise "
                        f"busy_timeout."
                    ) from exc
                # Backing off between attempts on the worker thread; the event loop is not blocked.
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.1)
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    @staticmethod
    def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T], begin: str) -> _T:
        conn.execute(begin)
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (busy) leaves the transaction open; roll it back so
            # the retry starts clean. A rollback error must not hide the cause.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return result

    async def _call(self, fn: Callable[[sqlite3.Connection], _T], *, begin: str | None = None) -> _T:
        executor = self._executor
        if executor is None:
            raise BackendError(f"sqlite backend {self.name!r} is not started, or already closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(self._run, fn, begin))

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        # IMMEDIATE takes the write lock up front. A deferred transaction would
        # take it at its first write and, in WAL mode, fail with SQLITE_BUSY at
        # once when another process committed since it began reading.
        return await self._call(fn, begin="BEGIN IMMEDIATE")

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is not None:
            return
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise BackendError(
                f"sqlite backend {self.name!r} needs SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} "
                f"or newer (upserts and row values); this Python has {sqlite3.sqlite_version}"
            )
        self.path = resolve_path(self.settings.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"prism-sqlite-{self.name}")
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open(self) -> None:
        try:
            if self.path != MEMORY_PATH:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: the module's implicit transactions are off,
            # so BEGIN IMMEDIATE / COMMIT are exactly the ones issued here.
            self._conn = sqlite3.connect(
                self.path, timeout=self.settings.busy_timeout.total_seconds(), isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._error(exc) from exc
        try:
            self._run(self._configure, None)
        except BaseException:
            conn, self._conn = self._conn, None
            conn.close()
            raise

    def _configure(self, conn: sqlite3.Connection) -> None:
        # Only effective while the file is still empty; keeps TEXT ordering by UTF-8 bytes.
        conn.execute("PRAGMA encoding = 'UTF-8'")
        conn.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout.total_seconds() * 1000)}")
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        if mode != "wal" and self.path != MEMORY_PATH:
            # Still correct (rollback journal, with readers and writers blocking
            # each other), just slower; WAL fails on some network filesystems.
            _log.warning("sqlite_wal_unavailable", backend=self.name, path=self.path, journal_mode=mode)
        conn.execute(f"PRAGMA synchronous = {self.settings.synchronous.upper()}")
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        for setting in ("max_item_bytes", "max_message_bytes"):
            size = getattr(self.settings, setting)
            if size > limit:
                raise BackendError(
                    f"sqlite backend {self.name!r}: {setting} ({size}) is above this SQLite's largest "
                    f"value ({limit} bytes); lower {setting}"
                )

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        self._executor = None
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_connection)
        finally:
            # The worker is idle by now, so this join returns at once.
            executor.shutdown(wait=True)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
