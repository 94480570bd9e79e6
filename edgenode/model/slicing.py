"""Cut a layer graph into parts: Keras sub-models with dict inputs and outputs.

A part is a contiguous range ``[start, stop)`` of the graph's op order. Its inputs
are the tensors it reads but does not produce (several when the cut falls inside a
fork/join region), its outputs the tensors a later part reads plus every model
output it produces. Parts re-apply the model's own operations (``node.arguments
.fill_in``) to fresh ``keras.Input``s named after the tensors, so they share the
original weights and chain to exactly the model's result.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgenode.errors import ModelError
from edgenode.model.graph import LayerGraph
from edgenode.model.manifest import TileSpec, row_slices

__all__ = [
    "Part",
    "build_part",
    "cut_graph",
    "export_part",
    "run_model",
    "run_parts",
]

logger = logging.getLogger(__name__)

FORMATS = ("keras", "litert")
SUFFIX = {"keras": ".keras", "litert": ".tflite"}


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Part:
    """One sub-model: ops ``[start, stop)`` of the graph."""

    index: int
    start: int
    stop: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    model: Any = field(repr=False)

    @property
    def op_count(self) -> int:
        """Number of operations in the part."""
        return self.stop - self.start


def build_part(graph: LayerGraph, start: int, stop: int, *, index: int = 0) -> Part:
    """The Keras model of ops ``[start, stop)``, keyed by tensor name on both sides."""
    inputs, outputs = graph.boundary(start, stop)
    values: dict[str, Any] = {}
    for name in inputs:
        spec = graph.tensors[name]
        values[name] = keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=name)
    for op in graph.ops[start:stop]:
        fill = {tensor_id: values[name] for tensor_id, name in op.arg_names.items()}
        args, kwargs = op.node.arguments.fill_in(fill)
        result = keras.tree.flatten(op.operation(*args, **kwargs))
        if len(result) != len(op.outputs):
            raise ModelError(
                f"operation {op.name!r} returned {len(result)} tensors, expected {len(op.outputs)}"
            )
        values.update(zip(op.outputs, result, strict=True))
    try:
        model = keras.Model(
            inputs={name: values[name] for name in inputs},
            outputs={name: values[name] for name in outputs},
            name=f"part-{index}",
        )
    except ValueError as exc:
        raise ModelError(f"cannot build part {index} (ops {start}..{stop - 1}): {exc}") from exc
    return Part(index=index, start=start, stop=stop, inputs=inputs, outputs=outputs, model=model)


def cut_graph(graph: LayerGraph, cuts: Sequence[int]) -> list[Part]:
    """Parts between consecutive cut positions (a cut at ``k`` ends a part before op ``k``)."""
    bounds = [0, *cuts, len(graph.ops)]
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        raise ModelError(
            f"cut positions must be strictly increasing within 1..{len(graph.ops) - 1}, "
            f"got {list(cuts)}"
        )
    return [
        build_part(graph, start, stop, index=i)
        for i, (start, stop) in enumerate(itertools.pairwise(bounds))
    ]


def export_part(part: Part, path: Path, fmt: str) -> Path:
    """Write ``part`` as ``.keras`` or as a LiteRT flatbuffer; return the file written."""
    if fmt not in FORMATS:
        raise ModelError(f"unknown part format {fmt!r}; expected one of {', '.join(FORMATS)}")
    try:
        if fmt == "keras":
            part.model.save(path)
        else:
            part.model.export(str(path), format="litert", verbose=False)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(f"cannot export part {part.index} to {path}: {exc}") from exc
    return path


def run_model(graph: LayerGraph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the whole model eagerly (inference mode) on inputs named as in ``graph``."""
    functional = graph.functional
    flat = [inputs[name] for name in graph.inputs]
    feed = keras.tree.pack_sequence_as(functional._inputs_struct, flat)
    out = keras.tree.flatten(functional(feed, training=False))
    return {name: np.asarray(t) for name, t in zip(graph.output_slots, out, strict=True)}


def run_parts(
    parts: Sequence[Part],
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str],
    tiles: TileSpec | None = None,
    runners: Sequence[Callable[[Mapping[str, np.ndarray]], Mapping[str, Any]]] | None = None,
) -> dict[str, np.ndarray]:
    """Chain ``parts`` on named model inputs (cutting the row slices of ``tiles`` where
    their sources are made); return the named ``outputs``. ``runners``: one per part, run
    instead of its Keras sub-model."""
    values: dict[str, Any] = dict(inputs)
    values.update(row_slices(tiles, values))
    for i, part in enumerate(parts):
        feed = {name: values[name] for name in part.inputs}
        raw = runners[i](feed) if runners is not None else part.model(feed, training=False)
        result = {name: np.asarray(t) for name, t in raw.items()}
        values.update(result)
        values.update(row_slices(tiles, result))
    return {name: values[name] for name in outputs}
