from __future__ import annotations

from typing import Any

import pytest

from prism.config import parse_config
from prism.errors import PlanError
from prism.planner import plan, plan_namespace
from prism.plugins import load_plugins

REGISTRY = load_plugins().registry


def _config(namespaces: dict[str, Any], backends: dict[str, Any] | None = None) -> Any:
    return parse_config(
        {
            "backends": backends
            if backends is not None
            else {"mem": {"plugin": "memory"}, "big": {"plugin": "memory", "max_value_bytes": "1GiB"}},
            "namespaces": namespaces,
        },
        REGISTRY,
    )


def test_first_fitting_backend_is_chosen_with_a_reason() -> None:
    config = _config({"cache": {"abstraction": "keyvalue", "needs": {"consistency": "strong"}}})
    chosen = plan_namespace("cache", config.namespaces["cache"], config, REGISTRY)
    assert chosen.backend == "mem"
    assert "strong" in chosen.reason
    assert "also fit: big" in chosen.reason


def test_needs_skip_backends_that_do_not_fit() -> None:
    config = _config({"blobs": {"abstraction": "keyvalue", "needs": {"max_value_bytes": "512MiB"}}})
    chosen = plan_namespace("blobs", config.namespaces["blobs"], config, REGISTRY)
    assert chosen.backend == "big"


def test_refusal_lists_every_backend_and_why() -> None:
    config = _config(
        {
            "durable": {
                "abstraction": "keyvalue",
                "needs": {"durability": "durable", "capabilities": ["kv.native_ttl"]},
            }
        }
    )
    with pytest.raises(PlanError) as info:
        plan_namespace("durable", config.namespaces["durable"], config, REGISTRY)
    assert set(info.value.reasons) == {"mem", "big"}
    assert "needs durability durable, backend is ephemeral" in info.value.reasons["mem"]
    assert "lacks capabilities kv.native_ttl" in info.value.reasons["mem"]
    assert "namespace 'durable'" in str(info.value)


def test_pinned_backend_is_checked_too() -> None:
    config = _config(
        {"blobs": {"abstraction": "keyvalue", "backend": "mem", "needs": {"max_value_bytes": "1GiB"}}}
    )
    with pytest.raises(PlanError) as info:
        plan_namespace("blobs", config.namespaces["blobs"], config, REGISTRY)
    assert list(info.value.reasons) == ["mem"]


def test_plan_reports_plans_and_refusals_together() -> None:
    config = _config(
        {
            "ok": {"abstraction": "keyvalue"},
            "no": {"abstraction": "keyvalue", "needs": {"durability": "durable"}},
        }
    )
    plans, errors = plan(config, REGISTRY)
    assert [p.namespace for p in plans] == ["ok"]
    assert [e.namespace for e in errors] == ["no"]


def test_no_backends_configured() -> None:
    config = _config({"ok": {"abstraction": "keyvalue"}}, backends={})
    with pytest.raises(PlanError, match="no backends are configured"):
        plan_namespace("ok", config.namespaces["ok"], config, REGISTRY)


def test_refused_durability_says_why_the_backend_is_not_durable() -> None:
    config = _config({"events": {"abstraction": "queue", "needs": {"durability": "durable"}}})
    with pytest.raises(PlanError) as info:
        plan_namespace("events", config.namespaces["events"], config, REGISTRY)
    reason = info.value.reasons["mem"]
    assert "needs durability durable, backend is ephemeral" in reason
    assert "lost when it exits" in reason
