"""Plugin discovery through real entry points: a throwaway distribution is laid
out on disk (a .dist-info with entry_points.txt) and put on sys.path."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from prism.plugins import load_plugins

GOOD_PLUGIN = """
import attrs
from prism.backends.memory import MemoryKeyValue, _traits, MemorySettings
from prism.plugins import hookimpl
from prism.spi import KeyValueBackendType

@hookimpl
def prism_register_keyvalue(registry):
    registry.add_keyvalue("goodstore", KeyValueBackendType(
        settings_type=MemorySettings, create=MemoryKeyValue,
        capabilities=frozenset({"kv.scan"}), traits=_traits))
"""

MISSING_DRIVER = "import prism_no_such_driver_xyz\n"
EXPLODES = "raise RuntimeError('plugin module crashed on import')\n"
BAD_REGISTRATION = """
from prism.plugins import hookimpl

@hookimpl
def prism_register_keyvalue(registry):
    raise ValueError("registration went wrong")
"""


def _make_dist(root: Path, dist: str, plugins: dict[str, str]) -> None:
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    lines = ["[prism.backends]"]
    for name, source in plugins.items():
        module = f"{dist.replace('-', '_')}_{name}"
        (root / f"{module}.py").write_text(source)
        lines.append(f"{name} = {module}")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _make_dist(
        tmp_path,
        "fake-plugins",
        {
            "goodstore": GOOD_PLUGIN,
            "missingdriver": MISSING_DRIVER,
            "explodes": EXPLODES,
            "badreg": BAD_REGISTRATION,
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


def test_builtin_memory_registers_like_a_plugin() -> None:
    plugins = load_plugins(disabled=())
    memory = next(p for p in plugins.loaded if p.name == "memory")
    assert memory.distribution == "prism-core"
    assert memory.abstractions == ("counter", "keyvalue", "queue", "timeseries")
    assert {"counter.best_effort", "counter.exact"} <= set(memory.capabilities)
    assert "memory" in plugins.registry.timeseries
    assert "queue.ordered_by_key" in memory.capabilities
    assert "memory" in plugins.registry.queue
    assert "kv.atomic_mutate" in memory.capabilities
    assert "memory" in plugins.registry.keyvalue


def test_broken_plugins_are_reported_and_skipped(site: Path) -> None:
    plugins = load_plugins(disabled=())
    loaded = {p.name: p for p in plugins.loaded}
    broken = {b.name: b for b in plugins.broken}
    assert loaded["goodstore"].distribution == "fake-plugins"
    assert loaded["goodstore"].version == "1.2.3"
    assert "goodstore" in plugins.registry.keyvalue
    assert set(broken) == {"missingdriver", "explodes", "badreg"}
    assert "ModuleNotFoundError" in broken["missingdriver"].error
    assert "plugin module crashed on import" in broken["explodes"].error
    assert "registration went wrong" in broken["badreg"].error
    assert "Traceback" in broken["explodes"].detail
    assert "badreg" not in plugins.registry.keyvalue


def test_disable_env_blocks_named_plugins(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRISM_DISABLE_PLUGINS", "goodstore, memory,explodes")
    plugins = load_plugins()
    names = {p.name for p in plugins.loaded}
    assert "goodstore" not in names
    assert "memory" not in names
    assert set(plugins.disabled) >= {"goodstore", "memory", "explodes"}
    assert "explodes" not in {b.name for b in plugins.broken}


def test_prism_plugins_cli_shows_broken_plugins(site: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "prism", "plugins"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert "goodstore" in result.stdout
    assert "Broken plugins (skipped)" in result.stdout
    assert "missingdriver" in result.stdout
    assert "plugin module crashed on import" in result.stdout


def test_queue_registration_is_validated() -> None:
    import attrs

    from prism.backends.memory import KEYVALUE, QUEUE
    from prism.plugins.registry import BackendRegistry, RegistrationError

    registry = BackendRegistry()
    registry.add_keyvalue("store", KEYVALUE)
    registry.add_queue("store", QUEUE)
    assert registry.abstractions_of("store") == ["keyvalue", "queue"]
    assert registry.capabilities_of("store") == KEYVALUE.capabilities | QUEUE.capabilities
    with pytest.raises(RegistrationError, match="registered twice"):
        registry.add_queue("store", QUEUE)
    with pytest.raises(RegistrationError, match="unknown capabilities"):
        registry.add_queue("other", attrs.evolve(QUEUE, capabilities=frozenset({"kv.scan"})))

    @attrs.frozen
    class OtherSettings:
        path: str = ""

    registry.add_keyvalue("mixed", KEYVALUE)
    with pytest.raises(RegistrationError, match="settings_type differs"):
        registry.add_queue("mixed", attrs.evolve(QUEUE, settings_type=OtherSettings))
