"""Latency samples, their percentiles, and the median of several repetitions."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One side (Prism or its baseline) of one repetition, or the median of several."""

    ops_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, float]:
        return {
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_ms": round(self.p50_ms, 4),
            "p90_ms": round(self.p90_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, by the
    nearest-rank method: always a latency that was actually observed."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(latencies_ns: Sequence[int], ops: int, wall_s: float) -> Sample:
    """``ops`` operations done in ``wall_s`` seconds, with one latency per call."""
    ms = sorted(n / 1e6 for n in latencies_ns)
    return Sample(
        ops_per_s=ops / wall_s if wall_s > 0 else math.nan,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
    )


def median_of(samples: Sequence[Sample]) -> Sample:
    """Each field's median over repetitions (fields taken separately, so the
    result need not be one of the repetitions)."""
    if not samples:
        raise ValueError("median_of needs at least one sample")
    return Sample(
        ops_per_s=statistics.median(s.ops_per_s for s in samples),
        p50_ms=statistics.median(s.p50_ms for s in samples),
        p90_ms=statistics.median(s.p90_ms for s in samples),
        p99_ms=statistics.median(s.p99_ms for s in samples),
    )
