"""Section 4: Keras against LiteRT per part (in process and on the nodes) and end to end."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from harness.models import manifest_of
from harness.plots import grouped_bars
from harness.report import ms, say, spread_ms, summary, table, timed

from _inference.context import Context, Section


async def section_backends(ctx: Context, sec: Section) -> None:
    model, s = ctx.args.model, ctx.settings
    dirs = {fmt: ctx.splits.get(model, 5, fmt=fmt) for fmt in ("keras", "litert")}
    wholes = {fmt: ctx.splits.get(model, 1, fmt=fmt) for fmt in ("keras", "litert")}
    manifest = manifest_of(dirs["keras"])
    parts: dict[str, list[list[float]]] = {}
    whole: dict[str, list[float]] = {}
    for fmt in ("keras", "litert"):
        say(f"backends: timing {fmt} parts in process")
        parts[fmt] = ctx.runner(dirs[fmt]).time_parts(s.part_runs)
        whole[fmt] = timed(ctx.runner(wholes[fmt]).whole(), s.part_runs)
    proto = ctx.shared.get("prototype")
    node_means: dict[str, dict[str, float]] = {}
    cluster: dict[str, dict[str, float]] = {}
    if proto is not None:
        for e in proto["setups"]:
            if e["one_part_each"]:
                node_means[e["backend"]] = e["part_means_s"]
                cluster[e["backend"]] = summary(e["cluster_s"])
    rows = []
    for p in manifest.parts:
        k, li = summary(parts["keras"][p.index]), summary(parts["litert"][p.index])
        rows.append([
            p.index, f"{p.start}-{p.stop - 1}", f"{p.flops / 1e6:.0f}", len(p.inputs),
            f"{ms(k['median'])} ({spread_ms(k)})", f"{ms(li['median'])} ({spread_ms(li)})",
            f"{k['median'] / li['median']:.2f}",
            ms(node_means.get("keras", {}).get(str(p.index))),
            ms(node_means.get("litert", {}).get(str(p.index))),
        ])  # fmt: skip
    e2e = []
    for fmt in ("keras", "litert"):
        w = summary(whole[fmt])
        chain = [sum(run) for run in zip(*parts[fmt], strict=True)]
        c = summary(chain)
        cl = cluster.get(fmt)
        e2e.append([
            fmt, f"{ms(w['median'])} ({spread_ms(w)})", f"{ms(c['median'])} ({spread_ms(c)})",
            f"{c['median'] / w['median']:.2f}",
            f"{ms(cl['median'])} ({spread_ms(cl)})" if cl else "-",
            f"{cl['median'] / w['median']:.2f}" if cl else "-",
        ])  # fmt: skip
    sec.data = {"parts_s": parts, "whole_s": whole, "node_part_means_s": node_means}
    sec.lines += [
        f"{model}, the 5-part balanced split. In process: each part timed {s.part_runs} times "
        "(parts interleaved) by the runner a node uses (`edgenode.backends.load_runner`; LiteRT "
        "with 1 thread as a node's default, Keras with TensorFlow's default threads); on node: "
        "the node's mean run time of the part during section 1's timed requests.",
        "",
        *table(
            "part|op range|MFLOP|inputs|Keras ms median (p10-p90)"
            "|LiteRT ms median (p10-p90)|Keras / LiteRT|Keras on node ms"
            "|LiteRT on node ms",
            rows,
        ),
        "",
        "End to end (medians, p10-p90):",
        "",
        *table(
            "backend|whole model in process ms|5 parts chained in process ms"
            "|chain / whole|5 nodes ms (section 1)|5 nodes / whole",
            e2e,
        ),
        "",
        "![backends](inference-backends.png)",
    ]


def plot(plt: Any, data: Mapping[str, Any]) -> Any:
    parts = data["parts_s"]
    n = len(parts["keras"])
    series: list[tuple[str, Sequence[Any]]] = [
        (f"{name}, in process (median)", parts[fmt])
        for fmt, name in (("keras", "Keras"), ("litert", "LiteRT"))
    ]
    for fmt, name in (("keras", "Keras"), ("litert", "LiteRT")):
        means = data["node_part_means_s"].get(fmt)
        if means:
            series.append(
                (f"{name}, on node (mean)", [means.get(str(i), np.nan) for i in range(n)])
            )
    fig, ax = plt.subplots(figsize=(7, 4))
    grouped_bars(ax, series, [f"part {i}" for i in range(n)])
    ax.set_ylabel("ms per run")
    ax.set_title("Per-part run time: Keras and LiteRT")
    return fig
