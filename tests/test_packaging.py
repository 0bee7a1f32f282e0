"""The three distributions, built as wheels and installed (not editable) into a
clean virtual environment, give a working `prism` with memory and sqlite, and the
sqlite backend passes the conformance suite from there."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = ["prism-core", "prism-plugin-sqlite", "conformance"]


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("packaging")
    # The clean venv's own pip builds the wheels too: the test runner's venv
    # may have been made without pip (nox with uv).
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    wheels = work / "wheels"
    for member in MEMBERS:
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-w",
                str(wheels),
                str(ROOT / member),
            ],
            check=True,
        )
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *map(str, wheels.glob("*.whl")),
        ],
        check=True,
    )
    return env_dir


def test_installed_wheels_are_not_editable(clean_venv: Path) -> None:
    python = clean_venv / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", "import prism, prism_sqlite, prism_conformance; print(prism.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=clean_venv,
    ).stdout
    assert str(clean_venv) in out


def test_prism_plugins_lists_memory_and_sqlite(clean_venv: Path) -> None:
    out = subprocess.run(
        [str(clean_venv / "bin" / "prism"), "plugins"],
        capture_output=True,
        text=True,
        check=True,
        cwd=clean_venv,
    ).stdout
    names = {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
    assert {"memory", "sqlite"} <= names


def test_prism_conformance_sqlite_passes_and_writes_reports(clean_venv: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(clean_venv / "bin" / "prism"), "conformance", "sqlite", "--report-dir", "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "conformance.json").read_text())
    assert (tmp_path / "out" / "conformance.md").read_text().strip()
    assert report
    assert not (tmp_path / "prism-data").exists(), "conformance must not touch ./prism-data"
