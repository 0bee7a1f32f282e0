"""The guard against silent opt-outs, shared by every suite.

Each suite class (``KeyValueSuite``, ``QueueSuite``) has a guard test that
fails when a subclass deletes or overrides one of the suite's tests without
:func:`prism_conformance.opt_out`, or overrides the suite's machinery. The
functions here do the work for any suite class, so both suites apply exactly
the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from prism_conformance.marks import opt_out_reason

GUARD_TEST = "test_suite_tests_are_not_overridden"


def check_unique_test_names(mixins: Iterable[type]) -> None:
    """Two mixins defining the same test name would silently drop one test."""
    owner: dict[str, str] = {}
    for mixin in mixins:
        for name in vars(mixin):
            if name.startswith("test_"):
                if name in owner:
                    raise RuntimeError(
                        f"suite test {name} is defined in both {owner[name]} and {mixin.__name__}"
                    )
                owner[name] = mixin.__name__


def refuse_guard_override(cls: type) -> None:
    """Called from a suite's ``__init_subclass__``: a subclass is collected
    (unless it says otherwise) and may not replace the guard."""
    if "__test__" not in vars(cls):
        cls.__test__ = True  # type: ignore[attr-defined]
    if GUARD_TEST in vars(cls):
        # The guard is what makes every other override visible, so it
        # cannot itself be overridden, opted out or deleted.
        raise TypeError(
            f"{cls.__qualname__} overrides {GUARD_TEST}, which guards against silent opt-outs; "
            "remove the override (use prism_conformance.opt_out on the test you mean to turn off)"
        )


_test_names: dict[type, tuple[str, ...]] = {}


def suite_test_names(suite: type) -> tuple[str, ...]:
    """Every test of the suite class ``suite``, in the order pytest collects
    them. Computed once per class: the plugin asks for every test item."""
    names = _test_names.get(suite)
    if names is None:
        found: list[str] = []
        for klass in reversed(suite.__mro__):
            for name in vars(klass):
                if name.startswith("test_") and name not in found:
                    found.append(name)
        names = _test_names[suite] = tuple(found)
    return names


def _definition(cls: type, name: str) -> tuple[type | None, object]:
    """The class in ``cls``'s MRO that defines ``name``, and the raw value there.

    Looked up in class dictionaries rather than compared by ``getattr``: pytest
    fixtures are descriptors, so two lookups of one fixture are not identical.
    """
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass, vars(klass)[name]
    return None, None


def silent_opt_outs(cls: type, suite: type, protected: Iterable[str]) -> list[str]:
    """How ``cls`` (a subclass of the suite class ``suite``) deletes or
    overrides suite tests or the ``protected`` machinery without an explicit
    opt-out; empty when it does not."""
    suite_classes = set(suite.__mro__)
    problems: list[str] = []
    for name in suite_test_names(suite):
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
    for name in protected:
        owner, _ = _definition(cls, name)
        if owner not in suite_classes:
            problems.append(f"{name} is part of the suite's machinery and may not be overridden")
    return problems


def guard_failure(cls: type, problems: list[str]) -> str:
    """The guard test's failure message."""
    return (
        f"{cls.__qualname__} changes the suite without saying so:\n"
        + "\n".join(f"  - {problem}" for problem in problems)
        + "\nTurn a test off only with @prism_conformance.opt_out(reason=...) on an override that calls super()."
    )
