"""``--profile``: where the time goes, for the README's explanations.

The gateway is profiled from outside with py-spy (sampling, so the server runs
at full speed) while ghz loads it; the embedded scenarios with pyinstrument
inside the benchmark process. Profiles land in ``results/profiles/``: a
speedscope file to open at https://www.speedscope.app, and a text summary of
the frames with the most samples.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else None


def start_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on ``pid`` and its subprocesses for ``seconds``, written as collapsed stacks."""
    binary = py_spy()
    if binary is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--subprocesses"]
    command += ["--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_collapsed(collapsed: Path, top: int = 25) -> str:
    """The frames that most samples were in (self) and under (inclusive)."""
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            under[frame] += count
    lines = [f"{total} samples", "", "self:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in under.most_common(top)]
    return "\n".join(lines) + "\n"


def finish_spy(proc: subprocess.Popen[bytes] | None, out: Path) -> Path | None:
    if proc is None:
        return None
    proc.wait(timeout=120)
    if not out.is_file():
        return None
    summary = out.with_suffix(".top.txt")
    summary.write_text(summarize_collapsed(out))
    return summary


async def pyinstrument_profile(run: Callable[[], Awaitable[object]], out: Path) -> Path | None:
    """``run`` under pyinstrument (async-aware); writes a text report."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    profiler = Profiler(interval=0.0002, async_mode="enabled")
    profiler.start()
    try:
        await run()
    finally:
        profiler.stop()
    _write(out, profiler.output_text(unicode=False, color=False, show_all=False))
    return out


def _write(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
