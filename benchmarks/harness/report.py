"""Progress lines, statistics and markdown tables shared by the benchmarks."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def say(message: str) -> None:
    """Progress on stderr; tables go to stdout."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def summary(values: Sequence[float]) -> dict[str, float]:
    """mean, std, median, p10, p90, min, max of seconds (or any unit)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def ms(seconds: float | None, digits: int = 2) -> str:
    return "-" if seconds is None or not math.isfinite(seconds) else f"{seconds * 1e3:.{digits}f}"


def spread_ms(s: Mapping[str, float]) -> str:
    return f"{ms(s['p10'])}-{ms(s['p90'])}" if s.get("n") else "-"


def two_digits(x: float) -> float:
    """Rounded to 2 significant digits, as the planner quantizes speeds."""
    return float(f"{x:.2g}")


def table(headers: str | Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Markdown table lines (numbers right-aligned); ``headers`` may be 'a|b|c'."""
    if isinstance(headers, str):
        headers = headers.split("|")

    def numeric(i: int) -> bool:
        return all(re.match(r"^[-+]?[\d.]", str(r[i])) for r in rows) if rows else False

    align = ["---:" if numeric(i) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def timed(fn: Callable[[], Any], runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def plot_footer(command: str, when: str) -> str:
    """The line under every figure: what ran, where, when."""
    return f"{command}  |  {os.cpu_count()} cores, {platform.machine()}  |  {when}"


def machine_lines() -> list[str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for module in ("tensorflow", "keras", "ai_edge_litert", "grpc"):
        with contextlib.suppress(Exception):
            mod = __import__(module)
            versions.append(f"{module} {getattr(mod, '__version__', '?')}")
    return [
        f"- machine: {os.cpu_count()} cores ({cpu or platform.processor() or '?'}), "
        f"{platform.platform()}, Python {platform.python_version()}; {', '.join(versions)}"
    ]
