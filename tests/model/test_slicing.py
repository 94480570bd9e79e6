"""Parts chained together reproduce the whole model, for every way of cutting it."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from edgenode.errors import ModelError
from edgenode.model.graph import build_graph
from edgenode.model.slicing import (
    build_part,
    cut_graph,
    export_part,
    max_abs_diff,
    run_model,
    run_parts,
)
from tests.model import models

EXACT = 1e-6
LITERT_TOLERANCE = 1e-4


def _chain_diff(graph, cuts, inputs, expected) -> float:
    outs = run_parts(cut_graph(graph, cuts), inputs, outputs=graph.outputs)
    return max_abs_diff([expected[n] for n in graph.outputs], [outs[n] for n in graph.outputs])


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_every_single_cut_and_one_op_per_part_reproduce_the_model(name: str) -> None:
    model = models.build(name)
    graph = build_graph(model)
    inputs = models.sample_inputs(model)
    expected = run_model(graph, inputs)
    for cut in range(1, len(graph.ops)):
        assert _chain_diff(graph, [cut], inputs, expected) <= EXACT, f"cut at {cut}"
    assert _chain_diff(graph, list(range(1, len(graph.ops))), inputs, expected) <= EXACT


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_every_part_count(name: str) -> None:
    model = models.build(name)
    graph = build_graph(model)
    inputs = models.sample_inputs(model)
    expected = run_model(graph, inputs)
    n = len(graph.ops)
    for parts in range(1, min(8, n) + 1):
        cuts = [round(n * i / parts) for i in range(1, parts)]
        assert _chain_diff(graph, cuts, inputs, expected) <= EXACT, f"{parts} parts"


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


def test_final_outputs_from_different_parts() -> None:
    model = models.build("multi_io")
    graph = build_graph(model)
    inputs = models.sample_inputs(model)
    expected = run_model(graph, inputs)
    parts = cut_graph(graph, [3, 5])
    values: dict[str, np.ndarray] = dict(inputs)
    for part in parts:
        values.update(
            {k: np.asarray(v) for k, v in part.model({n: values[n] for n in part.inputs}).items()}
        )
    assert np.array_equal(values["early_head"], expected["early_head"])
    assert np.array_equal(values["late_head"], expected["late_head"])


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_parts_save_and_reload_as_keras(name: str, tmp_path: Path) -> None:
    model = models.build(name)
    graph = build_graph(model)
    inputs = models.sample_inputs(model)
    expected = run_model(graph, inputs)
    n = len(graph.ops)
    parts = cut_graph(graph, sorted({max(1, n // 3), max(1, 2 * n // 3)} - {n}))
    values: dict[str, np.ndarray] = dict(inputs)
    for part in parts:
        path = export_part(part, tmp_path / f"part-{part.index}.keras", "keras")
        loaded = keras.models.load_model(path)
        result = loaded({k: values[k] for k in part.inputs}, training=False)
        assert set(result) == set(part.outputs)
        values.update({k: np.asarray(v) for k, v in result.items()})
    got = [values[k] for k in graph.outputs]
    assert max_abs_diff([expected[k] for k in graph.outputs], got) <= EXACT


@pytest.mark.parametrize("name", ["fork_join", "multi_io", "nested", "non_layer_ops"])
def test_litert_parts_reproduce_the_model(name: str, tmp_path: Path) -> None:
    from edgenode.backends.litert import LiteRTPart

    model = models.build(name)
    graph = build_graph(model)
    inputs = models.sample_inputs(model, batch=1)
    expected = run_model(graph, inputs)
    n = len(graph.ops)
    parts = cut_graph(graph, [n // 3, 2 * n // 3])
    values: dict[str, np.ndarray] = dict(inputs)
    for part in parts:
        runner = LiteRTPart(export_part(part, tmp_path / f"part-{part.index}.tflite", "litert"))
        assert set(runner.inputs) == set(part.inputs)
        assert set(runner.outputs) == set(part.outputs)
        values.update(runner({k: values[k] for k in part.inputs}))
    got = [values[k] for k in graph.outputs]
    assert max_abs_diff([expected[k] for k in graph.outputs], got) <= LITERT_TOLERANCE


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
