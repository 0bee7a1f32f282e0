"""``prism conformance``: the runner behind it, and the CLI end to end."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
from datetime import timedelta
from pathlib import Path

import attrs
import pytest

from prism.backends import memory
from prism.backends.memory_queue import MemoryQueue
from prism.plugins import hookimpl
from prism.plugins.manager import PluginSet, load_plugins
from prism.plugins.registry import BackendRegistry
from prism.spi import KeyValueBackendType, QueueBackendType
from prism_conformance.runner import EXIT_USAGE, RunnerError, resolve_backend, run, write_test_module


@attrs.frozen
class FileSettings:
    path: str = "prism-data/files.db"
    timeout: timedelta = timedelta(seconds=5)


def _file_plugins() -> PluginSet:
    """A plugin whose settings name a file, as sqlite's do."""

    @hookimpl
    def prism_register_keyvalue(registry: BackendRegistry) -> None:
        registry.add_keyvalue(
            "files",
            KeyValueBackendType(
                settings_type=FileSettings,
                create=lambda name, settings: memory.MemoryKeyValue(name, memory.MemorySettings()),
                capabilities=frozenset(),
                traits=lambda settings: memory.KEYVALUE.traits(memory.MemorySettings()),
            ),
        )

    module = types.ModuleType("files_plugin")
    module.prism_register_keyvalue = prism_register_keyvalue  # type: ignore[attr-defined]
    return load_plugins(extra={"files": module})


def test_a_plugin_name_uses_its_defaults_with_a_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    entry = resolve_backend(
        "files", config_path=None, plugins=_file_plugins(), scratch=tmp_path / "scratch", out=out
    )
    assert entry == {"plugin": "files", "path": str(tmp_path / "scratch" / "prism-conformance.db")}
    assert "instead of (default)" in out.getvalue()


def test_a_configured_backend_uses_its_settings(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "prism.yaml"
    config.parent.mkdir()
    config.write_text(
        "backends:\n  small: {plugin: memory, max_item_bytes: 4096}\n  local: {plugin: files, path: data/x.db, timeout: 2s}\n"
    )
    plugins = _file_plugins()
    small = resolve_backend(
        "small", config_path=str(config), plugins=plugins, scratch=tmp_path, out=io.StringIO()
    )
    assert small == {"plugin": "memory", "max_item_bytes": 4096, "max_value_bytes": 64 * 1024 * 1024}
    kept = resolve_backend(
        "local",
        config_path=str(config),
        plugins=plugins,
        scratch=tmp_path,
        isolate_files=False,
        out=io.StringIO(),
    )
    assert kept == {"plugin": "files", "path": "data/x.db", "timeout": "2s"}
    isolated = resolve_backend(
        "local", config_path=str(config), plugins=plugins, scratch=tmp_path, out=io.StringIO()
    )
    assert isolated["path"] == str(tmp_path / "prism-conformance.db")


def test_an_unknown_backend_is_refused_naming_what_exists(tmp_path: Path) -> None:
    with pytest.raises(
        RunnerError, match=r"no backend is named 'nope'.*Installed KeyValue plugins: .*memory"
    ):
        resolve_backend("nope", config_path=None, plugins=load_plugins(), scratch=tmp_path, out=io.StringIO())
    out = io.StringIO()
    assert run("nope", config_path=None, report_dir=str(tmp_path / "out"), out=out) == EXIT_USAGE
    assert "no backend is named 'nope'" in out.getvalue()
    assert not (tmp_path / "out").exists()


def test_a_broken_config_or_abstraction_is_a_usage_error(tmp_path: Path) -> None:
    broken = tmp_path / "prism.yaml"
    broken.write_text("backends:\n  x: {plugin: memory, colour: blue}\n")
    out = io.StringIO()
    assert run("x", config_path=str(broken), report_dir=str(tmp_path / "out"), out=out) == EXIT_USAGE
    assert "unknown key 'colour'" in out.getvalue()
    out = io.StringIO()
    assert (
        run("memory", config_path=None, abstraction="graph", report_dir=str(tmp_path), out=out) == EXIT_USAGE
    )
    assert (
        "no conformance suite for 'graph' yet (available: keyvalue, queue, timeseries, counter)"
        in out.getvalue()
    )


def test_the_generated_module_holds_one_suite_class(tmp_path: Path) -> None:
    module = write_test_module(tmp_path, "my-store.1", {"plugin": "memory", "max_item_bytes": 4096})
    source = module.read_text(encoding="utf-8")
    assert "class Test_my_store_1(KeyValueSuite):" in source
    assert "backend = {'plugin': 'memory', 'max_item_bytes': 4096}" in source
    compile(source, str(module), "exec")


def test_prism_conformance_cli_end_to_end(tmp_path: Path) -> None:
    """``prism conformance`` with a configured backend: the full suite runs,
    the report is written, and the exit code says whether everything passed."""
    (tmp_path / "prism.yaml").write_text("backends:\n  small: {plugin: memory, max_item_bytes: 4096}\n")
    prism = Path(sys.executable).parent / "prism"
    env = {k: v for k, v in os.environ.items() if k != "PRISM_CONFIG"}
    done = subprocess.run(
        [str(prism), "conformance", "small", "--config", "prism.yaml", "--report-dir", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    data = json.loads((tmp_path / "out" / "conformance.json").read_text(encoding="utf-8"))
    (suite,) = data["suites"]
    assert suite["suite"] == "Test_small"
    assert suite["backend"]["max_item_bytes"] == 4096
    failed = {t["name"] for t in suite["tests"] if t["outcome"] != "pass"}
    assert failed == set(), output[-4000:]
    assert done.returncode == 0, output[-4000:]
    assert (
        (tmp_path / "out" / "conformance.md")
        .read_text(encoding="utf-8")
        .startswith("# Prism conformance report")
    )
    assert "prism conformance: report in" in output
    assert not (tmp_path / "prism-data").exists()


# -- Queue -------------------------------------------------------------------------------


def _queue_only_plugins() -> PluginSet:
    """A plugin that registers only a Queue backend, as a Kafka plugin does."""

    @hookimpl
    def prism_register_queue(registry: BackendRegistry) -> None:
        registry.add_queue(
            "streams",
            QueueBackendType(
                settings_type=memory.MemorySettings,
                create=MemoryQueue,
                capabilities=frozenset(),
                traits=memory.QUEUE.traits,
            ),
        )

    module = types.ModuleType("streams_plugin")
    module.prism_register_queue = prism_register_queue  # type: ignore[attr-defined]
    return load_plugins(extra={"streams": module})


def test_the_generated_queue_module_subclasses_the_queue_suite(tmp_path: Path) -> None:
    module = write_test_module(tmp_path, "my-queue", {"plugin": "memory"}, abstraction="queue")
    source = module.read_text(encoding="utf-8")
    assert "from prism_conformance import QueueSuite" in source
    assert "class Test_my_queue(QueueSuite):" in source
    assert "the Queue suite against 'my-queue'" in source
    compile(source, str(module), "exec")


def test_queue_backends_are_looked_up_among_queue_plugins(tmp_path: Path) -> None:
    plugins = _queue_only_plugins()
    entry = resolve_backend(
        "streams", config_path=None, plugins=plugins, scratch=tmp_path, abstraction="queue", out=io.StringIO()
    )
    assert entry == {"plugin": "streams"}
    # A Queue-only plugin has no KeyValue backend, and the refusal says what to run instead.
    with pytest.raises(
        RunnerError,
        match=r"plugin 'streams' has no KeyValue backend: it registers Queue only "
        r"\(test it with --abstraction queue\)",
    ):
        resolve_backend("streams", config_path=None, plugins=plugins, scratch=tmp_path, out=io.StringIO())
    # A KeyValue-only plugin has no Queue backend.
    with pytest.raises(RunnerError, match=r"plugin 'files' has no Queue backend: it registers KeyValue only"):
        resolve_backend(
            "files",
            config_path=None,
            plugins=_file_plugins(),
            scratch=tmp_path,
            abstraction="queue",
            out=io.StringIO(),
        )
    # The same for a configured backend whose plugin lacks the abstraction.
    config = tmp_path / "prism.yaml"
    config.write_text("backends:\n  local: {plugin: files, path: data/x.db}\n")
    with pytest.raises(RunnerError, match=r"backend 'local': plugin 'files' has no Queue backend"):
        resolve_backend(
            "local",
            config_path=str(config),
            plugins=_file_plugins(),
            scratch=tmp_path,
            abstraction="queue",
            out=io.StringIO(),
        )
    out = io.StringIO()
    assert run("nope", config_path=None, abstraction="queue", report_dir=str(tmp_path / "out"), out=out) == (
        EXIT_USAGE
    )
    assert "no installed Queue plugin has that name" in out.getvalue()
    assert "Installed Queue plugins: " in out.getvalue()


def _run_cli(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    prism = Path(sys.executable).parent / "prism"
    env = {k: v for k, v in os.environ.items() if k != "PRISM_CONFIG"}
    done = subprocess.run(
        [str(prism), "conformance", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return done, done.stdout + done.stderr


def test_prism_conformance_queue_cli_end_to_end_on_memory(tmp_path: Path) -> None:
    """``prism conformance --abstraction queue memory``: the whole Queue suite
    runs against the plugin's defaults and the report names the abstraction."""
    done, output = _run_cli(tmp_path, "--abstraction", "queue", "memory", "--report-dir", "out")
    data = json.loads((tmp_path / "out" / "conformance.json").read_text(encoding="utf-8"))
    (suite,) = data["suites"]
    assert (suite["suite"], suite["abstraction"]) == ("Test_memory", "queue")
    assert suite["declared_capabilities"] == ["queue.delay", "queue.ordered_by_key"]
    failed = {t["name"]: t["reason"] for t in suite["tests"] if t["outcome"] != "pass"}
    assert failed == {}, output[-4000:]
    assert suite["maturity"] == {"level": 3, "name": "complete", "blockers": []}
    assert set(suite["capabilities"]) == {"queue.delay", "queue.ordered_by_key"}
    assert done.returncode == 0, output[-4000:]
    markdown = (tmp_path / "out" / "conformance.md").read_text(encoding="utf-8")
    assert "| Test_memory (memory) | queue |" in markdown
    assert "test_competing_consumers_never_hold_the_same_message" in markdown


def test_prism_conformance_queue_cli_with_redis_from_a_config_file(tmp_path: Path, redis_url: str) -> None:
    """A Redis backend from ``prism.yaml``, under a key prefix of its own. If
    the redis plugin registers no Queue backend, the runner must say so."""
    prefix = "prism-conformance-runner-" + os.urandom(4).hex()
    (tmp_path / "prism.yaml").write_text(
        f"backends:\n  shared-redis: {{plugin: redis, url: '{redis_url}', key_prefix: {prefix}}}\n"
    )
    done, output = _run_cli(
        tmp_path, "--abstraction", "queue", "shared-redis", "--config", "prism.yaml", "--report-dir", "out"
    )
    if "redis" not in load_plugins().registry.queue:
        assert done.returncode == EXIT_USAGE, output
        assert "plugin 'redis' has no Queue backend" in output
        return
    data = json.loads((tmp_path / "out" / "conformance.json").read_text(encoding="utf-8"))
    (suite,) = data["suites"]
    assert (suite["suite"], suite["abstraction"]) == ("Test_shared_redis", "queue")
    assert suite["backend"]["key_prefix"] == prefix
    assert suite["backend"]["url"] == redis_url
    failed = {
        t["name"]: t["reason"] for t in suite["tests"] if t["outcome"] not in ("pass", "not_applicable")
    }
    assert failed == {}, output[-4000:]
    assert done.returncode == 0, output[-4000:]
