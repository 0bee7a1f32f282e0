"""``KeyValueSuite``: every KeyValue test, and the guard against silent opt-outs."""

from __future__ import annotations

from typing import Any

from prism_conformance import guard
from prism_conformance.keyvalue.chunking import ChunkingTests
from prism_conformance.keyvalue.crud import CrudTests
from prism_conformance.keyvalue.deletes import DeleteTests
from prism_conformance.keyvalue.limits import LimitTests
from prism_conformance.keyvalue.mutate import MutateTests
from prism_conformance.keyvalue.pagination import PaginationTests
from prism_conformance.keyvalue.predicates import PredicateTests
from prism_conformance.keyvalue.scan import ScanTests
from prism_conformance.keyvalue.tokens import TokenTests
from prism_conformance.keyvalue.ttl import TtlTests

GUARD_TEST = guard.GUARD_TEST

#: The suite's machinery. Overriding any of it would change what "a fresh
#: namespace" or "not applicable" means, so it is never allowed. A plugin
#: author sets ``backend``/``plugins`` or overrides the ``prism_backend`` fixture.
PROTECTED = (
    "prism_harness",
    "kv",
    "open_namespace",
    "open_namespaces",
    "open_prism",
    "backend_traits",
    "max_value_bytes",
    "_verify_refusal",
)

_MIXINS: tuple[type, ...] = (
    CrudTests,
    PredicateTests,
    PaginationTests,
    TokenTests,
    DeleteTests,
    TtlTests,
    ChunkingTests,
    LimitTests,
    MutateTests,
    ScanTests,
)


guard.check_unique_test_names(_MIXINS)


# pytest collects base classes' tests first, the last base first; listing the
# mixins in reverse makes a run (and the report) read from basics to capabilities.
class KeyValueSuite(
    ScanTests,
    MutateTests,
    LimitTests,
    ChunkingTests,
    TtlTests,
    DeleteTests,
    TokenTests,
    PaginationTests,
    PredicateTests,
    CrudTests,
):
    """The KeyValue conformance suite. Subclass it once per backend::

        class TestMine(KeyValueSuite):
            backend = {"plugin": "mine", "url": "..."}

    Each test opens fresh, empty namespaces on that backend through
    :func:`prism.open`. The base class itself is not collected; a subclass is
    (unless it sets ``__test__ = False`` itself, for a shared base of its own).
    """

    __test__ = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        guard.refuse_guard_override(cls)

    def test_suite_tests_are_not_overridden(self) -> None:
        """Fails when a subclass deletes or overrides a suite test without
        :func:`prism_conformance.opt_out`, or overrides the suite's machinery."""
        problems = silent_opt_outs(type(self))
        assert not problems, guard.guard_failure(type(self), problems)


def suite_test_names() -> list[str]:
    """Every KeyValue suite test, in the order pytest collects them."""
    return list(guard.suite_test_names(KeyValueSuite))


def silent_opt_outs(cls: type) -> list[str]:
    """How ``cls`` deletes or overrides KeyValue suite tests or machinery
    without an explicit opt-out; empty when it does not."""
    return guard.silent_opt_outs(cls, KeyValueSuite, PROTECTED)
