"""Section 3: requests/s of a 2-node pipeline against two independent nodes (the ceiling)."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from harness.cluster import Client, Cluster, stage_counters, stage_means, start_nodes
from harness.models import manifest_of, sample_inputs
from harness.nodes import NodeProc, cpu_seconds, settle, stop_nodes
from harness.plans import describe_plan, planning_speed
from harness.report import met, ms, say, summary, table
from harness.rounds import interleaved_async

from _inference.context import Context, Section

PIPELINE_TARGET = 0.90


async def offered_load(
    client: Client,
    targets: Sequence[str],
    pids: Sequence[int],
    inputs: Mapping[str, np.ndarray],
    concurrency: int,
    seconds: float,
    warmup_s: float,
) -> dict[str, Any]:
    """``concurrency`` clients in a loop (worker i sends to targets[i % len]); completions
    inside the window after ``warmup_s`` count; CPU use of ``pids`` and of this process
    over the window, in % of one core."""
    from edgenode.errors import EdgenodeError

    begin = time.perf_counter()
    window = (begin + warmup_s, begin + warmup_s + seconds)
    done: list[float] = []
    errors = [0]
    cpu: dict[str, Any] = {}

    async def worker(i: int) -> None:
        target = targets[i % len(targets)]
        while time.perf_counter() < window[1]:
            start = time.perf_counter()
            try:
                await client.infer(target, inputs)
            except EdgenodeError:
                errors[0] += 1
                continue
            end = time.perf_counter()
            if window[0] <= end <= window[1]:
                done.append(end - start)

    async def sample() -> None:
        await asyncio.sleep(window[0] - time.perf_counter())  # a clock, not an event
        nodes, me = [cpu_seconds(p) for p in pids], time.process_time()
        await asyncio.sleep(window[1] - time.perf_counter())
        cpu["nodes_pct"] = [
            100 * (cpu_seconds(p) - c) / seconds for p, c in zip(pids, nodes, strict=True)
        ]
        cpu["client_pct"] = 100 * (time.process_time() - me) / seconds

    await asyncio.gather(sample(), *(worker(i) for i in range(concurrency)))
    return {"rps": len(done) / seconds, "latency_s": summary(done), "errors": errors[0], **cpu}


async def section_pipelining(ctx: Context, sec: Section) -> None:
    if shutil.which("taskset") is None:
        raise RuntimeError("taskset (util-linux) is needed to pin nodes to cores")
    if (os.cpu_count() or 1) < 2:
        raise RuntimeError("pipelining needs at least 2 cores")
    model, s = ctx.args.model, ctx.settings
    whole_dir, two_dir = ctx.splits.get(model, 1), ctx.splits.get(model, 2)
    profiled_dir = ctx.splits.get(model, 2, profiled=True)
    calibrated = ctx.speed(model)
    groups = {  # cluster: its nodes' split and cores
        "one": (whole_dir, [0]),
        "two": (two_dir, [0, 1]),
        "prof": (profiled_dir, [0, 1]),
        "c": (whole_dir, [0]),
        "d": (whole_dir, [1]),
    }
    names = {g: ctx.names(g, len(cores)) for g, (_, cores) in groups.items()}
    speed = planning_speed(manifest_of(two_dir), [names["two"]], calibrated, one_part_each=True)
    inputs = sample_inputs(manifest_of(whole_dir))
    labels = [
        "1 node, core 0",
        "2-node pipeline, FLOP-balanced cut, cores 0 and 1",
        "2-node pipeline, cut on a profile, cores 0 and 1",
        "ceiling: 2 independent whole-model nodes, cores 0 and 1",
    ]
    setups = dict(zip(labels, [["one"], ["two"], ["prof"], ["c", "d"]], strict=True))
    procs: dict[str, list[NodeProc]] = {}
    clusters: dict[str, Cluster] = {}
    try:
        for g, (directory, cores) in groups.items():  # all processes start at once
            config = ctx.config(f"pipe{g}", speed)
            procs[g] = [
                NodeProc(n, ctx.work, config, directory, core=core, threads=1)
                for n, core in zip(names[g], cores, strict=True)
            ]
        for g, group in procs.items():
            clusters[g] = Cluster(nodes=[])
            await start_nodes(ctx.client, clusters[g], group)
            say(f"pipelining: cluster {g} agreed: {describe_plan(clusters[g].assignments)}")
        await settle([n for group in procs.values() for n in group])
        targets = {k: [clusters[g].origin for g in gs] for k, gs in setups.items()}
        pids = {k: [n.process.pid for g in gs for n in procs[g]] for k, gs in setups.items()}
        for t in targets.values():
            for address in t:
                await ctx.client.latencies(address, inputs, s.warmup)
        compared = {labels[1]: clusters["two"], labels[2]: clusters["prof"]}
        before = {k: await stage_counters(ctx.client, c) for k, c in compared.items()}

        async def load(label: str) -> dict[str, Any]:
            result = await offered_load(
                ctx.client, targets[label], pids[label], inputs, s.concurrency, s.load_seconds, 1.0
            )
            say(f"pipelining: {label}: {result['rps']:.1f} req/s")
            return result

        runs = await interleaved_async(
            labels, s.load_rounds, load, label=str, what="pipelining round", rotate=True
        )
        two_plan = describe_plan(clusters["two"].assignments)
        cuts = {g: [p.start for p in manifest_of(groups[g][0]).parts] for g in ("two", "prof")}
        stage_s = {}  # per pipeline: mean seconds per part on its node under load
        for label, c in compared.items():
            means = stage_means(before[label], await stage_counters(ctx.client, c))
            stage_s[label] = {str(part): v for part, v in sorted(means.items())}
    finally:
        stop_nodes([n for group in procs.values() for n in group])
    rps = {k: [r["rps"] for r in v] for k, v in runs.items()}
    ceiling = labels[3]
    ratios = {
        label: statistics.median(rps[label]) / statistics.median(rps[ceiling])
        for label in labels[1:3]
    }
    ratio_rounds = {
        label: [a / b for a, b in zip(rps[label], rps[ceiling], strict=True)]
        for label in labels[1:3]
    }
    best = max(ratios.values())
    sec.data = {
        "runs": runs,
        "pinned_gflops": speed,
        "two_node_plan": two_plan,
        "cuts": cuts,
        "ratio_rounds": ratio_rounds,
        "stage_means_s": stage_s,
    }
    ctx.targets.append(
        f"2-node pipeline: {ratios[labels[1]]:.2f} of the ceiling with the FLOP-balanced cut, "
        f"{ratios[labels[2]]:.2f} cut on a profile (target >= {PIPELINE_TARGET:.2f}): "
        f"{met(best >= PIPELINE_TARGET)}"
    )
    rows = []
    for label in labels:
        st = summary(rps[label])
        lat = statistics.median(r["latency_s"].get("median", float("nan")) for r in runs[label])
        errors = sum(r["errors"] for r in runs[label])
        node_cpu = np.median([r["nodes_pct"] for r in runs[label]], axis=0)
        client_cpu = statistics.median(r["client_pct"] for r in runs[label])
        rows.append([
            label, f"{st['median']:.1f}", f"{st['p10']:.1f}-{st['p90']:.1f}",
            f"{st['median'] / statistics.median(rps[ceiling]):.2f}",
            f"{st['median'] / statistics.median(rps[labels[0]]):.2f}", ms(lat, 1),
            " / ".join(f"{v:.0f}" for v in node_cpu), f"{client_cpu:.0f}", errors,
        ])  # fmt: skip
    sec.lines += [
        f"{model}, Keras, every node started under `taskset -c CORE` with one TensorFlow "
        f"thread (`--threads 1`); {s.concurrency} requests in flight from this process (not "
        f"pinned: the client shares the two cores with the nodes), {s.load_seconds:g} s "
        f"measured after 1 s of load, {s.load_rounds} rounds with the order of the setups "
        f"rotated. The pipelines' splits: 2 parts, plan `{two_plan}`, cut before op "
        f"{cuts['two'][1]} (balanced on FLOPs) or op {cuts['prof'][1]} (balanced on "
        "`edgenode profile --threads 1` run on core 0 before the nodes start); the ceiling "
        "sends every other client's requests to each of the two independent clusters. CPU: % "
        "of one core over the measured window (median of rounds), per node process and for "
        "this process (the client, with its gRPC threads).",
        "",
        *table(
            "setup|req/s (median of rounds)|p10-p90 over rounds|ratio to ceiling"
            "|ratio to 1 node|median latency under load ms|CPU % per node|client CPU %"
            "|errors",
            rows,
        ),
        "",
        *(
            f"- {label} / ceiling: **{ratios[label]:.2f}** (per round: "
            f"{', '.join(f'{v:.2f}' for v in ratio_rounds[label])}); part run times on the "
            "nodes under load: " + " / ".join(f"{ms(v, 1)} ms" for v in stage_s[label].values())
            for label in labels[1:3]
        ),
        f"- target >= {PIPELINE_TARGET:.2f}: {met(best >= PIPELINE_TARGET)}. Quick prototypes "
        "here: grpc.aio 0.75-0.81, raw TCP 0.92-0.98.",
        "",
        "![pipelining](inference-pipelining.png)",
    ]


def plot(plt: Any, data: Mapping[str, Any]) -> Any:
    labels = list(data["runs"])
    rps = [[r["rps"] for r in data["runs"][k]] for k in labels]
    med = np.array([np.median(v) for v in rps])
    err = [med - [np.percentile(v, 10) for v in rps], [np.percentile(v, 90) for v in rps] - med]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh(
        range(len(labels)), med, xerr=err, capsize=3, color=[f"C{i}" for i in range(len(labels))]
    )
    ax.set_yticks(range(len(labels)), [lbl.replace(": ", ":\n") for lbl in labels], fontsize=8)
    ax.axvline(med[-1] * PIPELINE_TARGET, color="k", ls="--", lw=1, label="90 % of ceiling")
    ax.set_xlabel("requests/s (median of rounds, p10-p90)")
    ax.set_title("Pipelining under concurrent load")
    ax.legend(fontsize=8)
    return fig
