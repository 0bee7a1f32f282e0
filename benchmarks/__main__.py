"""``python -m benchmarks [--quick] [--only PATTERN] [--profile]``: run the
scenarios, then write ``results/latest.{json,md,png}``. ``nox -s bench`` runs it."""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import report
from benchmarks.harness import Progress, Result, Settings, Skip, pinned
from benchmarks.services import Services, discover

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Group:
    """Scenarios that share a setup (a backend, a server), run one after the other."""

    name: str
    needs: tuple[str, ...]
    run: Callable[[Settings, Progress, Services], AsyncIterator[Result]]


def _groups() -> list[Group]:
    from benchmarks import gateway, kv_embedded, queue_embedded, queue_kafka, ts_counter

    return [
        Group("keyvalue embedded sqlite", (), lambda s, p, sv: pinned(kv_embedded.run_sqlite(s, p))),
        Group(
            "keyvalue embedded redis",
            ("redis",),
            lambda s, p, sv: kv_embedded.run_redis(s, p, sv.redis_url or ""),
        ),
        Group("keyvalue embedded memory", (), lambda s, p, sv: kv_embedded.run_memory(s, p)),
        Group(
            "keyvalue embedded cassandra",
            ("cassandra",),
            lambda s, p, sv: kv_embedded.run_cassandra(s, p, sv.cassandra or ""),
        ),
        Group(
            "keyvalue embedded dynamodb",
            ("dynamodb",),
            lambda s, p, sv: kv_embedded.run_dynamodb(s, p, sv.dynamodb_url or ""),
        ),
        Group("gateway saturation memory", (), lambda s, p, sv: gateway.run_saturation_memory(s, p)),
        Group(
            "gateway latency redis",
            ("redis",),
            lambda s, p, sv: gateway.run_fixed_rate_redis(s, p, sv.redis_url or ""),
        ),
        Group("gateway batch put sqlite", (), lambda s, p, sv: gateway.run_batch_put_sqlite(s, p)),
        Group(
            "gateway workers redis",
            ("redis",),
            lambda s, p, sv: gateway.run_workers_redis(s, p, sv.redis_url or ""),
        ),
        Group(
            "gateway 1MiB redis",
            ("redis",),
            lambda s, p, sv: gateway.run_large_redis(s, p, sv.redis_url or ""),
        ),
        Group(
            "queue publish kafka",
            ("kafka",),
            lambda s, p, sv: queue_kafka.run_publish(s, p, sv.kafka or ""),
        ),
        Group("queue publish sqlite", (), lambda s, p, sv: pinned(queue_embedded.run_publish_sqlite(s, p))),
        Group(
            "queue publish redis",
            ("redis",),
            lambda s, p, sv: queue_embedded.run_publish_redis(s, p, sv.redis_url or ""),
        ),
        Group(
            "queue publish-to-ack kafka",
            ("kafka",),
            lambda s, p, sv: queue_kafka.run_round_trip(s, p, sv.kafka or ""),
        ),
        Group(
            "queue publish-to-ack redis",
            ("redis",),
            lambda s, p, sv: queue_embedded.run_round_trip_redis(s, p, sv.redis_url or ""),
        ),
        Group(
            "queue publish-to-ack sqlite",
            (),
            lambda s, p, sv: pinned(queue_embedded.run_round_trip_sqlite(s, p)),
        ),
        Group("ts-counter sqlite embedded", (), lambda s, p, sv: ts_counter.run_sqlite(s, p)),
        Group(
            "ts-counter redis embedded",
            ("redis",),
            lambda s, p, sv: ts_counter.run_redis(s, p, sv.redis_url or ""),
        ),
        Group(
            "ts-counter redis gateway",
            ("redis",),
            lambda s, p, sv: ts_counter.run_gateway_redis(s, p, sv.redis_url or ""),
        ),
    ]


async def _run(settings: Settings, only: str | None, progress: Progress) -> tuple[list[Result], list[Skip]]:
    services = discover()
    results: list[Result] = []
    skips: list[Skip] = []
    for group in _groups():
        if only and not fnmatch.fnmatch(group.name, f"*{only}*"):
            continue
        down = [n for n in group.needs if n in services.missing]
        if down:
            why = "; ".join(f"{n}: {services.missing[n]}" for n in down)
            skips.append(Skip(group.name, why))
            progress.say(f"SKIP {group.name}: {why}")
            continue
        progress.say(f"== {group.name}")
        try:
            async for result in group.run(settings, progress, services):
                results.append(result)
                progress.say(f"   -> {report.one_line(result)}")
        except Exception as exc:
            # One broken group must not lose the others' numbers, but it is loud.
            skips.append(Skip(group.name, f"FAILED: {type(exc).__name__}: {exc}"))
            progress.say(f"FAILED {group.name}: {type(exc).__name__}: {exc}")
    return results, skips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls and repetitions (under 5 minutes)")
    parser.add_argument("--only", metavar="PATTERN", help="run only the groups whose name contains this")
    parser.add_argument(
        "--profile", action="store_true", help="also record py-spy profiles into results/profiles"
    )
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where to write latest.*")
    args = parser.parse_args(argv)

    progress = Progress()
    (HERE / ".cache").mkdir(exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="run-", dir=HERE / ".cache"))
    settings = Settings.create(
        quick=args.quick, work_dir=work_dir, results_dir=args.results, profile=args.profile, smoke=args.smoke
    )
    progress.say(
        f"{'quick' if args.quick else 'full'} run, {settings.repetitions} repetitions; work dir {work_dir}"
    )
    started = time.time()
    try:
        results, skips = asyncio.run(_run(settings, args.only, progress))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    paths = report.write_all(results, skips, settings, started=started, duration_s=time.time() - started)
    for path in paths:
        progress.say(f"wrote {path}")
    print(report.markdown_table(results))
    failed = [s for s in skips if s.reason.startswith("FAILED")]
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
