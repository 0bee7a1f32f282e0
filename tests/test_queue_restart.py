"""A consumer restarted mid-stream, on every durable Queue backend.

DESIGN §4 promises at-least-once delivery: a worker that dies holding deliveries
loses nothing (they come back after the visibility timeout), and nothing a group
acknowledged is ever delivered to it again. This test checks both with a real
crash: a worker process consumes, acknowledges most of what it gets and holds
the rest, and is killed with SIGKILL, so it cannot give anything back. A second
worker then drains the topic. The test knows an id was acknowledged only once
the worker printed it after ``ack`` returned, so every assertion is about
acknowledgements that really happened.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

import prism

MESSAGES = 240
KEYS = 8
VISIBILITY_S = 2
DEADLINE_S = 120.0

WORKER = textwrap.dedent(
    """
    import sys
    import prism

    config, topic, group, hold_every = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with prism.open(config) as db:
        q = db.queue("restart")
        consumer = q.consumer(topic, group)
        seen = 0
        while True:
            deliveries = consumer.consume(max_messages=10, wait=1)
            to_ack = []
            for d in deliveries:
                seen += 1
                print(f"got {d.id} {d.attempt} {d.payload.decode()}", flush=True)
                # Hold every hold_every-th delivery: never acked by this worker.
                if hold_every and seen % hold_every == 0:
                    continue
                to_ack.append(d)
            if to_ack:
                print("acking " + " ".join(d.id for d in to_ack), flush=True)
                consumer.ack(to_ack)
                for d in to_ack:
                    print(f"acked {d.id}", flush=True)
    """
)


class Worker:
    """A worker process and the lines it printed, read on a thread so the test
    can wait for them with a deadline."""

    def __init__(self, script: Path, config: Path, topic: str, group: str, hold_every: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(config), topic, group, str(hold_every)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.got: list[tuple[str, int, str]] = []
        self.acked: set[str] = set()
        # Acks begun: a kill can land after an ack committed but before the
        # worker printed it, so an id here and not in acked may go either way.
        self.acking: set[str] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def _take(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "got":
            message_id, attempt, payload = rest.split(" ")
            self.got.append((message_id, int(attempt), payload))
        elif kind == "acking":
            self.acking.update(rest.split(" "))
        elif kind == "acked":
            self.acked.add(rest)

    def wait_for(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not done():
            if self.proc.poll() is not None and self.lines.empty():
                stderr = self.proc.stderr.read() if self.proc.stderr else ""
                pytest.fail(f"the worker exited ({self.proc.returncode}) before {what}: {stderr[-2000:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out after {DEADLINE_S:.0f}s waiting for {what}")
            try:
                self._take(self.lines.get(timeout=min(remaining, 1.0)))
            except queue.Empty:
                continue

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        # Lines the process wrote before it died still count.
        while not self.lines.empty():
            self._take(self.lines.get_nowait())


@pytest.fixture
def redis_backend(redis_url: str) -> Iterator[dict[str, Any]]:
    prefix = f"prism-restart-{uuid.uuid4().hex[:12]}"
    yield {"plugin": "redis", "url": redis_url, "key_prefix": prefix}
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "redis", "kafka"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"plugin": "sqlite", "path": str(tmp_path / "queue.db")}
    if request.param == "redis":
        settings: dict[str, Any] = request.getfixturevalue("redis_backend")
        return settings
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    return {"plugin": "kafka", "bootstrap_servers": bootstrap, "topic_prefix": f"t{uuid.uuid4().hex[:10]}."}


def test_a_killed_consumer_loses_nothing_and_acked_never_returns(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "prism.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": {"under_test": backend},
                "namespaces": {
                    "restart": {
                        "abstraction": "queue",
                        # Enough attempts that nothing is dead-lettered here.
                        "queue": {"visibility_timeout": f"{VISIBILITY_S}s", "max_attempts": 50},
                    }
                },
            }
        )
    )
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    topic, group = "orders", "billing"

    with prism.open(str(config)) as db:
        q = db.queue("restart")
        published: dict[str, str] = {}
        for start in range(0, MESSAGES, 60):
            batch = [
                prism.Message(key=f"k{i % KEYS}", payload=str(i).encode()) for i in range(start, start + 60)
            ]
            ids = q.publish(topic, batch)
            published.update(zip(ids, (m.payload.decode() for m in batch), strict=True))
    assert len(published) == MESSAGES

    # The first worker holds every 5th delivery and is killed mid-stream.
    first = Worker(script, config, topic, group, hold_every=5)
    try:
        first.wait_for(lambda: len(first.acked) >= MESSAGES // 3, f"{MESSAGES // 3} acknowledgements")
    finally:
        first.kill()
    held = {message_id for message_id, _, _ in first.got} - first.acking
    # Killed mid-ack: committed or not, nobody can tell from outside.
    uncertain = first.acking - first.acked
    assert held, "the first worker should have held some deliveries when it died"

    # The second worker acknowledges everything it gets.
    second = Worker(script, config, topic, group, hold_every=0)
    try:
        second.wait_for(
            lambda: first.acked | second.acked | uncertain >= published.keys(),
            "every message to be acknowledged",
        )
    finally:
        second.kill()

    # Nothing acknowledged was delivered again, nothing was lost.
    redelivered = first.acked & {message_id for message_id, _, _ in second.got}
    assert not redelivered, f"acknowledged messages were delivered again: {sorted(redelivered)[:5]}"
    assert first.acked | second.acked | uncertain == published.keys()
    # Every delivery carried the payload that was published under its id.
    for message_id, _, payload in first.got + second.got:
        assert published[message_id] == payload
    # What the dead worker held came back to the second one.
    second_got = {message_id for message_id, _, _ in second.got}
    assert held <= second_got
    # ...as a redelivery: its attempt counts up from the dead worker's.
    first_attempt = {message_id: attempt for message_id, attempt, _ in first.got}
    for message_id, attempt, _ in second.got:
        if message_id in held:
            assert attempt > first_attempt[message_id], (message_id, attempt, first_attempt[message_id])

    # Once everything is acknowledged, nothing comes back, even after the
    # visibility timeout of every earlier delivery has run out. The one
    # exception is a message whose ack the kill interrupted before it
    # committed: acknowledge those, and then the group is empty.
    with prism.open(str(config)) as db:
        q = db.queue("restart")
        while leftover := q.consume(topic, group, max_messages=10, wait=VISIBILITY_S + 2):
            assert {d.id for d in leftover} <= uncertain - second.acked, [d.id for d in leftover]
            q.ack(topic, group, leftover)
            uncertain -= {d.id for d in leftover}
