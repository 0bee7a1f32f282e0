"""The Queue issue's acceptance command, run as a user runs it:

    prism conformance --abstraction queue --config .services/prism.yaml BACKEND

for memory, sqlite, redis and kafka. redis and kafka are the backends the
services runner wrote into ``.services/prism.yaml``; memory and sqlite are not
in that file, so the command tests them as installed plugins with their
default settings (sqlite on a temporary file). Each run must pass and write a
report that names the abstraction and has no failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".services" / "prism.yaml"
PRISM = Path(sys.executable).with_name("prism")

#: backend -> the service fixture it needs (None: no server).
BACKENDS = {"memory": None, "sqlite": None, "redis": "redis_url", "kafka": "kafka_bootstrap"}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_prism_conformance_queue_passes(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    fixture = BACKENDS[backend]
    if fixture is not None:
        request.getfixturevalue(fixture)  # skips (fails under CI) when the service is down
    assert CONFIG.is_file(), "run `./dev -s services -- up` first: it writes .services/prism.yaml"
    report_dir = tmp_path / "report"
    command = [str(PRISM), "conformance", "--abstraction", "queue", "--config", str(CONFIG), backend]
    result = subprocess.run(
        [*command, "--report-dir", str(report_dir)],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PRISM_CONFIG"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    report = json.loads((report_dir / "conformance.json").read_text(encoding="utf-8"))
    (suite,) = report["suites"]
    assert suite["abstraction"] == "queue"
    assert suite["backend"]["plugin"] == backend
    counts = suite["counts"]
    assert counts["pass"] > 0
    assert counts["fail"] == counts["skipped"] == counts["not_run"] == counts["opted_out"] == 0, counts
    assert not (tmp_path / "prism-data").exists(), "conformance must not touch ./prism-data"
