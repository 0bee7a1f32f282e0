"""The benchmark harness runs at all: one embedded sqlite group, a handful of
calls, and a ``latest.json`` of the documented shape. It asserts nothing about
speed (benchmarks never do); the real runs are ``nox -s bench``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {
    "scenario",
    "abstraction",
    "backend",
    "mode",
    "ops_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "baseline",
    "ratio",
}
BASELINE_FIELDS = {"name", "ops_per_s", "p50_ms", "p90_ms", "p99_ms"}


def test_the_harness_writes_records_of_the_documented_shape(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "--smoke",
        "--only",
        "embedded sqlite",
        "--results",
        str(tmp_path),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    records = json.loads((tmp_path / "latest.json").read_text())
    assert records, "no scenario ran"
    for record in records:
        assert record.keys() >= FIELDS
        assert record["baseline"].keys() >= BASELINE_FIELDS
        assert (record["abstraction"], record["backend"], record["mode"]) == (
            "keyvalue",
            "sqlite",
            "embedded",
        )
        for value in (
            record["ops_per_s"],
            record["p99_ms"],
            record["baseline"]["ops_per_s"],
            record["ratio"],
        ):
            assert isinstance(value, float | int)
            assert value > 0
    table = (tmp_path / "latest.md").read_text()
    assert all(r["scenario"] in table for r in records)
    assert "[bench" in done.stderr  # progress was shown
