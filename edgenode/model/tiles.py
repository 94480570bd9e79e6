"""Tile parts: a local region cut into horizontal stripes, and the part that gathers them.

Each stripe is a Keras sub-model over the model's own layers (shared weights): it takes
rows ``input_rows`` of the region's input tensor (its output rows plus the halo; the
caller slices them), named ``manifest.slice_name(input, input_rows)``, and the region's
gates whole, and returns its rows of the region's
output, named ``<output>.stripe<i>``. Inside a stripe every windowed op reads exactly
the rows :func:`~edgenode.model.spatial.stripe_plan` gives it, padded explicitly only
at the true image border, and runs "valid" along the height (its own width padding is
unchanged: stripes keep the whole width). The gather part concatenates the stripes on
the height axis and runs the model on from the region's end.

:func:`_apply_ops` repeats the re-application loop of ``slicing.build_part``, which
starts from fresh ``keras.Input``s only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgenode.errors import ModelError
from edgenode.model.graph import LayerGraph, OpInfo
from edgenode.model.manifest import slice_name
from edgenode.model.slicing import Part, build_part
from edgenode.model.spatial import Rows, SpatialRegion, same_padding, split_rows, stripe_plan

__all__ = [
    "StripePart",
    "TileParts",
    "build_stripe",
    "build_tiles",
    "register_layers",
    "run_tiles",
    "stripe_name",
]

Runner = Callable[[Part, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def stripe_name(output: str, index: int) -> str:
    """The name of stripe ``index``'s rows of the region output ``output``."""
    return f"{output}.stripe{index}"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class StripePart:
    """One stripe: a part, the output rows it makes and the input rows it reads."""

    part: Part
    rows: Rows
    input_rows: Rows


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class TileParts:
    """A region's stripes, the gather part after them and the part before, if any."""

    region: SpatialRegion
    before: Part | None  # ops [0, region.start)
    stripes: tuple[StripePart, ...]
    gather: Part  # ops [region.stop, stop)
    outputs: tuple[str, ...] = field(default=())  # model outputs made before the gather


def _window_layer() -> Any:
    """The wrapper class, defined on first use so this module imports without Keras."""
    global _WINDOW
    if _WINDOW is not None:
        return _WINDOW
    import keras
    from keras import ops

    layers = keras.layers

    @keras.saving.register_keras_serializable(package="edgenode")
    class StripeWindow(keras.layers.Layer):  # type: ignore[misc]
        """A windowed layer applied "valid" along the height, padded at the image border."""

        def __init__(self, inner: Any, pad_top: int, pad_bottom: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.inner = inner
            self.pad_top = pad_top
            self.pad_bottom = pad_bottom

        def _pad(self, x: Any, left: int, right: int, value: float = 0.0) -> Any:
            if not (self.pad_top or self.pad_bottom or left or right):
                return x
            widths = [[0, 0], [self.pad_top, self.pad_bottom], [left, right], [0, 0]]
            return ops.pad(x, widths, constant_values=value)

        def call(self, x: Any) -> Any:
            layer = self.inner
            width = x.shape[2]
            if isinstance(layer, layers.ZeroPadding2D):
                return self._pad(x, *layer.padding[1])
            if isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
                kernel, stride = layer.pool_size, layer.strides
                left, right = (0, 0)
                if layer.padding == "same":
                    left, right = same_padding(width, kernel[1], stride[1])
                if isinstance(layer, layers.MaxPooling2D):
                    low = float(np.finfo(np.float32).min)
                    return ops.max_pool(self._pad(x, left, right, low), kernel, stride, "valid")
                total = ops.average_pool(self._pad(x, left, right), kernel, stride, "valid")
                if layer.padding != "same":
                    return total
                # TF's "same" average leaves padding out of the count
                ones = ops.ones_like(x[..., :1])
                count = ops.average_pool(self._pad(ones, left, right), kernel, stride, "valid")
                return total / count
            dilation = layer.dilation_rate
            kernel_w = dilation[1] * (layer.kernel_size[1] - 1) + 1
            left, right = (0, 0)
            if layer.padding == "same":
                left, right = same_padding(width, kernel_w, layer.strides[1])
            x = self._pad(x, left, right)
            args = {"strides": layer.strides, "padding": "valid", "dilation_rate": dilation}
            if isinstance(layer, layers.DepthwiseConv2D):
                y = ops.depthwise_conv(x, layer.kernel, **args)
            elif isinstance(layer, layers.SeparableConv2D):
                y = ops.separable_conv(x, layer.depthwise_kernel, layer.pointwise_kernel, **args)
            else:
                y = ops.conv(x, layer.kernel, **args)
            if layer.use_bias:
                y = y + layer.bias
            return layer.activation(y) if layer.activation is not None else y

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "inner": keras.layers.serialize(self.inner),
                "pad_top": self.pad_top,
                "pad_bottom": self.pad_bottom,
            }

        @classmethod
        def from_config(cls, config: dict[str, Any]) -> Any:
            inner = keras.layers.deserialize(config.pop("inner"))
            return cls(inner, **config)

    _WINDOW = StripeWindow
    return _WINDOW


_WINDOW: Any = None


def register_layers() -> None:
    """Make the stripes' own layer known to Keras (before loading a stripe's file)."""
    _window_layer()


def _call(op: OpInfo, fill: Mapping[int, Any]) -> Any:
    import keras

    args, kwargs = op.node.arguments.fill_in(fill)
    result = keras.tree.flatten(op.operation(*args, **kwargs))
    if len(result) != len(op.outputs):
        raise ModelError(
            f"operation {op.name!r} returned {len(result)} tensors, expected {len(op.outputs)}"
        )
    return result


def _rows(tensor: Any, held: Rows, wanted: Rows) -> Any:
    """Rows ``wanted`` of a tensor that holds rows ``held``."""
    if held == wanted:
        return tensor
    if not held[0] <= wanted[0] < wanted[1] <= held[1]:
        raise ModelError(f"rows {wanted} are not within the rows held, {held}")
    return tensor[:, wanted[0] - held[0] : wanted[1] - held[0]]


def build_stripe(
    graph: LayerGraph, region: SpatialRegion, rows: Rows, index: int = 0
) -> StripePart:
    """The stripe of ``region`` making its output ``rows`` (named ``<output>.stripe<index>``)."""
    import keras

    plan = stripe_plan(graph, region, rows)
    window = _window_layer()
    spec = graph.tensors[region.input]
    lo, hi = plan.input_rows
    rows_name = slice_name(region.input, (lo, hi))
    inputs = {
        rows_name: keras.Input(
            batch_shape=(spec.shape[0], hi - lo, *spec.shape[2:]),
            dtype=spec.dtype,
            name=rows_name,
        )
    }
    for name in region.gates:
        gate = graph.tensors[name]
        inputs[name] = keras.Input(batch_shape=gate.shape, dtype=gate.dtype, name=name)
    values: dict[str, tuple[Any, Rows]] = {region.input: (inputs[rows_name], (lo, hi))}
    values.update((name, (inputs[name], (0, 0))) for name in region.gates)
    for op in graph.ops[region.start : region.stop]:
        out_rows = plan.tensor_rows[op.outputs[0]]
        rmap = region.maps[op.index]
        read = plan.op_rows[op.index]
        fill: dict[int, Any] = {}
        for tensor_id, name in op.arg_names.items():
            tensor, held = values[name]
            fill[tensor_id] = tensor if name in region.gates else _rows(tensor, held, read)
        if rmap.kind == "window":
            (arg,) = fill.values()
            top, bottom = plan.pads[op.index]
            result = window(op.operation, top, bottom, name=f"{op.name}.stripe{index}")(arg)
            result = _rows(result, plan.made.get(op.index, out_rows), out_rows)
        elif rmap.kind == "upsample":
            (result,) = _call(op, fill)
            made = (read[0] * rmap.stride, read[1] * rmap.stride)
            result = _rows(result, made, out_rows)
        else:
            (result,) = _call(op, fill)
        values[op.outputs[0]] = (result, out_rows)
    output = stripe_name(region.output, index)
    out_tensor, held = values[region.output]
    out_tensor = _rows(out_tensor, held, rows)
    try:
        model = keras.Model(inputs=inputs, outputs={output: out_tensor}, name=f"stripe-{index}")
    except ValueError as exc:
        raise ModelError(f"cannot build stripe {index} (rows {rows}): {exc}") from exc
    part = Part(
        index=index,
        start=region.start,
        stop=region.stop,
        inputs=tuple(inputs),
        outputs=(output,),
        model=model,
    )
    return StripePart(part=part, rows=rows, input_rows=(lo, hi))


def _build_gather(
    graph: LayerGraph, region: SpatialRegion, stripes: Sequence[StripePart], stop: int, index: int
) -> Part:
    import keras

    spec = graph.tensors[region.output]
    inputs = {}
    for i, stripe in enumerate(stripes):
        name = stripe_name(region.output, i)
        a, b = stripe.rows
        inputs[name] = keras.Input(
            batch_shape=(spec.shape[0], b - a, *spec.shape[2:]), dtype=spec.dtype, name=name
        )
    joined = keras.layers.Concatenate(axis=1, name=f"{region.output}.gather")(list(inputs.values()))
    values: dict[str, Any] = {region.output: joined}
    outputs: tuple[str, ...] = (region.output,)
    if region.stop < stop:
        needed, outputs = graph.boundary(region.stop, stop)
        if set(needed) != {region.output}:
            raise ModelError(f"ops from {region.stop} read {needed}, not only {region.output}")
        for op in graph.ops[region.stop : stop]:
            fill = {tensor_id: values[name] for tensor_id, name in op.arg_names.items()}
            values.update(zip(op.outputs, _call(op, fill), strict=True))
    try:
        model = keras.Model(
            inputs=inputs, outputs={name: values[name] for name in outputs}, name="gather"
        )
    except ValueError as exc:
        raise ModelError(f"cannot build the gather part: {exc}") from exc
    return Part(
        index=index,
        start=region.stop,
        stop=stop,
        inputs=tuple(inputs),
        outputs=outputs,
        model=model,
    )


def _renumbered(stripe: StripePart, index: int) -> StripePart:
    """The stripe as part ``index`` of the plan (its output keeps its stripe number)."""
    return dataclasses.replace(stripe, part=dataclasses.replace(stripe.part, index=index))


def build_tiles(
    graph: LayerGraph,
    region: SpatialRegion,
    count: int,
    *,
    stop: int | None = None,
    with_before: bool = True,
) -> TileParts:
    """``count`` stripes of ``region`` and a gather part running ops up to ``stop``
    (default: the end of the model); a part for the ops before the region if any and
    ``with_before`` (without it, the caller gives the region's input: chained stages)."""
    end = len(graph.ops) if stop is None else stop
    if not region.stop <= end <= len(graph.ops):
        raise ModelError(f"the gather part must stop within {region.stop}..{len(graph.ops)}")
    before = None
    if region.start > 0 and with_before:
        before = build_part(graph, 0, region.start, index=0)
    first = 1 if before is not None else 0
    stripes = tuple(
        _renumbered(build_stripe(graph, region, rows, i), first + i)
        for i, rows in enumerate(split_rows(region.output_height, count))
    )
    gather = _build_gather(graph, region, stripes, end, first + count)
    finals = before.outputs if before is not None else ()
    return TileParts(
        region=region,
        before=before,
        stripes=stripes,
        gather=gather,
        outputs=tuple(n for n in finals if n in graph.outputs),
    )


def _keras_runner(part: Part, feed: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    result = part.model(dict(feed), training=False)
    return {name: np.asarray(value) for name, value in result.items()}


def run_tiles(
    tiles: TileParts,
    inputs: Mapping[str, np.ndarray],
    *,
    run: Runner = _keras_runner,
    stripes: Callable[[Sequence[Callable[[], Mapping[str, np.ndarray]]]], Sequence[Any]]
    | None = None,
) -> dict[str, np.ndarray]:
    """Run ``tiles`` on named model inputs: the part before, each stripe on its rows, the
    gather part; return every output of the gather part and model outputs made before.

    ``run(part, feed)`` runs one part (default: Keras, eagerly); ``stripes(calls)`` runs
    the stripes' calls (default: one after the other), e.g. in threads.
    """
    region = tiles.region
    values: dict[str, np.ndarray] = dict(inputs)
    if tiles.before is not None:
        values.update(run(tiles.before, {n: values[n] for n in tiles.before.inputs}))
    source = values[region.input]
    gates = {name: values[name] for name in region.gates}

    def call(stripe: StripePart) -> Callable[[], Mapping[str, np.ndarray]]:
        lo, hi = stripe.input_rows
        feed = {stripe.part.inputs[0]: source[:, lo:hi], **gates}
        return lambda: run(stripe.part, feed)

    calls = [call(s) for s in tiles.stripes]
    results = stripes(calls) if stripes is not None else [c() for c in calls]
    for result in results:
        values.update(result)
    values.update(run(tiles.gather, {n: values[n] for n in tiles.gather.inputs}))
    return {n: values[n] for n in (*tiles.outputs, *tiles.gather.outputs)}
