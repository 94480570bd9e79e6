"""A short self-benchmark: this device's speed score, advertised to the cluster.

The score is the FLOP/s of a float32 matrix product in NumPy, times the share of that
peak a small CNN reaches (measured here: MobileNetV3Large under tf.function on one
thread runs at ~22 GFLOP/s where the matmul gives ~230 on two cores). It is the same
measurement whatever the backend, so nodes compare fairly, and the factor keeps its
scale comparable with the link's costs, which the planner weighs against it.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

__all__ = ["measure_speed", "total_memory_bytes"]

_SIZE = 256  # matrix side: 33.5 MFLOP per product, ~1-10 ms on a Pi-class core
_RUNS = 15
MODEL_EFFICIENCY = 0.1  # share of the matmul peak that CNN parts reach


def measure_speed(*, runs: int = _RUNS) -> float:
    """Expected model FLOP/s: a 256x256 float32 matmul's rate x MODEL_EFFICIENCY."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((_SIZE, _SIZE), dtype=np.float32)
    b = rng.standard_normal((_SIZE, _SIZE), dtype=np.float32)
    np.matmul(a, b)  # warm-up: page in, pick the kernel
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        np.matmul(a, b)
        times.append(time.perf_counter() - start)
    return MODEL_EFFICIENCY * 2 * _SIZE**3 / max(statistics.median(times), 1e-9)


def total_memory_bytes() -> int:
    """Physical memory of this device (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
