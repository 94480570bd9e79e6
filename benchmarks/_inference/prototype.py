"""Section 1: the prototype's table, MobileNetV3Large on 5 nodes against the whole model locally."""

from __future__ import annotations

import statistics
from typing import Any

from harness.report import ms, say, spread_ms, summary, table, timed

from _inference.context import Context, Section
from _inference.latency import (
    LatencySetup,
    keras_and_litert,
    latency_table,
    measure_latency,
    plan_notes,
)


async def section_prototype(ctx: Context, sec: Section) -> None:
    model = ctx.args.model
    sp = ctx.splits
    setups = [
        *keras_and_litert(ctx, model),
        LatencySetup(
            label="per-op: 5 nodes, one operation per part, Keras",
            tag="perop",
            directory=sp.get(model, None, method="per-op"),
            backend="keras",
            local=sp.get(model, 1),
            one_part_each=False,
        ),
    ]
    results = await measure_latency(ctx, sec, model, setups, "prototype")
    s = ctx.settings
    idle_rows = [
        idle_breakdown(ctx, setup, results["setups"][i]) for i, setup in enumerate(setups[:2])
    ]
    # Where the per-op cost goes: the same parts back to back in this process, no nodes.
    say("per-op parts in process: loading every part")
    per_op = ctx.runner(setups[2].directory)
    runs = max(5, s.runs // 5)
    chain = [sum(run) for run in zip(*per_op.time_parts(runs), strict=True)]
    whole = timed(ctx.runner(setups[2].local).whole(), runs)
    node = results["setups"][2]
    on_nodes = sum(node["part_means_s"].values())
    results["per_op_in_process"] = {"chain_s": chain, "whole_s": whole}
    w, c, e = summary(whole), summary(chain), summary(node["cluster_s"])
    breakdown = [
        ["whole model, in process", 1, ms(w["median"]), spread_ms(w), "1.00"],
        ["parts back to back, in process", len(per_op.runners), ms(c["median"]), spread_ms(c),
         f"{c['median'] / w['median']:.2f}"],
        ["sum of the nodes' mean part times (section's runs)", len(per_op.runners),
         ms(on_nodes), "-", f"{on_nodes / w['median']:.2f}"],
        ["5 nodes end to end (table above)", len(per_op.runners), ms(e["median"]), spread_ms(e),
         f"{e['median'] / w['median']:.2f}"],
    ]  # fmt: skip
    sec.lines += [
        f"{model}, one request at a time, {s.runs} runs per setup in {s.rounds} rounds "
        "(local runs, then cluster runs, each round); local = the whole model (a 1-part split) "
        "run in the benchmark process by the part runner a node uses; 5 nodes = 5 `edgenode "
        "run` processes, the request sent to the node running part 0.",
        "",
        *latency_table(results),
        "",
        *plan_notes(results),
        "- the prototype's figures: 1.146 (5 nodes, against a baseline 70x slower than ours), "
        "2.59 (per layer); throwaway prototypes on this machine: grpc.aio 1.9x (both backends), "
        "blocking raw TCP 1.65x (Keras) and 1.40x (LiteRT).",
        "",
        f"Where the 5-node time goes ({max(5, s.runs // 5)} runs each in process; ratio of "
        "medians to the whole model in process). A node serving one request at a time idles "
        "while the other stages run; the same parts run in this process after sleeping that "
        "long (the 5-node median latency) before each part show what idling alone costs on "
        "this machine, with no node and no network involved:",
        "",
        *table(
            "setup|what|median ms|ratio",
            [row for rows in idle_rows for row in rows],
        ),
        "",
        f"Where the per-op time goes (Keras, {runs} runs each in process; ratio of medians to "
        "the whole model in process):",
        "",
        *table("what|parts|median ms|p10-p90 ms|ratio", breakdown),
        "",
        "![latency](inference-latency.png)",
    ]


def idle_breakdown(ctx: Context, setup: LatencySetup, entry: dict[str, Any]) -> list[list[str]]:
    """Rows splitting a 5-node latency into: cutting into parts, idling between parts,
    and the rest (hops, client); records the in-process times in ``entry``."""
    runs = max(5, ctx.settings.runs // 5)
    runner = ctx.runner(setup.directory)
    whole = statistics.median(entry["local_s"])
    cluster = statistics.median(entry["cluster_s"])
    say(f"{setup.label}: parts in process, back to back and after {ms(cluster, 0)} ms idle")
    busy = [statistics.median(t) for t in runner.time_parts(runs)]
    idle = [statistics.median(t) for t in runner.time_parts(runs, idle_s=cluster)]
    on_nodes = sum(entry["part_means_s"].values())
    entry["in_process_parts_s"] = {"back_to_back": busy, "after_idle": idle, "idle_s": cluster}
    n = len(busy)
    rows = [
        ("whole model, in process", whole),
        (f"{n} parts back to back, in process (sum of medians)", sum(busy)),
        (f"{n} parts, each after {ms(cluster, 0)} ms idle, in process", sum(idle)),
        (f"{n} parts on the nodes (sum of their means)", on_nodes),
        ("5 nodes end to end (table above)", cluster),
    ]
    return [[setup.backend, what, ms(v), f"{v / whole:.2f}"] for what, v in rows]
