"""Which operations of a layer graph are local along the height axis, and what rows they need.

A *region* is a run of graph operations ``[start, stop)`` (NHWC feature maps) in which
every output row depends only on a window of input rows: convolutions of any stride,
dilation and padding (also depthwise and separable), local pooling, zero padding,
nearest up-sampling, and element-wise operations (batch norm, activations, rescaling,
add/multiply/subtract joins, concatenation on channels). Global pooling, dense,
reshape, attention and anything else end a region. A region reads one spatial tensor
(``input``) plus *gates*: broadcast tensors without a height extent (a squeeze-excite
gate computed before the region) that every stripe reads whole; it hands on exactly one
tensor (``output``). An element-wise op whose gate is computed inside the region is
never part of one (the gate's global pooling ends it first).

For output rows ``[a, b)`` of a region, :func:`stripe_plan` gives the rows of every
tensor a stripe must compute and, per windowed op, the rows of padding it needs at the
true image border only (TensorFlow's "same" padding: ``(out - 1) * stride + k_eff - in``
rows in total, ``k_eff = dilation * (k - 1) + 1``, the odd row at the bottom); every
other row comes from the input (the stripe's halo), so an op inside a stripe is
"valid" along the height.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from edgenode.errors import ModelError

if TYPE_CHECKING:  # graph.py imports Keras; the analysis itself needs it only for layer types
    from edgenode.model.graph import LayerGraph, OpInfo

__all__ = [
    "RowMap",
    "SpatialRegion",
    "StripePlan",
    "describe",
    "find_regions",
    "region_between",
    "region_ending_at",
    "row_map",
    "same_padding",
    "split_rows",
    "stripe_plan",
]

Rows = tuple[int, int]  # [start, stop) along the height axis

# Element-wise operations that are not layers (keras.ops, Python operators), by class name.
_POINTWISE_OPS = frozenset(
    {
        "Abs", "Add", "Cast", "Clip", "Divide", "Elu", "Exp", "Gelu", "HardSigmoid",
        "HardSilu", "LeakyRelu", "Log", "Maximum", "Minimum", "Multiply", "Negative",
        "Power", "Relu", "Relu6", "Selu", "Sigmoid", "Silu", "Softplus", "Sqrt", "Square",
        "Subtract", "Tanh", "TrueDivide",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class RowMap:
    """How one op's output rows depend on its input rows.

    ``window``: output row ``r`` reads input rows ``[r*stride - offset, r*stride -
    offset + kernel)`` (rows outside ``[0, in_height)`` are padding). ``upsample``:
    output row ``r`` reads input row ``r // stride``. ``pointwise``: row ``r`` reads
    row ``r`` of each spatial input.
    """

    kind: Literal["window", "upsample", "pointwise"]
    kernel: int = 1
    stride: int = 1
    offset: int = 0
    in_height: int = 0

    def needs(self, rows: Rows) -> Rows:
        """Input rows (unclipped: negative or past the end means border padding)."""
        a, b = rows
        if self.kind == "upsample":
            return a // self.stride, (b - 1) // self.stride + 1
        return a * self.stride - self.offset, (b - 1) * self.stride - self.offset + self.kernel


@dataclass(frozen=True, slots=True, kw_only=True)
class SpatialRegion:
    """Ops ``[start, stop)`` of a graph, local along the height axis."""

    start: int
    stop: int
    input: str  # the spatial tensor the region reads (stripes get rows of it)
    gates: tuple[str, ...]  # broadcast tensors read whole by every stripe
    output: str  # the one tensor the region hands on
    input_height: int
    output_height: int
    maps: Mapping[int, RowMap] = field(repr=False)  # op index -> its row map
    # Every shorter region from ``start``: (stop, output tensor), ascending, this one last.
    ends: tuple[tuple[int, str], ...] = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class StripePlan:
    """What one stripe of a region computes: rows per tensor, border padding per op."""

    rows: Rows  # rows of the region's output
    tensor_rows: Mapping[str, Rows]  # rows of each region tensor the stripe computes
    op_rows: Mapping[int, Rows]  # op index -> input rows it reads (clipped to the tensor)
    pads: Mapping[int, Rows]  # op index -> border padding (top, bottom) of its input
    made: Mapping[int, Rows]  # op index -> rows it makes, where more than it must
    input: str  # the region's input tensor

    @property
    def input_rows(self) -> Rows:
        """Rows of the region's input tensor the stripe reads."""
        return self.tensor_rows[self.input]


def _height(graph: LayerGraph, name: str) -> int | None:
    shape = graph.tensors[name].shape
    return shape[1] if len(shape) == 4 else None


def _is_spatial(graph: LayerGraph, name: str) -> bool:
    height = _height(graph, name)
    return height is not None and height > 1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding (before, after) of one axis: the odd one after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _window(kernel: int, stride: int, padding: str, in_height: int) -> RowMap | None:
    if padding == "same":
        offset = same_padding(in_height, kernel, stride)[0]
    elif padding == "valid":
        offset = 0
    else:
        return None
    return RowMap(kind="window", kernel=kernel, stride=stride, offset=offset, in_height=in_height)


def _layer_map(op: OpInfo, in_height: int) -> RowMap | None:
    """The row map of a windowed layer, ``pointwise`` for an element-wise one, or None."""
    import keras

    layers = keras.layers
    layer = op.operation
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)):
        dilation = layer.dilation_rate[0]
        kernel = dilation * (layer.kernel_size[0] - 1) + 1
        return _window(kernel, layer.strides[0], layer.padding, in_height)
    if isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
        return _window(layer.pool_size[0], layer.strides[0], layer.padding, in_height)
    if isinstance(layer, layers.ZeroPadding2D):
        top = layer.padding[0][0]
        return RowMap(kind="window", kernel=1, stride=1, offset=top, in_height=in_height)
    if isinstance(layer, layers.UpSampling2D):
        if layer.interpolation != "nearest":
            return None
        return RowMap(kind="upsample", stride=layer.size[0], in_height=in_height)
    if isinstance(layer, layers.Concatenate):
        return RowMap(kind="pointwise") if layer.axis not in (0, 1, -3, -4) else None
    if isinstance(layer, (layers.BatchNormalization, layers.Normalization)):
        axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
        return RowMap(kind="pointwise") if axis in (-1, 3, (-1,), (3,)) else None
    pointwise = (
        layers.ReLU, layers.LeakyReLU, layers.ELU, layers.Activation, layers.Rescaling,
        layers.Add, layers.Subtract, layers.Multiply, layers.Maximum, layers.Minimum,
        layers.Average, layers.Dropout, layers.SpatialDropout2D, layers.GaussianNoise,
        layers.GaussianDropout, layers.Identity,
    )  # fmt: skip
    if isinstance(layer, pointwise):
        return RowMap(kind="pointwise")
    if isinstance(layer, layers.Softmax):
        return RowMap(kind="pointwise") if layer.axis in (-1, 3) else None
    return None


def row_map(graph: LayerGraph, op: OpInfo) -> RowMap | None:
    """The op's row map when it is local along the height, else None."""
    if len(op.outputs) != 1 or not _is_spatial(graph, op.outputs[0]):
        return None
    spatial = [name for name in op.inputs if _is_spatial(graph, name)]
    if not spatial:
        return None
    out_height = _height(graph, op.outputs[0])
    if op.is_layer:
        found = _layer_map(op, _height(graph, spatial[0]) or 0)
    else:
        found = RowMap(kind="pointwise") if op.kind in _POINTWISE_OPS else None
    if found is None:
        return None
    if found.kind == "pointwise":
        # every spatial input row-aligned with the output; the rest broadcast (gates)
        if any(_height(graph, name) != out_height for name in spatial):
            return None
        for name in op.inputs:
            if name not in spatial and _height(graph, name) not in (None, 1):
                return None
        return found
    return found if len(op.inputs) == 1 else None


def _crossing(graph: LayerGraph) -> list[list[str]]:
    """For each position ``c`` (0..len), the tensors made before ``c`` and needed from ``c`` on."""
    finals = set(graph.outputs)
    last: dict[str, int] = {}
    for name, info in graph.tensors.items():
        end = max(info.consumers, default=-1)
        last[name] = len(graph.ops) if name in finals else end
    found = []
    for c in range(len(graph.ops) + 1):
        found.append([n for n, info in graph.tensors.items() if info.producer < c and last[n] >= c])
    return found


def find_regions(graph: LayerGraph) -> list[SpatialRegion]:
    """The maximal local regions of ``graph``, in graph order (the first is the prefix)."""
    maps = {op.index: m for op in graph.ops if (m := row_map(graph, op)) is not None}
    crossing = _crossing(graph)
    regions: list[SpatialRegion] = []
    i = 0
    while i < len(graph.ops):
        if i not in maps:
            i += 1
            continue
        run_end = i
        while run_end in maps:
            run_end += 1
        region = _best_in_run(graph, maps, crossing, i, run_end)
        if region is not None:
            regions.append(region)
        i = run_end
    return regions


def _start_ok(graph: LayerGraph, names: Iterable[str]) -> tuple[str, tuple[str, ...]] | None:
    spatial = [n for n in names if _is_spatial(graph, n)]
    if len(spatial) != 1:
        return None
    return spatial[0], tuple(n for n in names if n != spatial[0])


def _best_in_run(
    graph: LayerGraph,
    maps: Mapping[int, RowMap],
    crossing: list[list[str]],
    run_start: int,
    run_end: int,
) -> SpatialRegion | None:
    for start in range(run_start, run_end):
        head = _start_ok(graph, crossing[start])
        if head is None:
            continue
        ends = tuple(
            (stop, crossing[stop][0])
            for stop in range(start + 1, run_end + 1)
            if len(crossing[stop]) == 1 and _is_spatial(graph, crossing[stop][0])
        )
        if not ends:
            continue
        stop, output = ends[-1]
        input_height = _height(graph, head[0])
        output_height = _height(graph, output)
        assert input_height is not None and output_height is not None
        return SpatialRegion(
            start=start,
            stop=stop,
            input=head[0],
            gates=head[1],
            output=output,
            input_height=input_height,
            output_height=output_height,
            maps={k: maps[k] for k in range(start, run_end)},
            ends=ends,
        )
    return None


def region_ending_at(graph: LayerGraph, region: SpatialRegion, stop: int) -> SpatialRegion:
    """The same region cut short at ``stop`` (one of ``region.ends``)."""
    return region_between(graph, region, region.start, stop)


def region_between(
    graph: LayerGraph, region: SpatialRegion, start: int, stop: int
) -> SpatialRegion:
    """The part ``[start, stop)`` of ``region``: ``start`` is the region's start or one
    of its ends, ``stop`` one of its ends after ``start`` (consecutive tile stages)."""
    ends = dict(region.ends)
    if stop not in ends or not (start == region.start or (start in ends and start < stop)):
        raise ModelError(
            f"region [{region.start}, {region.stop}) has no part [{start}, {stop}): "
            f"its ends are {sorted(ends)}"
        )
    output = ends[stop]
    if start == region.start:
        source, gates, input_height = region.input, region.gates, region.input_height
    else:  # a single tensor crosses an end: no gate reaches past it
        source, gates = ends[start], ()
        input_height = _height(graph, source) or 0
    height = _height(graph, output)
    assert height is not None
    return SpatialRegion(
        start=start,
        stop=stop,
        input=source,
        gates=gates,
        output=output,
        input_height=input_height,
        output_height=height,
        maps={k: v for k, v in region.maps.items() if start <= k < stop},
        ends=tuple(e for e in region.ends if start < e[0] <= stop),
    )


def split_rows(height: int, count: int) -> list[Rows]:
    """``count`` row ranges covering ``[0, height)``, sizes differing by at most one."""
    if not 1 <= count <= height:
        raise ModelError(f"cannot split {height} rows into {count} stripes")
    base, extra = divmod(height, count)
    bounds = [0]
    for i in range(count):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return list(itertools.pairwise(bounds))


def stripe_plan(graph: LayerGraph, region: SpatialRegion, rows: Rows) -> StripePlan:
    """What a stripe producing ``rows`` of the region's output reads and computes."""
    a, b = rows
    if not 0 <= a < b <= region.output_height:
        raise ModelError(f"rows [{a}, {b}) outside the region's {region.output_height} rows")
    need: dict[str, Rows] = {region.output: rows}
    op_rows: dict[int, Rows] = {}
    pads: dict[int, Rows] = {}
    made: dict[int, Rows] = {}
    for op in reversed(graph.ops[region.start : region.stop]):
        out = need.get(op.outputs[0])
        if out is None:
            raise ModelError(f"op {op.name!r} of the region feeds nothing the region hands on")
        rmap = region.maps[op.index]
        for name in op.inputs:
            height = _height(graph, name)
            if not _is_spatial(graph, name) or height is None:
                continue  # a gate, read whole
            lo, hi = rmap.needs(out)
            if hi <= 0 or lo >= height:
                # only padding (rows a ZeroPadding2D adds): read one real row too and
                # drop what that makes beyond ``out``
                if rmap.kind != "window" or rmap.stride != 1:
                    raise ModelError(f"op {op.name!r}: rows {out} read only padding")
                lo, hi = min(lo, height - 1), max(hi, 1)
                made[op.index] = (lo + rmap.offset, hi + rmap.offset - rmap.kernel + 1)
            pads[op.index] = (max(0, -lo), max(0, hi - height))
            clipped = (max(lo, 0), min(hi, height))
            op_rows[op.index] = clipped
            held = need.get(name)
            if held is not None:
                clipped = (min(held[0], clipped[0]), max(held[1], clipped[1]))
            need[name] = clipped
    return StripePlan(
        rows=rows, tensor_rows=need, op_rows=op_rows, pads=pads, made=made, input=region.input
    )


def describe(graph: LayerGraph, region: SpatialRegion) -> dict[str, Any]:
    """A JSON-able summary of a region (for logs and reports)."""
    return {
        "start": region.start,
        "stop": region.stop,
        "first": graph.ops[region.start].name,
        "last": graph.ops[region.stop - 1].name,
        "input": region.input,
        "gates": list(region.gates),
        "output": region.output,
        "rows": [region.input_height, region.output_height],
    }
