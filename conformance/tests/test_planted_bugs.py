"""Sensitivity: each suite must fail on every planted bug, and pass on correct
variants of the memory backend (KeyValue in ``buggy_backends``, Queue in
``buggy_queue_backends``).

Each variant runs the whole suite in its own pytest process (as a plugin
author would run it), writing the JSON report this test then reads. Within a
pool the runs are started together: most of a suite run is spent waiting for
TTLs and visibility timeouts, so they overlap well even on two cores. The
KeyValue pool and the Queue pool run one after the other: together they
loaded a two-core CI machine enough that KeyValue runs hit their per-test time
limit and reported a planted bug as not caught.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest
from buggy_backends import CONTROLS, PLANTED_BUGS
from buggy_counter_backends import COUNTER_CONTROLS, PLANTED_COUNTER_BUGS
from buggy_queue_backends import PLANTED_QUEUE_BUGS, QUEUE_CONTROLS
from buggy_timeseries_backends import PLANTED_TIMESERIES_BUGS, TIMESERIES_CONTROLS

from prism_conformance import report

TESTS_DIR = Path(__file__).resolve().parent
#: A suite run that takes longer than this is counted as hung.
RUN_TIMEOUT_S = 300
PARALLEL_RUNS = max(4, 3 * (os.cpu_count() or 2))
#: Queue suite runs spend nearly all their time waiting on consume calls, so
#: many of them share a core well.
PARALLEL_QUEUE_RUNS = 14

GENERATED_MODULE = '''"""Generated: the KeyValue suite against the planted variant {name!r}."""

from buggy_backends import plugin_set
from prism_conformance import KeyValueSuite


class TestPlanted(KeyValueSuite):
    backend = {{"plugin": {name!r}, "max_item_bytes": 4096}}
    plugins = plugin_set({name!r})
    # A planted bug may make the core loop forever; fail such a test quickly.
    time_limit = 20.0
'''

GENERATED_QUEUE_MODULE = '''"""Generated: the Queue suite against the planted variant {name!r}."""

from datetime import timedelta

from buggy_queue_backends import plugin_set
from prism_conformance import QueueSuite


class TestPlanted(QueueSuite):
    backend = {{"plugin": {name!r}}}
    plugins = plugin_set({name!r})
    # A planted bug may hold back a delivery forever: fail such a test after
    # 10 s rather than the default 60 s (memory delivers within milliseconds,
    # and redeliveries after the suite's 2 s visibility timeout).
    delivery_deadline = timedelta(seconds=10)
    time_limit = 40.0
'''


GENERATED_TIMESERIES_MODULE = '''"""Generated: the TimeSeries suite against the planted variant {name!r}."""

from buggy_timeseries_backends import plugin_set
from prism_conformance import TimeSeriesSuite


class TestPlanted(TimeSeriesSuite):
    backend = {{"plugin": {name!r}}}
    plugins = plugin_set({name!r})
    time_limit = 40.0
'''

GENERATED_COUNTER_MODULE = '''"""Generated: the Counter suite against the planted variant {name!r}."""

from buggy_counter_backends import plugin_set
from prism_conformance import CounterSuite


class TestPlanted(CounterSuite):
    backend = {{"plugin": {name!r}}}
    plugins = plugin_set({name!r})
    time_limit = 40.0
'''
#: TimeSeries and Counter runs are short (the longest waits are a 2 s
#: retention and a 3 s token window); a few at a time keep a shared two-core
#: machine usable.
PARALLEL_SMALL_RUNS = 6


@attrs.frozen
class SuiteRun:
    name: str
    returncode: int
    output: str
    report: dict[str, Any] | None

    @property
    def suite(self) -> dict[str, Any]:
        assert self.report is not None, (
            f"{self.name}: no report was written; pytest said:\n{self.output[-3000:]}"
        )
        (suite,) = self.report["suites"]
        return suite  # type: ignore[no-any-return]

    @property
    def outcomes(self) -> dict[str, str]:
        return {test["name"]: test["outcome"] for test in self.suite["tests"]}

    def with_outcome(self, outcome: str) -> set[str]:
        return {name for name, got in self.outcomes.items() if got == outcome}


def run_suite_against(name: str, workdir: Path, template: str = GENERATED_MODULE) -> SuiteRun:
    folder = workdir / name
    folder.mkdir()
    module = folder / f"test_planted_{name}.py"
    module.write_text(template.format(name=name), encoding="utf-8")
    (folder / "pytest.ini").write_text("[pytest]\nxfail_strict = true\n", encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(module),
        "-c",
        str(folder / "pytest.ini"),
        "--rootdir",
        str(folder),
        "-p",
        "no:cacheprovider",
        "-q",
        "--prism-report-dir",
        str(folder / "report"),
    ]
    try:
        done = subprocess.run(
            command, cwd=folder, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
        )
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, output = -1, f"timed out after {RUN_TIMEOUT_S}s: {exc.stdout!r}"
    report_file = folder / "report" / "conformance.json"
    data = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else None
    return SuiteRun(name, returncode, output, data)


@attrs.frozen
class AllRuns:
    keyvalue: dict[str, SuiteRun]
    queue: dict[str, SuiteRun]


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory: pytest.TempPathFactory) -> AllRuns:
    """Every KeyValue variant in one pool, then every Queue variant in another."""
    kv_dir = tmp_path_factory.mktemp("planted")
    queue_dir = tmp_path_factory.mktemp("planted-queue")
    kv_names = [*PLANTED_BUGS, *CONTROLS]
    queue_names = [*PLANTED_QUEUE_BUGS, *QUEUE_CONTROLS]
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as kv_pool:
        kv_runs = list(kv_pool.map(lambda n: run_suite_against(n, kv_dir), kv_names))
    with ThreadPoolExecutor(max_workers=PARALLEL_QUEUE_RUNS) as queue_pool:
        queue_runs = list(
            queue_pool.map(lambda n: run_suite_against(n, queue_dir, GENERATED_QUEUE_MODULE), queue_names)
        )
    return AllRuns(dict(zip(kv_names, kv_runs, strict=True)), dict(zip(queue_names, queue_runs, strict=True)))


@pytest.fixture(scope="module")
def suite_runs(all_runs: AllRuns) -> dict[str, SuiteRun]:
    return all_runs.keyvalue


@pytest.fixture(scope="module")
def queue_suite_runs(all_runs: AllRuns) -> dict[str, SuiteRun]:
    return all_runs.queue


@pytest.mark.parametrize("name", sorted(PLANTED_BUGS))
def test_the_suite_catches_the_planted_bug(name: str, suite_runs: dict[str, SuiteRun]) -> None:
    run = suite_runs[name]
    failed = run.with_outcome("fail")
    assert failed, f"the suite passed against the planted bug {name!r}:\n{run.output[-3000:]}"
    assert run.returncode == 1, f"{name}: pytest should report failures (exit 1), got {run.returncode}"
    expected = set(PLANTED_BUGS[name][2])
    assert failed & expected, (
        f"{name}: none of the tests meant to catch it failed ({sorted(expected)}); "
        f"the failures were {sorted(failed)}"
    )
    assert run.suite["maturity"]["level"] < 3, (
        f"{name}: a backend with a planted bug reached maturity level 3"
    )


def test_every_planted_bug_is_a_distinct_variant() -> None:
    classes = [backend_class for backend_class, _, _ in PLANTED_BUGS.values()]
    assert len(set(classes)) == len(classes)


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_correct_variants_pass_the_suite(name: str, suite_runs: dict[str, SuiteRun]) -> None:
    run = suite_runs[name]
    assert run.with_outcome("fail") == set(), f"{name} is correct but failed:\n{run.output[-5000:]}"
    assert run.with_outcome("opted_out") == set()
    assert run.with_outcome("skipped") == run.with_outcome("not_run") == set()
    assert run.returncode == 0, run.output[-3000:]
    declared = set(CONTROLS[name][1])
    not_applicable = {
        test["name"]: test for test in run.suite["tests"] if test["outcome"] == "not_applicable"
    }
    for test in run.suite["tests"]:
        if test["category"] not in ("core", *declared):
            assert test["name"] in not_applicable, f"{name}: {test['name']} tests an undeclared capability"
            assert "refusal verified" in test["reason"], test
        else:
            assert test["name"] not in not_applicable, (
                f"{name}: {test['name']} was not applicable: {test['reason']}"
            )
    assert run.suite["maturity"]["level"] == (3 if declared >= set(report.NOT_EMULATED) else 2)


# -- Queue -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PLANTED_QUEUE_BUGS))
def test_the_queue_suite_catches_the_planted_bug(name: str, queue_suite_runs: dict[str, SuiteRun]) -> None:
    run = queue_suite_runs[name]
    failed = run.with_outcome("fail")
    assert failed, f"the Queue suite passed against the planted bug {name!r}:\n{run.output[-3000:]}"
    assert run.returncode == 1, f"{name}: pytest should report failures (exit 1), got {run.returncode}"
    expected = set(PLANTED_QUEUE_BUGS[name][2])
    assert failed & expected, (
        f"{name}: none of the tests meant to catch it failed ({sorted(expected)}); "
        f"the failures were {sorted(failed)}"
    )
    assert run.suite["abstraction"] == "queue"
    assert run.suite["maturity"]["level"] < 3, (
        f"{name}: a backend with a planted bug reached maturity level 3"
    )


def test_every_planted_queue_bug_is_a_distinct_variant() -> None:
    classes = [backend_class for backend_class, _, _ in PLANTED_QUEUE_BUGS.values()]
    assert len(set(classes)) == len(classes)


@pytest.mark.parametrize("name", sorted(QUEUE_CONTROLS))
def test_correct_queue_variants_pass_the_suite(name: str, queue_suite_runs: dict[str, SuiteRun]) -> None:
    run = queue_suite_runs[name]
    assert run.with_outcome("fail") == set(), f"{name} is correct but failed:\n{run.output[-5000:]}"
    assert run.with_outcome("opted_out") == set()
    assert run.with_outcome("skipped") == run.with_outcome("not_run") == set()
    assert run.returncode == 0, run.output[-3000:]
    declared = set(QUEUE_CONTROLS[name][1])
    for test in run.suite["tests"]:
        if test["category"] not in ("core", *declared):
            assert test["outcome"] == "not_applicable", (
                f"{name}: {test['name']} tests an undeclared capability"
            )
            assert "refusal verified" in test["reason"], test
        else:
            assert test["outcome"] == "pass", f"{name}: {test['name']}: {test['outcome']} {test['reason']}"
    not_emulated = set(report.NOT_EMULATED_BY_ABSTRACTION["queue"])
    assert run.suite["maturity"]["level"] == (3 if declared >= not_emulated else 2)


# -- TimeSeries and Counter -------------------------------------------------------------


def _run_pool(names: list[str], workdir: Path, template: str) -> dict[str, SuiteRun]:
    with ThreadPoolExecutor(max_workers=PARALLEL_SMALL_RUNS) as pool:
        runs = list(pool.map(lambda n: run_suite_against(n, workdir, template), names))
    return dict(zip(names, runs, strict=True))


@pytest.fixture(scope="module")
def timeseries_suite_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SuiteRun]:
    names = [*PLANTED_TIMESERIES_BUGS, *TIMESERIES_CONTROLS]
    return _run_pool(names, tmp_path_factory.mktemp("planted-timeseries"), GENERATED_TIMESERIES_MODULE)


@pytest.fixture(scope="module")
def counter_suite_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SuiteRun]:
    names = [*PLANTED_COUNTER_BUGS, *COUNTER_CONTROLS]
    return _run_pool(names, tmp_path_factory.mktemp("planted-counter"), GENERATED_COUNTER_MODULE)


def _assert_caught(name: str, run: SuiteRun, expected: tuple[str, ...], abstraction: str) -> None:
    failed = run.with_outcome("fail")
    assert failed, f"the {abstraction} suite passed against the planted bug {name!r}:\n{run.output[-3000:]}"
    assert run.returncode == 1, f"{name}: pytest should report failures (exit 1), got {run.returncode}"
    assert failed & set(expected), (
        f"{name}: none of the tests meant to catch it failed ({sorted(expected)}); "
        f"the failures were {sorted(failed)}"
    )
    assert run.suite["abstraction"] == abstraction
    assert run.suite["maturity"]["level"] < 2, (
        f"{name}: a backend with a planted bug reached maturity level 2"
    )


def _assert_passes(name: str, run: SuiteRun, declared: frozenset[str], abstraction: str) -> None:
    assert run.with_outcome("fail") == set(), f"{name} is correct but failed:\n{run.output[-5000:]}"
    assert run.with_outcome("opted_out") == set()
    assert run.with_outcome("skipped") == run.with_outcome("not_run") == set()
    assert run.returncode == 0, run.output[-3000:]
    for test in run.suite["tests"]:
        if test["category"] not in ("core", *declared):
            assert test["outcome"] == "not_applicable", (
                f"{name}: {test['name']} tests an undeclared capability"
            )
            assert "refusal verified" in test["reason"], test
        else:
            assert test["outcome"] == "pass", f"{name}: {test['name']}: {test['outcome']} {test['reason']}"
    not_emulated = set(report.NOT_EMULATED_BY_ABSTRACTION[abstraction])
    assert run.suite["maturity"]["level"] == (3 if declared >= not_emulated else 2)


@pytest.mark.parametrize("name", sorted(PLANTED_TIMESERIES_BUGS))
def test_the_timeseries_suite_catches_the_planted_bug(
    name: str, timeseries_suite_runs: dict[str, SuiteRun]
) -> None:
    _assert_caught(name, timeseries_suite_runs[name], PLANTED_TIMESERIES_BUGS[name][2], "timeseries")


@pytest.mark.parametrize("name", sorted(TIMESERIES_CONTROLS))
def test_correct_timeseries_variants_pass_the_suite(
    name: str, timeseries_suite_runs: dict[str, SuiteRun]
) -> None:
    _assert_passes(name, timeseries_suite_runs[name], TIMESERIES_CONTROLS[name][1], "timeseries")


@pytest.mark.parametrize("name", sorted(PLANTED_COUNTER_BUGS))
def test_the_counter_suite_catches_the_planted_bug(
    name: str, counter_suite_runs: dict[str, SuiteRun]
) -> None:
    _assert_caught(name, counter_suite_runs[name], PLANTED_COUNTER_BUGS[name][2], "counter")


@pytest.mark.parametrize("name", sorted(COUNTER_CONTROLS))
def test_correct_counter_variants_pass_the_suite(name: str, counter_suite_runs: dict[str, SuiteRun]) -> None:
    _assert_passes(name, counter_suite_runs[name], COUNTER_CONTROLS[name][1], "counter")


def test_every_planted_timeseries_and_counter_bug_is_a_distinct_variant() -> None:
    for planted in (PLANTED_TIMESERIES_BUGS, PLANTED_COUNTER_BUGS):
        classes = [backend_class for backend_class, _, _ in planted.values()]
        assert len(set(classes)) == len(classes)
    assert len(PLANTED_TIMESERIES_BUGS) >= 8
    assert len(PLANTED_COUNTER_BUGS) >= 8
