"""The TimeSeries and Counter suites from the outside: the guard against
silent opt-outs, ``prism conformance --abstraction timeseries|counter`` and
the report's capability lines. (Every suite test against memory is in
``test_memory.py``; planted bugs in ``test_planted_bugs.py``.)"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from prism import capabilities
from prism_conformance import CounterSuite, TimeSeriesSuite, opt_out, report
from prism_conformance.counter import silent_opt_outs as counter_silent_opt_outs
from prism_conformance.counter import suite_test_names as counter_suite_test_names
from prism_conformance.handles import TimeSeriesHandle
from prism_conformance.runner import EXIT_USAGE, run, write_test_module
from prism_conformance.timeseries import silent_opt_outs as timeseries_silent_opt_outs
from prism_conformance.timeseries import suite_test_names as timeseries_suite_test_names


def test_suite_test_names_are_listed_in_order() -> None:
    ts_names = timeseries_suite_test_names()
    assert ts_names[0] == "test_events_round_trip_exactly"
    assert "test_events_vanish_once_past_retention_and_not_before" in ts_names
    assert ts_names[-1] == "test_suite_tests_are_not_overridden"
    counter_names = counter_suite_test_names()
    assert counter_names[0] == "test_a_counter_never_added_to_is_zero"
    assert "test_a_clear_racing_adds_is_ordered_against_each_of_them" in counter_names
    assert len(set(ts_names)) == len(ts_names)
    assert len(set(counter_names)) == len(counter_names)


def test_the_guard_sees_silent_overrides_and_accepts_opt_outs() -> None:
    class Quiet(TimeSeriesSuite):
        __test__ = False
        backend: ClassVar[dict[str, object]] = {"plugin": "memory"}

        def test_range_includes_start_and_excludes_end(self, ts: TimeSeriesHandle) -> None:
            pass

        test_reads_cross_bucket_boundaries = None  # type: ignore[assignment]

    problems = timeseries_silent_opt_outs(Quiet)
    assert any("test_range_includes_start_and_excludes_end is overridden" in p for p in problems), problems
    assert any("test_reads_cross_bucket_boundaries is deleted" in p for p in problems), problems

    class Honest(CounterSuite):
        __test__ = False
        backend: ClassVar[dict[str, object]] = {"plugin": "memory"}

        @opt_out(reason="issue #1: the datastore has no exact increments yet")
        def test_a_replayed_add_counts_once(self) -> None:
            super().test_a_replayed_add_counts_once()

    assert counter_silent_opt_outs(Honest) == []

    class Machinery(CounterSuite):
        __test__ = False

        def declared_modes(self) -> list[str]:
            return []

    assert counter_silent_opt_outs(Machinery) == [
        "declared_modes is part of the suite's machinery and may not be overridden"
    ]


def test_the_guard_test_itself_cannot_be_overridden() -> None:
    with pytest.raises(TypeError, match="guards against silent opt-outs"):

        class Sneaky(TimeSeriesSuite):
            def test_suite_tests_are_not_overridden(self) -> None:
                pass


def test_the_generated_modules_subclass_the_new_suites(tmp_path: Path) -> None:
    for abstraction, suite in (("timeseries", "TimeSeriesSuite"), ("counter", "CounterSuite")):
        folder = tmp_path / abstraction
        folder.mkdir()
        module = write_test_module(folder, "memory", {"plugin": "memory"}, abstraction=abstraction)
        source = module.read_text(encoding="utf-8")
        assert f"from prism_conformance import {suite}" in source
        assert f"class Test_memory({suite}):" in source
        compile(source, str(module), "exec")


def test_an_unknown_abstraction_lists_the_four_suites(tmp_path: Path) -> None:
    out = io.StringIO()
    assert (
        run("memory", config_path=None, abstraction="graph", report_dir=str(tmp_path), out=out) == EXIT_USAGE
    )
    assert "(available: keyvalue, queue, timeseries, counter)" in out.getvalue()


def test_report_lines_for_the_new_capabilities() -> None:
    suite = report.SuiteResult("t.py::T", "T", abstraction="timeseries", declared=[])
    summary = report.capability_summary(suite)
    assert set(summary) == {capabilities.TIMESERIES_NATIVE_RETENTION}
    assert summary[capabilities.TIMESERIES_NATIVE_RETENTION]["status"].startswith(
        "not declared: the core filters and purges old events"
    )
    assert report.NOT_EMULATED_BY_ABSTRACTION["timeseries"] == ()
    counter = report.SuiteResult("t.py::C", "C", abstraction="counter", declared=[capabilities.COUNTER_EXACT])
    counter.tests["test_x"] = report.CaseResult("test_x", capabilities.COUNTER_EXACT, "pass")
    counter.tests["test_y"] = report.CaseResult("test_y", "core", "pass")
    level = report.maturity(counter)
    assert (level.level, level.blockers) == (2, ("does not declare counter.best_effort",))


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


@pytest.mark.parametrize(
    ("abstraction", "declared"),
    [
        ("timeseries", []),
        ("counter", [capabilities.COUNTER_BEST_EFFORT, capabilities.COUNTER_EXACT]),
    ],
)
def test_prism_conformance_cli_end_to_end_on_memory(
    tmp_path: Path, abstraction: str, declared: list[str]
) -> None:
    done, output = _run_cli(tmp_path, "--abstraction", abstraction, "memory", "--report-dir", "out")
    data: dict[str, Any] = json.loads((tmp_path / "out" / "conformance.json").read_text(encoding="utf-8"))
    (suite,) = data["suites"]
    assert (suite["suite"], suite["abstraction"]) == ("Test_memory", abstraction)
    assert suite["declared_capabilities"] == declared
    failed = {t["name"]: t["reason"] for t in suite["tests"] if t["outcome"] != "pass"}
    assert failed == {}, output[-4000:]
    assert suite["maturity"] == {"level": 3, "name": "complete", "blockers": []}
    assert done.returncode == 0, output[-4000:]
    markdown = (tmp_path / "out" / "conformance.md").read_text(encoding="utf-8")
    assert f"| Test_memory (memory) | {abstraction} |" in markdown
