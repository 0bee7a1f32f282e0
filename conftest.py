"""Workspace-wide pytest settings.

Nothing is silently untested: a test that needs a service may skip on a
developer's machine when the service is absent, but under CI (``CI`` or
``PRISM_NO_SKIPS`` set to a true value) any skipped test fails the run.
"""

from __future__ import annotations

import os

import pytest

_TRUE = {"1", "true", "yes", "on"}


def _skips_forbidden() -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("CI", "PRISM_NO_SKIPS"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _skips_forbidden():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        if reporter is not None:
            reporter.write_sep(
                "=", f"{len(skipped)} skipped test(s) under CI: skips are failures here", red=True
            )
            for report in skipped:
                reporter.write_line(f"SKIPPED UNDER CI: {report.nodeid}: {report.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
