"""Two real processes writing one database file at once: LWW must still hold."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from prism.spi import ReadQuery, StoredItem, Version
from prism_sqlite import SqliteKeyValue, SqliteSettings

NS = "race"
RECORDS = ("r1", "r2")
KEYS = [bytes([0]), bytes([0xFF]), *(bytes([i, j]) for i in (1, 0x80, 0xFE) for j in range(12))]

# Each writer waits for "go" on stdin after saying "ready", so both start on a
# signal rather than after a sleep. Both open, switch to WAL and provision the
# fresh file at the same moment, which is part of what is under test.
WRITER = r"""
import asyncio, json, sys
from datetime import timedelta
from prism.spi import StoredItem, Version
from prism_sqlite import SqliteKeyValue, SqliteSettings

async def main() -> None:
    path, plan_file = sys.argv[1], sys.argv[2]
    with open(plan_file) as f:
        plan = json.load(f)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(3)
    backend = SqliteKeyValue("writer", SqliteSettings(path=path, busy_timeout=timedelta(seconds=60)))
    await backend.start()
    await backend.provision("race")
    for record_id, rows in plan:
        items = [
            StoredItem(
                key=bytes.fromhex(key),
                value=bytes.fromhex(value),
                version=Version(micros, nonce),
                tombstone=tombstone,
            )
            for key, value, micros, nonce, tombstone in rows
        ]
        await backend.write("race", record_id, items, atomic=len(items) > 1)
    await backend.close()
    print("done", flush=True)

asyncio.run(main())
"""


def _plans(seed: int) -> tuple[list[Any], list[Any], dict[tuple[str, bytes], StoredItem]]:
    """Random versions of every key, split between two writers, each writing its
    share in its own shuffled order and batching; and the LWW winner of each key."""
    rng = random.Random(seed)
    shares: list[list[tuple[str, list[Any]]]] = [[], []]
    winners: dict[tuple[str, bytes], StoredItem] = {}
    for record_id in RECORDS:
        for key in KEYS:
            # A narrow time range, so that equal times with different nonces occur.
            versions = {Version(rng.randint(1, 6), rng.choice("abc")) for _ in range(10)}
            for version in versions:
                tombstone = rng.random() < 0.15
                value = b"" if tombstone else f"{version.micros}{version.nonce}".encode()
                row = [key.hex(), value.hex(), version.micros, version.nonce, tombstone]
                shares[rng.randrange(2)].append((record_id, row))
                current = winners.get((record_id, key))
                if current is None or version > current.version:
                    winners[(record_id, key)] = StoredItem(key, value, version, tombstone=tombstone)
    plans: list[list[Any]] = []
    for share in shares:
        rng.shuffle(share)
        plan: list[Any] = []
        i = 0
        while i < len(share):
            # A batch holds rows of one record; some batches hold several.
            size = rng.choice([1, 1, 1, 2, 4])
            batch = [share[i]]
            i += 1
            while len(batch) < size and i < len(share) and share[i][0] == batch[0][0]:
                batch.append(share[i])
                i += 1
            plan.append([batch[0][0], [row for _, row in batch]])
        plans.append(plan)
    return plans[0], plans[1], winners


def test_two_processes_writing_concurrently_keep_last_write_wins(tmp_path: Path) -> None:
    db = tmp_path / "shared" / "kv.db"
    plan_a, plan_b, winners = _plans(seed=20240611)
    procs: list[subprocess.Popen[str]] = []
    for n, plan in enumerate((plan_a, plan_b)):
        plan_file = tmp_path / f"plan-{n}.json"
        plan_file.write_text(json.dumps(plan))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(db), str(plan_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            assert out.strip() == "done", (out, err)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    async def final_state() -> dict[tuple[str, bytes], StoredItem]:
        backend = SqliteKeyValue("check", SqliteSettings(path=str(db)))
        await backend.start()
        try:
            await backend.provision(NS)
            state: dict[tuple[str, bytes], StoredItem] = {}
            for record_id in RECORDS:
                for row in await backend.read(NS, record_id, ReadQuery(limit=10_000)):
                    state[(record_id, row.key)] = row
            assert await backend.scan_records(NS, None, 10) == sorted(RECORDS)
            return state
        finally:
            await backend.close()

    state = asyncio.run(final_state())
    assert state.keys() == winners.keys()
    wrong = {k: (state[k], w) for k, w in winners.items() if state[k] != w}
    assert not wrong, f"{len(wrong)} keys do not hold their LWW winner, e.g. {next(iter(wrong.items()))}"
