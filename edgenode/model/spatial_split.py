"""``edgenode split --spatial N``: a tiled manifest whose stripes run at once on N nodes.

The parts are, in order: the ops before the spatial region (when it does not start at
the model's input), N stripes of the region (each from a row slice of the region's
input, ``manifest.TileSpec``), and the gather part that joins the stripes and runs the
rest of the model. How deep the region goes is chosen with the planner's cost model:
a deeper region puts more work in the stripes but grows their halos (rows computed
twice) and may hand on a larger tensor; every end of every region is priced for N
nodes of the given speed (``planning.plan_tiles``) and the fastest wins, unless the
caller names the region's last op.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgenode.errors import ModelError
from edgenode.model.cost import OpStats
from edgenode.model.graph import LayerGraph
from edgenode.model.manifest import (
    DEFAULT_WIRE_FORMAT,
    LinkSpec,
    Manifest,
    ModelSpec,
    OutputSpec,
    PartSpec,
    RowSlice,
    TensorSpec,
    TileSpec,
    WireFormat,
    slice_name,
)
from edgenode.model.spatial import (
    SpatialRegion,
    find_regions,
    region_ending_at,
    split_rows,
    stripe_plan,
)
from edgenode.planning import Link, NodeSpec, plan_tiles

__all__ = ["SpatialChoice", "choose_region", "tile_manifest"]

Progress = Callable[[str], None]


def _spec(graph: LayerGraph, name: str, *, rows: int | None = None) -> TensorSpec:
    t = graph.tensors[name]
    shape = t.shape if rows is None else (t.shape[0], rows, *t.shape[2:])
    return TensorSpec(name=name, shape=shape, dtype=t.dtype)


def _output(spec: TensorSpec, final: bool) -> OutputSpec:
    return OutputSpec(name=spec.name, shape=spec.shape, dtype=spec.dtype, final=final)


def _part(
    index: int, start: int, stop: int, inputs: Sequence[TensorSpec], outputs: Sequence[OutputSpec],
    flops: float, param_bytes: int,
) -> PartSpec:  # fmt: skip
    return PartSpec(
        index=index, file="", sha256="", inputs=tuple(inputs), outputs=tuple(outputs),
        start=start, stop=stop, macs=0, flops=int(flops), param_bytes=param_bytes,
    )  # fmt: skip


def tile_manifest(
    graph: LayerGraph,
    stats: Sequence[OpStats],
    region: SpatialRegion,
    count: int,
    *,
    model: ModelSpec,
    link: LinkSpec | None = None,
    wire_format: WireFormat = DEFAULT_WIRE_FORMAT,
) -> Manifest:
    """The manifest of ``count`` stripes of ``region`` (part files still unnamed): the
    part before the region if any, the stripes, the gather part. A stripe's work counts
    every row it computes, halo included."""
    finals = set(graph.outputs)
    params = [s.param_bytes for s in stats]
    parts: list[PartSpec] = []
    if region.start > 0:
        needed, made = graph.boundary(0, region.start)
        parts.append(
            _part(
                0, 0, region.start, [_spec(graph, n) for n in needed],
                [_output(_spec(graph, n), n in finals) for n in made],
                sum(s.flops for s in stats[: region.start]), sum(params[: region.start]),
            )
        )  # fmt: skip
    slices = []
    stripes = []
    for i, rows in enumerate(split_rows(region.output_height, count)):
        plan = stripe_plan(graph, region, rows)
        work = 0.0
        for op in graph.ops[region.start : region.stop]:
            height = graph.tensors[op.outputs[0]].shape[1] or 1
            a, b = plan.tensor_rows[op.outputs[0]]
            work += stats[op.index].flops * (b - a) / height
        cut = RowSlice(
            name=slice_name(region.input, plan.input_rows),
            source=region.input,
            rows=plan.input_rows,
        )
        slices.append(cut)
        lo, hi = plan.input_rows
        inputs = [
            _spec(graph, region.input, rows=hi - lo),
            *(_spec(graph, g) for g in region.gates),
        ]
        inputs[0] = dataclasses.replace(inputs[0], name=cut.name)
        out = _spec(graph, region.output, rows=rows[1] - rows[0])
        stripes.append(len(parts))
        parts.append(
            _part(
                len(parts), region.start, region.stop, inputs,
                [_output(dataclasses.replace(out, name=f"{region.output}.stripe{i}"), False)],
                work, sum(params[region.start : region.stop]),
            )
        )  # fmt: skip
    n = len(graph.ops)
    gather_inputs = [parts[i].outputs[0] for i in stripes]
    outputs: Sequence[str] = (region.output,)
    if region.stop < n:
        _, outputs = graph.boundary(region.stop, n)
    parts.append(
        _part(
            len(parts), region.stop, n,
            [TensorSpec(name=t.name, shape=t.shape, dtype=t.dtype) for t in gather_inputs],
            [_output(_spec(graph, name), name in finals) for name in outputs],
            sum(s.flops for s in stats[region.stop :]), sum(params[region.stop :]),
        )
    )  # fmt: skip
    return Manifest(
        model=model,
        parts=tuple(parts),
        link=link,
        wire_format=wire_format,
        tiles=TileSpec(slices=tuple(slices), stripes=tuple(stripes), gather=len(parts) - 1),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SpatialChoice:
    """The region chosen for ``count`` stripes and what the planner predicts for it."""

    region: SpatialRegion
    manifest: Manifest  # part files still unnamed
    latency_s: float  # on ``count`` nodes of the given speed
    nodes: int  # how many of them the plan uses (1: tiling does not pay)
    whole_s: float  # the whole model on one of them


def choose_region(
    graph: LayerGraph,
    stats: Sequence[OpStats],
    count: int,
    *,
    model: ModelSpec,
    speed: float,
    link: Link,
    last_op: str | None = None,
    link_spec: LinkSpec | None = None,
    wire_format: WireFormat = DEFAULT_WIRE_FORMAT,
) -> SpatialChoice:
    """The region (and depth) whose ``count`` stripes answer soonest on ``count`` nodes
    of ``speed`` FLOP/s over ``link``; with ``last_op``, the region ending after it."""
    if count < 2:
        raise ModelError(f"--spatial needs at least 2 stripes, got {count}")
    candidates = []
    for region in find_regions(graph):
        for stop, _ in region.ends:
            if last_op is None or graph.ops[stop - 1].name == last_op:
                candidates.append(region_ending_at(graph, region, stop))
    if not candidates:
        if last_op is not None:
            raise ModelError(f"no spatial region of {graph.name} ends after op {last_op!r}")
        raise ModelError(f"{graph.name} has no spatially local region to cut into stripes")
    nodes = [NodeSpec(node_id=f"n{i}", speed=speed, memory_bytes=2**62) for i in range(count)]
    whole_s = sum(s.flops for s in stats) / speed
    best: SpatialChoice | None = None
    for region in candidates:
        if region.output_height < count:
            continue
        manifest = tile_manifest(
            graph, stats, region, count, model=model, link=link_spec, wire_format=wire_format
        )
        plan = plan_tiles(manifest.cost_graph(), nodes, link)
        if best is None or plan.latency_s < best.latency_s:
            best = SpatialChoice(
                region=region,
                manifest=manifest,
                latency_s=plan.latency_s,
                nodes=len(plan.stages),
                whole_s=whole_s,
            )
    if best is None:
        raise ModelError(f"no spatial region of {graph.name} has {count} rows to share out")
    return best
