"""Discovery through the entry point, and settings through prism.yaml."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import prism_sqlite
from prism.config import load_config, parse_config
from prism.errors import ConfigError
from prism.plugins import load_plugins
from prism.runtime import resolve_settings_paths
from prism_sqlite import SqliteSettings


def test_load_plugins_finds_sqlite_through_its_entry_point() -> None:
    plugins = load_plugins(disabled=())
    assert plugins.registry.keyvalue["sqlite"] is prism_sqlite.KEYVALUE
    assert plugins.registry.queue["sqlite"] is prism_sqlite.QUEUE
    [loaded] = [p for p in plugins.loaded if p.name == "sqlite"]
    assert loaded.module == "prism_sqlite.plugin"
    assert loaded.distribution == "prism-plugin-sqlite"
    assert loaded.abstractions == ("counter", "keyvalue", "queue", "timeseries")
    assert set(loaded.capabilities) == {
        "kv.atomic_mutate",
        "kv.scan",
        "queue.delay",
        "queue.ordered_by_key",
        "counter.best_effort",
        "counter.exact",
    }
    assert plugins.registry.timeseries["sqlite"] is prism_sqlite.TIMESERIES
    assert plugins.registry.counter["sqlite"] is prism_sqlite.COUNTER
    assert not [b for b in plugins.broken if b.name == "sqlite"]


def test_sqlite_can_be_blocked() -> None:
    plugins = load_plugins(disabled={"sqlite"})
    assert "sqlite" not in plugins.registry.keyvalue
    assert "sqlite" not in plugins.registry.queue
    assert "sqlite" in plugins.disabled


def test_settings_are_read_from_prism_yaml(tmp_path: Path) -> None:
    registry = load_plugins(disabled=()).registry
    config = parse_config(
        {
            "backends": {
                "local": {
                    "plugin": "sqlite",
                    "path": "data/kv.db",
                    "synchronous": "normal",
                    "busy_timeout": "250ms",
                    "max_item_bytes": "512KiB",
                    "max_value_bytes": "64MiB",
                    "max_message_bytes": "4MiB",
                }
            }
        },
        registry,
        base_dir=tmp_path,
    )
    assert config.backends["local"].settings == SqliteSettings(
        path="data/kv.db",
        synchronous="normal",
        busy_timeout=timedelta(milliseconds=250),
        max_item_bytes=512 * 1024,  # type: ignore[arg-type]
        max_value_bytes=64 * 1024 * 1024,  # type: ignore[arg-type]
        max_message_bytes=4 * 1024 * 1024,  # type: ignore[arg-type]
    )


def test_defaults() -> None:
    registry = load_plugins(disabled=()).registry
    config = parse_config({"backends": {"local": {"plugin": "sqlite"}}}, registry)
    settings = config.backends["local"].settings
    assert settings == SqliteSettings()
    assert settings.path == Path("prism-data/prism.db")
    assert settings.synchronous == "full"
    assert settings.busy_timeout == timedelta(seconds=5)
    assert (settings.max_item_bytes, settings.max_value_bytes) == (1024 * 1024, 256 * 1024 * 1024)
    assert settings.max_message_bytes == 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"pathh": "x.db"}, "unknown key 'pathh'"),
        ({"synchronous": "off"}, "expected one of 'full', 'normal'"),
        ({"busy_timeout": "soon"}, "busy_timeout"),
        ({"max_item_bytes": 0}, "max_item_bytes"),
        ({"max_item_bytes": "2MiB", "max_value_bytes": "1MiB"}, "max_value_bytes"),
        ({"path": ""}, "path"),
        ({"max_message_bytes": 0}, "max_message_bytes"),
    ],
)
def test_invalid_settings_are_reported_with_their_path(settings: dict[str, object], problem: str) -> None:
    registry = load_plugins(disabled=()).registry
    with pytest.raises(ConfigError) as info:
        parse_config({"backends": {"local": {"plugin": "sqlite", **settings}}}, registry)
    text = "\n".join(info.value.problems)
    assert "backends.local" in text
    assert problem in text


def test_runtime_resolves_a_relative_path_against_the_config_folder(tmp_path: Path) -> None:
    # The runtime resolves relative ``Path`` settings against the folder of
    # prism.yaml, so the same file means the same database from any cwd.
    registry = load_plugins(disabled=()).registry
    config_file = tmp_path / "conf" / "prism.yaml"
    config_file.parent.mkdir()
    config_file.write_text("backends:\n  local:\n    plugin: sqlite\n    path: data/kv.db\n")
    config = load_config(config_file, registry)
    settings = config.backends["local"].settings
    assert settings.path == Path("data/kv.db")
    resolved = resolve_settings_paths(settings, config.base_dir)
    assert resolved.path == tmp_path / "conf" / "data" / "kv.db"
    memory = SqliteSettings(path=":memory:")
    assert resolve_settings_paths(memory, tmp_path) == memory
