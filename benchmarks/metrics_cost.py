"""What Prometheus metrics cost the request path: a cluster with metrics on against the same
cluster with metrics off, side by side in one run.

    .venv/bin/python benchmarks/metrics_cost.py [--nodes 5] [--rounds 30] [--requests 50]
        [--model MobileNetV3Large] [--backend litert] [--no-control]

Starts two clusters of N `edgenode run` processes on 127.0.0.1 (mDNS on loopback), the same
split (one part per node) with the same pinned speed, so both agree on the same pipeline:
"on" sets `node.metrics_listen` (every request observed in the histograms and counters of
issue 21, /metrics served, gauges sampled every second), "off" does not (the node wires the
plain router and transport: nothing observed on the request path). Then, in interleaved
rounds, each round starting with the other cluster, it sends R requests one at a time to
each cluster's origin (the node running part 0) and times them at the client. The cost is
the median with metrics on over the median with metrics off, minus 1 (target: < 2 % of the
N-node latency), averaged over two such pairs: the cluster with metrics started second,
then first (two clusters side by side do not measure alike). Then a control pair, neither
with metrics: how far apart two clusters measure when nothing differs. It also times, in this
process, the observations one request makes on the nodes (one request duration, a stage
and its part per node, a hop per stage) and checks at the end that the "on" origin's
/metrics counted every request. Writes benchmarks/results/metrics_cost.md.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
import timeit
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from harness import RESULTS  # puts the repository root on sys.path
from harness.cluster import Client, Cluster, running
from harness.models import Splits, manifest_of, sample_inputs
from harness.nodes import NodeProc, settle, write_config
from harness.plans import describe_plan, planning_speed
from harness.report import machine_lines, ms, say, summary, table
from harness.rounds import interleaved_async

TARGET = 0.02  # metrics may cost at most 2 % of the cluster's latency
START_GFLOPS = 10.0  # halved until the planner gives every node one part
SETUPS = ("off", "on")


def _config(work: Path, setup: str, speed: float, backend: str, metrics: bool) -> Path:
    path = write_config(work / f"{setup}.toml", f"cost-{setup}-{uuid.uuid4().hex[:8]}", speed,
                        backend)  # fmt: skip
    if setup == "on" and metrics:  # port 0: each node picks a free one and logs it
        text = path.read_text().replace("[node]\n", '[node]\nmetrics_listen = "127.0.0.1:0"\n')
        path.write_text(text)
    return path


def _metrics_url(node: NodeProc) -> str:
    found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", node.log_path.read_text())
    if found is None:
        raise RuntimeError(f"node {node.name} serves no metrics:\n{node.log_tail()}")
    return found[1]


def _scrape(node: NodeProc, name: str) -> float:
    with urllib.request.urlopen(_metrics_url(node), timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


def observation_cost_s(nodes: int) -> tuple[float, int]:
    """Seconds the observations of one request take (in this process, the calls a node
    makes), and how many there are across an ``nodes``-stage pipeline."""
    from edgenode.runtime.instrument import stage_observer
    from edgenode.runtime.metrics import NodeMetrics

    metrics = NodeMetrics()
    request = metrics.request_duration.labels(outcome="ok").observe
    stage = stage_observer(metrics)
    hop = metrics.hop_duration.labels(peer="n1").observe
    parts = range(1, 2)

    def one_request() -> None:
        start = time.perf_counter()
        for _ in range(nodes):
            stage(parts, (0.004,))
            hop(time.perf_counter() - start)
        request(time.perf_counter() - start)

    runs = 20000
    seconds = min(timeit.repeat(one_request, number=runs, repeat=5)) / runs
    return seconds, 1 + 3 * nodes  # request; per node: stage, part, hop


async def measure(
    args: argparse.Namespace, work: Path, *, metrics: bool, on_first: bool = False
) -> dict[str, Any]:
    """Two clusters side by side, timed in interleaved rounds; ``on_first``: the "on"
    cluster is started first; ``metrics=False``: the A/A control, where the "on" cluster
    runs without metrics too."""
    splits = Splits(work)
    directory = splits.get(args.model, args.nodes, fmt=args.backend)
    manifest = manifest_of(directory)
    inputs = sample_inputs(manifest)
    names = {s: [f"{s}{i}" for i in range(args.nodes)] for s in SETUPS}
    speed = planning_speed(manifest, list(names.values()), START_GFLOPS, one_part_each=True)
    say(f"{args.model}: {len(manifest.parts)} {args.backend} parts, pinned {speed} GFLOP/s")
    client = Client()

    def make(setup: str) -> list[NodeProc]:
        config = _config(work, setup, speed, args.backend, metrics)
        return [NodeProc(n, work, config, directory) for n in names[setup]]

    try:
        first, second = ("on", "off") if on_first else ("off", "on")
        async with (
            running(client, lambda: make(first)) as started_first,
            running(client, lambda: make(second)) as started_second,
        ):
            clusters: dict[str, Cluster] = {first: started_first, second: started_second}
            off, on = clusters["off"], clusters["on"]
            plans = {s: describe_plan(c.assignments) for s, c in clusters.items()}
            await settle([*off.nodes, *on.nodes])
            for cluster in clusters.values():
                await client.latencies(cluster.origin, inputs, args.warmup)

            async def run(setup: str) -> list[float]:
                return await client.latencies(clusters[setup].origin, inputs, args.requests)

            rounds = await interleaved_async(
                list(SETUPS), args.rounds, run, label=str, what="round", rotate=True
            )
            origin = next(n for n in on.nodes if n.address == on.origin)
            ok = 'edgenode_request_duration_seconds_count{outcome="ok"}'
            counted = _scrape(origin, ok) if metrics else None
    finally:
        await client.aclose()
    return {"rounds": rounds, "plans": plans, "speed": speed, "counted": counted,
            "on_first": on_first}  # fmt: skip


def _pair(args: argparse.Namespace, results: dict[str, Any]) -> tuple[list[str], float, float]:
    """The table of one pair of clusters, on / off - 1 of their medians, the off median."""
    rounds: dict[str, list[list[float]]] = results["rounds"]
    stats = {s: summary([t for r in rounds[s] for t in r]) for s in SETUPS}
    round_medians = {s: [statistics.median(r) for r in rounds[s]] for s in SETUPS}
    per_round = [on / off - 1 for on, off in zip(round_medians["on"], round_medians["off"],
                                                 strict=True)]  # fmt: skip
    cost = stats["on"]["median"] / stats["off"]["median"] - 1
    rows = [
        [s, stats[s]["n"], ms(stats[s]["median"]), ms(stats[s]["mean"]), ms(stats[s]["p90"]),
         ms(statistics.median(round_medians[s])), results["plans"][s]]
        for s in SETUPS
    ]  # fmt: skip
    lines = [
        *table("cluster|requests|median ms|mean ms|p90 ms|median of round medians ms|plan", rows),
        "",
        f"on / off - 1 of the medians: **{cost * 100:+.2f} %**; per round (of the round "
        f"medians): {', '.join(f'{c * 100:+.1f}' for c in per_round)} %; their median "
        f"{statistics.median(per_round) * 100:+.2f} %.",
    ]
    return lines, cost, stats["off"]["median"]


def report(args: argparse.Namespace, results: dict[str, Any], command: str) -> str:
    observe_s, observations = results["observe"]
    sent = args.rounds * args.requests + args.warmup
    pairs = [results[k] for k in ("off first", "on first")]
    tables = [_pair(args, pair) for pair in pairs]
    costs = [cost for _, cost, _ in tables]
    cost = statistics.mean(costs)
    off_s = statistics.mean(off for _, _, off in tables)
    lines = [
        "# Metrics on the request path: on against off",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; command: `{command}`",
        *machine_lines(),
        f"- {args.model}, {args.nodes} {args.backend} parts, pairs of clusters of {args.nodes} "
        f"`edgenode run` processes on 127.0.0.1 side by side, speeds pinned to "
        f"{pairs[0]['speed']} GFLOP/s (one part per node); per pair {args.rounds} interleaved "
        f"rounds of {args.requests} requests one at a time to each cluster's origin, each "
        f"round starting with the other cluster, after {args.warmup} warm-up requests. Two "
        "pairs with metrics on in one cluster, the cluster with metrics started second in "
        "the first pair and first in the second (two clusters side by side do not measure "
        "alike: see the control), then a control pair with metrics in neither.",
        "",
        f"**Cost of metrics: {cost * 100:+.2f} %** of the {args.nodes}-node median latency, "
        f"the mean of the two pairs' on / off - 1 ({', '.join(f'{c * 100:+.2f} %' for c in costs)}"
        f"; target < {TARGET * 100:.0f} %: {'met' if cost < TARGET else 'NOT met'}). The "
        f"observations themselves, timed in one process: {observations} per request on "
        f"{args.nodes} nodes (its duration at the origin; per node a stage, its part and a "
        f"hop) take {observe_s * 1e6:.1f} µs together, {observe_s / off_s * 100:.3f} % of the "
        "median latency with metrics off.",
    ]
    for title, pair, (pair_lines, _, _) in zip(
        ("metrics on the cluster started second", "metrics on the cluster started first"),
        pairs, tables, strict=True,
    ):  # fmt: skip
        lines += [
            "",
            f"## Metrics on against off, {title}",
            "",
            *pair_lines,
            "",
            f'The "on" origin\'s /metrics counted {pair["counted"]:.0f} requests answered (this '
            f"pair sent {sent}).",
        ]
    if "control" in results:
        control_lines, control, _ = _pair(args, results["control"])
        lines += [
            "",
            "## Control: metrics in neither cluster",
            "",
            'Two more clusters started the same way ("on" second), neither with metrics: how '
            "far apart two clusters measure when nothing differs.",
            "",
            *control_lines,
            "",
            f"Between two clusters that differ in nothing: {control * 100:+.2f} %. An "
            "end-to-end difference smaller than this cannot be told from the method's own "
            "spread; the in-process timing above bounds the cost itself.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=50, help="per cluster per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--model", default="MobileNetV3Large")
    parser.add_argument("--backend", default="litert", choices=("litert", "keras"))
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, help="work directory (its split is reused)")
    parser.add_argument("--no-control", action="store_true", help="skip the A/A control")
    args = parser.parse_args()
    command = "benchmarks/metrics_cost.py " + " ".join(sys.argv[1:])
    work = args.work or Path(tempfile.mkdtemp(prefix="edgenode-metrics-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"work directory {work}")
    results: dict[str, Any] = {
        "off first": asyncio.run(measure(args, work, metrics=True)),
        "on first": asyncio.run(measure(args, work, metrics=True, on_first=True)),
    }
    if not args.no_control:
        results["control"] = asyncio.run(measure(args, work, metrics=False))
    results["observe"] = observation_cost_s(args.nodes)
    text = report(args, results, f".venv/bin/python {command}".strip())
    sys.stdout.write(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "metrics_cost.md").write_text(text)


if __name__ == "__main__":
    main()
