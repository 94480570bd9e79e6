"""The layer graph: every structure Keras can build, with stable model-relative names."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

from edgenode.errors import ModelError
from edgenode.model.graph import build_graph
from tests.model import models


def test_operations_that_are_not_layers_are_graph_nodes() -> None:
    graph = build_graph(models.build("non_layer_ops"))
    kinds = [op.kind for op in graph.ops]
    assert kinds == [
        "Conv2D",
        "Add",
        "Relu6",
        "Multiply",
        "Multiply",
        "Mean",
        "Tanh",
        "Subtract",
    ]
    assert not any(op.is_layer for op in graph.ops[1:])
    # y * hard_sigmoid(y): the product reads the conv output and the hard sigmoid
    assert graph.op("multiply-1").inputs == ("conv2d-0", "multiply-0")
    assert graph.tensors["conv2d-0"].consumers == (1, 4)


def test_fork_and_join_nodes() -> None:
    graph = build_graph(models.build("fork_join"))
    add = graph.op("add-0")
    assert add.kind == "Add" and add.inputs == ("input", "re_lu-0")
    assert graph.op("multiply-0").inputs == ("add-0", "conv2d-2")
    concat = graph.op("concatenate-0")
    assert concat.inputs == ("conv2d-3", "conv2d-4", "max_pooling2d-0")
    assert len(graph.tensors["multiply-0"].consumers) == 3  # a three-way fork
    # every op comes after the producers of its inputs
    for op in graph.ops:
        for name in op.inputs:
            assert graph.tensors[name].producer < op.index


def test_shared_layers_and_multi_output_operations() -> None:
    graph = build_graph(models.build("shared_and_multi_output"))
    assert [op.name for op in graph.ops[:2]] == ["shared.0", "shared.1"]
    assert graph.ops[0].operation is graph.ops[1].operation
    assert graph.op("shared.1").inputs == ("shared.0",)
    assert graph.op("split-0").outputs == ("split-0.o0", "split-0.o1", "split-0.o2")
    assert graph.op("split_in_two-0").outputs == ("split_in_two-0.o0", "split_in_two-0.o1")
    # a dict output is flattened in key order: mean, scaled
    stats = graph.op("stats_dict-0")
    assert stats.outputs == ("stats_dict-0.o0", "stats_dict-0.o1")
    assert graph.tensors["stats_dict-0.o0"].shape == (None, 1)
    assert graph.op("concatenate-1").inputs[:2] == ("stats_dict-0.o0", "stats_dict-0.o1")


def test_nested_models_are_inlined() -> None:
    graph = build_graph(models.build("nested"))
    kinds = {op.kind for op in graph.ops}
    assert "Functional" not in kinds and "Sequential" not in kinds
    names = [op.name for op in graph.ops]
    assert {"backbone.0.fc", "backbone.1.fc", "head.dense-0", "head.dense-1"} <= set(names)
    # the siamese backbone: same layer object, different inputs
    assert graph.op("backbone.0.fc").operation is graph.op("backbone.1.fc").operation
    assert graph.op("backbone.0.fc").inputs == ("left",)
    assert graph.op("backbone.1.fc").inputs == ("right",)
    assert graph.op("add-0").inputs == ("backbone.0.low", "backbone.1.low")
    assert graph.outputs == ("head.dense-1",)


def test_several_inputs_and_dict_outputs() -> None:
    graph = build_graph(models.build("multi_io"))
    assert graph.inputs == ("image", "meta")
    assert graph.outputs == ("early_head", "late_head")
    early = graph.tensors["early_head"]
    assert early.consumers and early.producer < graph.op("late_head").index


def test_sequential_model_is_accepted() -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.ReLU()])
    graph = build_graph(model)
    assert [op.kind for op in graph.ops] == ["Dense", "ReLU"]


def test_subclassed_model_is_rejected() -> None:
    class Net(keras.Model):
        def call(self, x):
            return x * 2.0

    with pytest.raises(ModelError, match=r"subclassed keras\.Model"):
        build_graph(Net())


def test_names_do_not_depend_on_what_was_built_before() -> None:
    first = build_graph(models.build("fork_join"))
    for _ in range(3):
        models.build("non_layer_ops")  # advances Keras' global name counters
    second = build_graph(models.build("fork_join"))
    assert [op.name for op in first.ops] == [op.name for op in second.ops]
    assert list(first.tensors) == list(second.tensors)


@pytest.mark.slow
def test_application_names_are_stable_when_built_twice() -> None:
    a = build_graph(keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3)))
    b = build_graph(keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3)))
    assert list(a.tensors) == list(b.tensors)
    assert a.inputs == ("input",)


def test_same_model_file_gives_same_names_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    model = models.build("shared_and_multi_output")
    model.save(path)
    here = [op.name for op in build_graph(keras.models.load_model(path)).ops]
    script = textwrap.dedent(
        f"""
        import keras
        from tests.model import models
        from edgenode.model.graph import build_graph
        for name in models.BUILDERS:  # build other models first: counters move on
            models.build(name)
        graph = build_graph(keras.models.load_model({str(path)!r}))
        print("\\n".join(op.name for op in graph.ops))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
        timeout=300,
    )
    assert out.stdout.split() == here
