"""Helpers every suite shares: polling a condition with a deadline, and running
threads that fail the test rather than hang it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import attrs

#: How long a condition that depends on time passing (a TTL, a visibility
#: timeout) may take to hold. Generous, because a loaded CI machine is slow;
#: polling returns early.
POLL_DEADLINE = timedelta(seconds=10)
POLL_INTERVAL = timedelta(milliseconds=25)
#: Longest a thread of a concurrency test may run before the test gives up.
THREAD_DEADLINE = timedelta(seconds=120)


def wait_until(
    condition: Callable[[], bool],
    *,
    what: str,
    deadline: timedelta = POLL_DEADLINE,
    interval: timedelta = POLL_INTERVAL,
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` at the deadline.

    Waiting is only ever for a condition, never for a fixed time, so a fast
    backend finishes fast and a slow one gets the whole deadline.
    """
    give_up = time.monotonic() + deadline.total_seconds()
    while True:
        if condition():
            return
        if time.monotonic() >= give_up:
            raise AssertionError(f"{what}: still not true after {deadline.total_seconds():g}s")
        time.sleep(interval.total_seconds())


@attrs.define
class ThreadOutcome:
    errors: list[BaseException] = attrs.Factory(list)


def run_threads(targets: Sequence[Callable[[], None]], *, names: Sequence[str] | None = None) -> None:
    """Run each target on its own thread, started together, and re-raise the
    first exception any of them raised. Fails rather than hangs if a thread
    does not finish within :data:`THREAD_DEADLINE`."""
    outcome = ThreadOutcome()
    lock = threading.Lock()
    start = threading.Barrier(len(targets))

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                start.wait(timeout=THREAD_DEADLINE.total_seconds())
                target()
            except BaseException as exc:  # reported to the test's thread below
                with lock:
                    outcome.errors.append(exc)

        return run

    labels = list(names) if names is not None else [f"suite-thread-{i}" for i in range(len(targets))]
    threads = [
        threading.Thread(target=wrap(target), name=label, daemon=True)
        for target, label in zip(targets, labels, strict=True)
    ]
    for thread in threads:
        thread.start()
    give_up = time.monotonic() + THREAD_DEADLINE.total_seconds()
    for thread in threads:
        thread.join(max(0.0, give_up - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    if stuck:
        raise AssertionError(f"threads {stuck} did not finish within {THREAD_DEADLINE.total_seconds():g}s")
    if outcome.errors:
        raise outcome.errors[0]
