"""The pytest plugin of the conformance suite, loaded through the ``pytest11``
entry point whenever ``prism-conformance`` is installed.

It tags every suite test with what the report needs (suite, capability,
opt-out), records each outcome, prints a short summary at the end of the run,
and with ``--prism-report-dir DIR`` writes ``DIR/conformance.json`` and
``DIR/conformance.md``. Outside suite classes it does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from prism_conformance import guard
from prism_conformance import report as rpt
from prism_conformance.counter.suite import CounterSuite
from prism_conformance.keyvalue.suite import KeyValueSuite
from prism_conformance.marks import (
    NOT_APPLICABLE_KEY,
    NOT_APPLICABLE_PREFIX,
    PROP_NOT_APPLICABLE,
    RECORDER_NAME,
    NotApplicable,
    capability_of,
    opt_out_reason,
)
from prism_conformance.queue.suite import QueueSuite
from prism_conformance.suite_base import ConformanceSuiteBase
from prism_conformance.timeseries.suite import TimeSeriesSuite

_recorder_key = pytest.StashKey["ConformanceRecorder"]()
_REASON_LENGTH = 400


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("prism-conformance", "Prism conformance suite")
    group.addoption(
        "--prism-report-dir",
        dest="prism_report_dir",
        metavar="DIR",
        default=None,
        help="write the conformance report (conformance.json and conformance.md) into DIR",
    )


def pytest_configure(config: pytest.Config) -> None:
    recorder = ConformanceRecorder(config.getoption("prism_report_dir"))
    config.stash[_recorder_key] = recorder
    config.pluginmanager.register(recorder, RECORDER_NAME)


def pytest_unconfigure(config: pytest.Config) -> None:
    recorder = config.stash.get(_recorder_key, None)
    if recorder is not None and config.pluginmanager.is_registered(recorder):
        config.pluginmanager.unregister(recorder)


#: The suite class of each abstraction: what a suite of that abstraction must run.
SUITES: dict[str, type[ConformanceSuiteBase]] = {
    "keyvalue": KeyValueSuite,
    "queue": QueueSuite,
    "timeseries": TimeSeriesSuite,
    "counter": CounterSuite,
}


def suite_names(abstraction: str) -> tuple[str, ...]:
    """Every test of the suite of ``abstraction`` (none for an unknown one)."""
    suite = SUITES.get(abstraction)
    return guard.suite_test_names(suite) if suite is not None else ()


def _is_suite_test(item: pytest.Item) -> bool:
    cls = getattr(item, "cls", None)
    name = getattr(item, "originalname", item.name)
    return (
        isinstance(cls, type)
        and issubclass(cls, ConformanceSuiteBase)
        and name in suite_names(cls.abstraction)
    )


def _first_line(text: str) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= _REASON_LENGTH else line[: _REASON_LENGTH - 1] + "…"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return _first_line(text.removeprefix("Skipped: "))


def _failure_reason(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    return _first_line(message if isinstance(message, str) else str(report.longrepr))


class ConformanceRecorder:
    """Collects suite outcomes from test reports and writes the report."""

    def __init__(self, report_dir: str | None) -> None:
        self.report_dir = report_dir
        self.suites: dict[str, rpt.SuiteResult] = {}
        self.written: tuple[Path, Path] | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if not _is_suite_test(item):
            return
        function = getattr(item, "function", None)
        cls: type[ConformanceSuiteBase] = item.cls  # type: ignore[attr-defined]
        props: list[tuple[str, object]] = [
            (rpt.PROP_SUITE_ID, item.parent.nodeid if item.parent is not None else cls.__qualname__),
            (rpt.PROP_SUITE, cls.__qualname__),
            (rpt.PROP_TEST, getattr(item, "originalname", item.name)),
            (rpt.PROP_CATEGORY, capability_of(function)),
            (rpt.PROP_OPT_OUT, opt_out_reason(function) or ""),
            (rpt.PROP_ABSTRACTION, cls.abstraction),
        ]
        if isinstance(cls.backend, dict):
            # What the class says; the suite's fixture adds the settings it really used.
            props.append((rpt.PROP_BACKEND, json.dumps(rpt.redact_settings(cls.backend), default=str)))
        item.user_properties.extend(props)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        """A test found not applicable during setup passes without running."""
        return True if NOT_APPLICABLE_KEY in pyfuncitem.stash else None

    @pytest.hookimpl(wrapper=True, specname="pytest_pyfunc_call")
    def pytest_pyfunc_call_wrapper(self, pyfuncitem: pytest.Function) -> Generator[None, object, object]:
        """A test that raises :class:`NotApplicable` passes, recorded as not applicable."""
        try:
            return (yield)
        except NotApplicable as exc:
            pyfuncitem.user_properties.append((PROP_NOT_APPLICABLE, exc.reason))
            return True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props: dict[str, Any] = dict(report.user_properties)
        suite_id = props.get(rpt.PROP_SUITE_ID)
        if not isinstance(suite_id, str):
            return
        suite = self.suites.get(suite_id)
        if suite is None:
            suite = rpt.SuiteResult(
                suite_id=suite_id,
                suite=str(props.get(rpt.PROP_SUITE, suite_id)),
                abstraction=str(props.get(rpt.PROP_ABSTRACTION, "keyvalue")),
            )
            self.suites[suite_id] = suite
        if isinstance(props.get(rpt.PROP_BACKEND), str):
            suite.backend = json.loads(props[rpt.PROP_BACKEND])
        if isinstance(props.get(rpt.PROP_CAPABILITIES), list):
            suite.declared = [str(c) for c in props[rpt.PROP_CAPABILITIES]]
        name = str(props.get(rpt.PROP_TEST))
        test = suite.tests.setdefault(name, rpt.CaseResult(name, str(props.get(rpt.PROP_CATEGORY, rpt.CORE))))
        test.duration_s = round(test.duration_s + report.duration, 3)
        opt_out = str(props.get(rpt.PROP_OPT_OUT) or "")
        self._apply(test, report, opt_out)

    @staticmethod
    def _apply(test: rpt.CaseResult, report: pytest.TestReport, opt_out: str) -> None:
        if report.when == "teardown":
            if report.failed and test.outcome != "fail":
                test.outcome, test.reason = "fail", "error in teardown: " + _failure_reason(report)
            return
        if report.when == "setup" and report.passed:
            return
        if hasattr(report, "wasxfail"):
            if report.skipped:
                test.outcome, test.reason = "opted_out", opt_out or str(report.wasxfail)
            else:
                test.outcome = "fail"
                test.reason = "opted out, but it passes now: remove the opt-out"
            return
        not_applicable = dict(report.user_properties).get(PROP_NOT_APPLICABLE)
        if report.passed and isinstance(not_applicable, str):
            test.outcome, test.reason = "not_applicable", not_applicable
        elif report.passed:
            test.outcome, test.reason = "pass", ""
        elif report.failed:
            reason = _failure_reason(report)
            if reason.startswith("[XPASS(strict)]"):
                reason = "opted out, but it passes now: remove the opt-out"
            elif report.when == "setup":
                reason = "error in setup: " + reason
            test.outcome, test.reason = "fail", reason
        else:
            reason = _skip_reason(report)
            if reason.startswith(NOT_APPLICABLE_PREFIX):
                test.outcome, test.reason = "not_applicable", reason.removeprefix(NOT_APPLICABLE_PREFIX)
            else:
                test.outcome, test.reason = "skipped", reason

    def finish(self) -> list[rpt.SuiteResult]:
        for suite in self.suites.values():
            suite.expect(suite_names(suite.abstraction))
        return list(self.suites.values())

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        suites = self.finish()
        if self.report_dir and suites:
            self.written = rpt.write_report(self.report_dir, suites)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.suites:
            return
        terminalreporter.section("prism conformance")
        for suite in self.suites.values():
            level = rpt.maturity(suite)
            counts = {outcome: 0 for outcome in rpt.OUTCOMES}
            for test in suite.tests.values():
                counts[test.outcome] += 1
            shown = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in counts.items() if n)
            plugin = suite.backend.get("plugin", "?")
            terminalreporter.write_line(
                f"{suite.suite} ({plugin}): level {level.level} ({level.name}); {shown}"
            )
        if self.written is not None:
            terminalreporter.write_line(f"report: {self.written[1]} and {self.written[0]}")
