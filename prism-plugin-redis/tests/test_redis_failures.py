"""A server that goes away under a started backend: clear, bounded errors, then recovery.

Runs its own short-lived ``redis-server`` (a real one, on a free port), because
stopping the shared test server would break every other test.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from prism.errors import BackendError
from prism.spi import ReadQuery, StoredItem, Version
from prism_redis import RedisKeyValue, RedisSettings

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PrivateServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed: start the services with `nox -s services -- up`")
    private = PrivateServer(tmp_path)
    private.start()
    try:
        yield private
    finally:
        private.stop()


def test_a_server_that_goes_away_gives_bounded_clear_errors_then_recovers(server: PrivateServer) -> None:
    settings = RedisSettings(
        url=server.url,
        key_prefix="failures",
        connect_timeout=timedelta(milliseconds=500),
        socket_timeout=timedelta(seconds=1),
        retries=1,
    )
    row = StoredItem(b"k", b"v", Version(1, "n"))

    async def main() -> None:
        backend = RedisKeyValue("cache", settings)
        await backend.start()
        try:
            await backend.write("ns", "r", [row], atomic=False)
            server.stop()
            for call in (
                backend.read("ns", "r", ReadQuery(limit=10)),
                backend.write("ns", "r", [row], atomic=True),
                backend.scan_records("ns", None, 10),
                backend.read_chunks("ns", "r", b"k", "set", 2),
            ):
                started = time.monotonic()
                with pytest.raises(BackendError) as info:
                    await asyncio.wait_for(call, 10)
                assert time.monotonic() - started < 4
                message = str(info.value)
                assert "redis backend 'cache'" in message
                assert f"127.0.0.1:{server.port}" in message
                assert "Connection" in message or "connect" in message
            # Data is gone with the private in-memory server; the point is that
            # the same backend object works again once the server is back.
            server.start()
            await backend.write("ns", "r", [row], atomic=False)
            assert await backend.read("ns", "r", ReadQuery(limit=10)) == [row]
        finally:
            await backend.close()

    asyncio.run(main())
