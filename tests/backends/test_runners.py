"""Part runners: Keras and LiteRT parts from a split agree with the model; bad inputs refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgenode.backends import check_inputs, load_runner
from edgenode.errors import ModelError
from edgenode.model.graph import build_graph
from edgenode.model.manifest import TensorSpec
from edgenode.model.split import split_model
from tests.model import models
from tests.reference import KERAS_TOLERANCE, LITERT_TOLERANCE, ModelTensors, assert_answer

pytestmark = pytest.mark.tf


@pytest.mark.parametrize(
    ("fmt", "tolerance"), [("keras", KERAS_TOLERANCE), ("litert", LITERT_TOLERANCE)]
)
def test_runners_chain_to_the_model(fmt: str, tolerance: float, tmp_path: Path) -> None:
    model = models.build("multi_io")
    manifest = split_model(model, tmp_path, cuts=[2, 5], fmt=fmt).manifest
    graph = build_graph(model)
    tensors = ModelTensors(graph, [models.sample_inputs(model, s, batch=1) for s in (0, 1)])
    runners = [(spec, load_runner(spec, tmp_path)) for spec in manifest.parts]
    produced = dict.fromkeys(o.name for p in manifest.parts for o in p.outputs)
    names = [n for n in produced if n in tensors.shown]
    refs = tensors.references(names, tolerance=tolerance)  # every tensor a runner hands on
    for i, inputs in enumerate(tensors.batches):
        values = dict(inputs)
        for spec, runner in runners:
            feed = {t.name: values[t.name] for t in spec.inputs}
            check_inputs(spec.inputs, feed)
            out = runner(feed)
            assert set(out) == {o.name for o in spec.outputs}
            values.update(out)
        assert_answer(refs, i, {n: values[n] for n in names})


def test_keras_runner_takes_any_batch_size(tmp_path: Path) -> None:
    manifest = split_model(models.build("fork_join"), tmp_path, parts=1).manifest
    runner = load_runner(manifest.parts[0], tmp_path)
    for batch in (1, 3):
        x = np.zeros((batch, 8, 8, 4), np.float32)
        (out,) = runner({"input": x}).values()
        assert out.shape == (batch, 3)
    with pytest.raises(ModelError, match="expects inputs"):
        runner({"wrong": np.zeros((1, 8, 8, 4), np.float32)})


SPECS = (
    TensorSpec(name="a", shape=(None, 4), dtype="float32"),
    TensorSpec(name="b", shape=(None, 2, 2), dtype="float32"),
)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"a": np.zeros((1, 4), np.float32)}, r"missing \['b'\]"),
        ({"a": np.zeros((1, 4), np.float64), "b": np.zeros((1, 2, 2), np.float32)}, "dtype"),
        ({"a": np.zeros((1, 5), np.float32), "b": np.zeros((1, 2, 2), np.float32)}, "shape"),
        ({"a": np.zeros((1, 4), np.float32), "b": np.zeros((1, 2), np.float32)}, "shape"),
        ({"a": np.zeros((1, 4), np.float32), "b": np.zeros((2, 2, 2), np.float32)}, "batch 2"),
        ({"a": np.zeros((0, 4), np.float32), "b": np.zeros((0, 2, 2), np.float32)}, "empty"),
    ],
)
def test_bad_inputs_are_refused(inputs: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        check_inputs(SPECS, inputs)
    check_inputs(SPECS, {"a": np.zeros((3, 4), np.float32), "b": np.zeros((3, 2, 2), np.float32)})
