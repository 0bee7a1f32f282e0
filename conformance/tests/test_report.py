"""The report: outcomes, the maturity level that follows from them, and the
capability summary."""

from __future__ import annotations

import json
from pathlib import Path

from prism_conformance import report
from prism_conformance.report import CaseResult, SuiteResult

BOTH = ["kv.atomic_mutate", "kv.scan"]


def _suite(declared: list[str], *tests: tuple[str, str, str]) -> SuiteResult:
    suite = SuiteResult(suite_id="t.py::TestX", suite="TestX", backend={"plugin": "x"}, declared=declared)
    for name, category, outcome in tests:
        suite.tests[name] = CaseResult(name, category, outcome)  # type: ignore[arg-type]
    return suite


def test_level_3_needs_every_test_passing_and_every_capability_declared() -> None:
    suite = _suite(BOTH, ("a", "core", "pass"), ("b", "kv.scan", "pass"), ("c", "kv.atomic_mutate", "pass"))
    assert report.maturity(suite) == report.Maturity(3, "complete", ())


def test_level_2_when_a_capability_is_not_declared_but_refused() -> None:
    suite = _suite(
        ["kv.scan"],
        ("a", "core", "pass"),
        ("b", "kv.scan", "pass"),
        ("c", "kv.atomic_mutate", "not_applicable"),
    )
    level = report.maturity(suite)
    assert (level.level, level.blockers) == (2, ("does not declare kv.atomic_mutate",))


def test_level_1_when_a_declared_capability_fails() -> None:
    suite = _suite(BOTH, ("a", "core", "pass"), ("b", "kv.scan", "fail"), ("c", "kv.atomic_mutate", "pass"))
    assert report.maturity(suite).level == 1


def test_level_0_when_a_core_test_fails_is_opted_out_skipped_or_missing() -> None:
    for outcome in ("fail", "opted_out", "skipped", "not_run"):
        suite = _suite(BOTH, ("a", "core", outcome), ("b", "kv.scan", "pass"))
        assert report.maturity(suite).level == 0, outcome
    assert report.maturity(_suite(BOTH)).level == 0, "no results is no level"


def test_a_failed_refusal_of_an_undeclared_capability_is_a_core_failure() -> None:
    suite = _suite(["kv.scan"], ("a", "core", "pass"), ("c", "kv.atomic_mutate", "fail"))
    assert report.maturity(suite).level == 0


def test_not_applicable_core_tests_do_not_hold_a_level_back() -> None:
    suite = _suite(BOTH, ("a", "core", "pass"), ("big", "core", "not_applicable"))
    assert report.maturity(suite).level == 3


def test_capability_summary() -> None:
    suite = _suite(
        ["kv.scan"],
        ("b", "kv.scan", "pass"),
        ("b2", "kv.scan", "fail"),
        ("c", "kv.atomic_mutate", "not_applicable"),
    )
    summary = report.capability_summary(suite)
    assert summary["kv.scan"]["status"] == "declared: 1/2 tests pass"
    assert not summary["kv.scan"]["ok"]
    assert summary["kv.atomic_mutate"]["status"] == "not declared: refusal verified (Unsupported)"
    assert summary["kv.native_ttl"]["status"].startswith("not declared: the core filters and purges")


def test_credentials_never_reach_the_report() -> None:
    settings = {
        "plugin": "redis",
        "url": "redis://h",
        "password": "s3cret",
        "aws_secret_access_key": "k",
        "port": 1,
    }
    assert report.redact_settings(settings) == {
        "plugin": "redis",
        "url": "redis://h",
        "password": report.REDACTED,
        "aws_secret_access_key": report.REDACTED,
        "port": 1,
    }


def test_written_report_has_json_and_markdown(tmp_path: Path) -> None:
    first = _suite(BOTH, ("test_a", "core", "pass"), ("test_b", "kv.scan", "fail"))
    first.tests["test_b"].reason = "scan | listed a record twice"
    second = _suite([], ("test_a", "core", "opted_out"))
    second.suite, second.suite_id = "TestY", "t.py::TestY"
    second.tests["test_a"].reason = "known gap"
    json_path, md_path = report.write_report(tmp_path / "nested" / "out", [first, second])
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["format"] == "prism-conformance-report/1"
    assert [s["maturity"]["level"] for s in data["suites"]] == [1, 0]
    assert data["suites"][0]["counts"]["fail"] == 1
    markdown = md_path.read_text(encoding="utf-8")
    assert "| test_a | core | pass | opted out |" in markdown
    assert "scan \\| listed a record twice" in markdown, "table cells must escape pipes"
    assert "known gap" in markdown


QUEUE_BOTH = ["queue.delay", "queue.ordered_by_key"]


def _queue_suite(declared: list[str], *tests: tuple[str, str, str]) -> SuiteResult:
    suite = _suite(declared, *tests)
    suite.suite, suite.suite_id, suite.abstraction = "TestQ", "t.py::TestQ", "queue"
    return suite


def test_queue_levels_follow_the_queue_capabilities() -> None:
    complete = _queue_suite(
        QUEUE_BOTH,
        ("a", "core", "pass"),
        ("b", "queue.delay", "pass"),
        ("c", "queue.ordered_by_key", "pass"),
    )
    assert report.maturity(complete) == report.Maturity(3, "complete", ())
    without_delay = _queue_suite(
        ["queue.ordered_by_key"],
        ("a", "core", "pass"),
        ("b", "queue.delay", "not_applicable"),
        ("c", "queue.ordered_by_key", "pass"),
    )
    level = report.maturity(without_delay)
    assert (level.level, level.blockers) == (2, ("does not declare queue.delay",))
    broken_order = _queue_suite(QUEUE_BOTH, ("a", "core", "pass"), ("c", "queue.ordered_by_key", "fail"))
    assert report.maturity(broken_order).level == 1
    assert report.maturity(_queue_suite(QUEUE_BOTH, ("a", "core", "fail"))).level == 0


def test_queue_capability_summary_lists_queue_capabilities_only() -> None:
    suite = _queue_suite(
        ["queue.ordered_by_key"],
        ("b", "queue.delay", "not_applicable"),
        ("c", "queue.ordered_by_key", "pass"),
    )
    summary = report.capability_summary(suite)
    assert sorted(summary) == QUEUE_BOTH
    assert summary["queue.delay"]["status"] == "not declared: refusal verified (Unsupported)"
    assert summary["queue.ordered_by_key"]["status"] == "declared: 1/1 tests pass"


def test_a_report_with_both_abstractions(tmp_path: Path) -> None:
    kv = _suite(BOTH, ("test_a", "core", "pass"))
    queue = _queue_suite(QUEUE_BOTH, ("test_q", "core", "pass"))
    _, md_path = report.write_report(tmp_path, [kv, queue])
    markdown = md_path.read_text(encoding="utf-8")
    assert "| TestX (x) | keyvalue |" in markdown
    assert "| TestQ (x) | queue |" in markdown
    # A capability of the other abstraction is an empty cell, not a verdict.
    assert "| kv.scan | declared: 0/0 tests pass |  |" in markdown
    assert "| queue.delay |  | declared: 0/0 tests pass |" in markdown
    assert "queue.ordered_by_key and queue.delay for Queue" in markdown
