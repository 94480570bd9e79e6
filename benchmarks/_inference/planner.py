"""Section 5: the planner's predicted against measured stage times; balanced against even split."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from harness.models import manifest_of
from harness.plans import describe_plan, offline_plan
from harness.plots import grouped_bars
from harness.report import ms, say, spread_ms, summary, table

from _inference.context import Context, Section


def predicted_stages(
    manifest: Any, stages: Sequence[tuple[int, int]], speed_gflops: float
) -> list[Any]:
    """The planner's cost of each stage at ``speed_gflops`` with the runtime's link model."""
    from edgenode.planning import NodeSpec, stage_cost
    from edgenode.runtime.negotiation import DEFAULT_LINK

    graph = manifest.cost_graph()
    node = NodeSpec(node_id="x", speed=speed_gflops * 1e9, memory_bytes=1 << 40)
    return [stage_cost(graph, a, b, node, DEFAULT_LINK) for a, b in stages]


async def section_planner(ctx: Context, sec: Section) -> None:
    model, s = ctx.args.model, ctx.settings
    calibrated = ctx.speed(model)
    proto = ctx.shared.get("prototype")
    lines: list[str] = []
    data: dict[str, Any] = {"calibrated_gflops": calibrated}
    if proto is None:
        lines += ["(section 1 did not run: no measured stage times from nodes)", ""]
    else:
        rows = []
        for e in proto["setups"]:
            manifest = manifest_of(ctx.splits.root / e["directory"])
            stages = [tuple(x) for x in e["stages"]]
            # the speed this backend reached on the whole model, in the same rounds
            speed = manifest.model.flops / statistics.median(e["local_s"]) / 1e9
            predicted = predicted_stages(manifest, stages, speed)
            means = {int(k): v for k, v in e["part_means_s"].items()}
            for i, ((a, b), cost) in enumerate(zip(stages, predicted, strict=True)):
                measured = sum(means.get(p, float("nan")) for p in range(a, b))
                rows.append([
                    e["label"], i, f"{a}" if b - a == 1 else f"{a}-{b - 1}",
                    f"{cost.work / 1e6:.0f}", ms(cost.compute_s), ms(measured),
                    f"{measured / cost.compute_s:.2f}", ms(cost.time_s - cost.compute_s),
                ])  # fmt: skip
            data.setdefault("stages", []).append(
                {
                    "label": e["label"],
                    "speed_gflops": speed,
                    "predicted_compute_s": [c.compute_s for c in predicted],
                    "predicted_time_s": [c.time_s for c in predicted],
                }
            )
            latency = sum(c.time_s for c in predicted)
            data.setdefault("latency", []).append(
                {
                    "label": e["label"],
                    "predicted_s": latency,
                    "measured_median_s": statistics.median(e["cluster_s"]),
                }
            )
        lines += [
            "Compute time per stage of section 1's clusters: predicted = the stage's FLOPs / "
            "the speed the backend reached on the whole model locally in the same rounds "
            "(what a speed score calibrated on this model would give); measured = the sum over "
            "the stage's parts of the node's mean part run time (`GetStatus` stages). The "
            "planner also charges each stage its sends at 125 MB/s plus 0.5 ms (last column); "
            "its latency below is at that speed too.",
            "",
            *table(
                "setup|stage|parts|MFLOP|predicted ms|measured ms|measured / predicted"
                "|planner's send + hop ms",
                rows,
            ),
            "",
            "End to end, one request: the planner's latency (sum of its stage times) against "
            "the measured median:",
            "",
            *table(
                ["setup", "planner latency ms", "measured median ms"],
                [
                    [x["label"], ms(x["predicted_s"]), ms(x["measured_median_s"])]
                    for x in data["latency"]
                ],
            ),
            "",
        ]
    # balanced against equal operations
    rows = []
    data["splits"] = {}
    for method in ("balanced", "even"):
        directory = ctx.splits.get(model, 5, method=method)
        manifest = manifest_of(directory)
        say(f"planner: timing the {method} split's parts in process")
        times = ctx.runner(directory).time_parts(s.part_runs)
        medians = [statistics.median(t) for t in times]
        flops = [p.flops for p in manifest.parts]
        predicted = [f / (calibrated * 1e9) for f in flops]
        per_run_max = [max(run) for run in zip(*times, strict=True)]
        bottleneck = summary(per_run_max)
        data["splits"][method] = {
            "parts_s": times,
            "flops": flops,
            "ops": [p.stop - p.start for p in manifest.parts],
        }
        plan = offline_plan(manifest, [f"n{i}" for i in range(5)], calibrated)
        rows.append([
            method, ", ".join(str(p.stop - p.start) for p in manifest.parts),
            ", ".join(f"{f / 1e6:.0f}" for f in flops), ", ".join(ms(m) for m in medians),
            ms(max(predicted)), f"{ms(max(medians))} ({spread_ms(bottleneck)})",
            describe_plan(plan.assignments),
        ])  # fmt: skip
    lines += [
        f"Balanced split (`--cut balanced`, the default) against equal operation counts "
        f"(`--cut even`), 5 parts, Keras, parts timed in process ({s.part_runs} runs): the "
        "bottleneck stage sets a pipeline's throughput.",
        "",
        *table(
            "split|ops per part|MFLOP per part|median ms per part|predicted bottleneck ms"
            "|measured bottleneck ms (p10-p90 of per-run max)"
            f"|planner's plan on 5 nodes at {calibrated} GFLOP/s",
            rows,
        ),
        "",
        "![planner](inference-planner.png)",
    ]
    sec.data = data
    sec.lines += lines


def plot(plt: Any, data: Mapping[str, Any], proto: Mapping[str, Any] | None) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if data.get("stages") and proto is not None:
        e = proto["setups"][0]
        means = {int(k): v for k, v in e["part_means_s"].items()}
        measured = [sum(means.get(p, np.nan) for p in range(a, b)) for a, b in e["stages"]]
        predicted = data["stages"][0]["predicted_compute_s"]
        series = [("predicted (FLOPs / speed)", predicted), ("measured on node", measured)]
        grouped_bars(axes[0], series, [f"stage {i}" for i in range(len(measured))])
        axes[0].set_ylabel("ms")
        axes[0].set_title(f"{e['label']}: compute per stage")
    else:
        axes[0].set_axis_off()
    splits = data["splits"]
    series = [
        (f"{method} (ops {'/'.join(map(str, d['ops']))}), median", d["parts_s"])
        for method, d in splits.items()
    ]
    grouped_bars(axes[1], series, [f"part {i}" for i in range(len(series[0][1]))])
    axes[1].set_ylabel("ms per run (in process, Keras)")
    axes[1].set_title("Balanced against equal-operations split")
    return fig
