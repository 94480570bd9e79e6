"""Local whole model against a cluster, one request at a time, in interleaved rounds."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from harness.cluster import running, stage_counters, stage_means
from harness.models import manifest_of, sample_inputs
from harness.nodes import NodeProc
from harness.plans import describe_plan, offline_plan, planning_speed, stage_ranges
from harness.report import met, ms, say, spread_ms, summary, table, timed
from harness.rounds import interleaved_async

from _inference.context import Context, Section

RATIO_TARGET = 1.5


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencySetup:
    label: str
    tag: str  # short, for node names
    directory: Path
    backend: str  # keras | litert
    local: Path  # 1-part split for the local baseline
    one_part_each: bool = True


def keras_and_litert(ctx: Context, model: str) -> list[LatencySetup]:
    """5 nodes with one part each, Keras and LiteRT parts, each against its 1-part split."""
    sp = ctx.splits
    return [
        LatencySetup(
            label="5 nodes, Keras parts",
            tag="keras",
            directory=sp.get(model, 5),
            backend="keras",
            local=sp.get(model, 1),
        ),
        LatencySetup(
            label="5 nodes, LiteRT parts",
            tag="lite",
            directory=sp.get(model, 5, fmt="litert"),
            backend="litert",
            local=sp.get(model, 1, fmt="litert"),
        ),
    ]


async def measure_latency(
    ctx: Context, sec: Section, model: str, setups: Sequence[LatencySetup], key: str
) -> dict[str, Any]:
    """`compare_latency` on 5 nodes, its targets recorded, its results the section's data
    and ``ctx.shared[key]`` (for later sections' plots and predictions)."""
    results = await compare_latency(ctx, model, setups, nodes=5)
    ctx.targets += ratio_targets(results)
    ctx.shared[key] = results
    sec.data = results
    return results


async def local_and_cluster(
    ctx: Context,
    local: Callable[[], Any],
    origin: str,
    inputs: Mapping[str, np.ndarray],
    per_round: int,
) -> dict[str, list[list[float]]]:
    """``per_round`` local runs, then as many requests to the cluster, in each of the
    settings' rounds; per side, the seconds of each round."""

    async def measure(side: str) -> list[float]:
        if side == "local":
            return timed(local, per_round, warmup=2)
        return await ctx.client.latencies(origin, inputs, per_round)

    return await interleaved_async(
        ["local", "cluster"], ctx.settings.rounds, measure, label=str, what="latency round"
    )


async def compare_latency(
    ctx: Context, model: str, setups: Sequence[LatencySetup], nodes: int
) -> dict[str, Any]:
    """Per setup: local and cluster latencies interleaved in rounds, plan, stage times."""
    s = ctx.settings
    calibrated = ctx.speed(model)
    per_round = max(1, s.runs // s.rounds)
    results: dict[str, Any] = {"model": model, "calibrated_gflops": calibrated, "setups": []}
    for setup in setups:
        manifest = manifest_of(setup.directory)
        names = ctx.names(setup.tag, nodes)
        own = offline_plan(manifest, names, calibrated)
        speed = planning_speed(manifest, [names], calibrated, one_part_each=setup.one_part_each)
        local = ctx.runner(setup.local).whole()
        inputs = sample_inputs(manifest)
        say(f"{model} {setup.label}: {len(manifest.parts)} parts, pinned {speed} GFLOP/s")

        def make(setup: LatencySetup = setup, speed: float = speed) -> list[NodeProc]:
            config = ctx.config("lat", speed, setup.backend)
            return [
                NodeProc(n, ctx.work, config, setup.directory) for n in ctx.names(setup.tag, nodes)
            ]

        async with running(ctx.client, make) as cluster:
            await ctx.client.latencies(cluster.origin, inputs, s.warmup)
            before = await stage_counters(ctx.client, cluster)
            runs = await local_and_cluster(ctx, local, cluster.origin, inputs, per_round)
            local_times = [t for times in runs["local"] for t in times]
            cluster_times = [t for times in runs["cluster"] for t in times]
            ratios = [
                statistics.fmean(ct) / statistics.fmean(lt)
                for lt, ct in zip(runs["local"], runs["cluster"], strict=True)
            ]
            after = await stage_counters(ctx.client, cluster)
            stages = cluster.stages
            entry = {
                "label": setup.label,
                "backend": setup.backend,
                "directory": setup.directory.name,
                "parts": len(manifest.parts),
                "one_part_each": setup.one_part_each,
                "pinned_gflops": speed,
                "plan": describe_plan(cluster.assignments),
                "plan_matches_offline": [r[1:] for r in cluster.stages]
                == [r[1:] for r in stage_ranges(offline_plan(manifest, names, speed).assignments)],
                "own_plan_at_calibrated_speed": describe_plan(own.assignments),
                "replicas": cluster.replicas,
                "stages": [[a, b] for _, a, b in stages],
                "local_s": local_times,
                "cluster_s": cluster_times,
                "round_ratios": ratios,
                "part_means_s": {str(k): v for k, v in sorted(stage_means(before, after).items())},
            }
        results["setups"].append(entry)
    return results


def latency_table(results: Mapping[str, Any]) -> list[str]:
    rows: list[list[object]] = []
    for e in results["setups"]:
        local, clus = summary(e["local_s"]), summary(e["cluster_s"])
        ratio = clus["mean"] / local["mean"]
        rr = e["round_ratios"]
        target = met(ratio <= RATIO_TARGET) if e["one_part_each"] else "-"
        rows.append([
            f"local whole model, {e['backend']} (baseline of the next row)", 1, "-", local["n"],
            ms(local["mean"]), ms(local["std"]), ms(local["median"]), spread_ms(local), "1.00",
            "-", "-",
        ])  # fmt: skip
        rows.append([
            e["label"], e["parts"], len(e["stages"]), clus["n"], ms(clus["mean"]),
            ms(clus["std"]), ms(clus["median"]), spread_ms(clus), f"{ratio:.2f}",
            f"{statistics.median(rr):.2f} ({min(rr):.2f}-{max(rr):.2f})", target,
        ])  # fmt: skip
    return table(
        "setup|parts|stages|runs|mean ms|std ms|median ms|p10-p90 ms"
        "|ratio (mean / local mean)|ratio per round: median (min-max)"
        "|target <= 1.5",
        rows,
    )


def ratio_targets(results: Mapping[str, Any]) -> list[str]:
    """'model, setup: ratio (target <= 1.5): met' for the one-part-per-node setups."""
    out = []
    for e in results["setups"]:
        if e["one_part_each"]:
            ratio = statistics.fmean(e["cluster_s"]) / statistics.fmean(e["local_s"])
            out.append(
                f"{results['model']}, {e['label']}: {ratio:.2f}x the local whole model "
                f"(target <= {RATIO_TARGET}): {met(ratio <= RATIO_TARGET)}"
            )
    return out


def plan_notes(results: Mapping[str, Any]) -> list[str]:
    lines = [
        f"- speed: {results['calibrated_gflops']} GFLOP/s = model FLOPs / local Keras median "
        "time. The planner, fed this speed and its link model (125 MB/s, 0.5 ms per hop: "
        "`edgenode.runtime.negotiation.DEFAULT_LINK`), would plan:"
    ]
    for e in results["setups"]:
        lines.append(
            f"  - {e['label']}: `{e['own_plan_at_calibrated_speed']}`; measured with pinned "
            f"`speed_gflops = {e['pinned_gflops']}` (planning only), agreed plan `{e['plan']}`"
            + ("" if e["plan_matches_offline"] else " (differs from the offline prediction)")
        )
    return lines


def plot(plt: Any, results: Sequence[Mapping[str, Any]]) -> Any:
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        names, values = [], []
        for e in res["setups"]:
            names += [f"local whole model, {e['backend']}", e["label"].split(", one op")[0]]
            values += [np.asarray(e["local_s"]) * 1e3, np.asarray(e["cluster_s"]) * 1e3]
        values, names = values[::-1], names[::-1]  # the first setup at the top
        ax.boxplot(values, orientation="horizontal", whis=(10, 90), showfliers=False)
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        medians = [float(np.median(v)) for v in values]
        if max(medians) > 8 * min(medians):
            ax.set_xscale("log")
        ax.set_xlabel("latency, ms (box: quartiles, whiskers: p10-p90)")
        ax.set_title(f"{res['model']}: one request at a time")
        ax.grid(axis="x", alpha=0.3)
    return fig
