"""`split_model`: part files, manifest, and what happens to the output directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from edgenode.errors import ModelError
from edgenode.model.cost import graph_stats, layer_working_sets
from edgenode.model.graph import build_graph
from edgenode.model.manifest import load_manifest
from edgenode.model.split import choose_cuts, split_model, verify_chain
from tests.model import models
from tests.reference import KERAS_TOLERANCE, ModelTensors, assert_answer


def test_split_writes_parts_and_a_consistent_manifest(tmp_path: Path) -> None:
    model = models.build("multi_io")
    result = split_model(model, tmp_path / "out", cuts=[3, 5])
    manifest = load_manifest(tmp_path / "out")
    manifest.verify_files(tmp_path / "out")
    assert manifest == result.manifest
    assert [p.file for p in manifest.parts] == ["part-0.keras", "part-1.keras", "part-2.keras"]
    assert manifest.model.outputs == ("early_head", "late_head")
    assert manifest.model.preprocess is None  # "multi_io" names no keras.applications family
    finals = {o.name for p in manifest.parts for o in p.outputs if o.final}
    assert finals == {"early_head", "late_head"}
    early = next(o for o in manifest.parts[0].outputs if o.name == "early_head")
    assert early.final and early.shape == (None, 2)
    assert sum(p.flops for p in manifest.parts) == manifest.model.flops
    assert sum(p.param_bytes for p in manifest.parts) == manifest.model.param_bytes
    # each part's largest layer working set, for the memory model
    working = layer_working_sets(build_graph(model))
    assert [p.activation_bytes for p in manifest.parts] == [
        max(working[p.start : p.stop]) for p in manifest.parts
    ]
    assert all(p.activation_bytes > 0 for p in manifest.parts)
    assert all(0 < p.largest_weight_bytes <= p.param_bytes for p in manifest.parts)
    check = verify_chain(result, tolerance=KERAS_TOLERANCE)
    assert check.moves and check.diff == 0.0 and check.spread > 100 * KERAS_TOLERANCE
    # the check bites: the same parts judged against another model's answers
    other = build_graph(models.build("multi_io", seed=1))
    assert verify_chain(dataclasses.replace(result, graph=other), tolerance=1e-6).diff > 1e-3

    # the part files alone (in a fresh Keras load) reproduce every tensor of the model
    tensors = ModelTensors(build_graph(model), [models.sample_inputs(model, s) for s in (0, 1)])
    loaded = [keras.models.load_model(tmp_path / "out" / spec.file) for spec in manifest.parts]
    names = list(dict.fromkeys(o.name for p in manifest.parts for o in p.outputs))
    refs = tensors.references(names, tolerance=KERAS_TOLERANCE)
    for i, inputs in enumerate(tensors.batches):
        values = dict(inputs)
        for spec, part in zip(manifest.parts, loaded, strict=True):
            assert sorted(t.name for t in part.inputs) == sorted(t.name for t in spec.inputs)
            out = part({t.name: values[t.name] for t in spec.inputs}, training=False)
            assert set(out) == {o.name for o in spec.outputs}
            values.update({k: np.asarray(v) for k, v in out.items()})
        assert_answer(refs, i, {n: values[n] for n in names})


def test_chain_check_says_when_outputs_do_not_move(tmp_path: Path) -> None:
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8, name="hidden")(inputs)
    flat = keras.layers.Dense(3, kernel_initializer="zeros", bias_initializer="ones",
                              name="flat")(hidden)  # fmt: skip
    result = split_model(keras.Model(inputs, flat), tmp_path / "out", cuts=[1])
    check = verify_chain(result, tolerance=KERAS_TOLERANCE)
    assert check.diff == 0.0 and check.spread == 0.0 and not check.moves


def test_model_hash_is_content_not_file(tmp_path: Path) -> None:
    model = models.build("fork_join")
    model.save(tmp_path / "a.keras")
    a = split_model(model, tmp_path / "a", parts=2).manifest.model.sha256
    b = split_model(keras.models.load_model(tmp_path / "a.keras"), tmp_path / "b", parts=2)
    assert b.manifest.model.sha256 == a
    other = split_model(models.build("fork_join", seed=1), tmp_path / "c", parts=2)
    assert other.manifest.model.sha256 != a


def test_resplit_replaces_an_earlier_split(tmp_path: Path) -> None:
    model = models.build("fork_join")
    split_model(model, tmp_path, parts=4)
    split_model(model, tmp_path, parts=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json",
        "part-0.keras",
        "part-1.keras",
    ]


def test_refuses_a_directory_that_is_not_a_split(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not empty"):
        split_model(models.build("fork_join"), tmp_path, parts=2)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_litert_split(tmp_path: Path) -> None:
    from edgenode.backends.litert import LiteRTPart

    model = models.build("fork_join")
    result = split_model(model, tmp_path, parts=3, fmt="litert")
    for spec in result.manifest.parts:
        assert spec.file.endswith(".tflite") and spec.format == "litert"
        runner = LiteRTPart(tmp_path / spec.file)
        assert set(runner.inputs) == {t.name for t in spec.inputs}
    keras = split_model(model, tmp_path / "keras", parts=3).manifest
    assert keras.identity == result.manifest.identity  # keras and litert nodes can mix
    # the files as written, chained, against the whole model; a wrong part is caught
    runners = [LiteRTPart(tmp_path / spec.file) for spec in result.manifest.parts]
    check = verify_chain(result, tolerance=KERAS_TOLERANCE, runners=runners)
    assert check.moves and check.diff < 1e-4 * max(1.0, check.scale)

    def off(feed):
        return {k: v * 1.01 for k, v in runners[1](feed).items()}

    wrong = verify_chain(result, tolerance=KERAS_TOLERANCE, runners=[runners[0], off, runners[2]])
    assert wrong.diff > 100 * check.diff + 1e-4 * check.scale


@pytest.mark.parametrize("method", ["balanced", "narrow", "even"])
def test_cut_methods_give_the_asked_part_count(method: str) -> None:
    graph = build_graph(models.build("fork_join"))
    stats = graph_stats(graph)
    for parts in range(1, len(graph.ops) + 1):
        cuts = choose_cuts(graph, stats, parts=parts, method=method)
        assert len(cuts) == parts - 1 and list(cuts) == sorted(set(cuts))


def test_cut_choice_errors() -> None:
    graph = build_graph(models.build("fork_join"))
    stats = graph_stats(graph)
    with pytest.raises(ModelError, match="cannot cut 13 operations into 14 parts"):
        choose_cuts(graph, stats, parts=14)
    with pytest.raises(ModelError, match=r"within 1\.\.12"):
        choose_cuts(graph, stats, parts=None, at=[0, 4])
    with pytest.raises(ModelError, match="unknown cut method"):
        choose_cuts(graph, stats, parts=2, method="random")
    assert choose_cuts(graph, stats, parts=None, method="per-op") == tuple(range(1, 13))


def test_split_records_the_preprocessing_of_an_application(tmp_path: Path) -> None:
    from edgenode.model.loading import load_model

    split_model(load_model("MobileNetV3Small", input_shape=(96, 96, 3)), tmp_path, parts=2)
    assert load_manifest(tmp_path).model.preprocess == "mobilenet_v3"
