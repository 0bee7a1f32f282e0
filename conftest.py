"""Workspace-wide pytest settings and the real-service fixtures.

Nothing is silently untested: a test that needs a service may skip on a
developer's machine when the service is absent, but under CI (``CI``,
``PRISM_REQUIRE_SERVICES`` or ``PRISM_NO_SKIPS`` set to a true value) any
skipped test fails the run.

Services are started by ``nox -s services -- up``, which writes their addresses
to ``.services/env``. The fixtures below read the variables from the
environment first, then from that file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_TRUE = {"1", "true", "yes", "on"}
ROOT = Path(__file__).resolve().parent
SERVICES_ENV = ROOT / ".services" / "env"


def _skips_forbidden() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in ("CI", "PRISM_REQUIRE_SERVICES", "PRISM_NO_SKIPS")
    )


def service_setting(variable: str) -> str | None:
    """``variable`` from the environment, else from ``.services/env``
    (lines of ``export NAME=value`` or ``NAME=value``)."""
    value = os.environ.get(variable)
    if value:
        return value
    if SERVICES_ENV.is_file():
        for line in SERVICES_ENV.read_text(encoding="utf-8").splitlines():
            name, sep, raw = line.removeprefix("export ").partition("=")
            if sep and name.strip() == variable:
                return raw.strip().strip("'\"") or None
    return None


def _require(variable: str, service: str) -> str:
    value = service_setting(variable)
    if value is None:
        pytest.skip(f"{service} is not running: start it with `nox -s services -- up` ({variable} is unset)")
    return value


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``redis://127.0.0.1:PORT/0`` of the test Redis server."""
    return _require("PRISM_TEST_REDIS_URL", "redis")


@pytest.fixture(scope="session")
def cassandra_contact() -> str:
    """``HOST:PORT`` of the test Cassandra node's native transport."""
    return _require("PRISM_TEST_CASSANDRA", "cassandra")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """``HOST:PORT`` of the test Kafka broker."""
    return _require("PRISM_TEST_KAFKA", "kafka")


@pytest.fixture(scope="session")
def dynamodb_url() -> str:
    """``http://127.0.0.1:PORT`` of the test DynamoDB (moto) server."""
    return _require("PRISM_TEST_DYNAMODB_URL", "dynamodb")


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
