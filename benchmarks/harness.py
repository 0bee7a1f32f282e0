"""The plumbing every scenario shares: results, skips, progress, and measuring
Prism against its baseline in the same run, interleaved."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from benchmarks.stats import Sample, median_of, summarize

#: How a target compares Prism with its baseline (see :class:`Target`).
TargetKind = Literal["max_time_ratio", "min_throughput_ratio", "max_added_p90_ms"]


@dataclass(frozen=True)
class Target:
    """One row of issue 6's acceptance table, as a check on a result.

    ``max_time_ratio``: Prism's time per op over the baseline's at most ``bound``;
    ``min_throughput_ratio``: Prism's ops/s over the baseline's at least ``bound``;
    ``max_added_p90_ms``: Prism's p90 minus the baseline's at most ``bound``, and
    the same for p99 against ``bound_p99``.
    """

    text: str
    kind: TargetKind
    bound: float
    bound_p99: float | None = None

    def met(self, prism: Sample, baseline: Sample) -> bool:
        if self.kind == "max_time_ratio":
            return baseline.ops_per_s / prism.ops_per_s <= self.bound
        if self.kind == "min_throughput_ratio":
            return prism.ops_per_s / baseline.ops_per_s >= self.bound
        added_p99_ok = self.bound_p99 is None or prism.p99_ms - baseline.p99_ms <= self.bound_p99
        return prism.p90_ms - baseline.p90_ms <= self.bound and added_p99_ok


@dataclass(frozen=True)
class Result:
    """One scenario on one backend in one mode: Prism and its baseline."""

    scenario: str
    abstraction: str
    backend: str
    mode: str
    prism: Sample
    baseline_name: str
    baseline: Sample
    target: Target | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Prism's throughput over the baseline's (1.0: as fast; 0.8: Prism's
        time per op is 1.25x the baseline's)."""
        return self.prism.ops_per_s / self.baseline.ops_per_s

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "abstraction": self.abstraction,
            "backend": self.backend,
            "mode": self.mode,
            **self.prism.as_dict(),
            "baseline": {"name": self.baseline_name, **self.baseline.as_dict()},
            "ratio": round(self.ratio, 4),
            "time_ratio": round(1 / self.ratio, 4),
            "added_p90_ms": round(self.prism.p90_ms - self.baseline.p90_ms, 4),
            "added_p99_ms": round(self.prism.p99_ms - self.baseline.p99_ms, 4),
        }
        if self.target is not None:
            out["target"] = self.target.text
            out["target_met"] = self.target.met(self.prism, self.baseline)
        if self.notes:
            out["notes"] = self.notes
        return out


@dataclass(frozen=True)
class Skip:
    """A group of scenarios not run, and why (a service that is not up)."""

    what: str
    reason: str


@dataclass
class Settings:
    """How long and how often to measure; ``--quick`` shrinks everything."""

    quick: bool
    repetitions: int
    #: Calls per repetition of a small single-item operation, embedded.
    small_ops: int
    #: Calls per repetition of a 100-item batch or range operation, embedded.
    batch_ops: int
    #: Calls per repetition of a 1 MiB operation, embedded.
    large_ops: int
    #: Seconds of load per repetition of a gateway scenario.
    load_s: float
    work_dir: Path
    results_dir: Path
    profile: bool = False

    @classmethod
    def create(
        cls, *, quick: bool, work_dir: Path, results_dir: Path, profile: bool, smoke: bool = False
    ) -> Settings:
        if smoke:  # only that the harness runs at all: tests/test_bench_smoke.py
            return cls(True, 2, 20, 5, 2, 0.5, work_dir, results_dir, profile)
        if quick:
            return cls(quick, 3, 400, 60, 12, 3.0, work_dir, results_dir, profile)
        return cls(quick, 5, 2000, 300, 40, 10.0, work_dir, results_dir, profile)


class Progress:
    """One line per step on stderr, with the elapsed time, so a long run shows where it is."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self._started
        print(f"[bench {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


Op = Callable[[int], Awaitable[object]]


async def closed_loop(op: Op, calls: int) -> Sample:
    """``calls`` calls of ``op``, one after the other: the latency of each and
    the ops/s of the whole (one in flight, so ops/s is 1 / time per op)."""
    latencies: list[int] = []
    clock = time.perf_counter_ns
    started = clock()
    for i in range(calls):
        t0 = clock()
        await op(i)
        latencies.append(clock() - t0)
    return summarize(latencies, calls, (clock() - started) / 1e9)


async def concurrent_closed_loop(op: Op, calls: int, concurrency: int) -> Sample:
    """``calls`` calls of ``op`` spread over ``concurrency`` workers, each
    calling again as soon as its call returns (throughput at saturation)."""
    latencies: list[int] = []
    clock = time.perf_counter_ns
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            t0 = clock()
            await op(i)
            latencies.append(clock() - t0)

    started = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(latencies, calls, (clock() - started) / 1e9)


async def interleaved(
    repetitions: int,
    prism: Callable[[], Awaitable[Sample]],
    baseline: Callable[[], Awaitable[Sample]],
    progress: Progress | None = None,
    label: str = "",
) -> tuple[Sample, Sample]:
    """Both sides ``repetitions`` times, alternating which goes first (ABBA), so
    noise and warm caches hit both alike; the median of each side."""
    prism_runs: list[Sample] = []
    base_runs: list[Sample] = []
    for rep in range(repetitions):
        order = [(prism, prism_runs), (baseline, base_runs)]
        if rep % 2:
            order.reverse()
        for run, into in order:
            into.append(await run())
        if progress is not None:
            p, b = prism_runs[-1], base_runs[-1]
            progress.say(
                f"  {label} rep {rep + 1}/{repetitions}: prism {p.ops_per_s:,.0f} ops/s p99 {p.p99_ms:.3f} ms"
                f" | baseline {b.ops_per_s:,.0f} ops/s p99 {b.p99_ms:.3f} ms"
            )
    return median_of(prism_runs), median_of(base_runs)


@contextlib.contextmanager
def one_core() -> Iterator[int | None]:
    """Run this thread, and the threads it starts meanwhile, on one core.

    A sqlite call is a hop to the connection's worker thread and back. On this
    2-core machine a hop's cost depends on where the kernel put the worker
    thread: on the caller's core a ~0.05 ms counter call took ~0.035 ms, on
    the other core ~0.07-0.1 ms, and a thread kept its placement for seconds, so
    unpinned, Prism's and the baseline's worker threads landed on different
    sides in different runs and the counter ratios swung from 0.4 to 2.5 from
    one run to the next (while the counter figures on redis, with no thread,
    repeated within a few percent). Pinned, both sides' hops are same-core and
    the ratio is about the work done. Threads created before (none of this
    group's) keep their affinity; this thread's is restored afterwards."""
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


async def pinned(results: AsyncIterator[Result]) -> AsyncIterator[Result]:
    """Run a group's scenarios under :func:`one_core`, noting the core in each
    result. For groups whose calls hop to a worker thread (sqlite)."""
    with one_core() as core:
        collected = [result async for result in results]
    for result in collected:
        result.notes["pinned_to_core"] = core
        yield result
