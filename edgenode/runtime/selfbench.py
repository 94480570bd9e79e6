"""A short self-benchmark: this device's speed score, advertised to the cluster.

The score is the near-best rate of short bursts of float32 matrix products on one thread, times
the share of that rate a CNN reaches on one thread with the node's backend (a part runs on
``model.threads`` threads, 1 by default).

Why one thread, CPU time and short bursts: a 256x256 product runs on all of OpenBLAS's
threads, which busy-wait for each other. When another process wants a core (nodes started
together, each importing its libraries) those threads end up sharing one core and every
product waits for the scheduler: 4 nodes started at once on 2 cores read 0.1-0.2 GFLOP/s
instead of 17, in about half of the starts. A 64x64 product stays on the calling thread
(OpenBLAS threads only above 64**3 multiply-adds); a burst of them is timed by this
thread's CPU time, which neither another process's turn on the core nor a wait for the
GIL adds to; and a burst near the fastest of a window is one that nothing else slowed
(a cache another process emptied). A busy machine makes the measurement take longer, not
read lower.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from edgenode.backends import import_backend
from edgenode.defaults import MEMORY_BUDGET_SHARE
from edgenode.errors import ModelError

__all__ = [
    "MODEL_EFFICIENCY",
    "UNKNOWN_BACKEND_EFFICIENCY",
    "available_memory_bytes",
    "baseline_memory_bytes",
    "burst_flops",
    "burst_time_s",
    "measure_speed",
    "memory_budget_bytes",
    "process_memory_bytes",
    "total_memory_bytes",
]

_SIDE = 64  # matrix side: 64**3 multiply-adds, the most OpenBLAS runs on the calling thread
_BATCH = 16  # products per burst: 8.4 MFLOP, 0.75 MiB of operands (fits a core's L2)
WINDOW_S = 0.3  # bursts run this long (wall time) ...
MIN_BURSTS = 20  # ... and at least this many, however slow the device
# Not the fastest burst: CPU time now and then reads a burst up to 20% short.
FAST_QUANTILE = 0.1

# Share of the one-thread matmul rate the whole model reaches on one thread, by part format,
# measured on one 2-core x86 machine (AVX-512, numpy's OpenBLAS, matmul ~110 GFLOP/s):
#   LiteRT: EfficientNetLite0 0.63-0.73 (70-81 GFLOP/s, 8 or 1 parts), MobileNetV3Large 0.60
#   Keras:  EfficientNetLite0 0.41 (46 GFLOP/s), MobileNetV3Large 0.19-0.25 (21-26 GFLOP/s)
# The model matters too (Keras: 2x between these two); every figure is within 1.6x of these.
MODEL_EFFICIENCY: Mapping[str, float] = {"keras": 0.3, "litert": 0.65}
# When the caller does not say which backend runs: their geometric mean, 1.5x from each.
UNKNOWN_BACKEND_EFFICIENCY = math.sqrt(MODEL_EFFICIENCY["keras"] * MODEL_EFFICIENCY["litert"])


def burst_flops() -> int:
    """FLOPs of one burst of the default benchmark."""
    return 2 * _BATCH * _SIDE**3


def _matmul_burst() -> Callable[[], None]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((_BATCH, _SIDE, _SIDE), dtype=np.float32)
    b = rng.standard_normal((_BATCH, _SIDE, _SIDE), dtype=np.float32)
    out = np.empty_like(a)

    def burst() -> None:
        np.matmul(a, b, out=out)

    return burst


def burst_time_s(
    burst: Callable[[], None],
    *,
    window_s: float = WINDOW_S,
    min_bursts: int = MIN_BURSTS,
    clock: Callable[[], float] = time.thread_time,
    wall: Callable[[], float] = time.perf_counter,
) -> float:
    """How long ``burst()`` takes by ``clock`` (this thread's CPU time) when nothing slows
    it: the FAST_QUANTILE of its times, run back to back for ``window_s`` of ``wall`` time
    and at least ``min_bursts`` times, after one untimed warm-up call."""
    burst()  # page in the operands, pick the kernel
    times: list[float] = []
    start = wall()
    while len(times) < min_bursts or wall() - start < window_s:
        before = clock()
        burst()
        times.append(clock() - before)
    times.sort()
    return times[int(FAST_QUANTILE * len(times))]


def measure_speed(
    *,
    backend: str | None = None,
    window_s: float = WINDOW_S,
    clock: Callable[[], float] = time.thread_time,
    wall: Callable[[], float] = time.perf_counter,
    burst: Callable[[], None] | None = None,
    flops_per_burst: int = 0,
) -> float:
    """Expected model FLOP/s on one thread: a one-thread matmul burst's rate x the
    efficiency of ``backend`` (a part format, "keras" or "litert"; None: unknown).
    ``burst`` and its ``flops_per_burst`` replace the matmul (tests)."""
    efficiency = UNKNOWN_BACKEND_EFFICIENCY if backend is None else MODEL_EFFICIENCY.get(backend)
    if efficiency is None:
        raise ModelError(f"unknown backend {backend!r}: one of {sorted(MODEL_EFFICIENCY)}")
    if burst is None:
        burst, flops_per_burst = _matmul_burst(), burst_flops()
    elif flops_per_burst <= 0:
        raise ValueError("a burst needs its flops_per_burst")
    seconds = burst_time_s(burst, window_s=window_s, clock=clock, wall=wall)
    return efficiency * flops_per_burst / max(seconds, 1e-9)


def available_memory_bytes(meminfo: str | None = None) -> int:
    """Memory the OS can give new work without swapping (Linux MemAvailable, from
    /proc/meminfo or the text given); the physical total where it does not say."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            meminfo = ""
    for line in meminfo.splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        if key == "MemAvailable" and fields and fields[0].isdigit():
            return int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    return total_memory_bytes()


def memory_budget_bytes(configured: int, meminfo: str | None = None) -> int:
    """What this node offers the cluster: ``configured`` (node.memory_budget), else
    MEMORY_BUDGET_SHARE of the memory available now."""
    if configured > 0:
        return configured
    return int(MEMORY_BUDGET_SHARE * available_memory_bytes(meminfo))


def process_memory_bytes(status: str | None = None) -> tuple[int, int]:
    """This process's resident memory now and at its peak (VmRSS, VmHWM from
    /proc/self/status, or the text given); 0 for what the OS does not say."""
    if status is None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            status = ""
    found = {"VmRSS": 0, "VmHWM": 0}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        if key in found and fields and fields[0].isdigit():
            found[key] = int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    return found["VmRSS"], found["VmHWM"]


def baseline_memory_bytes(backend: str) -> int:
    """This node's baseline (``planning.memory``): its resident memory with the runtime of
    ``backend`` imported and no part loaded (blocking: the import may take seconds)."""
    import_backend(backend)
    resident, _ = process_memory_bytes()
    return resident


def total_memory_bytes() -> int:
    """Physical memory of this device (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
