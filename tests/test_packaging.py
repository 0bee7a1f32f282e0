"""What a user gets from `pip install`: every distribution built as a wheel and
installed (not editable, not from the workspace) into a clean virtual
environment. `prism plugins` lists exactly the installed backends, an
uninstalled plugin disappears, a plugin whose driver fails to import is
reported and skipped, and the sqlite backend passes the conformance suite from
there."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = sorted(p.name for p in ROOT.glob("prism-plugin-*") if (p / "pyproject.toml").is_file())
MEMBERS = ["prism-core", *PLUGINS, "conformance"]
#: Plugin distribution -> the backend name it registers.
BACKENDS = {"prism-core": "memory", **{p: p.removeprefix("prism-plugin-") for p in PLUGINS}}

BROKEN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "prism-plugin-brokendriver"
version = "0.0.1"
dependencies = ["prism-core"]

[project.entry-points."prism.backends"]
brokendriver = "prism_brokendriver"

[tool.setuptools]
py-modules = ["prism_brokendriver"]
"""

BROKEN_MODULE = """\
# The driver this plugin needs is not installed: importing the plugin fails.
import prism_brokendriver_native_driver  # noqa: F401
"""


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", *args, "--quiet", "--disable-pip-version-check"], check=True)


def _plugins_table(env_dir: Path) -> tuple[set[str], str]:
    out = subprocess.run(
        [str(env_dir / "bin" / "prism"), "plugins"], capture_output=True, text=True, check=True, cwd=env_dir
    ).stdout
    loaded_part = out.split("\n\n", 1)[0]
    names = {line.split()[0] for line in loaded_part.splitlines()[1:] if line.strip()}
    return names, out


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheels")
    # A throwaway venv's pip builds the wheels: the test runner's venv may have
    # been made without pip (nox with uv).
    builder = work / "builder"
    venv.EnvBuilder(with_pip=True).create(builder)
    out = work / "dist"
    broken_src = work / "brokendriver"
    broken_src.mkdir()
    (broken_src / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    (broken_src / "prism_brokendriver.py").write_text(BROKEN_MODULE)
    for source in [*(ROOT / member for member in MEMBERS), broken_src]:
        _pip(builder / "bin" / "python", "wheel", "--no-deps", "-w", str(out), str(source))
    return out


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Path:
    env_dir = tmp_path_factory.mktemp("packaging") / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    ours = [str(w) for w in wheels.glob("*.whl") if "brokendriver" not in w.name]
    _pip(env_dir / "bin" / "python", "install", *ours)
    return env_dir


def test_installed_wheels_are_not_editable(clean_venv: Path) -> None:
    modules = ["prism", "prism_conformance", *("prism_" + p.removeprefix("prism-plugin-") for p in PLUGINS)]
    code = "; ".join(f"import {m}" for m in modules) + "; print(prism.__file__)"
    out = subprocess.run(
        [str(clean_venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=clean_venv,
    ).stdout
    assert str(clean_venv) in out


def test_prism_plugins_lists_exactly_the_installed_backends(clean_venv: Path) -> None:
    names, out = _plugins_table(clean_venv)
    assert names == set(BACKENDS.values()), out
    assert "Broken plugins" not in out


def test_an_uninstalled_plugin_disappears_and_a_broken_one_is_reported(
    tmp_path_factory: pytest.TempPathFactory, wheels: Path
) -> None:
    env_dir = tmp_path_factory.mktemp("uninstall") / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    core = [str(w) for w in wheels.glob("prism_core-*.whl")]
    sqlite = [str(w) for w in wheels.glob("prism_plugin_sqlite-*.whl")]
    _pip(python, "install", *core, *sqlite)
    names, _ = _plugins_table(env_dir)
    assert names == {"memory", "sqlite"}

    _pip(python, "uninstall", "--yes", "prism-plugin-sqlite")
    names, out = _plugins_table(env_dir)
    assert names == {"memory"}, out

    _pip(python, "install", *(str(w) for w in wheels.glob("prism_plugin_brokendriver-*.whl")))
    result = subprocess.run(
        [str(env_dir / "bin" / "prism"), "plugins"], capture_output=True, text=True, cwd=env_dir
    )
    assert result.returncode == 0, result.stderr
    assert "Broken plugins (skipped)" in result.stdout
    assert "brokendriver" in result.stdout
    assert "No module named 'prism_brokendriver_native_driver'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    names, _ = _plugins_table(env_dir)
    assert names == {"memory"}


def test_prism_conformance_sqlite_passes_and_writes_reports(clean_venv: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(clean_venv / "bin" / "prism"), "conformance", "sqlite", "--report-dir", "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "conformance.json").read_text())
    (suite,) = report["suites"]
    assert suite["maturity"]["level"] == 3
    assert (tmp_path / "out" / "conformance.md").read_text().strip()
    assert not (tmp_path / "prism-data").exists(), "conformance must not touch ./prism-data"
