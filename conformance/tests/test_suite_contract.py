"""The contract a plugin author relies on: collection, the guard against
silent opt-outs, explicit opt-outs, not-applicable tests and the report, seen
from the outside by running pytest on small test modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from prism_conformance import KeyValueSuite, QueueSuite, opt_out
from prism_conformance.harness import backend_config
from prism_conformance.keyvalue import silent_opt_outs, suite_test_names
from prism_conformance.queue import silent_opt_outs as queue_silent_opt_outs
from prism_conformance.queue import suite_test_names as queue_suite_test_names

#: A fast selection of suite tests for these runs: the guard and two quick ones.
QUICK = "-k", "not_overridden or put_then_get or scan_of_an_empty or mutate_applies"

NO_CAPABILITIES_PLUGIN = """
import types
from prism.backends import memory
from prism.plugins import hookimpl
from prism.plugins.manager import load_plugins
from prism.spi import KeyValueBackendType


@hookimpl
def prism_register_keyvalue(registry):
    registry.add_keyvalue(
        "bare",
        KeyValueBackendType(
            settings_type=memory.MemorySettings,
            create=memory.MemoryKeyValue,
            capabilities=frozenset(),
            traits=memory.KEYVALUE.traits,
        ),
    )


plugin = types.ModuleType("bare_plugin")
plugin.prism_register_keyvalue = prism_register_keyvalue
BARE = load_plugins(extra={"bare": plugin})
"""


def _report(pytester: pytest.Pytester) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (pytester.path / "out" / "conformance.json").read_text(encoding="utf-8")
    )
    return data


def _outcomes(data: dict[str, Any], suite: int = 0) -> dict[str, str]:
    return {test["name"]: test["outcome"] for test in data["suites"][suite]["tests"]}


def test_the_base_class_is_not_collected_and_a_subclass_is(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from prism_conformance import KeyValueSuite

        class TestMemory(KeyValueSuite):
            backend = {"plugin": "memory"}
        """
    )
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    collected = [line for line in result.outlines if "::" in line]
    assert len(collected) == len(suite_test_names())
    assert all("::TestMemory::" in line for line in collected)


def test_a_clean_subclass_passes_the_guard(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from prism_conformance import KeyValueSuite

        class TestMemory(KeyValueSuite):
            backend = {"plugin": "memory"}
        """
    )
    result = pytester.runpytest_subprocess(*QUICK, "--prism-report-dir", "out")
    result.assert_outcomes(passed=4)
    outcomes = _outcomes(_report(pytester))
    assert outcomes["test_suite_tests_are_not_overridden"] == "pass"
    assert outcomes["test_fresh_namespace_is_empty"] == "not_run", "deselected tests are listed as not run"


def test_overriding_a_suite_test_without_opt_out_fails_the_guard(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from prism_conformance import KeyValueSuite

        class TestQuiet(KeyValueSuite):
            backend = {"plugin": "memory"}

            def test_put_then_get_returns_items_in_key_order(self, kv):
                pass  # "too slow on our store"

            test_scan_of_an_empty_namespace_is_empty = None
        """
    )
    result = pytester.runpytest_subprocess(*QUICK, "--prism-report-dir", "out")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_put_then_get_returns_items_in_key_order is overridden in TestQuiet without*opt_out*",
            "*test_scan_of_an_empty_namespace_is_empty is deleted*",
        ]
    )
    outcomes = _outcomes(_report(pytester))
    assert outcomes["test_suite_tests_are_not_overridden"] == "fail"
    assert outcomes["test_scan_of_an_empty_namespace_is_empty"] == "not_run"
    assert _report(pytester)["suites"][0]["maturity"]["level"] == 0


def test_overriding_the_suite_machinery_fails_the_guard(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from prism_conformance import KeyValueSuite

        class TestSneaky(KeyValueSuite):
            backend = {"plugin": "memory"}

            @pytest.fixture
            def kv(self):
                return None
        """
    )
    result = pytester.runpytest_subprocess("-k", "not_overridden")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*kv is part of the suite's machinery*"])


def test_the_guard_itself_cannot_be_overridden(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from prism_conformance import KeyValueSuite

        class TestNoGuard(KeyValueSuite):
            backend = {"plugin": "memory"}

            def test_suite_tests_are_not_overridden(self):
                pass
        """
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*TypeError: TestNoGuard overrides test_suite_tests_are_not_overridden*"])


def test_an_explicit_opt_out_is_reported_with_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from prism_conformance import KeyValueSuite, opt_out

        class TestHonest(KeyValueSuite):
            backend = {"plugin": "memory"}

            @opt_out(reason="our store cannot scan yet (issue #7)")
            def test_scan_of_an_empty_namespace_is_empty(self, kv):
                super().test_scan_of_an_empty_namespace_is_empty(kv)
                raise AssertionError("pretend the store cannot scan")

            # An opt-out of a test that passes must fail the run: the gap is fixed.
            test_put_then_get_returns_items_in_key_order = opt_out(reason="was broken once")(
                KeyValueSuite.test_put_then_get_returns_items_in_key_order
            )
        """
    )
    result = pytester.runpytest_subprocess(*QUICK, "--prism-report-dir", "out")
    result.assert_outcomes(passed=2, xfailed=1, failed=1)
    tests = {test["name"]: test for test in _report(pytester)["suites"][0]["tests"]}
    assert tests["test_scan_of_an_empty_namespace_is_empty"]["outcome"] == "opted_out"
    assert (
        tests["test_scan_of_an_empty_namespace_is_empty"]["reason"] == "our store cannot scan yet (issue #7)"
    )
    assert tests["test_put_then_get_returns_items_in_key_order"]["outcome"] == "fail"
    assert "remove the opt-out" in tests["test_put_then_get_returns_items_in_key_order"]["reason"]
    assert tests["test_suite_tests_are_not_overridden"]["outcome"] == "pass"
    markdown = (pytester.path / "out" / "conformance.md").read_text(encoding="utf-8")
    assert "our store cannot scan yet (issue #7)" in markdown


def test_opt_out_does_not_touch_the_suite_function() -> None:
    original = KeyValueSuite.test_put_then_get_returns_items_in_key_order
    marked = opt_out(reason="x")(original)
    assert marked is not original
    assert not getattr(original, "pytestmark", [])
    assert KeyValueSuite.test_put_then_get_returns_items_in_key_order is original
    with pytest.raises(ValueError, match="reason"):
        opt_out(reason=" ")


def test_silent_opt_outs_lists_nothing_for_the_suite_itself() -> None:
    class TestClean(KeyValueSuite):
        backend: ClassVar[dict[str, object]] = {"plugin": "memory"}

    assert silent_opt_outs(TestClean) == []
    assert TestClean.__test__ is True
    assert KeyValueSuite.__test__ is False


def test_undeclared_capabilities_are_refused_and_not_applicable(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        bare_plugin=NO_CAPABILITIES_PLUGIN,
        test_bare="""
        from bare_plugin import BARE
        from prism_conformance import KeyValueSuite

        class TestBare(KeyValueSuite):
            backend = {"plugin": "bare"}
            plugins = BARE
        """,
    )
    result = pytester.runpytest_subprocess(*QUICK, "--prism-report-dir", "out")
    # Not applicable is a pass, not a skip: the refusal behind it was verified.
    result.assert_outcomes(passed=4)
    suite = _report(pytester)["suites"][0]
    tests = {test["name"]: test for test in suite["tests"]}
    for name in ("test_scan_of_an_empty_namespace_is_empty", "test_mutate_applies_puts_and_deletes"):
        assert tests[name]["outcome"] == "not_applicable"
        assert "refusal verified" in tests[name]["reason"]
    assert suite["declared_capabilities"] == []
    assert suite["capabilities"]["kv.scan"]["status"] == "not declared: refusal verified (Unsupported)"
    result.stdout.fnmatch_lines(["*TestBare (bare): level 0*2 pass*2 not applicable*"])


def test_without_the_plugin_not_applicable_is_a_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        bare_plugin=NO_CAPABILITIES_PLUGIN,
        test_bare="""
        from bare_plugin import BARE
        from prism_conformance import KeyValueSuite

        class TestBare(KeyValueSuite):
            backend = {"plugin": "bare"}
            plugins = BARE
        """,
    )
    result = pytester.runpytest_subprocess(*QUICK, "-p", "no:prism_conformance", "-rs")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*not applicable: backend does not declare kv.scan (refusal verified)*"])


def test_a_missing_backend_says_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from prism_conformance import KeyValueSuite

        class TestNothing(KeyValueSuite):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-k", "put_then_get")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*set the class attribute backend = *or override the prism_backend fixture*"]
    )


def test_prism_backend_fixture_override_with_tmp_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from prism_conformance import KeyValueSuite

        class TestPerTest(KeyValueSuite):
            @pytest.fixture
            def prism_backend(self, tmp_path):
                assert tmp_path.is_dir()
                return {"plugin": "memory", "max_item_bytes": 4096}
        """
    )
    result = pytester.runpytest_subprocess(*QUICK)
    result.assert_outcomes(passed=4)


def test_a_bad_backend_setting_is_reported_naming_the_key(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from prism_conformance import KeyValueSuite

        class TestTypo(KeyValueSuite):
            backend = {"plugin": "memory", "max_item_byte": 4096}
        """
    )
    result = pytester.runpytest_subprocess("-k", "put_then_get")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*backends.under_test: unknown key 'max_item_byte'*"])


def test_path_settings_are_passed_as_text(tmp_path: Path) -> None:
    assert backend_config({"plugin": "sqlite", "path": tmp_path / "x.db", "n": 1}) == {
        "plugin": "sqlite",
        "path": str(tmp_path / "x.db"),
        "n": 1,
    }


def test_a_stuck_test_fails_at_the_time_limit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import threading
        from prism_conformance import KeyValueSuite, opt_out

        class TestStuck(KeyValueSuite):
            backend = {"plugin": "memory"}
            time_limit = 1.0

            @opt_out(reason="demonstrates the time limit")
            def test_put_then_get_returns_items_in_key_order(self, kv):
                threading.Event().wait()  # never set: stands for a stuck backend call
        """
    )
    result = pytester.runpytest_subprocess("-k", "put_then_get", "-rx")
    result.assert_outcomes(xfailed=1)


# -- Queue -------------------------------------------------------------------------------

#: A fast selection of Queue suite tests: the guard, two quick core tests and both capabilities.
QUEUE_QUICK = (
    "-k",
    "not_overridden or key_payload_and_headers or ids_are_unique or busy_key_holds_back or deliver_after_is_checked",
)

BARE_QUEUE_PLUGIN = """
import types
from prism.backends import memory
from prism.plugins import hookimpl
from prism.plugins.manager import load_plugins
from prism.spi import QueueBackendType


@hookimpl
def prism_register_queue(registry):
    registry.add_queue(
        "bareq",
        QueueBackendType(
            settings_type=memory.MemorySettings,
            create=memory.MemoryQueue,
            capabilities=frozenset(),
            traits=memory.QUEUE.traits,
        ),
    )


plugin = types.ModuleType("bare_queue_plugin")
plugin.prism_register_queue = prism_register_queue
BARE_QUEUE = load_plugins(extra={"bareq": plugin})
"""


def test_the_queue_suite_is_collected_into_a_subclass(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from prism_conformance import QueueSuite

        class TestMemoryQueue(QueueSuite):
            backend = {"plugin": "memory"}
        """
    )
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    collected = [line for line in result.outlines if "::" in line]
    assert len(collected) == len(queue_suite_test_names())
    assert all("::TestMemoryQueue::" in line for line in collected)


def test_a_clean_queue_subclass_passes_and_is_reported_as_queue(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from prism_conformance import QueueSuite

        class TestMemoryQueue(QueueSuite):
            backend = {"plugin": "memory"}
        """
    )
    result = pytester.runpytest_subprocess(*QUEUE_QUICK, "--prism-report-dir", "out")
    result.assert_outcomes(passed=5)
    suite = _report(pytester)["suites"][0]
    assert suite["abstraction"] == "queue"
    assert suite["declared_capabilities"] == ["queue.delay", "queue.ordered_by_key"]
    outcomes = _outcomes(_report(pytester))
    assert outcomes["test_suite_tests_are_not_overridden"] == "pass"
    assert outcomes["test_fresh_namespace_has_no_messages"] == "not_run"
    assert set(outcomes) == set(queue_suite_test_names()), "the report lists Queue tests only"
    assert set(suite["capabilities"]) == {"queue.delay", "queue.ordered_by_key"}


def test_the_queue_guard_catches_silent_overrides_and_machinery(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from prism_conformance import QueueSuite

        class TestQuietQueue(QueueSuite):
            backend = {"plugin": "memory"}

            def test_ids_are_unique_across_publishes(self, queue):
                pass

            test_key_payload_and_headers_round_trip_byte_exact = None

            @pytest.fixture
            def queue(self):
                return None
        """
    )
    result = pytester.runpytest_subprocess("-k", "not_overridden")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_key_payload_and_headers_round_trip_byte_exact is deleted*",
            "*test_ids_are_unique_across_publishes is overridden in TestQuietQueue without*opt_out*",
            "*queue is part of the suite's machinery*",
        ]
    )


def test_the_queue_guard_itself_cannot_be_overridden() -> None:
    with pytest.raises(TypeError, match="overrides test_suite_tests_are_not_overridden"):

        class TestNoGuard(QueueSuite):
            def test_suite_tests_are_not_overridden(self) -> None:
                pass


def test_a_queue_opt_out_is_reported_with_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from prism_conformance import QueueSuite, opt_out

        class TestHonestQueue(QueueSuite):
            backend = {"plugin": "memory"}

            @opt_out(reason="our broker lowercases header names (issue #3)")
            def test_key_payload_and_headers_round_trip_byte_exact(self, queue):
                super().test_key_payload_and_headers_round_trip_byte_exact(queue)
                raise AssertionError("pretend the broker lowercases header names")
        """
    )
    result = pytester.runpytest_subprocess(*QUEUE_QUICK, "--prism-report-dir", "out")
    result.assert_outcomes(passed=4, xfailed=1)
    tests = {test["name"]: test for test in _report(pytester)["suites"][0]["tests"]}
    opted = tests["test_key_payload_and_headers_round_trip_byte_exact"]
    assert (opted["outcome"], opted["reason"]) == (
        "opted_out",
        "our broker lowercases header names (issue #3)",
    )


def test_undeclared_queue_capabilities_are_refused_and_not_applicable(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        bare_queue_plugin=BARE_QUEUE_PLUGIN,
        test_bare_queue="""
        from bare_queue_plugin import BARE_QUEUE
        from prism_conformance import QueueSuite

        class TestBareQueue(QueueSuite):
            backend = {"plugin": "bareq"}
            plugins = BARE_QUEUE
        """,
    )
    result = pytester.runpytest_subprocess(*QUEUE_QUICK, "--prism-report-dir", "out")
    # Not applicable is a pass, not a skip: the refusal behind it was verified.
    result.assert_outcomes(passed=5)
    suite = _report(pytester)["suites"][0]
    tests = {test["name"]: test for test in suite["tests"]}
    ordering = tests["test_a_busy_key_holds_back_only_its_own_key_in_its_own_group"]
    assert ordering["outcome"] == "not_applicable"
    assert "queue.ordered_by_key (refusal verified: the planner refuses it)" in ordering["reason"]
    delay = tests["test_deliver_after_is_checked"]
    assert delay["outcome"] == "not_applicable"
    assert "publishing with deliver_after raises Unsupported" in delay["reason"]
    assert suite["declared_capabilities"] == []
    assert suite["capabilities"]["queue.delay"]["status"] == "not declared: refusal verified (Unsupported)"
    result.stdout.fnmatch_lines(["*TestBareQueue (bareq): level 0*3 pass*2 not applicable*"])


def test_a_queue_backend_that_half_works_an_undeclared_capability_fails(pytester: pytest.Pytester) -> None:
    """A plugin that does not declare queue.ordered_by_key but is planned for
    it anyway (here: a planner that cannot tell) must fail the refusal check."""
    pytester.makepyfile(
        bare_queue_plugin=BARE_QUEUE_PLUGIN,
        test_lying_queue="""
        from bare_queue_plugin import BARE_QUEUE
        from prism_conformance import QueueSuite
        from prism_conformance.harness import NamespaceHarness

        class TestLyingQueue(QueueSuite):
            backend = {"plugin": "bareq"}
            plugins = BARE_QUEUE

        # The harness reports the capability as undeclared, the backend type
        # declares it, so the planner accepts the namespace: the refusal is missing.
        NamespaceHarness.declared_capabilities = property(lambda self: frozenset())
        BARE_QUEUE.registry.queue["bareq"] = __import__("attrs").evolve(
            BARE_QUEUE.registry.queue["bareq"], capabilities=frozenset({"queue.ordered_by_key"})
        )
        """,
    )
    result = pytester.runpytest_subprocess("-k", "busy_key_holds_back", "--prism-report-dir", "out")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*yet a namespace that needs it was planned onto it*"])


def test_queue_silent_opt_outs_lists_nothing_for_the_suite_itself() -> None:
    class TestClean(QueueSuite):
        backend: ClassVar[dict[str, object]] = {"plugin": "memory"}

    assert queue_silent_opt_outs(TestClean) == []
    assert TestClean.__test__ is True
    assert QueueSuite.__test__ is False
    assert "test_suite_tests_are_not_overridden" in queue_suite_test_names()
