"""The planner: client-originated configuration.

A namespace declares what it needs; the planner picks a configured backend whose
plugin implements the abstraction and whose traits and capabilities meet every
need, and says why. A pinned namespace is checked against its pin the same way,
so a pin that cannot meet the needs is refused rather than silently accepted.
"""

from __future__ import annotations

from datetime import timedelta

import attrs

from prism import capabilities as caps
from prism.config import Config, NamespaceConfig
from prism.errors import PlanError
from prism.plugins.registry import BackendRegistry
from prism.spi import (
    CONSISTENCY_ORDER,
    DURABILITY_ORDER,
    CounterTraits,
    KeyValueTraits,
    QueueTraits,
    TimeSeriesTraits,
)
from prism.units import format_duration, format_size

AnyTraits = KeyValueTraits | QueueTraits | TimeSeriesTraits | CounterTraits


@attrs.frozen
class NamespacePlan:
    namespace: str
    abstraction: str
    backend: str
    plugin: str
    reason: str


def _misfits(ns: NamespaceConfig, traits: AnyTraits, capabilities: frozenset[str]) -> list[str]:
    """Every way a backend falls short of a namespace's needs."""
    needs = ns.needs
    out: list[str] = []
    if needs.durability and DURABILITY_ORDER.index(traits.durability) < DURABILITY_ORDER.index(
        needs.durability
    ):
        note = f" ({traits.durability_note})" if traits.durability_note else ""
        out.append(f"needs durability {needs.durability}, backend is {traits.durability}{note}")
    missing = sorted(set(needs.capabilities) - capabilities)
    if isinstance(traits, CounterTraits):
        mode = caps.COUNTER_MODE[ns.counter.mode]
        if mode not in capabilities:
            out.append(f"does not serve counter.mode {ns.counter.mode} (lacks {mode})")
        if missing:
            out.append(f"lacks capabilities {', '.join(missing)}")
        return out
    if isinstance(traits, TimeSeriesTraits):
        retention = ns.timeseries.retention
        if traits.max_retention is not None and retention > traits.max_retention:
            out.append(
                f"needs retention {format_duration(retention)}, backend keeps at most "
                f"{format_duration(traits.max_retention)}"
            )
        if missing:
            out.append(f"lacks capabilities {', '.join(missing)}")
        return out
    if isinstance(traits, QueueTraits):
        # A queue's message-size limit is capped to the backend rather than refused,
        # like max_key_bytes for KeyValue; only an explicit need is a misfit.
        if needs.max_value_bytes is not None and needs.max_value_bytes > traits.max_message_bytes:
            out.append(
                f"needs messages up to {format_size(needs.max_value_bytes)}, backend holds at most "
                f"{format_size(traits.max_message_bytes)}"
            )
        if missing:
            out.append(f"lacks capabilities {', '.join(missing)}")
        return out
    if needs.consistency and CONSISTENCY_ORDER.index(traits.consistency) < CONSISTENCY_ORDER.index(
        needs.consistency
    ):
        out.append(f"needs consistency {needs.consistency}, backend gives {traits.consistency}")
    if needs.ttl is not None and traits.max_ttl is not None and needs.ttl > traits.max_ttl:
        out.append(
            f"needs ttl {format_duration(needs.ttl)}, backend keeps at most {format_duration(traits.max_ttl)}"
        )
    wanted = ns.limits.max_value_bytes or needs.max_value_bytes
    if wanted is not None and wanted > traits.max_value_bytes:
        out.append(
            f"needs values up to {format_size(wanted)}, backend holds at most {format_size(traits.max_value_bytes)}"
        )
    if missing:
        out.append(f"lacks capabilities {', '.join(missing)}")
    return out


def _describe_needs(ns: NamespaceConfig) -> str:
    needs = ns.needs
    parts: list[str] = []
    if needs.durability:
        parts.append(needs.durability)
    if needs.consistency:
        parts.append(needs.consistency)
    if needs.ttl is not None:
        parts.append(f"ttl {format_duration(needs.ttl)}")
    if needs.max_value_bytes is not None:
        parts.append(f"values ≤ {format_size(needs.max_value_bytes)}")
    if ns.abstraction == "counter":
        parts.append(f"counter.mode {ns.counter.mode}")
    parts += list(needs.capabilities)
    return ", ".join(parts) if parts else "no declared needs"


def plan_namespace(
    name: str, ns: NamespaceConfig, config: Config, registry: BackendRegistry
) -> NamespacePlan:
    """Plan one namespace.

    :raises PlanError: listing each configured backend and why it does not fit.
    """
    reasons: dict[str, str] = {}
    candidates = [ns.backend] if ns.backend is not None else list(config.backends)
    fits: list[str] = []
    for backend_name in candidates:
        backend = config.backends[backend_name]
        types = registry.by_abstraction().get(ns.abstraction, {})
        backend_type = types.get(backend.plugin)
        if backend_type is None:
            reasons[backend_name] = f"plugin {backend.plugin!r} does not implement {ns.abstraction}"
            continue
        misfits = _misfits(ns, backend_type.traits(backend.settings), backend_type.capabilities)
        if misfits:
            reasons[backend_name] = "; ".join(misfits)
        else:
            fits.append(backend_name)
    if not fits:
        raise PlanError(name, ns.abstraction, reasons)
    chosen = fits[0]
    plugin = config.backends[chosen].plugin
    if ns.backend is not None:
        reason = f"pinned; meets {_describe_needs(ns)}"
    else:
        reason = f"first configured backend that meets {_describe_needs(ns)}"
        if len(fits) > 1:
            reason += f" (also fit: {', '.join(fits[1:])})"
    return NamespacePlan(name, ns.abstraction, chosen, plugin, reason)


def plan(config: Config, registry: BackendRegistry) -> tuple[list[NamespacePlan], list[PlanError]]:
    """Plan every declared namespace; returns the plans and the refusals."""
    plans: list[NamespacePlan] = []
    errors: list[PlanError] = []
    for name, ns in config.namespaces.items():
        try:
            plans.append(plan_namespace(name, ns, config, registry))
        except PlanError as exc:
            errors.append(exc)
    return plans, errors


def effective_max_value_bytes(ns: NamespaceConfig, traits: KeyValueTraits) -> int:
    """The namespace's value limit: explicit limit, else the declared need, else
    8 MiB; never more than the backend can hold."""
    wanted = ns.limits.max_value_bytes or ns.needs.max_value_bytes or 8 * 1024 * 1024
    return min(wanted, traits.max_value_bytes)


def default_ttl(ns: NamespaceConfig) -> timedelta | None:
    return ns.needs.ttl


def effective_max_message_bytes(ns: NamespaceConfig, traits: QueueTraits) -> int:
    """The namespace's message limit: ``queue.max_message_bytes``, never more than
    the backend can store."""
    return min(ns.queue.max_message_bytes, traits.max_message_bytes)


def effective_max_payload_bytes(ns: NamespaceConfig, traits: TimeSeriesTraits) -> int:
    """The namespace's event payload limit: ``timeseries.max_payload_bytes``,
    never more than the backend can store in one event (leaving room for the
    largest id and tags the namespace allows)."""
    t = ns.timeseries
    overhead = t.max_event_id_bytes + t.max_tags * t.max_tag_bytes
    return max(0, min(t.max_payload_bytes, traits.max_event_bytes - overhead))
