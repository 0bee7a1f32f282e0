"""Helpers shared by the Cassandra tests (a module of its own, not conftest, so
that importing it never clashes with the workspace's root conftest)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from prism_cassandra import CassandraKeyValue, CassandraSettings


def split_contact(contact: str) -> tuple[str, int]:
    host, _, port = contact.rpartition(":")
    return host, int(port)


def settings_for(contact: str, keyspace: str, **extra: object) -> CassandraSettings:
    host, port = split_contact(contact)
    return CassandraSettings(contact_points=[host], port=port, keyspace=keyspace, **extra)  # type: ignore[arg-type]


def unique_keyspace(label: str) -> str:
    return f"prism_t_{label}_{os.getpid()}_{os.urandom(3).hex()}"


def run_with(
    contact: str, keyspace: str, body: Callable[[CassandraKeyValue], Awaitable[None]], **extra: object
) -> None:
    async def main() -> None:
        backend = CassandraKeyValue("test", settings_for(contact, keyspace, **extra))
        await backend.start()
        try:
            await body(backend)
        finally:
            await backend.close()

    asyncio.run(main())


def drop_keyspace(contact: str, keyspace: str) -> None:
    """Each test class provisions many tables; dropping its keyspace afterwards
    keeps the shared test node from piling tables up run after run."""

    async def drop(backend: CassandraKeyValue) -> None:
        session = backend._live_session()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: session.execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=120)
        )

    run_with(contact, keyspace, drop)
