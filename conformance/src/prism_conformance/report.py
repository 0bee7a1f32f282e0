"""The conformance report: per backend and test an outcome, a capability
summary, and the maturity level that follows from them.

Outcomes
--------
``pass``
    The test passed.
``fail``
    The test failed or errored (also: an opted-out test that now passes, which
    must lose its opt-out).
``not_applicable``
    The test does not apply, and why: for a capability the backend does not
    declare, the suite first verified that the operation is refused with
    ``prism.Unsupported``.
``opted_out``
    The plugin author turned the test off with ``prism_conformance.opt_out``;
    the reason is shown.
``skipped``
    Skipped for another reason (a missing service, a ``-k`` run, a skip mark).
``not_run``
    A suite test that did not run at all (deselected, deleted or crashed).

Maturity levels
---------------
0. **not conformant**: a core test (or the refusal check of an undeclared
   capability) did not pass.
1. **core**: every core test passed (or is not applicable), and every
   undeclared capability is refused with ``Unsupported``.
2. **declared**: level 1, and every test of every declared capability passed.
3. **complete**: level 2, and the backend declares every capability of its
   abstraction that the core cannot emulate: ``kv.atomic_mutate`` and
   ``kv.scan`` for KeyValue, ``queue.ordered_by_key`` and ``queue.delay`` for
   Queue, ``counter.best_effort`` and ``counter.exact`` for Counter (none for
   TimeSeries: the core emulates ``timeseries.native_retention``).

Only ``pass`` and ``not_applicable`` count as passing; an opted-out, skipped
or missing test holds a level back, so a level is never reached by leaving a
test out.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import attrs

from prism import capabilities

# user_properties the suite attaches to each test report; they travel with the
# report (also across pytest-xdist workers), so the recorder needs no other state.
PROP_SUITE_ID: Final = "prism_conformance.suite_id"
PROP_SUITE: Final = "prism_conformance.suite"
PROP_TEST: Final = "prism_conformance.test"
PROP_CATEGORY: Final = "prism_conformance.category"
PROP_OPT_OUT: Final = "prism_conformance.opt_out"
PROP_ABSTRACTION: Final = "prism_conformance.abstraction"
PROP_BACKEND: Final = "prism_conformance.backend"
PROP_CAPABILITIES: Final = "prism_conformance.capabilities"

Outcome = Literal["pass", "fail", "not_applicable", "opted_out", "skipped", "not_run"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("pass", "fail", "not_applicable", "opted_out", "skipped", "not_run")
PASSING: Final = frozenset({"pass", "not_applicable"})

CORE: Final = "core"
LEVEL_NAMES: Final = {0: "not conformant", 1: "core", 2: "declared", 3: "complete"}
#: KeyValue capabilities the core cannot emulate: declaring them all is level 3.
NOT_EMULATED: Final = (capabilities.KV_ATOMIC_MUTATE, capabilities.KV_SCAN)
#: Per abstraction, the capabilities the core cannot emulate.
NOT_EMULATED_BY_ABSTRACTION: Final[Mapping[str, tuple[str, ...]]] = {
    "keyvalue": NOT_EMULATED,
    "queue": (capabilities.QUEUE_ORDERED_BY_KEY, capabilities.QUEUE_DELAY),
    # Retention is emulated by the core (filter and purge) where it is not native.
    "timeseries": (),
    "counter": (capabilities.COUNTER_BEST_EFFORT, capabilities.COUNTER_EXACT),
}


def abstraction_capabilities(abstraction: str) -> list[str]:
    """The capabilities a backend of ``abstraction`` may declare, sorted."""
    return sorted(capabilities.BY_ABSTRACTION.get(abstraction, frozenset()))


_SECRET_SETTING = re.compile(
    r"pass(word|wd)?|secret|token|credential|api_?key|access_?key|private", re.IGNORECASE
)
REDACTED: Final = "***"


def redact_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Backend settings fit for a report that may be published: values of keys
    that look like credentials are hidden."""
    return {key: REDACTED if _SECRET_SETTING.search(str(key)) else value for key, value in settings.items()}


@attrs.define
class CaseResult:
    name: str
    category: str = CORE
    outcome: Outcome = "not_run"
    reason: str = ""
    duration_s: float = 0.0


@attrs.define
class SuiteResult:
    """The results of one suite class, i.e. one backend."""

    suite_id: str
    suite: str
    abstraction: str = "keyvalue"
    backend: dict[str, Any] = attrs.Factory(dict)
    declared: list[str] | None = None
    tests: dict[str, CaseResult] = attrs.Factory(dict)

    def expect(self, names: Iterable[str]) -> None:
        """List suite tests that never reported, as ``not_run``."""
        for name in names:
            self.tests.setdefault(name, CaseResult(name))


@attrs.frozen
class Maturity:
    level: int
    name: str
    blockers: tuple[str, ...]
    """Why the next level is not reached (empty at the top)."""


def _counts_as_core(test: CaseResult, declared: Sequence[str]) -> bool:
    # A test of an undeclared capability checks the refusal: part of the core contract.
    return test.category == CORE or test.category not in declared


def maturity(suite: SuiteResult) -> Maturity:
    declared = suite.declared or []
    tests = list(suite.tests.values())

    def describe(test: CaseResult) -> str:
        return f"{test.name}: {test.outcome}" + (f" ({test.reason})" if test.reason else "")

    core = [describe(t) for t in tests if _counts_as_core(t, declared) and t.outcome not in PASSING]
    if core or not tests:
        return Maturity(0, LEVEL_NAMES[0], tuple(core) or ("no suite test ran",))
    declared_failures = [
        describe(t) for t in tests if not _counts_as_core(t, declared) and t.outcome not in PASSING
    ]
    if declared_failures:
        return Maturity(1, LEVEL_NAMES[1], tuple(declared_failures))
    not_emulated = NOT_EMULATED_BY_ABSTRACTION.get(suite.abstraction, ())
    missing = [f"does not declare {c}" for c in not_emulated if c not in declared]
    if missing:
        return Maturity(2, LEVEL_NAMES[2], tuple(missing))
    return Maturity(3, LEVEL_NAMES[3], ())


def capability_summary(suite: SuiteResult) -> dict[str, dict[str, Any]]:
    """For each capability of the suite's abstraction: declared or not, and
    what the tests say."""
    declared = suite.declared or []
    summary: dict[str, dict[str, Any]] = {}
    for capability in abstraction_capabilities(suite.abstraction):
        tests = [t for t in suite.tests.values() if t.category == capability]
        passing = sum(t.outcome in PASSING for t in tests)
        is_declared = capability in declared
        if capability == capabilities.KV_NATIVE_TTL:
            status = (
                "declared: the datastore expires items; TTL is checked by the core TTL tests"
                if is_declared
                else "not declared: the core filters and purges expired items; TTL is checked by the core TTL tests"
            )
            ok = True
        elif capability == capabilities.TIMESERIES_NATIVE_RETENTION:
            status = (
                "declared: the datastore drops old events; retention is checked by the core retention tests"
                if is_declared
                else "not declared: the core filters and purges old events; retention is checked by the core "
                "retention tests"
            )
            ok = True
        elif is_declared:
            ok = passing == len(tests)
            status = f"declared: {passing}/{len(tests)} tests pass"
        else:
            ok = passing == len(tests)
            status = (
                "not declared: refusal verified (Unsupported)"
                if ok
                else f"not declared: refusal NOT verified ({len(tests) - passing} of {len(tests)} tests)"
            )
        summary[capability] = {"declared": is_declared, "ok": ok, "status": status, "tests": len(tests)}
    return summary


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("prism-conformance", "prism-core"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def build_report(suites: Iterable[SuiteResult], *, generated_at: datetime | None = None) -> dict[str, Any]:
    """The report as JSON-ready data; the Markdown is rendered from it."""
    body: list[dict[str, Any]] = []
    for suite in suites:
        level = maturity(suite)
        counts = {outcome: 0 for outcome in OUTCOMES}
        for test in suite.tests.values():
            counts[test.outcome] += 1
        body.append(
            {
                "suite": suite.suite,
                "suite_id": suite.suite_id,
                "abstraction": suite.abstraction,
                "backend": suite.backend,
                "declared_capabilities": sorted(suite.declared or []),
                "maturity": {"level": level.level, "name": level.name, "blockers": list(level.blockers)},
                "counts": counts,
                "capabilities": capability_summary(suite),
                "tests": [attrs.asdict(test) for test in suite.tests.values()],
            }
        )
    return {
        "format": "prism-conformance-report/1",
        "generated_at": (generated_at or datetime.now(UTC)).isoformat(),
        "versions": _versions(),
        "levels": {str(level): name for level, name in LEVEL_NAMES.items()},
        "suites": body,
    }


_CELL = {
    "pass": "pass",
    "fail": "**FAIL**",
    "not_applicable": "n/a",
    "opted_out": "opted out",
    "skipped": "skipped",
    "not_run": "not run",
}


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _backend_label(suite: Mapping[str, Any]) -> str:
    plugin = suite["backend"].get("plugin", "?")
    return f"{suite['suite']} ({plugin})"


def render_markdown(report: Mapping[str, Any]) -> str:
    suites: list[Mapping[str, Any]] = report["suites"]
    lines = [
        "# Prism conformance report",
        "",
        f"Generated {report['generated_at']} by prism-conformance {report['versions']['prism-conformance']} "
        f"against prism-core {report['versions']['prism-core']}.",
        "",
        *[
            f"{suite['suite']} ran through the Prism gateway at {suite['backend']['gateway']} "
            f"(backend {suite['backend'].get('backend')!r}): every namespace was declared with "
            "CreateNamespace and every operation went over gRPC.\n"
            for suite in suites
            if suite["backend"].get("gateway")
        ],
        "Maturity levels: 0 not conformant, 1 core (every core test passes, undeclared capabilities are "
        "refused), 2 declared (every declared capability's tests pass too), 3 complete (level 2 and "
        "every capability of the abstraction that the core cannot emulate is declared: kv.atomic_mutate "
        "and kv.scan for KeyValue, queue.ordered_by_key and queue.delay for Queue, counter.best_effort "
        "and counter.exact for Counter; none for TimeSeries, whose retention the core emulates).",
        "",
        "## Summary",
        "",
        "| backend | abstraction | settings | maturity | pass | fail | n/a | opted out | skipped | not run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for suite in suites:
        counts = suite["counts"]
        settings = ", ".join(f"{k}={v}" for k, v in suite["backend"].items() if k != "plugin") or "defaults"
        lines.append(
            f"| {_escape(_backend_label(suite))} | {suite['abstraction']} | {_escape(settings)} | "
            f"level {suite['maturity']['level']} ({suite['maturity']['name']}) | {counts['pass']} | "
            f"{counts['fail']} | {counts['not_applicable']} | {counts['opted_out']} | {counts['skipped']} | "
            f"{counts['not_run']} |"
        )
    lines += ["", "## Capabilities", ""]
    lines.append("| capability | " + " | ".join(_escape(_backend_label(s)) for s in suites) + " |")
    lines.append("|---" * (len(suites) + 1) + "|")
    shown = sorted({capability for s in suites for capability in s["capabilities"]})
    for capability in shown:
        # A capability of another abstraction does not apply to a suite: an empty cell.
        cells = [
            _escape(s["capabilities"][capability]["status"]) if capability in s["capabilities"] else ""
            for s in suites
        ]
        lines.append(f"| {capability} | " + " | ".join(cells) + " |")

    lines += ["", "## Results (backend × test)", ""]
    lines.append("| test | category | " + " | ".join(_escape(_backend_label(s)) for s in suites) + " |")
    lines.append("|---" * (len(suites) + 2) + "|")
    names: list[str] = []
    categories: dict[str, str] = {}
    for suite in suites:
        for test in suite["tests"]:
            if test["name"] not in categories:
                names.append(test["name"])
                categories[test["name"]] = test["category"]
    by_suite = [{t["name"]: t for t in suite["tests"]} for suite in suites]
    for name in names:
        cells = [_CELL[results[name]["outcome"]] if name in results else "" for results in by_suite]
        lines.append(f"| {name} | {categories[name]} | " + " | ".join(cells) + " |")

    lines += ["", "## Details", ""]
    for suite in suites:
        lines += [f"### {_backend_label(suite)}", ""]
        level = suite["maturity"]
        lines.append(f"Maturity: level {level['level']} ({level['name']}).")
        if level["blockers"]:
            lines += ["", "Holding the next level back:", ""]
            lines += [f"- {_escape(blocker)}" for blocker in level["blockers"]]
        noteworthy = [t for t in suite["tests"] if t["outcome"] != "pass"]
        if noteworthy:
            lines += ["", "| test | outcome | why |", "|---|---|---|"]
            for test in noteworthy:
                lines.append(f"| {test['name']} | {_CELL[test['outcome']]} | {_escape(test['reason'])} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_report(directory: str | Path, suites: Iterable[SuiteResult]) -> tuple[Path, Path]:
    """Write ``conformance.json`` and ``conformance.md`` into ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    data = build_report(suites)
    json_path = folder / "conformance.json"
    md_path = folder / "conformance.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(data), encoding="utf-8")
    return json_path, md_path
