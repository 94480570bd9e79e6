"""A model bigger than one node: memory budgets that hold, in resident memory (issue 22).

    .venv/bin/python benchmarks/memory.py [--model ConvNeXtLarge] [--parts 3] [--nodes 3]
        [--backends litert,keras] [--requests 24] [--out-dir DIR]

For each backend: the model (random weights, seeded; logits) cut into ``--parts`` parts of
that backend of about equal weights, and a memory budget per node chosen from the memory model
(``edgenode.planning.memory``) so that ``--nodes`` nodes can hold the model and one cannot:
the smallest room for parts with which ``--nodes`` nodes have a plan, plus the backend's
baseline and a margin. Then, on 127.0.0.1:

1. one node alone with that budget: it must serve nothing and say why (status "problem");
2. the other nodes join: they must agree on a plan and load their parts;
3. load: ``--requests`` requests, two per node in flight, on the sample photos;
4. each node's peak resident memory (VmHWM from /proc/PID/status; the node process is
   ours) against its budget and against the memory model's prediction, which the node
   reports in its status (its measured baseline plus its parts' need);
5. answers: every photo's logits from the cluster against the whole Keras model run here
   on the same input (the photos' logits differ from each other: the reference moves).

Targets: no node above its budget; predicted within 15 % of the measured peak. Results go
to benchmarks/results/memory.md and memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from harness import RESULTS, ROOT
from harness.cluster import Client, Cluster, wait_agreed
from harness.nodes import START_DEADLINE_S, NodeProc, stop_nodes
from harness.plans import describe_plan
from harness.report import machine_lines, say, table

MIB = 2**20
# Above the calibration table's baseline: a node's own varies by ~16 MiB of shared-library
# pages, and by what this machine's libraries weigh.
MARGIN_BYTES = 24 * MIB
MARGIN_SHARE = 0.05
TARGET_ERROR = 0.15
PHOTOS = sorted((ROOT / "edgenode" / "data" / "images").glob("*.jpg"))


def weight_cuts(model: Any, parts: int) -> list[int]:
    """Cut positions that give ``parts`` parts of about equal parameter bytes: where memory,
    not work, decides how many nodes a model needs (each part is a node's share)."""
    from edgenode.model.cost import graph_stats
    from edgenode.model.graph import build_graph

    prefix = np.cumsum([s.param_bytes for s in graph_stats(build_graph(model))])
    cuts: list[int] = []
    for k in range(1, parts):  # distinct, increasing, each part at least one op
        at = int(np.searchsorted(prefix, prefix[-1] * k / parts)) + 1
        cuts.append(min(max(at, cuts[-1] + 1 if cuts else 1), len(prefix) - (parts - k)))
    return cuts


def split(model: Any, name: str, parts: int, fmt: str, work: Path) -> Path:
    from edgenode.model.split import split_model

    out = work / f"{name.lower()}-{parts}-weights-{fmt}"
    if not (out / "manifest.json").is_file():
        say(f"splitting {name} into {parts} {fmt} parts of about equal weights")
        split_model(model, out, cuts=weight_cuts(model, parts), fmt=fmt)
    return out


def choose_budget(directory: Path, backend: str, nodes: int) -> dict[str, int]:
    """The budget: the least room for parts with which ``nodes`` equal nodes have a plan,
    plus the backend's baseline and MARGIN_BYTES; and what one node would need."""
    from edgenode.errors import PlanError
    from edgenode.model.manifest import load_manifest
    from edgenode.planning import (
        BASELINE_BYTES,
        MEMORY_MODELS,
        Link,
        NodeSpec,
        plan_pipeline,
        stage_memory_bytes,
    )

    manifest = load_manifest(directory)
    graph, model = manifest.cost_graph(), MEMORY_MODELS[backend]
    whole = stage_memory_bytes(graph, 0, len(graph.ops), model)

    def fits(room: int) -> bool:
        specs = [NodeSpec(node_id=f"n{i}", speed=1.0, memory_bytes=room, memory=model)
                 for i in range(nodes)]  # fmt: skip
        try:
            plan_pipeline(graph, specs, Link())
        except PlanError:
            return False
        return True

    low, high = 0, whole
    while high - low > MIB:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    baseline = BASELINE_BYTES[backend]
    return {
        "budget_bytes": int(baseline * (1 + MARGIN_SHARE)) + high + MARGIN_BYTES,
        "one_node_needs_bytes": baseline + whole,
        "weights_bytes": sum(p.param_bytes for p in manifest.parts),
    }


def photo_inputs(side: int) -> list[np.ndarray]:
    """The sample photos, centre-cropped to ``side``, batch 1 (ConvNeXt scales its own
    pixels)."""
    from edgenode.client.inputs import decode_image

    return [
        decode_image(p, height=side, width=side, center_crop=True)[None].astype(np.float32)
        for p in PHOTOS
    ]


def node_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a node process (ours), read as the node reads its own."""
    from edgenode.runtime.selfbench import process_memory_bytes

    return process_memory_bytes(Path(f"/proc/{pid}/status").read_text())


def config(path: Path, cluster: str, backend: str, budget: int) -> Path:
    path.write_text(
        f'[node]\nspeed_gflops = 50\nmemory_budget = "{budget}B"\n'
        f'[cluster]\nname = "{cluster}"\n'
        f'[model]\nbackend = "{backend}"\nthreads = 1\n'
        "[limits]\nrequest_deadline_s = 120.0\n[security]\ninsecure = true\n"
    )
    return path


async def run_backend(
    args: argparse.Namespace, backend: str, directory: Path, inputs: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    budget = choose_budget(directory, backend, args.nodes)
    if budget["one_node_needs_bytes"] <= budget["budget_bytes"]:
        sys.exit(
            f"memory.py: {args.model} fits one {backend} node with the budget {args.nodes} "
            f"nodes need ({budget['budget_bytes'] / MIB:.0f} MiB): choose a bigger model"
        )
    say(
        f"{backend}: budget {budget['budget_bytes'] / MIB:.0f} MiB per node; the whole model "
        f"would need {budget['one_node_needs_bytes'] / MIB:.0f} MiB on one node; weights "
        f"{budget['weights_bytes'] / MIB:.0f} MiB"
    )
    work = args.work / f"nodes-{backend}"
    work.mkdir(parents=True, exist_ok=True)
    conf = config(
        work / "node.toml", f"mem-{uuid.uuid4().hex[:8]}", backend, budget["budget_bytes"]
    )
    client = Client()
    cluster = Cluster(nodes=[])
    try:
        first = NodeProc("m0", work, conf, directory)
        cluster.nodes.append(first)
        deadline = time.monotonic() + START_DEADLINE_S
        await first.wait_serving(deadline)
        alone = ""
        while not alone:  # one node with this budget: no plan, and it says why
            st = await client.status(first.address)
            alone = st.plan.problem if st is not None else ""
            if time.monotonic() > deadline:
                raise RuntimeError("the lone node never said why it has no plan")
            await asyncio.sleep(0.2)
        say(f"one node alone: {alone}")
        others = [NodeProc(f"m{i}", work, conf, directory) for i in range(1, args.nodes)]
        cluster.nodes.extend(others)
        deadline = time.monotonic() + START_DEADLINE_S
        for node in others:
            await node.wait_serving(deadline)
        await wait_agreed(client, cluster, deadline)
        say(f"{args.nodes} nodes agreed: {describe_plan(cluster.assignments)}")
        origins = [n.address for n in cluster.nodes]
        answers: dict[int, list[np.ndarray]] = {}
        done = 0

        async def worker(k: int) -> None:
            nonlocal done
            while done < args.requests:
                i = done % len(inputs)
                done += 1
                out = await client.infer(origins[k % len(origins)], inputs[i])
                [value] = out.values()
                answers.setdefault(i, []).append(np.asarray(value))

        started = time.monotonic()
        await asyncio.gather(*(worker(k) for k in range(2 * args.nodes)))
        seconds = time.monotonic() - started
        say(f"{done} requests in {seconds:.1f} s")
        rows = []
        for node in cluster.nodes:
            st = await client.status(node.address)
            assert st is not None
            rss, hwm = node_memory(node.process.pid)
            rows.append({
                "node": node.name, "parts": sorted(st.parts),
                "budget_bytes": st.node.capacity.memory_bytes,
                "baseline_bytes": st.node.capacity.baseline_bytes,
                "predicted_bytes": st.predicted_bytes, "resident_bytes": rss, "peak_bytes": hwm,
            })  # fmt: skip
        return {"backend": backend, "alone": alone, "plan": describe_plan(cluster.assignments),
                "requests": done, "seconds": seconds, "nodes": rows, **budget,
                "answers": {i: [a.tolist() for a in v] for i, v in answers.items()}}  # fmt: skip
    finally:
        stop_nodes(cluster.nodes)
        await client.aclose()


def check_answers(result: dict[str, Any], references: list[np.ndarray]) -> dict[str, float]:
    """Largest difference of any cluster answer from the whole model's on its input, and
    the smallest difference between two inputs' references (what a wrong answer moves)."""
    worst = max(
        float(np.abs(np.asarray(a) - references[int(i)]).max())
        for i, got in result["answers"].items()
        for a in got
    )
    spread = min(
        float(np.abs(references[i] - references[j]).max())
        for i in range(len(references))
        for j in range(i + 1, len(references))
    )
    return {"max_abs_diff": worst, "min_input_spread": spread}


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    rows, verdicts = [], []
    for r in results:
        for n in r["nodes"]:
            peak, pred, budget = n["peak_bytes"], n["predicted_bytes"], n["budget_bytes"]
            err = (pred - peak) / peak
            rows.append([r["backend"], n["node"], ",".join(map(str, n["parts"])) or "-",
                         f"{budget / MIB:.0f}", f"{n['baseline_bytes'] / MIB:.0f}",
                         f"{pred / MIB:.0f}", f"{peak / MIB:.0f}",
                         f"{n['resident_bytes'] / MIB:.0f}", f"{peak / budget:.2f}",
                         f"{err:+.1%}"])  # fmt: skip
            verdicts.append((r["backend"], peak <= budget, abs(err) <= TARGET_ERROR))
    lines = ["# Models bigger than one node: memory budgets in resident memory", "",
             f"Command: `{args.command}`", "", *machine_lines(), "",
             f"{args.model}, random weights (seed 0, logits), cut into {args.parts} parts of "
             f"about equal weights per backend; {args.nodes} nodes on 127.0.0.1, each with "
             f"the budget below; {args.requests} requests, 2 per node in flight.", ""]  # fmt: skip
    for r in results:
        lines += [f"- **{r['backend']}**: budget {r['budget_bytes'] / MIB:.0f} MiB per node; "
                  f"weights {r['weights_bytes'] / MIB:.0f} MiB; the whole model would need "
                  f"{r['one_node_needs_bytes'] / MIB:.0f} MiB on one node. One node alone said: "
                  f"\"{r['alone']}\". Plan: {r['plan']}. Answers: max abs diff "
                  f"{r['check']['max_abs_diff']:.2e} from the whole model, against "
                  f"{r['check']['min_input_spread']:.2f} between two photos' logits."]  # fmt: skip
    lines += ["", *table("backend|node|parts|budget MiB|baseline MiB|predicted MiB|peak MiB"
                         "|resident MiB|peak / budget|predicted vs peak", rows), ""]  # fmt: skip
    for backend in dict.fromkeys(r["backend"] for r in results):
        mine = [v for b, *v in verdicts if b == backend]
        under = all(v[0] for v in mine)
        within = all(v[1] for v in mine)
        lines += [f"Targets, {backend}: no node above its budget: "
                  f"**{'met' if under else 'NOT met'}**; prediction within "
                  f"{TARGET_ERROR:.0%} of the peak: **{'met' if within else 'NOT met'}**.",
                  ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ConvNeXtLarge")
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--backends", default="litert,keras")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgenode-bench-memory"))
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.command = ".venv/bin/python benchmarks/memory.py " + " ".join(sys.argv[1:])
    args.work.mkdir(parents=True, exist_ok=True)
    from edgenode.model.loading import load_model

    say(f"building {args.model} (random weights, logits)")
    model = load_model(args.model, logits=True)
    side = int(model.inputs[0].shape[1])
    inputs = photo_inputs(side)
    references = [np.asarray(model(x, training=False)) for x in inputs]
    results = []
    for backend in args.backends.split(","):
        directory = split(model, args.model, args.parts, backend, args.work)
        manifest = json.loads((directory / "manifest.json").read_text())
        [name] = [t["name"] for t in manifest["model"]["inputs"]]
        feed = [{name: x} for x in inputs]
        result = asyncio.run(run_backend(args, backend, directory, feed))
        result["check"] = check_answers(result, references)
        results.append(result)
    text = report(args, results)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "memory.md").write_text(text)
    (args.out_dir / "memory.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
