"""Static cost of every operation: multiply-adds, FLOPs, parameter and activation bytes.

Known layer types are counted analytically from their weights and tensor shapes
(batch 1). Layers of other types that own weights or sublayers (custom layers, for
instance a block wrapping a Conv2D) are counted by TensorFlow's graph profiler on a
traced call, so everything they compute inside counts too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv
from keras.src.layers.merging.base_merge import Merge
from keras.src.layers.pooling.base_global_pooling import BaseGlobalPooling
from keras.src.layers.pooling.base_pooling import BasePooling

from edgenode.model.graph import LayerGraph, OpInfo

__all__ = ["OpStats", "graph_stats", "layer_working_sets", "op_stats"]

logger = logging.getLogger(__name__)

# Element-wise FLOPs per output element for layers that are more than one op.
_FLOPS_PER_ELEMENT = {
    "BatchNormalization": 2,  # folded scale and shift at inference
    "LayerNormalization": 5,
    "GroupNormalization": 5,
    "Rescaling": 2,
    "Normalization": 2,
    "Softmax": 5,
}
# Layers that only move or drop data.
_NO_FLOPS = (
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.Permute,
    keras.layers.RepeatVector,
    keras.layers.Identity,
    keras.layers.Concatenate,
    keras.layers.InputLayer,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OpStats:
    """Static cost of one operation call at batch size 1."""

    name: str
    kind: str
    macs: int  # multiply-accumulates of convolutions and matrix products
    flops: int  # all floating-point operations (a multiply-add counts 2)
    param_bytes: int
    output_bytes: int
    method: str  # "analytic", "profiler" or "elementwise"


def _elements(shape: Sequence[int | None]) -> int:
    return math.prod(d if d is not None else 1 for d in shape)


def _out_elements(op: OpInfo) -> int:
    return sum(_elements(t.shape) for t in op.node.outputs)


def _in_elements(op: OpInfo) -> int:
    return sum(_elements(t.shape) for t in op.node.arguments.keras_tensors)


def _weight_bytes(operation: Any) -> int:
    if not isinstance(operation, keras.layers.Layer):
        return 0
    seen: set[int] = set()
    total = 0
    for weight in operation.weights:
        if id(weight) not in seen:
            seen.add(id(weight))
            total += _elements(weight.shape) * _itemsize(weight.dtype)
    return total


def _itemsize(dtype: Any) -> int:
    import numpy as np

    return int(np.dtype(keras.backend.standardize_dtype(dtype)).itemsize)


def _bias(layer: Any, out: int) -> int:
    return out if getattr(layer, "use_bias", False) else 0


def _analytic_macs(op: OpInfo) -> tuple[int, int] | None:
    """(MACs, extra FLOPs) for layer types with a closed form, else None."""
    layer = op.operation
    out = _out_elements(op)
    if isinstance(layer, BaseSeparableConv):
        depth = layer.depthwise_kernel.shape  # (*k, in, multiplier)
        mid_channels = depth[-2] * depth[-1]
        spatial = out // layer.filters
        macs = spatial * mid_channels * math.prod(depth[:-2]) + out * mid_channels
        return macs, _bias(layer, out)
    if isinstance(layer, BaseDepthwiseConv):
        return out * math.prod(layer.kernel.shape[:-2]), _bias(layer, out)
    if isinstance(layer, BaseConvTranspose):
        kernel = layer.kernel.shape  # (*k, out, in)
        return _in_elements(op) * math.prod(kernel[:-1]), _bias(layer, out)
    if isinstance(layer, BaseConv):
        kernel = layer.kernel.shape  # (*k, in / groups, out)
        return out * math.prod(kernel[:-1]), _bias(layer, out)
    if isinstance(layer, keras.layers.Dense):
        return out * layer.kernel.shape[0], _bias(layer, out)
    if isinstance(layer, BaseGlobalPooling):
        return 0, _in_elements(op)
    if isinstance(layer, BasePooling):
        return 0, out * math.prod(layer.pool_size)
    if isinstance(layer, Merge):
        return 0, out * max(len(op.inputs) - 1, 1)
    if isinstance(layer, _NO_FLOPS):
        return 0, 0
    kind = type(layer).__name__
    if kind in _FLOPS_PER_ELEMENT:
        return 0, out * _FLOPS_PER_ELEMENT[kind]
    return None


def _has_inner_work(layer: Any) -> bool:
    return bool(layer.weights) or bool(getattr(layer, "_layers", None))


def _profiled_flops(op: OpInfo) -> int:
    """FLOPs of one call counted by TensorFlow's profiler on the traced graph."""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    tensors = list(op.node.arguments.keras_tensors)
    specs = [
        tf.TensorSpec([d if d is not None else 1 for d in t.shape], dtype=t.dtype) for t in tensors
    ]
    ids = [id(t) for t in tensors]

    def call(*values: Any) -> Any:
        args, kwargs = op.node.arguments.fill_in(dict(zip(ids, values, strict=True)))
        return op.operation(*args, **kwargs)

    graph = tf.function(call).get_concrete_function(*specs).graph
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(model_analyzer.profile(graph, options=options).total_float_ops)


def op_stats(op: OpInfo) -> OpStats:
    """Static cost of one op."""
    out_bytes = sum(_elements(t.shape) * _itemsize(t.dtype) for t in op.node.outputs)
    params = _weight_bytes(op.operation)

    def stats(macs: int, flops: int, method: str) -> OpStats:
        return OpStats(
            name=op.name,
            kind=op.kind,
            macs=macs,
            flops=flops,
            param_bytes=params,
            output_bytes=out_bytes,
            method=method,
        )

    if isinstance(op.operation, keras.layers.Layer):
        found = _analytic_macs(op)
        if found is not None:
            macs, extra = found
            return stats(macs, 2 * macs + extra, "analytic")
        if _has_inner_work(op.operation):
            flops = _profiled_flops(op)
            return stats(flops // 2, flops, "profiler")
    if op.kind in ("Matmul", "Einsum", "Tensordot"):
        flops = _profiled_flops(op)
        return stats(flops // 2, flops, "profiler")
    return stats(0, _out_elements(op), "elementwise")


def graph_stats(graph: LayerGraph) -> list[OpStats]:
    """Static cost of every op of ``graph``, in graph order."""
    return [op_stats(op) for op in graph.ops]


def layer_working_sets(graph: LayerGraph) -> list[int]:
    """Per op, in the graph's order: bytes of every tensor it reads plus every tensor it
    writes (batch 1), all held at once while it runs: the memory model's activations."""
    held = [0] * len(graph.ops)
    for t in graph.tensors.values():
        for c in set(t.consumers):
            held[c] += t.nbytes
        if t.producer >= 0:
            held[t.producer] += t.nbytes
    return held
