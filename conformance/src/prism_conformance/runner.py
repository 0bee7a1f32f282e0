"""``prism conformance [--abstraction queue] BACKEND``: run a suite against a
backend without writing a test module.

BACKEND is either a backend named in the configuration (its settings are
used) or the name of an installed plugin (its default settings are used). The
runner writes a one-class test module into a temporary folder, runs pytest on
it in process, and writes the report.

With ``--target grpc://HOST:PORT`` the suite runs through that gateway instead:
BACKEND names a backend in the *gateway's* configuration, each fresh namespace
is declared with CreateNamespace (the gateway's ``gateway.create_namespaces``
must allow it), and every operation goes over gRPC. No local configuration or
plugin is needed.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import attrs
import pytest

from prism.config import DEFAULT_CONFIG_FILE, Config, load_config, resolve_config
from prism.errors import ConfigError, PrismError
from prism.plugins.manager import PluginSet, load_plugins
from prism.units import format_duration
from prism_conformance.harness import Gateway, probe

#: Exit codes besides pytest's own: 0 every applicable test passed, 1 not.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

ABSTRACTIONS = ("keyvalue", "queue", "timeseries", "counter")
MEMORY_PATH = ":memory:"

#: Per abstraction: the suite class a generated module subclasses, and how
#: messages name the abstraction.
SUITE_CLASSES = {
    "keyvalue": "KeyValueSuite",
    "queue": "QueueSuite",
    "timeseries": "TimeSeriesSuite",
    "counter": "CounterSuite",
}
TITLES = {"keyvalue": "KeyValue", "queue": "Queue", "timeseries": "TimeSeries", "counter": "Counter"}


class RunnerError(Exception):
    """The runner cannot start: an unknown backend, a broken configuration."""


def _yaml_value(value: Any) -> Any:
    """A settings value as prism.yaml would spell it, so that the generated
    module's settings go through the same validation as a user's file."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _yaml_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_yaml_value(v) for v in value]
    return value


def _settings_dict(settings: Any) -> dict[str, Any]:
    if not attrs.has(type(settings)):
        return {}
    return {
        field.name: _yaml_value(getattr(settings, field.name))
        for field in attrs.fields(type(settings))
        if field.init
    }


def _has_path_field(settings_type: type[Any]) -> bool:
    return attrs.has(settings_type) and any(field.name == "path" for field in attrs.fields(settings_type))


def resolve_backend(
    backend: str,
    *,
    config_path: str | None,
    plugins: PluginSet,
    scratch: Path,
    isolate_files: bool = True,
    abstraction: str = "keyvalue",
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """The settings of the backend to test, as a ``prism.yaml`` backend entry.

    The plugin must register a backend of ``abstraction``: a Kafka plugin
    offers only Queue, so ``prism conformance kafka`` (KeyValue) is refused
    while ``--abstraction queue`` runs.

    :raises RunnerError: naming what went wrong and what is available.
    """
    config: Config | None = None
    if config_path is not None:
        try:
            config = load_config(config_path, plugins.registry)
        except ConfigError as exc:
            raise RunnerError(str(exc)) from exc
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        try:
            config = resolve_config(None, plugins.registry)
        except ConfigError as exc:
            raise RunnerError(str(exc)) from exc

    title = TITLES.get(abstraction, abstraction)
    registry = plugins.registry.by_abstraction()[abstraction]
    if config is not None and backend in config.backends:
        configured = config.backends[backend]
        if configured.plugin not in registry:
            raise RunnerError(
                _no_backend_of(abstraction, configured.plugin, plugins, f"backend {backend!r}: ")
            )
        settings = _settings_dict(configured.settings)
        # Relative paths in a config file mean "next to the file"; the generated
        # module runs elsewhere, so make them absolute here.
        for name in list(settings):
            raw = getattr(configured.settings, name)
            if isinstance(raw, Path) and not raw.is_absolute() and str(raw) != MEMORY_PATH:
                settings[name] = str(config.base_dir / raw)
        entry: dict[str, Any] = {"plugin": configured.plugin, **settings}
        source = f"backend {backend!r} from {config.source}"
        settings_type = registry[configured.plugin].settings_type
    elif backend in registry:
        entry = {"plugin": backend}
        settings_type = registry[backend].settings_type
        source = f"plugin {backend!r} with its default settings"
        isolate_files = True  # defaults point into ./prism-data, which a test run must not touch
    else:
        broken = {b.name: b.error for b in plugins.broken}
        if backend in broken:
            raise RunnerError(f"plugin {backend!r} is installed but failed to load: {broken[backend]}")
        if backend in plugins.registry.names():
            raise RunnerError(_no_backend_of(abstraction, backend, plugins))
        configured_names = sorted(config.backends) if config is not None else []
        where = f" in {config.source}" if config is not None else ""
        raise RunnerError(
            f"no backend is named {backend!r}{where} and no installed {title} plugin has that name. "
            f"Configured backends: {', '.join(configured_names) or 'none'}. "
            f"Installed {title} plugins: {', '.join(sorted(registry)) or 'none'} (see `prism plugins`)."
        )

    if isolate_files and _has_path_field(settings_type) and entry.get("path") != MEMORY_PATH:
        original = entry.get("path", "(default)")
        entry["path"] = str(scratch / "prism-conformance.db")
        print(
            f"prism conformance: using a temporary database {entry['path']} instead of {original}", file=out
        )
    print(f"prism conformance: testing {source}", file=out)
    return entry


def _no_backend_of(abstraction: str, plugin: str, plugins: PluginSet, prefix: str = "") -> str:
    """Why a plugin that exists cannot be tested for ``abstraction``, and what can."""
    title = TITLES.get(abstraction, abstraction)
    offers = plugins.registry.abstractions_of(plugin)
    offered = ", ".join(TITLES.get(a, a) for a in offers) or "no backend"
    hint = f" (test it with --abstraction {offers[0]})" if offers else ""
    available = sorted(plugins.registry.by_abstraction()[abstraction])
    return (
        f"{prefix}plugin {plugin!r} has no {title} backend: it registers {offered} only{hint}. "
        f"Installed {title} plugins: {', '.join(available) or 'none'} (see `prism plugins`)."
    )


def _class_name(backend: str) -> str:
    ident = re.sub(r"\W", "_", backend)
    return f"Test_{ident}"


def write_test_module(
    folder: Path,
    backend: str,
    entry: Mapping[str, Any] | None,
    *,
    abstraction: str = "keyvalue",
    gateway: Gateway | None = None,
) -> Path:
    """A test module with one suite class (of ``abstraction``) for ``backend``:
    with its settings ``entry``, or through ``gateway``. A gateway's token is
    never written into the module; the suite reads it from the environment."""
    suite = SUITE_CLASSES[abstraction]
    module = folder / f"test_prism_conformance_{re.sub(r'[^0-9a-zA-Z_]', '_', backend)}.py"
    if gateway is not None:
        where = f"through the gateway at {gateway.target}"
        imports = f"from prism_conformance import Gateway, {suite}"
        body = (
            f"    gateway = Gateway(target={gateway.target!r}, backend={gateway.backend!r}, "
            f"token_env={gateway.token_env!r}, ca={gateway.ca!r}, cert={gateway.cert!r}, key={gateway.key!r})\n"
        )
    else:
        where, imports, body = (
            "",
            f"from prism_conformance import {suite}",
            f"    backend = {dict(entry or {})!r}\n",
        )
    module.write_text(
        f'"""Generated by prism conformance: the {TITLES[abstraction]} suite against {backend!r}{" " + where if where else ""}."""\n\n'
        f"{imports}\n\n\n"
        f"class {_class_name(backend)}({suite}):\n"
        f"{body}",
        encoding="utf-8",
    )
    (folder / "pytest.ini").write_text("[pytest]\nxfail_strict = true\n", encoding="utf-8")
    return module


def _summarise(report_dir: Path, out: TextIO) -> int:
    json_path = report_dir / "conformance.json"
    if not json_path.is_file():
        print(f"prism conformance: no report was written to {report_dir}", file=out)
        return EXIT_FAILED
    data = json.loads(json_path.read_text(encoding="utf-8"))
    ok = True
    for suite in data["suites"]:
        level = suite["maturity"]
        counts = suite["counts"]
        via = suite["backend"].get("gateway")
        through = (
            f" through the gateway at {via} (backend {suite['backend'].get('backend')!r})" if via else ""
        )
        print(
            f"prism conformance: {suite['suite']} ({suite['backend'].get('plugin')}){through}: level {level['level']} "
            f"({level['name']}); {counts['pass']} passed, {counts['fail']} failed, "
            f"{counts['not_applicable']} not applicable, {counts['skipped'] + counts['not_run']} not run",
            file=out,
        )
        ok = ok and all(t["outcome"] in ("pass", "not_applicable") for t in suite["tests"])
    print(f"prism conformance: report in {report_dir / 'conformance.md'} and {json_path}", file=out)
    return EXIT_OK if ok and data["suites"] else EXIT_FAILED


def run(
    backend: str,
    *,
    config_path: str | None,
    abstraction: str = "keyvalue",
    report_dir: str,
    extra_pytest_args: Sequence[str] = (),
    isolate_files: bool = True,
    out: TextIO | None = None,
    target: str | None = None,
    token: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> int:
    """Run the conformance suite of ``abstraction`` (``"keyvalue"``,
    ``"queue"``, ``"timeseries"`` or ``"counter"``) against ``backend``.

    :param backend: a backend named in the configuration, or an installed plugin's name.
    :param config_path: ``prism.yaml`` to read; None reads ``./prism.yaml`` if present.
    :param report_dir: where ``conformance.json`` and ``conformance.md`` go.
    :param extra_pytest_args: passed to pytest as they are (``-x``, ``-k ...``).
    :param isolate_files: point a ``path`` setting at a temporary file, so the
        suite's namespaces never land in a real database file.
    :param target: run through the gateway at ``grpc://HOST:PORT`` (or
        ``grpcs://``); ``backend`` then names a backend in the gateway's config.
    :param token: the gateway's bearer token (default: ``$PRISM_TOKEN``); it
        needs the admin grant on the suite's namespaces (``"*"``).
    :param ca: ``cert``, ``key``: TLS files, as :func:`prism.connect` takes them.
    :return: 0 if every applicable test passed; 1 if any failed or did not run;
        2 for an unknown backend or a broken configuration; pytest's code when
        pytest itself could not run.
    """
    stream = out if out is not None else sys.stdout
    if abstraction not in ABSTRACTIONS:
        print(
            f"prism conformance: there is no conformance suite for {abstraction!r} yet "
            f"(available: {', '.join(ABSTRACTIONS)})",
            file=stream,
        )
        return EXIT_USAGE
    if target is not None:
        return _run_remote(
            backend,
            Gateway(target=target, backend=backend, token=token, ca=ca, cert=cert, key=key),
            abstraction=abstraction,
            report_dir=report_dir,
            extra_pytest_args=extra_pytest_args,
            out=stream,
        )
    plugins = load_plugins()
    with tempfile.TemporaryDirectory(prefix="prism-conformance-") as scratch_dir:
        scratch = Path(scratch_dir)
        try:
            entry = resolve_backend(
                backend,
                config_path=config_path,
                plugins=plugins,
                scratch=scratch,
                isolate_files=isolate_files,
                abstraction=abstraction,
                out=stream,
            )
        except RunnerError as exc:
            print(f"prism conformance: {exc}", file=stream)
            return EXIT_USAGE
        return _run_pytest(
            write_test_module(_tests_folder(scratch), backend, entry, abstraction=abstraction),
            report_dir,
            extra_pytest_args,
            stream,
        )


def _tests_folder(scratch: Path) -> Path:
    tests = scratch / "tests"
    tests.mkdir()
    return tests


def _run_remote(
    backend: str,
    gateway: Gateway,
    *,
    abstraction: str,
    report_dir: str,
    extra_pytest_args: Sequence[str],
    out: TextIO,
) -> int:
    """The suite through ``gateway``. One namespace is declared first, so a
    gateway that is down, refuses run-time namespaces or has no such backend
    stops the run with one clear message instead of a hundred failed tests."""
    title = TITLES[abstraction]
    previous = os.environ.get(gateway.token_env)
    if gateway.token is not None:
        # The generated module reads the token from here, so it is never written to disk.
        os.environ[gateway.token_env] = gateway.token
    try:
        try:
            served = probe(gateway, abstraction)
        except (PrismError, ValueError) as exc:
            print(
                f"prism conformance: cannot run the {title} suite through the gateway at {gateway.target} "
                f"on backend {backend!r}: {exc}",
                file=out,
            )
            return EXIT_USAGE
        print(
            f"prism conformance: testing backend {backend!r} (plugin {served.plugin!r}) through the gateway at "
            f"{gateway.target}",
            file=out,
        )
        with tempfile.TemporaryDirectory(prefix="prism-conformance-") as scratch_dir:
            module = write_test_module(
                _tests_folder(Path(scratch_dir)), backend, None, abstraction=abstraction, gateway=gateway
            )
            return _run_pytest(module, report_dir, extra_pytest_args, out)
    finally:
        if gateway.token is not None:
            if previous is None:
                os.environ.pop(gateway.token_env, None)
            else:
                os.environ[gateway.token_env] = previous


def _run_pytest(module: Path, report_dir: str, extra_pytest_args: Sequence[str], stream: TextIO) -> int:
    """Run the generated module in process and summarise the report."""
    tests = module.parent
    report_path = Path(report_dir).resolve()
    args = [
        str(module),
        "-c",
        str(tests / "pytest.ini"),
        "--rootdir",
        str(tests),
        "--import-mode=importlib",
        "-p",
        "no:cacheprovider",
        "--prism-report-dir",
        str(report_path),
        "-q",
        "-rfE",
    ]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        args += ["-p", "prism_conformance.pytest_plugin"]
    code = pytest.main([*args, *extra_pytest_args])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        print(f"prism conformance: pytest could not run the suite (exit code {int(code)})", file=stream)
        return int(code)
    summary = _summarise(report_path, stream)
    return summary if code == pytest.ExitCode.OK else EXIT_FAILED
