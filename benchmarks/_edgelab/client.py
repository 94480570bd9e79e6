"""The edge lab's client, run on a host of its own (``edgelab.py --client SPEC``): waits for
the agreed plan, answers every photo, times latency and throughput, and samples CPU."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SIDE = 224  # EfficientNet-Lite0's input
AGREE_DEADLINE_S = 240.0


def photo_inputs(paths: list[str]) -> list[np.ndarray]:
    """Each sample photo as a client sends it (TF's evaluation crop), batch 1, float32."""
    from edgenode.client.inputs import decode_image

    return [
        decode_image(Path(p), height=SIDE, width=SIDE, center_crop=True)[None].astype(np.float32)
        for p in paths
    ]


# -- the client, run on the client host --------------------------------------------------------


class _Remote:
    """A node as the client host knows it: name and address (its process is not ours)."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.log_path = Path(".")

    def check_alive(self) -> None:
        """The parent watches the processes."""


async def settled(client: Any, cluster: Any, spec: dict[str, Any]) -> None:
    """Until the nodes serve one agreed plan that has not changed for ``stable_s``, each
    node's measured link in it where the profile is slower than the cluster's gigabit (a
    node measures its link after it joins, and the plan changes with it)."""
    from harness.cluster import wait_agreed

    deadline = time.monotonic() + AGREE_DEADLINE_S
    digest, since = "", time.monotonic()
    while True:
        await wait_agreed(client, cluster, deadline)
        statuses = cluster.statuses.values()
        now = next(iter(statuses)).plan.agreed_digest
        links = all(st.node.capacity.link_bytes_per_s > 0 for st in statuses)
        if now != digest or (spec["wait_link"] and not links):
            digest, since = now, time.monotonic()
        elif time.monotonic() - since >= spec["stable_s"]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no stable plan with measured links in {AGREE_DEADLINE_S} s")
        await asyncio.sleep(0.5)


def cpu_sample(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far: each node process, this process (the client), and the machine's
    kernel time in softirq (the lab's veth, bridge and tbf path) and in total busy."""
    from harness.nodes import cpu_seconds

    sample = {name: cpu_seconds(pid) for name, pid in pids.items()}
    sample["client"] = time.process_time()
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    hz = os.sysconf("SC_CLK_TCK")
    sample["softirq"] = ticks[6] / hz
    sample["busy"] = (sum(ticks) - ticks[3] - ticks[4]) / hz  # all but idle and iowait
    return sample


def cpu_per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Milliseconds of CPU per completed request, per key of two cpu_sample()s."""
    return {k: round(1e3 * (after[k] - before[k]) / max(n, 1), 3) for k in before}


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    """Wait for the agreed plan, tell the parent (which reshapes the first node's download)
    and wait for its go; answer every photo; time latency, then throughput."""
    from harness.cluster import Client, Cluster
    from harness.plans import describe_plan

    client = Client()
    try:
        cluster = Cluster(nodes=[_Remote(n, a) for n, a in spec["nodes"].items()])
        await settled(client, cluster, spec)
        origin = cluster.origin
        print(json.dumps({"origin": cluster.stages[0][0]}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        [name] = spec["input_names"]
        photos = [{name: x} for x in photo_inputs(spec["photos"])]
        for _ in range(3):  # warm-up: the first requests load and trace
            await client.infer(origin, photos[0])
        logits = []
        for x in photos:
            answer = await client.infer(origin, x)
            [value] = answer.values()
            logits.append(np.asarray(value).reshape(-1).tolist())
        latencies: list[float] = []
        begun = time.perf_counter()
        while len(latencies) < spec["requests"] and (
            len(latencies) < 3 or time.perf_counter() - begun < spec["window_s"]
        ):
            latencies += await client.latencies(origin, photos[len(latencies) % len(photos)], 1)
        done: list[float] = []
        end = time.perf_counter() + spec["window_s"]

        async def worker(k: int) -> None:
            while time.perf_counter() < end or len(done) < spec["min_completions"]:
                await client.infer(origin, photos[k % len(photos)])
                done.append(time.perf_counter())

        before = cpu_sample(spec["pids"])
        await asyncio.gather(*(worker(k) for k in range(spec["in_flight"])))
        cpu = cpu_per_request(before, cpu_sample(spec["pids"]), len(done))
        done.sort()
        # steady state: completions after the first, over the time they took
        throughput = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else 0.0
        first = next(iter(cluster.statuses.values()))
        after = {n.name: await client.status(n.address) for n in cluster.nodes}
        return {
            "plan_after": sorted(
                {st.plan.agreed_digest[:12] if st else "no answer" for st in after.values()}
            ),
            "digest": first.plan.agreed_digest[:12],
            "latencies_s": latencies,
            "throughput_rps": throughput,
            "completions": len(done),
            "cpu_ms_per_request": cpu,
            "logits": logits,
            "plan": describe_plan(cluster.assignments),
            "stages": [list(s) for s in cluster.stages],
            "replicas": cluster.replicas,
            "predicted_bottleneck_s": first.plan.bottleneck_s,
            "predicted_latency_s": first.plan.latency_s,
            "assignments": [[a.node_id, a.start, a.stop, a.replica] for a in cluster.assignments],
            "members": list(first.plan.members),
            "origin": cluster.stages[0][0],
            "speeds_gflops": {
                st.node_id: st.node.capacity.speed / 1e9 for st in cluster.statuses.values()
            },
            "links_mbps": {
                st.node_id: st.node.capacity.link_bytes_per_s * 8 / 1e6
                for st in cluster.statuses.values()
            },
        }
    finally:
        await client.aclose()


def client_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    print(json.dumps(asyncio.run(_client(spec))), flush=True)
