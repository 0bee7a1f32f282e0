"""The fixture contract every KeyValue suite test builds on.

A plugin author sets ``backend`` (or overrides the ``prism_backend`` fixture,
both in :class:`prism_conformance.suite_base.ConformanceSuiteBase`);
everything else here belongs to the suite and may not be overridden (the
guard test in :mod:`prism_conformance.keyvalue.suite` checks that).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pytest

import prism
from prism import Put, capabilities
from prism.spi import KeyValueTraits
from prism_conformance.handles import KeyValueHandle
from prism_conformance.harness import OpenedNamespaces
from prism_conformance.suite_base import ConformanceSuiteBase, time_limit

__all__ = ["PROBE_RECORD", "REFUSAL_PROBES", "SuiteBase", "time_limit"]

#: The record a capability refusal is probed on.
PROBE_RECORD = "prism-conformance-refusal-probe"

#: How to call the operation behind each capability the core does not emulate.
#: When the backend does not declare the capability, the call must raise
#: ``prism.Unsupported`` and leave nothing behind.
REFUSAL_PROBES: dict[str, Callable[[KeyValueHandle], object]] = {
    capabilities.KV_SCAN: lambda kv: kv.scan(),
    capabilities.KV_ATOMIC_MUTATE: lambda kv: kv.mutate_items(PROBE_RECORD, [Put(b"probe", b"value")]),
}


class SuiteBase(ConformanceSuiteBase):
    """Fixtures and helpers of the KeyValue suite. Not collected by itself."""

    __test__ = False

    abstraction: ClassVar[str] = "keyvalue"

    @pytest.fixture
    def kv(self, prism_harness: None) -> KeyValueHandle:
        """A fresh, empty namespace with default limits and no declared needs."""
        return self.open_namespace()

    # -- helpers ----------------------------------------------------------------------------

    def open_namespace(
        self, *, limits: Mapping[str, Any] | None = None, needs: Mapping[str, Any] | None = None
    ) -> KeyValueHandle:
        """A fresh, empty namespace with these ``limits`` and ``needs`` (as in
        ``prism.yaml``, e.g. ``limits={"max_key_bytes": 16}``, ``needs={"ttl": "1s"}``)."""
        return self._harness.open(1, limits=limits, needs=needs).namespaces[0]

    def open_namespaces(
        self, count: int, *, limits: Mapping[str, Any] | None = None, needs: Mapping[str, Any] | None = None
    ) -> tuple[KeyValueHandle, ...]:
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

    def backend_traits(self, kv: KeyValueHandle) -> KeyValueTraits:
        """What the backend under ``kv`` offers (``max_item_bytes`` and so on)."""
        return self._harness.backend_traits_of(kv)

    def max_value_bytes(self, kv: KeyValueHandle) -> int:
        """The largest value ``kv`` accepts."""
        return self._harness.max_value_bytes_of(kv)

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
