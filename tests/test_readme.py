"""README examples must run: each ```python block of the root README and of
every package README marked runnable is executed in a fresh folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", ROOT / "prism-core" / "README.md", ROOT / "docs" / "writing-a-plugin.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for readme in READMES:
        for index, block in enumerate(BLOCK.findall(readme.read_text())):
            if "# not runnable" in block:
                continue
            found.append((f"{readme.relative_to(ROOT)}#{index}", block))
    return found


@pytest.mark.parametrize(("where", "code"), _blocks(), ids=[w for w, _ in _blocks()])
def test_readme_python_block_runs(where: str, code: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"


def test_examples_embedded_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embedded.py")], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "{b'lang': b'en', b'name': b'Ada Lovelace'}" in result.stdout
    assert "['user:1', 'user:2']" in result.stdout


def test_examples_gateway_starts_the_gateway_and_calls_it(tmp_path: Path) -> None:
    """What the README's first command (`./dev -s demo`) runs, stopped after the demo."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "gateway.py"), "--once", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "get user:1 -> {b'lang': b'en', b'name': b'Ada Lovelace'}" in result.stdout
    assert "scan       -> ['user:1', 'user:2']" in result.stdout
    assert "consumed   -> " in result.stdout
    assert "events     -> ['s2', 's1', 's0']" in result.stdout
    assert "counted    -> 3" in result.stdout
    assert "The gateway drained and exited with status 0" in result.stdout
    # The calls went through the gateway: its access log shows each one.
    for method in (
        "PutItems",
        "GetItems",
        "Scan",
        "Publish",
        "Consume",
        "Ack",
        "WriteEvents",
        "ReadEvents",
        "Add",
    ):
        assert f'"method": "{method}"' in result.stderr
    assert (tmp_path / "prism-data" / "prism.db").exists()  # the embedded SQLite default
