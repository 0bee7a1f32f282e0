from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from prism.config import load_config, parse_config, resolve_config
from prism.errors import ConfigError
from prism.plugins import load_plugins
from prism.units import format_duration, format_size, parse_duration, parse_size

REGISTRY = load_plugins().registry


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, REGISTRY)
    return info.value.problems


def test_valid_config_is_structured() -> None:
    config = parse_config(
        {
            "backends": {"mem": {"plugin": "memory", "max_item_bytes": 4096}},
            "namespaces": {
                "users": {
                    "abstraction": "keyvalue",
                    "needs": {"ttl": "30d", "max_value_bytes": "8MiB", "consistency": "strong"},
                    "backend": "mem",
                    "limits": {"max_key_bytes": "1KiB", "max_items_per_call": 10},
                }
            },
        },
        REGISTRY,
    )
    users = config.namespaces["users"]
    assert users.needs.ttl == timedelta(days=30)
    assert users.needs.max_value_bytes == 8 * 1024 * 1024
    assert users.limits.max_key_bytes == 1024
    assert config.backends["mem"].settings.max_item_bytes == 4096


def test_bad_duration_names_path_and_expectation() -> None:
    problems = problems_of({"namespaces": {"users": {"abstraction": "keyvalue", "needs": {"ttl": "soon"}}}})
    assert problems == ["namespaces.users.needs.ttl: expected a duration like 30d, 12h or 500ms, got 'soon'"]


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {
            "backends": {"mem": {"plugin": "memory", "bogus": 1}, "x": {"plugin": "nosuch"}, "y": {}},
            "namespaces": {
                "users": {"abstraction": "kv", "needs": {"ttl": "soon"}},
                "orders": {"abstraction": "keyvalue", "backend": "missing"},
                "Bad-Name": {"abstraction": "keyvalue"},
            },
            "typo_key": True,
        }
    )
    text = "\n".join(problems)
    assert (
        "namespaces.users.abstraction: expected one of 'keyvalue', 'queue', 'timeseries', 'counter', got 'kv'"
        in text
    )
    assert "namespaces.users.needs.ttl: expected a duration" in text
    assert "(top level): unknown key 'typo_key'" in text
    assert "backends.mem: unknown key 'bogus'" in text
    assert "backends.x.plugin: no installed plugin is named 'nosuch'" in text
    assert "backends.y.plugin: required key is missing" in text
    assert "namespaces.orders.backend: no backend is named 'missing'" in text
    assert "namespaces.Bad-Name: namespace names are" in text
    assert len(problems) == 8


def test_unknown_capability_and_wrong_types() -> None:
    problems = problems_of(
        {
            "namespaces": {
                "a": {
                    "abstraction": "keyvalue",
                    "needs": {"capabilities": ["kv.teleport"], "read_rps": "fast"},
                    "limits": {"max_items_per_call": True},
                }
            }
        }
    )
    text = "\n".join(problems)
    assert "namespaces.a.needs.capabilities: unknown capabilities ['kv.teleport']" in text
    assert "namespaces.a.needs.read_rps: expected an integer, got 'fast'" in text
    assert "namespaces.a.limits.max_items_per_call: expected an integer, got True" in text


def test_error_message_lists_problems_and_source(tmp_path: Path) -> None:
    file = tmp_path / "prism.yaml"
    file.write_text("namespaces:\n  users: {abstraction: keyvalue, needs: {ttl: soon}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, REGISTRY)
    message = str(info.value)
    assert str(file) in message
    assert "1 problem" in message
    assert "namespaces.users.needs.ttl" in message


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", REGISTRY)
    bad = tmp_path / "bad.yaml"
    bad.write_text("namespaces: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, REGISTRY)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listing, REGISTRY)


def test_default_is_embedded_sqlite_with_auto_namespaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = resolve_config(None, REGISTRY)
    assert config.auto_namespaces
    assert config.backends["local"].plugin == "sqlite"
    (tmp_path / "prism.yaml").write_text("backends: {m: {plugin: memory}}\n")
    assert resolve_config(None, REGISTRY).backends["m"].plugin == "memory"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        (10, timedelta(seconds=10)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_parse_duration(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "", "10", "5x", "-1s", "1d soon", True, -5, None])
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(ValueError, match="expected a"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8MiB", 8 * 1024**2),
        ("512KiB", 512 * 1024),
        ("2MB", 2_000_000),
        (100, 100),
        ("7 B", 7),
        ("1gib", 1024**3),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["big", "8 parsecs", -1, 1.5, True])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError, match="expected a"):
        parse_size(text)


def test_formatting_round_trips() -> None:
    assert format_duration(timedelta(days=30)) == "30d"
    assert format_duration(timedelta(milliseconds=1500)) == "1500ms"
    assert format_size(8 * 1024**2) == "8MiB"
    assert format_size(1000) == "1000B"


def test_queue_settings_are_structured_with_defaults() -> None:
    config = parse_config(
        {
            "backends": {"mem": {"plugin": "memory"}},
            "namespaces": {
                "orders": {
                    "abstraction": "queue",
                    "needs": {"capabilities": ["queue.ordered_by_key", "queue.delay"]},
                    "queue": {
                        "visibility_timeout": "45s",
                        "max_attempts": 7,
                        "max_message_bytes": "256KiB",
                        "max_batch": 100,
                        "max_topic_name_bytes": 64,
                        "max_wait": "5s",
                        "max_delay": "1d",
                        "dead_letter_suffix": "-dead",
                    },
                },
                "events": {"abstraction": "queue"},
                "users": {"abstraction": "keyvalue"},
            },
        },
        REGISTRY,
    )
    orders = config.namespaces["orders"].queue
    assert orders.visibility_timeout == timedelta(seconds=45)
    assert (orders.max_attempts, orders.max_message_bytes, orders.max_batch) == (7, 256 * 1024, 100)
    assert (orders.max_wait, orders.max_delay) == (timedelta(seconds=5), timedelta(days=1))
    assert orders.dead_letter_suffix == "-dead"
    events = config.namespaces["events"].queue
    assert events.visibility_timeout == timedelta(seconds=30)
    assert (events.max_attempts, events.max_message_bytes, events.max_batch) == (5, 1024 * 1024, 1000)
    assert events.dead_letter_suffix == ".dlq"


def test_queue_settings_problems_are_reported() -> None:
    problems = problems_of(
        {
            "namespaces": {
                "a": {"abstraction": "queue", "queue": {"visibility_tmeout": "1s"}},
                "b": {"abstraction": "keyvalue", "queue": {"max_attempts": 2}},
                "c": {"abstraction": "keyvalue", "needs": {"capabilities": ["queue.delay"]}},
                "d": {"abstraction": "queue", "needs": {"capabilities": ["kv.scan"]}},
                "e": {"abstraction": "queue", "queue": {"max_attempts": 0, "visibility_timeout": "0s"}},
                "f": {"abstraction": "queue", "queue": {"dead_letter_suffix": "/x"}},
            }
        }
    )
    text = "\n".join(problems)
    assert "namespaces.a.queue: unknown key 'visibility_tmeout'" in text
    assert "namespaces.b.queue: only queue namespaces take queue settings" in text
    assert "namespaces.c.needs.capabilities: queue.delay do not apply to keyvalue" in text
    assert "namespaces.d.needs.capabilities: kv.scan do not apply to queue" in text
    assert "namespaces.e.queue.max_attempts: must be at least 1, got 0" in text
    assert "namespaces.e.queue.visibility_timeout: must be longer than 0" in text
    assert "namespaces.f.queue.dead_letter_suffix" in text
