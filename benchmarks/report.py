"""What a run writes: ``latest.json`` (the records), ``latest.meta.json`` (the
machine, the skips), ``latest.md`` (the table) and ``latest.png`` (the chart)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import Result, Settings, Skip


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def one_line(result: Result) -> str:
    r = result.record()
    met = "" if "target_met" not in r else (" target MET" if r["target_met"] else " target NOT met")
    return (
        f"{r['scenario']} [{r['backend']}, {r['mode']}]: prism {r['ops_per_s']:,.0f} ops/s "
        f"p50/p90/p99 {r['p50_ms']:.3f}/{r['p90_ms']:.3f}/{r['p99_ms']:.3f} ms; "
        f"{r['baseline']['name']} {r['baseline']['ops_per_s']:,.0f} ops/s "
        f"{r['baseline']['p50_ms']:.3f}/{r['baseline']['p90_ms']:.3f}/{r['baseline']['p99_ms']:.3f} ms; "
        f"ratio {r['ratio']:.2f}{met}"
    )


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def markdown_table(results: Sequence[Result]) -> str:
    lines = [
        "| scenario | backend | mode | Prism ops/s | Prism p50 / p90 / p99 ms | baseline | baseline ops/s "
        "| baseline p50 / p90 / p99 ms | ratio | target |",
        "|---|---|---|--:|--:|---|--:|--:|--:|---|",
    ]
    for result in results:
        r = result.record()
        b = r["baseline"]
        target = ""
        if "target_met" in r:
            target = f"{'met' if r['target_met'] else '**not met**'}: {r['target']}"
        lines.append(
            f"| {r['scenario']} | {r['backend']} | {r['mode']} | {r['ops_per_s']:,.0f} "
            f"| {_ms(r['p50_ms'])} / {_ms(r['p90_ms'])} / {_ms(r['p99_ms'])} | {b['name']} "
            f"| {b['ops_per_s']:,.0f} | {_ms(b['p50_ms'])} / {_ms(b['p90_ms'])} / {_ms(b['p99_ms'])} "
            f"| {r['ratio']:.2f} | {target} |"
        )
    return "\n".join(lines)


def markdown(results: Sequence[Result], skips: Sequence[Skip], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    parts = [
        "# Prism benchmarks: latest run",
        "",
        f"{meta['kind']} run, {meta['started']}, {meta['duration_s']:.0f} s; each figure is the median "
        f"of {meta['repetitions']} repetitions, Prism and its baseline interleaved.",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}, "
        f"load average at start {m['load_average']}.",
        "",
        "`ratio` is Prism's ops/s over the baseline's (time-per-op ratio = 1 / ratio). "
        "How each scenario is measured: see `benchmarks/README.md`.",
        "",
        markdown_table(results),
        "",
    ]
    noted = [r for r in results if r.notes]
    if noted:
        parts += ["Notes:", ""]
        for r in noted:
            notes = ", ".join(f"{k}={v}" for k, v in r.notes.items())
            parts.append(f"- {r.scenario} [{r.backend}, {r.mode}]: {notes}")
        parts.append("")
    if skips:
        parts += ["Skipped:", ""]
        parts += [f"- **{s.what}**: {s.reason}" for s in skips]
        parts.append("")
    return "\n".join(parts)


def chart(results: Sequence[Result], path: Path) -> None:
    """Per result, left: p50, p90 and p99 of Prism and its baseline (overlaid
    bars, log scale); right: ops/s of both (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.scenario}\n{r.backend}, {r.mode}" for r in results]
    height = max(4.0, 0.75 * len(results) + 1.5)
    fig, (lat, thr) = plt.subplots(
        1, 2, figsize=(15, height), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    bar = 0.38
    for i, r in enumerate(results):
        for offset, sample, colour in ((-bar / 2, r.prism, "tab:blue"), (bar / 2, r.baseline, "tab:gray")):
            y = i + offset
            for value, alpha in ((sample.p99_ms, 0.3), (sample.p90_ms, 0.55), (sample.p50_ms, 1.0)):
                lat.barh(y, value, height=bar, color=colour, alpha=alpha)
        thr.barh(i - bar / 2, r.prism.ops_per_s, height=bar, color="tab:blue")
        thr.barh(i + bar / 2, r.baseline.ops_per_s, height=bar, color="tab:gray")
        thr.text(r.prism.ops_per_s, i - bar / 2, f" {r.ratio:.2f}", va="center", fontsize=7)
    lat.set_xscale("log")
    thr.set_xscale("log")
    lat.set_yticks(range(len(results)), labels, fontsize=7)
    lat.invert_yaxis()
    lat.set_xlabel("latency, ms (dark: p50, mid: p90, light: p99)")
    thr.set_xlabel("ops/s (label: Prism / baseline)")
    lat.set_title("Latency percentiles: Prism (blue) vs baseline (grey)")
    thr.set_title("Throughput")
    lat.grid(axis="x", which="both", alpha=0.3)
    thr.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(
    results: Sequence[Result], skips: Sequence[Skip], settings: Settings, *, started: float, duration_s: float
) -> list[Path]:
    out = settings.results_dir
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "kind": "quick" if settings.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "duration_s": round(duration_s, 1),
        "repetitions": settings.repetitions,
        "machine": machine(),
        "skipped": [{"what": s.what, "reason": s.reason} for s in skips],
    }
    paths = [out / "latest.json", out / "latest.meta.json", out / "latest.md", out / "latest.png"]
    paths[0].write_text(json.dumps([r.record() for r in results], indent=2) + "\n")
    paths[1].write_text(json.dumps(meta, indent=2) + "\n")
    paths[2].write_text(markdown(results, skips, meta))
    if results and _have_matplotlib():
        chart(results, paths[3])
    else:
        # The bench session installs matplotlib; a bare environment (the smoke
        # test's) still gets the JSON and the table.
        paths.pop()
    return paths


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
