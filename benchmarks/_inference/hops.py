"""Section 2: added latency per hop, nodes joining and leaving an 8-part cluster."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from harness.cluster import running
from harness.models import manifest_of, sample_inputs
from harness.nodes import START_DEADLINE_S, NodeProc
from harness.plans import describe_plan, offline_plan, planning_speed
from harness.report import met, ms, say, spread_ms, summary, table, timed

from _inference.context import Context, Section

HOP_TARGET_S = 250e-6


def fit_line(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least squares y = a + b x; the slope's standard error."""
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(xa) < 2 or np.ptp(xa) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "slope_se": float("nan")}
    b, a = np.polyfit(xa, ya, 1)
    resid = ya - (a + b * xa)
    dof = len(xa) - 2
    se = (
        math.sqrt(float(resid @ resid) / dof / float(((xa - xa.mean()) ** 2).sum()))
        if dof > 0
        else float("nan")
    )
    return {"slope": float(b), "intercept": float(a), "slope_se": se}


async def section_hops(ctx: Context, sec: Section) -> None:
    model, s, backend = ctx.args.model, ctx.settings, ctx.args.hop_backend
    directory = ctx.splits.get(model, 8, fmt=backend)
    manifest = manifest_of(directory)
    names = ctx.names("hop", 8)
    calibrated = ctx.speed(model)
    sizes = range(1, 9)
    speed = planning_speed(manifest, [names[:k] for k in sizes], calibrated, one_part_each=False)
    own = {
        k: describe_plan(offline_plan(manifest, names[:k], calibrated).assignments) for k in sizes
    }
    inputs = sample_inputs(manifest)
    points: dict[int, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    deadline_s = 45.0 if backend == "litert" else START_DEADLINE_S

    async def measure(k: int, runs: int, how: str) -> None:
        def make() -> list[NodeProc]:
            config = ctx.config("hop", speed, backend)
            return [NodeProc(n, ctx.work, config, directory) for n in ctx.names("hop", k)]

        try:
            async with running(ctx.client, make, attempts=3, deadline_s=deadline_s) as cluster:
                await ctx.client.latencies(cluster.origin, inputs, s.warmup)
                times = await ctx.client.latencies(cluster.origin, inputs, runs)
                point = points.setdefault(k, {
                    "nodes": k, "stages": len(cluster.stages), "replicas": cluster.replicas,
                    "plan": describe_plan(cluster.assignments), "latency_s": [], "passes": {},
                })  # fmt: skip
        except RuntimeError as exc:  # one size that never agrees must not lose the others
            say(f"hops: {k} nodes did not agree: {exc}")
            failed[f"{k} nodes, {how} pass"] = str(exc).split(" (logs")[0]
            return
        point["latency_s"] += times
        point["passes"][how] = times

    for k in sizes:  # up, then down: drift over the run shows as a gap between the passes
        await measure(k, s.hop_runs if k == sizes[-1] else s.hop_runs // 2, "up")
    for k in reversed(sizes[:-1]):
        await measure(k, s.hop_runs // 2, "down")
    # For reference: the same parts in this process, no node and no network.
    chain = [sum(run) for run in zip(*ctx.runner(directory).time_parts(s.part_runs), strict=True)]
    whole = timed(ctx.runner(ctx.splits.get(model, 1, fmt=backend)).whole(), s.part_runs)
    usable = [p for _, p in sorted(points.items()) if p["replicas"] == 1]
    x = [p["stages"] - 1 for p in usable]
    y = [statistics.median(p["latency_s"]) for p in usable]
    fit = fit_line(x, y)
    tail = [(a, b) for a, b in zip(x, y, strict=True) if a >= 1]
    fit2 = fit_line([a for a, _ in tail], [b for _, b in tail])
    sec.data = {
        "pinned_gflops": speed,
        "calibrated_gflops": calibrated,
        "points": list(points.values()),
        "fit": fit,
        "fit_from_2_stages": fit2,
        "did_not_agree": failed,
        "in_process": {"chain_s": chain, "whole_s": whole},
    }
    rows = []
    for k, p in sorted(points.items()):
        st = summary(p["latency_s"])
        by_pass = " / ".join(
            ms(statistics.median(p["passes"][h])) if h in p["passes"] else "-"
            for h in ("up", "down")
            if k < sizes[-1] or h == "up"
        )
        row = [k, p["stages"], p["plan"], own[k], st["n"], ms(st["median"]), spread_ms(st)]
        rows.append([*row, ms(st["mean"]), ms(st["std"]), by_pass])
    slope, se = fit["slope"], fit["slope_se"]
    ctx.targets.append(
        f"added latency per hop: {slope * 1e6:.0f} +- {se * 1e6:.0f} us "
        f"(target <= {HOP_TARGET_S * 1e6:.0f} us): {met(slope <= HOP_TARGET_S)}"
    )
    sec.lines += [
        f"{model} cut into 8 balanced parts ({backend}; `--hop-backend keras` for Keras parts, "
        "see the notes). A fresh cluster for each size, sizes 1 to 8 then 7 to 1; at each "
        f"size, {s.warmup} warm-up requests, then {s.hop_runs // 2} single requests sent to the "
        f"node running part 0 ({s.hop_runs} per size: both passes, or all at 8). All nodes "
        "pinned to "
        f"`speed_gflops = {speed}`, at which the planner gives every node a stage; the column "
        f"'plan at calibrated speed' is its plan at the calibrated {calibrated} GFLOP/s.",
        "",
        *table(
            "nodes|stages|parts per stage|plan at calibrated speed|runs|median ms|p10-p90 ms"
            "|mean ms|std ms|median ms: up / down pass",
            rows,
        ),
        "",
        f"- added latency per hop (least-squares slope of the median latency against stages - 1, "
        f"{len(usable)} sizes): **{slope * 1e6:.0f} us** +- {se * 1e6:.0f} us (standard error); "
        f"target <= {HOP_TARGET_S * 1e6:.0f} us: {met(slope <= HOP_TARGET_S)}",
        f"- fit from 2 stages on (every point then also has the hop of the output back to the "
        f"origin): {fit2['slope'] * 1e6:.0f} us +- {fit2['slope_se'] * 1e6:.0f} us per hop; "
        f"intercept of the first fit {ms(fit['intercept'])} ms (1 stage: "
        f"{ms(y[0]) if y else '-'} ms)",
        "- a hop here is: the stage's outputs encoded and sent over gRPC on loopback, received "
        "and joined by the next node, which then runs its stage (on its event loop when it "
        "idled before, see edgenode/runtime/parts.py); the total work (8 parts) is the same "
        "at every size.",
        f"- for reference, in this process ({s.part_runs} runs, median): the whole model "
        f"{ms(statistics.median(whole))} ms, the 8 parts back to back "
        f"{ms(statistics.median(chain))} ms; the 1-node cluster adds the client's request and "
        "reply, and this machine's slowdown of parts run after idling (section 1).",
        *(f"- {k}: no agreement in 3 attempts ({why})" for k, why in failed.items()),
        "",
        "![hops](inference-hops.png)",
    ]


def plot(plt: Any, data: Mapping[str, Any]) -> Any:
    points, fit = data["points"], data["fit"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = np.array([p["stages"] - 1 for p in points])
    lat = [np.asarray(p["latency_s"]) * 1e3 for p in points]
    med = np.array([np.median(v) for v in lat])
    err = [med - [np.percentile(v, 10) for v in lat], [np.percentile(v, 90) for v in lat] - med]
    ax.errorbar(x, med, yerr=err, fmt="o", capsize=3, label="median, p10-p90")
    if math.isfinite(fit["slope"]):
        xs = np.array([x.min(), x.max()])
        line = (fit["intercept"] + fit["slope"] * xs) * 1e3
        ax.plot(xs, line, "-", label=f"fit: {fit['slope'] * 1e6:.0f} us per hop")
    ax.set_xlabel("stages - 1 (hops between nodes)")
    ax.set_ylabel("latency, ms")
    ax.set_title("Latency against the number of stages (8 parts)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
