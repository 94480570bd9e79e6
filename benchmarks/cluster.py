"""How fast a cluster of real node processes re-agrees after a join, a leave and a kill.

    .venv/bin/python benchmarks/cluster.py [--nodes 5] [--rounds 3] [--model MobileNetV3Large]

Starts N `edgenode run` processes on 127.0.0.1 (mDNS on loopback), then repeatedly:
a node joins (time from its gRPC server being up to every node serving the new agreed
plan with its parts loaded), a node leaves with SIGTERM, a node is killed with SIGKILL
(time from the signal to the survivors serving a plan without it). Targets (DESIGN.md):
a joining node serves within 2 s; after a kill the cluster serves again within 3 s.
For a leave and a kill it also times the agreement alone (before the parts are loaded):
a leaving node tells its peers with Leave over gRPC, a killed one must be found dead, so
the kill is the same run's baseline for the goodbye. Writes benchmarks/results/cluster.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from harness import RESULTS  # puts the repository root on sys.path

from tests.nodes import NodeProcess, agreed_cluster

JOIN_TARGET_S = 2.0
KILL_TARGET_S = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="MobileNetV3Large")
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument(
        "--out-dir", type=Path, default=RESULTS, help="where cluster.md goes (benchmarks/results)"
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    work = Path(tempfile.mkdtemp(prefix="edgenode-cluster-"))
    from edgenode.model.loading import load_model
    from edgenode.model.split import split_model

    split_dir = work / "split"
    split_model(load_model(args.model), split_dir, parts=args.parts)
    config = work / "node.toml"
    config.write_text(f'[cluster]\nname = "bench-{uuid.uuid4().hex[:8]}"\n')
    serial = 0

    def start() -> NodeProcess:
        nonlocal serial
        name = f"n{serial}"
        serial += 1
        return NodeProcess(
            name, work, "--config", str(config), "--listen", "127.0.0.1:0", "--model",
            str(split_dir), "--interfaces", "127.0.0.1", "--state-dir", str(work / name),
        )  # fmt: skip

    nodes = [start() for _ in range(args.nodes)]
    results: dict[str, list[float]] = {
        "join": [],
        "leave (SIGTERM): agreed": [],
        "leave (SIGTERM)": [],
        "kill (SIGKILL): agreed": [],
        "kill (SIGKILL)": [],
    }

    def depart(node: NodeProcess, sig: signal.Signals, label: str) -> None:
        """Send ``sig`` to ``node`` (out of ``nodes`` already); time the survivors' agreement
        (``label: agreed``) and their parts loaded (``label``)."""
        t0 = time.monotonic()
        node.signal(sig)
        agreed_cluster(nodes, {n.name for n in nodes}, loaded=False)
        results[f"{label}: agreed"].append(time.monotonic() - t0)
        agreed_cluster(nodes, {n.name for n in nodes})
        results[label].append(time.monotonic() - t0)
        node.stop()

    try:
        for node in nodes:
            node.wait_serving()
        t0 = time.monotonic()
        agreed_cluster(nodes, {n.name for n in nodes})
        print(f"{len(nodes)} nodes agreed {time.monotonic() - t0:.2f} s after all were up")
        for round_ in range(args.rounds):
            joiner = start()
            joiner.wait_serving()
            t0 = time.monotonic()
            nodes.append(joiner)
            agreed_cluster(nodes, {n.name for n in nodes})
            results["join"].append(time.monotonic() - t0)

            depart(nodes.pop(0), signal.SIGTERM, "leave (SIGTERM)")
            depart(nodes.pop(len(nodes) // 2), signal.SIGKILL, "kill (SIGKILL)")
            # back to N nodes for the next round
            nodes.append(start())
            nodes[-1].wait_serving()
            agreed_cluster(nodes, {n.name for n in nodes})
            print(f"round {round_ + 1}/{args.rounds} done")
    finally:
        for node in nodes:
            node.stop()

    targets = {"join": JOIN_TARGET_S, "kill (SIGKILL)": KILL_TARGET_S}
    lines = [
        "# Cluster membership changes",
        "",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        f"- command: `.venv/bin/python benchmarks/cluster.py --nodes {args.nodes} "
        f"--rounds {args.rounds} --model {args.model} --parts {args.parts}`",
        f"- {args.nodes} `edgenode run` processes on 127.0.0.1, mDNS on loopback, Keras parts; "
        'time until every node serves the new agreed plan with its parts loaded (": agreed": '
        "until they agree on it, parts perhaps still loading)",
        "",
        "| event | median s | min s | max s | target s | met |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for event, times in results.items():
        target = targets.get(event)
        met = "-" if target is None else ("yes" if max(times) <= target else "no")
        lines.append(
            f"| {event} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} "
            f"| {target if target else '-'} | {met} |"
        )
    leave = statistics.median(results["leave (SIGTERM): agreed"])
    kill = statistics.median(results["kill (SIGKILL): agreed"])
    lines += [
        "",
        f"Agreement after a graceful leave (Leave over gRPC) vs after a kill (found dead): "
        f"median {leave:.2f} s vs {kill:.2f} s, {kill / leave:.1f}x faster.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "cluster.md").write_text(text)


if __name__ == "__main__":
    main()
