"""One hop, one request at a time with the processes idle between requests (run in the driver)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from _transport.setups import HOP_BYTES, IDLE_S, Plan


async def hops(link: Any, plan: Plan, rng: np.random.Generator) -> dict[str, float]:
    """One request at a time, idle between: ~400 KB alone, and 4 x 100 KB in one or four sends."""
    out: dict[str, float] = {}
    array = rng.standard_normal(HOP_BYTES // 4).astype(np.float32)
    quarter = [rng.standard_normal(HOP_BYTES // 16).astype(np.float32) for _ in range(4)]
    tiny = np.zeros(4, dtype=np.float32)

    async def one(arr: np.ndarray) -> float:
        start = time.perf_counter()
        await link.send("echo", 0, arr)
        await link.receive()
        return time.perf_counter() - start

    names = [f"batch4.{i}" for i in range(4)]

    async def packed() -> float:
        start = time.perf_counter()
        await link.send_many(names, -1, quarter)
        for _ in range(4):
            await link.receive()
        return time.perf_counter() - start

    async def separate() -> float:
        rid = link.request_id()
        start = time.perf_counter()
        for name, arr in zip(names, quarter, strict=True):
            await link.send_many([name], rid, [arr])
        for _ in range(4):
            await link.receive()
        return time.perf_counter() - start

    cases: dict[str, Callable[[], Any]] = {
        "hop_400k_us": lambda: one(array),
        "hop_16b_us": lambda: one(tiny),
        "hop_4x100k_one_send_us": packed,
        "hop_4x100k_four_sends_us": separate,
    }
    for name, case in cases.items():
        samples = []
        for i in range(plan.hop_count + 3):
            await asyncio.sleep(IDLE_S)
            rtt = await case()
            if i >= 3:
                samples.append(rtt)
        out[name] = statistics.median(samples) / 2 * 1e6
        out[name.replace("_us", "_p90_us")] = float(np.percentile(samples, 90)) / 2 * 1e6
    # Back to back, for comparison with idle.
    samples = [await one(array) for _ in range(plan.hop_count)]
    out["hop_400k_busy_us"] = statistics.median(samples) / 2 * 1e6
    return out
