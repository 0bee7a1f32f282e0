"""``QueueSuite``: every Queue test, and the guard against silent opt-outs."""

from __future__ import annotations

from typing import Any

from prism_conformance import guard
from prism_conformance.queue.acks import AckTests
from prism_conformance.queue.concurrency import ConcurrencyTests
from prism_conformance.queue.dead_letter import DeadLetterTests
from prism_conformance.queue.delay import DelayTests
from prism_conformance.queue.delivery import DeliveryTests
from prism_conformance.queue.limits import LimitTests
from prism_conformance.queue.ordering import OrderingTests
from prism_conformance.queue.redelivery import RedeliveryTests

#: The suite's machinery. Overriding any of it would change what "a fresh
#: namespace" or "not applicable" means, so it is never allowed. A plugin
#: author sets ``backend``/``plugins`` or overrides the ``prism_backend`` fixture.
PROTECTED = (
    "prism_harness",
    "prism_queue_deadline",
    "queue",
    "open_queue",
    "open_queues",
    "_verify_refusal",
    "_size_limit_round_trip",
)

_MIXINS: tuple[type, ...] = (
    DeliveryTests,
    AckTests,
    RedeliveryTests,
    DeadLetterTests,
    LimitTests,
    ConcurrencyTests,
    OrderingTests,
    DelayTests,
)

guard.check_unique_test_names(_MIXINS)


# pytest collects base classes' tests first, the last base first; listing the
# mixins in reverse makes a run (and the report) read from basics to capabilities.
class QueueSuite(
    DelayTests,
    OrderingTests,
    ConcurrencyTests,
    LimitTests,
    DeadLetterTests,
    RedeliveryTests,
    AckTests,
    DeliveryTests,
):
    """The Queue conformance suite. Subclass it once per backend::

        class TestMineQueue(QueueSuite):
            backend = {"plugin": "mine", "url": "..."}

    Each test opens fresh, empty Queue namespaces on that backend through
    :func:`prism.open`, with the ``queue:`` settings it needs (a 2 s visibility
    timeout where a test waits for redelivery, a small ``max_attempts``...).
    The base class itself is not collected; a subclass is (unless it sets
    ``__test__ = False`` itself, for a shared base of its own).
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
    """Every Queue suite test, in the order pytest collects them."""
    return list(guard.suite_test_names(QueueSuite))


def silent_opt_outs(cls: type) -> list[str]:
    """How ``cls`` deletes or overrides Queue suite tests or machinery without
    an explicit opt-out; empty when it does not."""
    return guard.silent_opt_outs(cls, QueueSuite, PROTECTED)
