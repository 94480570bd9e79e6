"""The model's own output names: read from the model, recorded by `split`, kept in files."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from edgenode.errors import ModelError
from edgenode.model.graph import build_graph
from edgenode.model.manifest import load_manifest
from edgenode.model.slicing import run_parts
from edgenode.model.split import split_model
from edgenode.verify import ReferenceSet
from tests.model import models

ATOL = 1e-6


@pytest.mark.parametrize(
    ("name", "tensors", "names"),
    [
        ("named_outputs", ("cls_head", "inner.inner_dense", "reg_head"), ("cls", "emb", "reg")),
        ("multi_io", ("early_head", "late_head"), ("early", "late")),
        ("list_outputs", ("split-0.o0", "split-0.o1", "tail.proj"), ("split", "split-1", "tail")),
        ("nested", ("head.dense-1",), ("head",)),
        ("fork_join", ("dense-0",), ("dense",)),
        ("non_layer_ops", ("subtract-0",), ("subtract",)),
    ],
)
def test_each_output_gets_the_models_own_name(name: str, tensors: tuple, names: tuple) -> None:
    """Dict outputs: the key; list and single outputs: Keras' output name, distinct."""
    graph = build_graph(models.build(name))
    assert graph.outputs == tensors
    assert graph.output_names == names


def test_automatic_names_lose_their_counter_so_a_rebuild_names_alike() -> None:
    first, second = models.build("fork_join"), models.build("fork_join")
    assert first.output_names != second.output_names  # dense_N: a process-global counter
    assert build_graph(first).output_names == build_graph(second).output_names == ("dense",)


def test_a_tensor_returned_twice_keeps_its_first_name() -> None:
    x = keras.Input((3,))
    y = keras.layers.Dense(2, name="y")(x)
    graph = build_graph(keras.Model(x, {"b": y, "a": y, "c": keras.layers.ReLU(name="r")(y)}))
    assert graph.outputs == ("y", "r") and graph.output_names == ("a", "c")


def test_a_sequential_model_is_named_by_its_last_layer() -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="scores")])
    assert build_graph(model).output_names == ("scores",)


def keras_answers(model: keras.Model, seeds: tuple[int, ...]) -> list[tuple[dict, dict]]:
    """(inputs, Keras' own answer: a dict by the model's keys) for inputs that differ."""
    pairs = []
    for seed in seeds:
        inputs = models.sample_inputs(model, seed=seed, batch=1)
        out = model(inputs["features"], training=False)
        pairs.append((inputs, {k: np.asarray(v) for k, v in out.items()}))
    return pairs


def test_split_records_the_names_and_the_parts_answer_under_them(tmp_path: Path) -> None:
    model = models.build("named_outputs")
    result = split_model(model, tmp_path / "out", cuts=[1, 2])  # a final from each part
    manifest = load_manifest(tmp_path / "out")
    assert manifest == result.manifest  # the names survive the file
    assert manifest.model.outputs == ("cls_head", "inner.inner_dense", "reg_head")
    assert manifest.model.output_names == ("cls", "emb", "reg")
    finals = [[o.name for o in p.outputs if o.final] for p in manifest.parts]
    assert finals == [["inner.inner_dense"], ["cls_head"], ["reg_head"]]

    pairs = keras_answers(model, seeds=(1, 2))
    refs = ReferenceSet([ref for _, ref in pairs], tolerance=ATOL)  # they move with the input
    for i, (inputs, _) in enumerate(pairs):
        chained = run_parts(result.parts, inputs, outputs=manifest.model.outputs)
        answer = manifest.model.name_outputs(chained)
        assert list(answer) == ["cls", "emb", "reg"]
        verdict = refs.check(i, answer)
        assert verdict.ok, verdict.detail


def test_a_model_file_cut_elsewhere_gives_the_same_names_and_identity(tmp_path: Path) -> None:
    """A node that cuts the saved model itself agrees with a split made in this process."""
    from edgenode.model.loading import load_model

    model = models.build("named_outputs")
    model.save(tmp_path / "m.keras")
    here = split_model(model, tmp_path / "here", cuts=[1, 2]).manifest
    there = split_model(load_model(str(tmp_path / "m.keras")), tmp_path / "there", cuts=[1, 2])
    assert there.manifest.model.output_names == ("cls", "emb", "reg")
    assert there.manifest.identity == here.identity


def test_split_refuses_an_output_name_the_protocol_reserves(tmp_path: Path) -> None:
    x = keras.Input((3,))
    model = keras.Model(x, {"!end": keras.layers.Dense(2)(x)})
    with pytest.raises(ModelError, match=r"model output '!end': .* must not .* start with '!'"):
        split_model(model, tmp_path / "out", parts=1)
    assert not (tmp_path / "out").exists()
