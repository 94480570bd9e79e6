"""Section 6: a second model (multi-input parts), section 1's table."""

from __future__ import annotations

import statistics

from harness.models import manifest_of
from harness.report import ms, table

from _inference.context import Context, Section
from _inference.latency import keras_and_litert, latency_table, measure_latency, plan_notes


async def section_second_model(ctx: Context, sec: Section) -> None:
    model = ctx.args.second_model
    setups = keras_and_litert(ctx, model)
    results = await measure_latency(ctx, sec, model, setups, "second")
    manifest = manifest_of(setups[0].directory)
    keras, lite = results["setups"]
    keras_local = statistics.median(keras["local_s"])
    lite_local = statistics.median(lite["local_s"])
    rows = []
    for p in manifest.parts:
        share = p.flops / manifest.model.flops
        shapes = ", ".join("x".join(str(d) for d in t.shape[1:]) for t in p.inputs)
        rows.append([
            p.index, f"{p.start}-{p.stop - 1}", len(p.inputs), shapes, f"{p.flops / 1e6:.0f}",
            ms(share * keras_local), ms(keras["part_means_s"].get(str(p.index))),
            ms(share * lite_local), ms(lite["part_means_s"].get(str(p.index))),
        ])  # fmt: skip
    multi = sum(len(p.inputs) > 1 for p in manifest.parts)
    sec.lines += [
        f"{model}, same method as section 1 ({ctx.settings.runs} runs per setup). {multi} of "
        f"its {len(manifest.parts)} parts have several inputs (a cut inside a dense block: the "
        "block's running concatenation and the newest layer's output both cross it).",
        "",
        *latency_table(results),
        "",
        *plan_notes(results),
        "",
        "Parts, and compute time per stage (one part per node): predicted = the part's share of "
        "the FLOPs times the local whole-model time of that backend; measured = the node's own "
        "mean run time of the part during the timed requests (`GetStatus` stages).",
        "",
        *table(
            "part|op range|inputs|input shapes|MFLOP|Keras predicted ms"
            "|Keras measured ms|LiteRT predicted ms|LiteRT measured ms",
            rows,
        ),
    ]
