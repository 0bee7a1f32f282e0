"""The fixture contract every suite (KeyValue, Queue) builds on.

A plugin author sets ``backend`` (or overrides the ``prism_backend`` fixture);
or ``gateway`` to run the suite through a running gateway (``prism serve``)
against one of its backends. Everything else here belongs to the suite and may not be overridden (the guard
test of each suite checks that, see :mod:`prism_conformance.guard`). What
differs between abstractions is which namespaces a test opens and how an
undeclared capability is shown to be refused (:meth:`ConformanceSuiteBase._verify_refusal`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from prism.plugins.manager import PluginSet
from prism_conformance import report
from prism_conformance.harness import Gateway, GatewayHarness, Harness, NamespaceHarness, default_plugins
from prism_conformance.marks import (
    CORE,
    NOT_APPLICABLE_KEY,
    PROP_NOT_APPLICABLE,
    RECORDER_NAME,
    NotApplicable,
    capability_of,
)


class ConformanceSuiteBase:
    """Fixtures shared by every suite. Not collected by itself."""

    __test__ = False

    #: The settings of one backend, as under ``backends:`` in ``prism.yaml``,
    #: e.g. ``{"plugin": "sqlite", "path": "/tmp/x.db"}``. Or override the
    #: ``prism_backend`` fixture to build them per test (with ``tmp_path``).
    backend: ClassVar[Mapping[str, Any] | None] = None
    #: The plugins to open Prism with; None loads the installed ones. Set it to
    #: ``load_plugins(extra={"mine": module})`` to test a plugin module that is
    #: not installed.
    plugins: ClassVar[PluginSet | None] = None
    #: The abstraction the suite proves: it picks the plugin's registered type
    #: (and so its declared capabilities) and names the suite in the report.
    abstraction: ClassVar[str] = "keyvalue"
    #: Seconds one test may take before it fails (None: no limit). Generous:
    #: the slowest test takes a few seconds on a local backend.
    time_limit: ClassVar[float | None] = 120.0
    #: Run through a gateway instead of in process: ``Gateway(target="grpc://HOST:PORT",
    #: backend="NAME")``, NAME a backend in the gateway's prism.yaml. Each fresh
    #: namespace is then declared with CreateNamespace and used with prism.connect;
    #: ``backend`` and ``plugins`` are not used.
    gateway: ClassVar[Gateway | None] = None

    _harness: Harness

    @pytest.fixture
    def prism_backend(self, tmp_path: Path) -> Mapping[str, Any]:
        """The backend under test for one test. Override it to use ``tmp_path``::

        @pytest.fixture
        def prism_backend(self, tmp_path):
            return {"plugin": "sqlite", "path": str(tmp_path / "prism.db")}
        """
        gateway = type(self).gateway
        if gateway is not None:
            return {"gateway": gateway.target, "backend": gateway.backend}
        if self.backend is None:
            pytest.fail(
                f"{type(self).__name__}: set the class attribute backend = {{'plugin': ..., ...}} "
                "or override the prism_backend fixture",
                pytrace=False,
            )
        return self.backend

    @pytest.fixture(autouse=True)
    def prism_harness(
        self, request: pytest.FixtureRequest, prism_backend: Mapping[str, Any]
    ) -> Iterator[None]:
        """Give the test its harness, bound its time, and settle capability tests
        first: a test of a capability the backend does not declare checks the
        refusal and is then reported as not applicable."""
        gateway = type(self).gateway
        harness: Harness
        if gateway is not None:
            harness = GatewayHarness(gateway, abstraction=type(self).abstraction)
        else:
            harness = NamespaceHarness(
                prism_backend, type(self).plugins or default_plugins(), abstraction=type(self).abstraction
            )
        request.node.user_properties.append(
            (report.PROP_BACKEND, json.dumps(report.redact_settings(harness.backend), default=str))
        )
        request.node.user_properties.append((report.PROP_CAPABILITIES, sorted(harness.declared_capabilities)))
        self._harness = harness
        with time_limit(type(self).time_limit, request.node.nodeid):
            try:
                capability = capability_of(request.function)
                if capability != CORE and capability not in harness.declared_capabilities:
                    reason = self._verify_refusal(capability)
                    if not request.config.pluginmanager.has_plugin(RECORDER_NAME):
                        raise NotApplicable(reason)
                    # The plugin passes the test without running its body.
                    request.node.stash[NOT_APPLICABLE_KEY] = reason
                    request.node.user_properties.append((PROP_NOT_APPLICABLE, reason))
                yield
            finally:
                harness.close()

    def _verify_refusal(self, capability: str) -> str:
        """Check that the undeclared ``capability`` is refused (failing the test
        if it is not) and say why the test does not apply. Each suite knows how
        its abstraction refuses."""
        raise NotImplementedError(f"{type(self).__name__} does not say how {capability} is refused")


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Fail the test in the main thread after ``seconds``, as pytest-timeout's
    signal method does.

    A backend bug can make a core loop spin forever (a read that returns the
    row at the page cursor again, a consume that waits for a message that never
    comes back), and a suite that hangs tells its user nothing. Only armed
    where SIGALRM is usable and nobody else (pytest-timeout) holds it.
    """
    usable = (
        seconds is not None
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
    )
    if not usable or seconds is None:
        yield
        return

    def expire(signum: int, frame: types.FrameType | None) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        pytest.fail(
            f"{what} did not finish within {seconds:g}s (the suite's time_limit). A backend call may be "
            "stuck, or the core may be looping over rows the backend keeps returning (for example a read "
            "that returns the row at the page cursor again).",
            pytrace=True,
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
