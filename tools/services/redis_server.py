"""Redis from Debian's ``redis-server``, run in the foreground under our pid file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tools.services.common import HOST, Service, ensure_debian_package


class RedisService(Service):
    name = "redis"
    port = 16379
    marker = "redis-server"
    start_deadline = 30.0

    def __init__(self) -> None:
        self._binary = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def prepare(self) -> None:
        self._binary = ensure_debian_package("redis-server", "redis-server")
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        # Test data is disposable: no RDB snapshots or AOF, so nothing slows writes or fills the disk.
        # `daemonize no` keeps the pid we record the server's own; we detach it ourselves.
        config = f"""\
# Written by tools/services; edits are overwritten by the next `up`.
bind {HOST}
protected-mode yes
port {self.port}
daemonize no
supervised no
dir {self.dir / "data"}
save ""
appendonly no
logfile ""
loglevel notice
databases 16
"""
        (self.dir / "redis.conf").write_text(config)

    def command(self) -> Sequence[str]:
        return [self._binary, str(self.dir / "redis.conf")]

    def probe(self, timeout: float) -> None:
        import redis  # drivers load lazily, so `status` runs in a venv that lacks some of them

        client = redis.Redis(
            host=HOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            if client.ping() is not True:
                raise RuntimeError("PING did not answer PONG")
        finally:
            client.close()

    def env(self) -> Mapping[str, str]:
        return {"PRISM_TEST_REDIS_URL": self.url}

    def backend(self) -> Mapping[str, Any]:
        return {"plugin": "redis", "url": self.url}
