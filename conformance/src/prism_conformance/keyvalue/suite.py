"""``KeyValueSuite``: every KeyValue test, and the guard against silent opt-outs."""

from __future__ import annotations

import functools
from typing import Any

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
from prism_conformance.marks import opt_out_reason

GUARD_TEST = "test_suite_tests_are_not_overridden"

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


def _check_unique_test_names() -> None:
    """Two mixins defining the same test name would silently drop one test."""
    owner: dict[str, str] = {}
    for mixin in _MIXINS:
        for name in vars(mixin):
            if name.startswith("test_"):
                if name in owner:
                    raise RuntimeError(
                        f"suite test {name} is defined in both {owner[name]} and {mixin.__name__}"
                    )
                owner[name] = mixin.__name__


_check_unique_test_names()


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
        if "__test__" not in vars(cls):
            cls.__test__ = True
        if GUARD_TEST in vars(cls):
            # The guard is what makes every other override visible, so it
            # cannot itself be overridden, opted out or deleted.
            raise TypeError(
                f"{cls.__qualname__} overrides {GUARD_TEST}, which guards against silent opt-outs; "
                "remove the override (use prism_conformance.opt_out on the test you mean to turn off)"
            )

    def test_suite_tests_are_not_overridden(self) -> None:
        """Fails when a subclass deletes or overrides a suite test without
        :func:`prism_conformance.opt_out`, or overrides the suite's machinery."""
        problems = silent_opt_outs(type(self))
        assert not problems, (
            f"{type(self).__qualname__} changes the suite without saying so:\n"
            + "\n".join(f"  - {problem}" for problem in problems)
            + "\nTurn a test off only with @prism_conformance.opt_out(reason=...) on an override that calls super()."
        )


def suite_test_names() -> list[str]:
    """Every suite test, in the order pytest collects them."""
    return list(_suite_test_names())


@functools.cache
def _suite_test_names() -> tuple[str, ...]:
    names: list[str] = []
    for klass in reversed(KeyValueSuite.__mro__):
        for name in vars(klass):
            if name.startswith("test_") and name not in names:
                names.append(name)
    return tuple(names)


def _definition(cls: type, name: str) -> tuple[type | None, object]:
    """The class in ``cls``'s MRO that defines ``name``, and the raw value there.

    Looked up in class dictionaries rather than compared by ``getattr``: pytest
    fixtures are descriptors, so two lookups of one fixture are not identical.
    """
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass, vars(klass)[name]
    return None, None


def silent_opt_outs(cls: type) -> list[str]:
    """How ``cls`` deletes or overrides suite tests or machinery without an
    explicit opt-out; empty when it does not."""
    suite_classes = set(KeyValueSuite.__mro__)
    problems: list[str] = []
    for name in suite_test_names():
        owner, value = _definition(cls, name)
        if owner in suite_classes:
            continue
        if value is None:
            problems.append(f"{name} is deleted (set to None)")
        elif not callable(value):
            problems.append(f"{name} is replaced by {value!r}")
        elif opt_out_reason(value) is None:
            problems.append(
                f"{name} is overridden in {owner.__qualname__ if owner else '?'} without @prism_conformance.opt_out(reason=...)"
            )
    for name in PROTECTED:
        owner, _ = _definition(cls, name)
        if owner not in suite_classes:
            problems.append(f"{name} is part of the suite's machinery and may not be overridden")
    return problems
