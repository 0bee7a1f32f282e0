"""The fixture contract every KeyValue suite test builds on.

A plugin author sets ``backend`` (or overrides the ``prism_backend`` fixture);
everything else here belongs to the suite and may not be overridden (the
guard test in :mod:`prism_conformance.keyvalue.suite` checks that).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

import prism
from prism import Put, capabilities
from prism.plugins.manager import PluginSet
from prism.spi import KeyValueTraits
from prism_conformance import report
from prism_conformance.harness import NamespaceHarness, OpenedNamespaces, default_plugins
from prism_conformance.marks import (
    CORE,
    NOT_APPLICABLE_KEY,
    PROP_NOT_APPLICABLE,
    RECORDER_NAME,
    NotApplicable,
    capability_of,
)

#: The record a capability refusal is probed on.
PROBE_RECORD = "prism-conformance-refusal-probe"

#: How to call the operation behind each capability the core does not emulate.
#: When the backend does not declare the capability, the call must raise
#: ``prism.Unsupported`` and leave nothing behind.
REFUSAL_PROBES: dict[str, Callable[[prism.KeyValue], object]] = {
    capabilities.KV_SCAN: lambda kv: kv.scan(),
    capabilities.KV_ATOMIC_MUTATE: lambda kv: kv.mutate_items(PROBE_RECORD, [Put(b"probe", b"value")]),
}


class SuiteBase:
    """Fixtures and helpers of the KeyValue suite. Not collected by itself."""

    __test__ = False

    #: The settings of one backend, as under ``backends:`` in ``prism.yaml``,
    #: e.g. ``{"plugin": "sqlite", "path": "/tmp/x.db"}``. Or override the
    #: ``prism_backend`` fixture to build them per test (with ``tmp_path``).
    backend: ClassVar[Mapping[str, Any] | None] = None
    #: The plugins to open Prism with; None loads the installed ones. Set it to
    #: ``load_plugins(extra={"mine": module})`` to test a plugin module that is
    #: not installed.
    plugins: ClassVar[PluginSet | None] = None
    #: The abstraction the suite proves, for the report.
    abstraction: ClassVar[str] = "keyvalue"
    #: Seconds one test may take before it fails (None: no limit). Generous:
    #: the slowest test takes a few seconds on a local backend.
    time_limit: ClassVar[float | None] = 120.0

    _harness: NamespaceHarness

    # -- fixtures ----------------------------------------------------------------------

    @pytest.fixture
    def prism_backend(self, tmp_path: Path) -> Mapping[str, Any]:
        """The backend under test for one test. Override it to use ``tmp_path``::

        @pytest.fixture
        def prism_backend(self, tmp_path):
            return {"plugin": "sqlite", "path": str(tmp_path / "prism.db")}
        """
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
        harness = NamespaceHarness(prism_backend, type(self).plugins or default_plugins())
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

    @pytest.fixture
    def kv(self, prism_harness: None) -> prism.KeyValue:
        """A fresh, empty namespace with default limits and no declared needs."""
        return self.open_namespace()

    # -- helpers ----------------------------------------------------------------------------

    def open_namespace(
        self, *, limits: Mapping[str, Any] | None = None, needs: Mapping[str, Any] | None = None
    ) -> prism.KeyValue:
        """A fresh, empty namespace with these ``limits`` and ``needs`` (as in
        ``prism.yaml``, e.g. ``limits={"max_key_bytes": 16}``, ``needs={"ttl": "1s"}``)."""
        return self._harness.open(1, limits=limits, needs=needs).namespaces[0]

    def open_namespaces(
        self, count: int, *, limits: Mapping[str, Any] | None = None, needs: Mapping[str, Any] | None = None
    ) -> tuple[prism.KeyValue, ...]:
        """``count`` fresh namespaces in one Prism, sharing one backend instance."""
        return self._harness.open(count, limits=limits, needs=needs).namespaces

    def open_prism(
        self,
        count: int = 1,
        *,
        limits: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
    ) -> OpenedNamespaces:
        """Like :meth:`open_namespaces`, with the Prism handle too."""
        return self._harness.open(count, limits=limits, needs=needs)

    def backend_traits(self, kv: prism.KeyValue) -> KeyValueTraits:
        """What the backend under ``kv`` offers (``max_item_bytes`` and so on)."""
        return self._harness.traits(self._harness.owner_of(kv).db)

    def max_value_bytes(self, kv: prism.KeyValue) -> int:
        """The largest value ``kv`` accepts."""
        return self._harness.max_value_bytes(self._harness.owner_of(kv).db, kv.name)

    def _verify_refusal(self, capability: str) -> str:
        """Check that an undeclared capability is refused; say why the test
        does not apply."""
        probe = REFUSAL_PROBES.get(capability)
        if probe is None:
            return f"backend does not declare {capability}"
        kv = self.open_namespace()
        refusal: prism.Unsupported | None = None
        try:
            probe(kv)
        except prism.Unsupported as exc:
            refusal = exc
        if refusal is None:
            pytest.fail(
                f"the backend does not declare {capability}, yet the operation was not refused with "
                "prism.Unsupported: an undeclared capability must be refused, never half-work",
                pytrace=False,
            )
        assert refusal.capability == capability, (
            f"the backend does not declare {capability}; the operation was refused, "
            f"but for {refusal.capability!r}: {refusal}"
        )
        leftover = kv.get_items(PROBE_RECORD)
        assert not leftover.items, f"a refused {capability} operation left items behind: {leftover.items!r}"
        return f"backend does not declare {capability} (refusal verified)"


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Fail the test in the main thread after ``seconds``, as pytest-timeout's
    signal method does.

    A backend bug can make a core loop spin forever (a read that returns the
    row at the page cursor again, say), and a suite that hangs tells its user
    nothing. Only armed where SIGALRM is usable and nobody else (pytest-timeout)
    holds it.
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
