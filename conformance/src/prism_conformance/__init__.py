"""The Prism conformance suite.

A backend plugin proves itself with one subclass per abstraction it offers::

    from prism_conformance import KeyValueSuite, QueueSuite

    class TestMine(KeyValueSuite):
        backend = {"plugin": "mine", "url": "..."}

    class TestMineQueue(QueueSuite):
        backend = {"plugin": "mine", "url": "..."}

(and likewise ``TimeSeriesSuite`` and ``CounterSuite``)

and ``pytest``. To run it through a gateway, set
``gateway = Gateway(target="grpc://HOST:PORT", backend="NAME")`` instead of
``backend``. Every test opens fresh, empty namespaces on that backend through
Prism's public API. A test may be turned off only with :func:`opt_out`, which
the report shows; ``--prism-report-dir DIR`` writes the report (JSON and
Markdown) with the maturity level that follows from the results. ``prism
conformance [--abstraction queue] BACKEND`` does all of this without writing a test module
(:func:`prism_conformance.runner.run`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

# The suite's modules hold the assertions; have pytest rewrite them (as it does
# test modules) for readable failures. This must happen before they are
# imported, which is why the suite itself is imported lazily below: importing
# prism_conformance.runner in a CLI must not import the suite before pytest runs.
pytest.register_assert_rewrite(
    "prism_conformance.keyvalue",
    "prism_conformance.queue",
    "prism_conformance.timeseries",
    "prism_conformance.counter",
)

from prism_conformance.harness import Gateway  # noqa: E402
from prism_conformance.marks import opt_out, requires_capability  # noqa: E402

if TYPE_CHECKING:
    from prism_conformance.counter import CounterSuite
    from prism_conformance.keyvalue import KeyValueSuite
    from prism_conformance.queue import QueueSuite
    from prism_conformance.timeseries import TimeSeriesSuite

__version__ = "0.1.0"

__all__ = [
    "CounterSuite",
    "Gateway",
    "KeyValueSuite",
    "QueueSuite",
    "TimeSeriesSuite",
    "__version__",
    "opt_out",
    "requires_capability",
]


def __getattr__(name: str) -> Any:
    if name == "KeyValueSuite":
        from prism_conformance.keyvalue import KeyValueSuite

        return KeyValueSuite
    if name == "QueueSuite":
        from prism_conformance.queue import QueueSuite

        return QueueSuite
    if name == "TimeSeriesSuite":
        from prism_conformance.timeseries import TimeSeriesSuite

        return TimeSeriesSuite
    if name == "CounterSuite":
        from prism_conformance.counter import CounterSuite

        return CounterSuite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
