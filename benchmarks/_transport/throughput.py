"""One-way throughput and back-to-back round trips per tensor size (run in the driver)."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from _transport.hops import hops
from _transport.setups import MIB, Plan


async def measure(link: Any, plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"throughput_gbps": {}, "rtt_ms": {}}
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else plan.sizes
    small = np.zeros(1, dtype=np.float32)
    for size in sizes:
        array = rng.standard_normal(size // 4).astype(np.float32)
        # One way: N tensors back to back, then an ack round trip.
        count = max(8, plan.stream_bytes // size)
        for seq in range(2):  # warm-up
            await link.send("sink", seq, array)
        await link.send("ack", 0, small)
        await link.receive()
        start = time.perf_counter()
        for seq in range(count):
            await link.send("sink", seq, array)
        await link.send("ack", 0, small)
        await link.receive()
        seconds = time.perf_counter() - start
        result["throughput_gbps"][size] = count * size / seconds / 1e9
        # Round trip, back to back.
        rtts = []
        for seq in range(max(4, min(plan.rtt_count, (256 * MIB) // size))):
            start = time.perf_counter()
            await link.send("echo", seq, array)
            await link.receive()
            rtts.append(time.perf_counter() - start)
        result["rtt_ms"][size] = statistics.median(rtts[1:]) * 1e3
    if args.hop:
        result["hop"] = await hops(link, plan, rng)
    return result
