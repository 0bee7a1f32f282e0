"""How suite tests carry their metadata: the capability a test exercises, and an
author's explicit, reasoned opt-out.

Both are plain function attributes rather than pytest marks, so they survive
``functools.wraps`` and need no marker registration: a plugin author's
``--strict-markers`` run works whether or not this package's pytest plugin is
active.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute naming the capability a suite test exercises (absent: a core test).
CAPABILITY_ATTR = "__prism_capability__"
#: Attribute holding the reason of an author's opt-out.
OPT_OUT_ATTR = "__prism_opt_out__"

#: Skip reasons that start with this are reported as "not applicable".
NOT_APPLICABLE_PREFIX = "not applicable: "

CORE = "core"

#: The name the pytest plugin registers its recorder under; the suite checks
#: for it to know whether "not applicable" can be reported as such.
RECORDER_NAME = "prism-conformance-recorder"
#: The user property that marks a passed test as not applicable, with why.
PROP_NOT_APPLICABLE = "prism_conformance.not_applicable"

#: Set on a test item whose test must not run because it does not apply; the
#: pytest plugin then counts it as passed (the refusal behind it was verified).
NOT_APPLICABLE_KEY = pytest.StashKey[str]()


class NotApplicable(pytest.skip.Exception):  # type: ignore[name-defined,misc]
    """Raised by a suite test that does not apply to the backend, saying why.

    With the suite's pytest plugin active the test passes and the report shows
    it as *not applicable*: nothing is left untested that could be tested, so
    it is not a skip (a CI that fails on skips stays green). Without the plugin
    it is an ordinary skip.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(NOT_APPLICABLE_PREFIX + reason)
        self.reason = reason


def requires_capability(capability: str) -> Callable[[F], F]:
    """Tag a suite test as a test of ``capability``.

    The suite runs it when the backend declares the capability. When it does
    not, the suite verifies that the operation is refused with
    :class:`prism.Unsupported` and reports the test as not applicable.
    """

    def decorate(func: F) -> F:
        setattr(func, CAPABILITY_ATTR, capability)
        return func

    return decorate


def capability_of(func: object) -> str:
    """The capability a suite test exercises, or ``"core"``."""
    value = getattr(func, CAPABILITY_ATTR, None)
    return value if isinstance(value, str) else CORE


def opt_out_reason(func: object) -> str | None:
    """The reason an override was opted out with :func:`opt_out`, if it was."""
    value = getattr(func, OPT_OUT_ATTR, None)
    return value if isinstance(value, str) else None


def opt_out(
    *, reason: str, raises: type[BaseException] | tuple[type[BaseException], ...] | None = None
) -> Callable[[F], F]:
    """Turn off one suite test for this backend, on the record.

    Use it on an override of a suite test (usually one that just calls
    ``super()``)::

        class TestMine(KeyValueSuite):
            backend = {"plugin": "mine"}

            @opt_out(reason="ranges are not implemented yet (issue #12)")
            def test_range_includes_start_and_excludes_end(self, kv):
                super().test_range_includes_start_and_excludes_end(kv)

    The test still runs, as a strict ``xfail``: while it fails the run stays
    green and the report lists it as *opted out* with the reason; once it
    passes the run fails, so a fixed gap is noticed and the opt-out removed.
    ``raises`` narrows the expected failure to an exception type, as ibis does.

    The decorator always returns a new function, so applying it to an inherited
    test (``test_x = opt_out(reason=...)(KeyValueSuite.test_x)``) never marks
    the suite's own function for every other backend.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("opt_out needs a reason that says why the test does not apply and what would fix it")

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def opted_out(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        # functools.wraps shares the wrapped function's __dict__ entries; give the
        # wrapper its own mark list so the original function stays untouched.
        opted_out.pytestmark = list(getattr(func, "pytestmark", []))  # type: ignore[attr-defined]
        marked = pytest.mark.xfail(strict=True, reason=f"opted out: {reason}", raises=raises)(opted_out)
        setattr(marked, OPT_OUT_ATTR, reason)
        return marked  # type: ignore[no-any-return]

    return decorate
