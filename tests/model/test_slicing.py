"""Parts chained together reproduce the whole model, for every way of cutting it.

Every tensor a part hands on or returns is compared with the whole model's tensor of
that name, for two different inputs, through ``ReferenceSet`` (tests/reference.py).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from edgenode.errors import ModelError
from edgenode.model.graph import build_graph
from edgenode.model.slicing import build_part, cut_graph, export_part
from tests.model import models
from tests.reference import LITERT_TOLERANCE, ModelTensors, check_chain


def _tensors(model, *, batch: int = 2) -> ModelTensors:
    """The whole model's tensors for two different inputs."""
    graph = build_graph(model)
    return ModelTensors(graph, [models.sample_inputs(model, seed, batch) for seed in (0, 1)])


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_every_single_cut_and_one_op_per_part_reproduce_the_model(name: str) -> None:
    tensors = _tensors(models.build(name))
    graph = tensors.graph
    for cut in range(1, len(graph.ops)):
        check_chain(tensors, cut_graph(graph, [cut]))
    check_chain(tensors, cut_graph(graph, list(range(1, len(graph.ops)))))


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_every_part_count(name: str) -> None:
    tensors = _tensors(models.build(name))
    n = len(tensors.graph.ops)
    for parts in range(1, min(8, n) + 1):
        check_chain(
            tensors, cut_graph(tensors.graph, [round(n * i / parts) for i in range(1, parts)])
        )


def test_cut_inside_fork_join_gives_parts_with_several_inputs() -> None:
    graph = build_graph(models.build("fork_join"))
    concat = graph.op("concatenate-0").index
    first, second = cut_graph(graph, [concat - 1])  # between two concatenated branches
    assert second.inputs == ("multiply-0", "conv2d-3", "conv2d-4")
    assert set(first.outputs) == {"multiply-0", "conv2d-3", "conv2d-4"}
    model_in = second.model.inputs
    assert sorted(t.name for t in model_in) == sorted(second.inputs)


def test_part_interfaces_are_named_dicts() -> None:
    graph = build_graph(models.build("multi_io"))
    parts = cut_graph(graph, [3])
    # the early head is final and also read by the second part
    assert parts[0].outputs == ("pool", "early_head")
    assert parts[1].inputs == ("meta", "pool", "early_head")
    assert parts[1].outputs == ("late_head",)
    for part in parts:
        assert set(part.model.input.keys()) == set(part.inputs)
        assert set(part.model.output.keys()) == set(part.outputs)


def chain(runners):
    """``run`` for check_chain: ``runners`` (part -> callable on named inputs) in order."""

    def run(inputs, names):
        values: dict[str, np.ndarray] = dict(inputs)
        for part, runner in runners:
            result = runner({k: values[k] for k in part.inputs})
            assert set(result) == set(part.outputs)
            values.update({k: np.asarray(v) for k, v in result.items()})
        return {name: values[name] for name in names}

    return run


def test_final_outputs_from_different_parts() -> None:
    tensors = _tensors(models.build("multi_io"))
    parts = cut_graph(tensors.graph, [3, 5])
    assert {"early_head", "late_head"} <= set(tensors.boundary(parts))
    check_chain(tensors, parts, run=chain([(p, p.model) for p in parts]))


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_parts_save_and_reload_as_keras(name: str, tmp_path: Path) -> None:
    tensors = _tensors(models.build(name))
    n = len(tensors.graph.ops)
    parts = cut_graph(tensors.graph, sorted({max(1, n // 3), max(1, 2 * n // 3)} - {n}))
    loaded = [
        (
            part,
            keras.models.load_model(
                export_part(part, tmp_path / f"part-{part.index}.keras", "keras")
            ),
        )
        for part in parts
    ]
    check_chain(tensors, parts, run=chain(loaded))


@pytest.mark.parametrize("name", ["fork_join", "multi_io", "nested", "non_layer_ops"])
def test_litert_parts_reproduce_the_model(name: str, tmp_path: Path) -> None:
    from edgenode.backends.litert import LiteRTPart

    tensors = _tensors(models.build(name), batch=1)
    n = len(tensors.graph.ops)
    parts = cut_graph(tensors.graph, [n // 3, 2 * n // 3])
    runners = []
    for part in parts:
        runner = LiteRTPart(export_part(part, tmp_path / f"part-{part.index}.tflite", "litert"))
        assert set(runner.inputs) == set(part.inputs)
        assert set(runner.outputs) == set(part.outputs)
        runners.append((part, runner))
    check_chain(tensors, parts, tolerance=LITERT_TOLERANCE, run=chain(runners))


def test_invalid_cuts_are_refused() -> None:
    graph = build_graph(models.build("fork_join"))
    n = len(graph.ops)
    for cuts in ([0], [n], [3, 3], [5, 2]):
        with pytest.raises(ModelError, match="strictly increasing"):
            cut_graph(graph, cuts)
    with pytest.raises(ModelError, match="invalid part"):
        build_part(graph, 4, 4)


def test_unknown_export_format() -> None:
    graph = build_graph(models.build("fork_join"))
    with pytest.raises(ModelError, match="unknown part format"):
        export_part(build_part(graph, 0, 2), Path("x.onnx"), "onnx")
