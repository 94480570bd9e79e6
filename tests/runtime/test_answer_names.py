"""The origin answers under the model's own output names (in-memory cluster)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from edgenode.model.graph import build_graph
from edgenode.model.split import split_model
from edgenode.verify import ReferenceSet
from tests.model import models
from tests.runtime.test_requests import cluster

pytestmark = pytest.mark.tf

ATOL = 1e-5

# model -> (cuts, stages over the parts, the answer's names in the model's output order)
CASES = {
    "named_outputs": ([1, 2], [("a", 0, 1), ("b", 1, 3)], ["cls", "emb", "reg"]),
    "list_outputs": ([1, 2], [("a", 0, 2), ("b", 2, 3)], ["split", "split-1", "tail"]),
    "fork_join": ([4, 8], [("a", 0, 1), ("b", 1, 3)], ["dense"]),
}


def _keras_answer(model: keras.Model, inputs: dict[str, np.ndarray], names: list[str]) -> dict:
    """Keras' own result, keyed by the names the answer must use (dict: its own keys)."""
    (only,) = build_graph(model).inputs  # these models have one input
    out = model(inputs[only], training=False)
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    flat = out if isinstance(out, list) else [out]
    return {name: np.asarray(v) for name, v in zip(names, flat, strict=True)}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_the_answer_is_keyed_by_the_models_own_names(name: str, tmp_path: Path) -> None:
    cuts, stages, names = CASES[name]
    model = models.build(name)
    manifest = split_model(model, tmp_path, cuts=cuts).manifest
    split = (model, build_graph(model), manifest, tmp_path)
    batches = [models.sample_inputs(model, seed=s, batch=1) for s in (1, 2)]
    # the references must move with the input, so a mix-up cannot pass
    refs = ReferenceSet([_keras_answer(model, b, names) for b in batches], tolerance=ATOL)
    async with cluster(split, stages) as sim:
        outs = [await sim["origin"].infer(b) for b in batches]
    for i, out in enumerate(outs):
        assert list(out) == names
        verdict = refs.check(i, out)
        assert verdict.ok, verdict.detail
