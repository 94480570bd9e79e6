"""keras.applications models cut every way still give exactly the whole model's answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgenode.model.cost import graph_stats
from edgenode.model.graph import build_graph
from edgenode.model.loading import load_model
from edgenode.model.slicing import cut_graph, export_part, max_abs_diff, run_model, run_parts
from edgenode.model.split import choose_cuts

pytestmark = pytest.mark.slow

EXACT = 1e-6
LITERT_TOLERANCE = 1e-4
APPLICATIONS = ["MobileNetV3Large", "MobileNetV3Small", "ResNet50", "EfficientNetB0", "DenseNet121"]


@pytest.fixture(scope="module", params=APPLICATIONS)
def app(request):
    model = load_model(request.param)
    graph = build_graph(model)
    rng = np.random.default_rng(1)
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    inputs = {graph.inputs[0]: rng.uniform(0, 255, size=(1, *shape)).astype("float32")}
    return graph, inputs, run_model(graph, inputs)


def _diff(graph, cuts, inputs, expected) -> float:
    outs = run_parts(cut_graph(graph, cuts), inputs, outputs=graph.outputs)
    return max_abs_diff([expected[n] for n in graph.outputs], [outs[n] for n in graph.outputs])


def test_balanced_and_arbitrary_cuts_for_1_to_8_parts(app) -> None:
    graph, inputs, expected = app
    stats = graph_stats(graph)
    rng = np.random.default_rng(7)
    n = len(graph.ops)
    for parts in range(1, 9):
        balanced = choose_cuts(graph, stats, parts=parts, method="balanced")
        assert len(balanced) == parts - 1
        assert _diff(graph, balanced, inputs, expected) <= EXACT, f"balanced {parts}"
        arbitrary = sorted(rng.choice(np.arange(1, n), size=parts - 1, replace=False).tolist())
        assert _diff(graph, arbitrary, inputs, expected) <= EXACT, f"cuts {arbitrary}"


def test_one_operation_per_part(app) -> None:
    graph, inputs, expected = app
    assert _diff(graph, list(range(1, len(graph.ops))), inputs, expected) <= EXACT


def test_litert_parts(app, tmp_path: Path) -> None:
    from edgenode.backends.litert import LiteRTPart

    graph, inputs, expected = app
    stats = graph_stats(graph)
    values = dict(inputs)
    widest = 0
    for part in cut_graph(graph, choose_cuts(graph, stats, parts=4, method="even")):
        runner = LiteRTPart(export_part(part, tmp_path / f"p{part.index}.tflite", "litert"))
        values.update(runner({k: values[k] for k in part.inputs}))
        widest = max(widest, len(part.inputs))
    got = [values[n] for n in graph.outputs]
    assert max_abs_diff([expected[n] for n in graph.outputs], got) <= LITERT_TOLERANCE
    if graph.name.startswith(("DenseNet", "ResNet")):
        assert widest > 1  # cuts inside blocks: multi-input LiteRT parts
