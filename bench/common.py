"""Shared helpers of the benchmarks: machine description, statistics, tables, waiting.

Benchmarks are scripts (``python bench/<name>.py``); this module puts the repository root on
``sys.path`` so they import the project the same way the tests do.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> str:
    """Type and device of the mount holding ``path`` (from /proc/mounts; best effort)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    p = str(path.resolve())
    best = ("", "unknown", "unknown")
    for m in mounts:
        if len(m) >= 3 and (p == m[1] or p.startswith(m[1].rstrip("/") + "/")) \
                and len(m[1]) >= len(best[0]):
            best = (m[1], m[2], m[0])
    return f"{best[1]} ({best[2]} on {best[0]})"


def header(title: str, *, data_dir: Path | None = None) -> str:
    lines = [
        f"# {title}",
        f"command : {shlex.join([sys.executable, *sys.argv])}",
        f"machine : nproc={len(os.sched_getaffinity(0))} cpu={cpu_model()!r} "
        f"python={platform.python_version()} kernel={platform.release()}",
        "load    : {:.2f} {:.2f} {:.2f} (1/5/15 min; the cores are shared, so figures vary)"
        .format(*os.getloadavg()),
    ]
    if data_dir is not None:
        lines.append(f"data dir: {data_dir} fs={filesystem_of(data_dir)}")
    return "\n".join(lines)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100) of a non-empty sample."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, r in enumerate(cells):
        out.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str,
               interval_s: float = 0.002) -> None:
    """Poll ``cond`` until true; raise ``TimeoutError`` naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)
